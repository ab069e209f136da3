// The Ravel-rs dashboard: fetches GET /v1/cluster every REFRESH_MS and draws it.
//
// Every string that comes from the server reaches the DOM as text (text nodes, textContent or
// setAttribute on a fixed attribute name), never as HTML, so a replica address or an error
// message cannot inject markup. No library, nothing loaded from elsewhere.
'use strict';

(function () {
  const REFRESH_MS = 2000;
  const FETCH_TIMEOUT_MS = 4000;
  const PALETTE_SIZE = 8;
  const DENSE_GRID_PARTITIONS = 2048;
  const KNOWN_ROLES = ['leader', 'follower', 'learner', 'candidate', 'unreachable', 'shutdown'];

  let lastSuccessMs = null;

  // ------------------------------------------------------------------ DOM helpers

  /** A new element with attributes (names are ours; values may be data) and text or node children. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function fmtNumber(n) {
    return typeof n === 'number' ? n.toLocaleString('en-US') : '–';
  }

  function fmtClock(ms) {
    return new Date(ms).toLocaleTimeString('en-GB', { hour12: false });
  }

  function fmtAgo(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    return Math.floor(s / 3600) + ' h ago';
  }

  function table(headers, rows) {
    const head = el('tr', null, headers.map(([text, cls]) => el('th', { class: cls }, text)));
    return el('table', null, el('thead', null, head), el('tbody', null, rows));
  }

  function roleBadge(role) {
    const known = KNOWN_ROLES.includes(role) ? role : 'other';
    return el('span', { class: 'role role-' + known }, role || 'unknown');
  }

  function health(healthy) {
    return el('span', { class: 'health ' + (healthy ? 'ok' : 'bad') }, healthy ? 'healthy' : 'unhealthy');
  }

  /** Maps each cluster id to its colour class, by position in the view's list. */
  function colours(view) {
    const map = new Map();
    (view.clusters || []).forEach((c, i) => map.set(c.id, 'c-' + (i % PALETTE_SIZE)));
    return map;
  }

  // ------------------------------------------------------------------ sections

  function renderSummary(view) {
    const clusters = view.clusters || [];
    const replicas = clusters.flatMap((c) => c.replicas || []);
    const healthy = replicas.filter((r) => r.healthy).length;
    const knownKeys = clusters.filter((c) => typeof c.keys === 'number');
    const keys = knownKeys.reduce((sum, c) => sum + c.keys, 0);
    const moves = (view.migrations || []).length;
    const stat = (label, value, bad) =>
      el('div', { class: 'stat' + (bad ? ' bad' : '') },
        el('div', { class: 'label' }, label), el('div', { class: 'value' }, value));
    byId('summary').replaceChildren(
      stat('Clusters', fmtNumber(clusters.length), clusters.length === 0),
      stat('Replicas healthy', healthy + ' / ' + replicas.length, healthy < replicas.length),
      stat('Partitions', fmtNumber(view.partitions)),
      stat('Keys', (knownKeys.length < clusters.length ? '≥ ' : '') + fmtNumber(keys)),
      stat('Table epoch', fmtNumber(view.epoch)),
      stat('Moves / planned', moves + ' / ' + fmtNumber(view.moves_pending)),
      stat('Max write pause', fmtNumber(view.max_write_pause_ms) + ' ms'),
    );
  }

  function renderAdmins(view) {
    const section = byId('admins-section');
    const admins = view.admins;
    if (!Array.isArray(admins) || admins.length === 0) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    byId('admins').replaceChildren(...admins.map((a) =>
      el('span', { class: 'admin', 'data-admin': a.grpc_addr },
        roleBadge(a.role), ' ', health(a.healthy),
        el('span', { class: 'mono' }, ' gRPC ', a.grpc_addr, ' · HTTP ', a.http_addr))));
  }

  function replicaRow(replica, leader) {
    const row = el('tr', {
      'data-replica': replica.id,
      'data-role': replica.role,
      class: replica.id === leader ? 'is-leader' : null,
    },
    el('td', { class: 'num' }, 'node ' + replica.id),
    el('td', null, roleBadge(replica.role)),
    el('td', null, health(replica.healthy)),
    el('td', { class: 'mono' }, replica.grpc_addr),
    el('td', { class: 'mono' }, replica.raft_addr),
    el('td', { class: 'num' }, fmtNumber(replica.term)),
    el('td', { class: 'num' }, fmtNumber(replica.last_applied)),
    el('td', { class: 'num' }, fmtNumber(replica.keys)));
    if (!replica.error) return [row];
    const note = el('tr', { class: 'error-row' }, el('td', { colspan: 8, class: 'error' }, replica.error));
    return [row, note];
  }

  function renderClusters(view, colourOf) {
    const clusters = view.clusters || [];
    const root = byId('clusters');
    if (clusters.length === 0) {
      root.replaceChildren(el('p', { class: 'empty' },
        'No cluster yet. Start a replica with -l to create one: ',
        el('code', null, 'ravel_node start -s DIR -g GRPC -r RAFT -a ADMIN_GRPC -l')));
      return;
    }
    root.replaceChildren(...clusters.map((c) => {
      const leader = c.leader === null || c.leader === undefined ? null : c.leader;
      const facts = [
        fmtNumber(c.partitions) + ' partitions',
        c.target_partitions !== c.partitions ? ' (ring target ' + fmtNumber(c.target_partitions) + ')' : '',
        ' · ' + (typeof c.keys === 'number' ? fmtNumber(c.keys) + ' keys' : 'keys unknown'),
        ' · assignment ' + (c.assignment_confirmed ? 'confirmed' : 'not yet confirmed'),
      ];
      const rows = (c.replicas || []).flatMap((r) => replicaRow(r, leader));
      return el('section', {
        class: 'cluster ' + colourOf.get(c.id),
        'data-cluster': c.id,
        'data-leader': leader === null ? '' : leader,
      },
      el('div', { class: 'cluster-head' },
        el('span', { class: 'swatch ' + colourOf.get(c.id) }),
        el('h3', null, 'Cluster ' + c.id),
        leader === null
          ? el('span', { class: 'leader none' }, 'no leader')
          : el('span', { class: 'leader' }, 'leader: node ' + leader)),
      el('p', { class: 'facts' }, facts, c.draining ? el('span', { class: 'warn' }, ' · draining') : null),
      table([['replica', 'num'], ['role'], ['health'], ['gRPC'], ['Raft'], ['term', 'num'],
        ['applied', 'num'], ['keys', 'num']], rows));
    }));
  }

  function renderPartitions(view, colourOf) {
    const owners = Array.isArray(view.partition_owners) ? view.partition_owners : [];
    const moving = new Map((view.migrations || []).map((m) => [m.partition, m]));
    const grid = byId('partitions');
    grid.classList.toggle('dense', owners.length > DENSE_GRID_PARTITIONS);
    const cells = owners.map((owner, p) => {
      const move = moving.get(p);
      const cls = ['cell', owner === null ? 'none' : colourOf.get(owner) || 'none'];
      let title = 'partition ' + p + ': ' + (owner === null ? 'no owner' : 'cluster ' + owner);
      if (move) {
        cls.push('moving');
        title += ', moving ' + move.source + ' → ' + move.target + ' (' + move.step + ')';
      }
      return el('div', { class: cls.join(' '), title: title, 'data-partition': p });
    });
    grid.replaceChildren(...cells);
    const unowned = owners.filter((o) => o === null).length;
    byId('table-caption').textContent = fmtNumber(owners.length) + ' partitions, table epoch ' +
      fmtNumber(view.epoch) + (unowned ? ', ' + fmtNumber(unowned) + ' without an owner' : '') +
      '. Each square is one partition, coloured by the cluster that owns it.';
    const legend = (view.clusters || []).map((c) =>
      el('span', null, el('span', { class: 'swatch ' + colourOf.get(c.id) }),
        'cluster ' + c.id + ' (' + fmtNumber(c.partitions) + ')'));
    if (moving.size > 0) legend.push(el('span', null, el('span', { class: 'swatch moving' }), 'moving (' + moving.size + ')'));
    if (unowned > 0) legend.push(el('span', null, el('span', { class: 'swatch none' }), 'no owner'));
    byId('partition-legend').replaceChildren(...legend);
  }

  function renderMoves(view) {
    const moves = view.migrations || [];
    const root = byId('moves');
    if (moves.length === 0) {
      root.replaceChildren(el('p', { class: 'empty' },
        'None' + (view.moves_pending ? ' running; ' + view.moves_pending + ' planned.' : '.')));
      return;
    }
    const rows = moves.map((m) => el('tr', { 'data-move': m.partition },
      el('td', { class: 'num' }, m.partition),
      el('td', null, 'cluster ' + m.source + ' → cluster ' + m.target),
      el('td', null, m.step),
      el('td', { class: 'num' }, fmtNumber(m.keys_copied))));
    root.replaceChildren(table([['partition', 'num'], ['from → to'], ['step'], ['keys copied', 'num']], rows));
  }

  function renderLeaderChanges(view) {
    const changes = (view.leader_changes || []).slice().reverse();
    const root = byId('leader-changes');
    if (changes.length === 0) {
      root.replaceChildren(el('p', { class: 'empty' }, 'None observed since this admin started.'));
      return;
    }
    const rows = changes.map((c) => el('tr', { 'data-leader-change': c.cluster },
      el('td', null, fmtClock(c.at_unix_ms), el('span', { class: 'caption' }, ' ' + fmtAgo(c.at_unix_ms))),
      el('td', null, 'cluster ' + c.cluster),
      el('td', null, (c.old_leader === null ? 'none' : 'node ' + c.old_leader) + ' → node ' + c.new_leader),
      el('td', { class: 'num' }, fmtNumber(c.term))));
    root.replaceChildren(table([['when'], ['cluster'], ['leader'], ['term', 'num']], rows));
  }

  function render(view) {
    const colourOf = colours(view);
    renderSummary(view);
    renderAdmins(view);
    renderClusters(view, colourOf);
    renderPartitions(view, colourOf);
    renderMoves(view);
    renderLeaderChanges(view);
  }

  // ------------------------------------------------------------------ refresh loop

  function setRefreshState(state, text) {
    const status = byId('refresh');
    status.dataset.state = state;
    status.textContent = text;
    document.querySelector('main').classList.toggle('stale', state === 'failed' && lastSuccessMs !== null);
  }

  async function fetchView() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const resp = await fetch('/v1/cluster', { cache: 'no-store', signal: abort.signal });
      if (!resp.ok) throw new Error('HTTP ' + resp.status);
      return await resp.json();
    } finally {
      clearTimeout(timer);
    }
  }

  async function refresh() {
    try {
      const view = await fetchView();
      render(view);
      lastSuccessMs = Date.now();
      setRefreshState('ok', 'updated ' + fmtClock(lastSuccessMs));
    } catch (e) {
      const why = e && e.name === 'AbortError' ? 'timed out' : String(e && e.message ? e.message : e);
      const since = lastSuccessMs === null ? 'no data yet' : 'showing data from ' + fmtClock(lastSuccessMs);
      setRefreshState('failed', 'last refresh failed at ' + fmtClock(Date.now()) + ' (' + why + '); ' + since);
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();
