//! End-to-end tests of online partition migration on the real binaries (issue 3): clusters are
//! added and removed while concurrent clients write and read — also with the admin or a
//! cluster's leader killed mid-move, and with a target cluster that lost its quorum (the moves
//! abort, the source keeps serving, the moves are retried later) — and afterwards the recorded
//! history has no stale read, no lost write and no value that was never written; every key
//! lives only on its owner; and each addition moved the ring's share of partitions.
//!
//! The workload (crates/testkit `workload`): every key has one writer writing increasing
//! integers; readers read random keys (seeded: the seed is printed and `RAVEL_TEST_SEED` replays
//! it). Times are printed as figures, never asserted on. A failing run keeps its processes' logs
//! under `target/e2e-logs/` (the path is printed at the start).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ravel_core::table::ring_owners;
use ravel_proto::v1::GetRequest;
use ravel_proto::v1::node_error::Kind;
use ravel_testkit::TestCluster;
use ravel_testkit::history::{Observed, Op, OpKind, Outcome};
use ravel_testkit::workload::{Workload, WorkloadConfig, read_finals};
use serde_json::Value;
use tokio::task::JoinSet;

/// The partition count the admin uses by default (and these tests rely on).
const PARTITIONS: u32 = 1024;

/// Replicas per cluster in these tests.
const REPLICAS: usize = 3;

/// Allowed distance, as a fraction of the partition count, between the share of partitions an
/// addition moved and the ideal 1/(N+1) (±5 points).
const MOVED_FRACTION_TOLERANCE: f64 = 0.05;

/// Deadline of the load phase (every key written once).
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Deadline for the moves of one addition or removal to finish (generous: 2 cores, 10 processes).
const MOVES_TIMEOUT: Duration = Duration::from_secs(300);

/// Deadline of `ravel_node kill` of a cluster's last replica, which drains its partitions first.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Deadline of `ravel_node kill` of a replica that is not the last of its cluster.
const SHRINK_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline for a state of the moves (e.g. one in progress) to show up in `/v1/cluster`.
const MIGRATION_VISIBLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline for the source clusters to delete the copies they moved away (PURGE).
const PURGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Moves at once in the leader-kill test (fewer than the default, so that the moves last long
/// enough for two kills and the recoveries between them).
const LEADER_KILL_MOVES: usize = 2;

/// Retry backoff of aborted moves in the no-quorum test (`--move-retry-backoff-ms`): long enough
/// to check the source alone serves everything after the abort, short enough for the test.
const NO_QUORUM_RETRY_BACKOFF: Duration = Duration::from_secs(20);

/// How long, after the abort, the workload may take to write every key once (within the retry
/// backoff, while no move can start).
const AFTER_ABORT_WINDOW: Duration = Duration::from_secs(12);

/// Poll interval of this file's own waits.
const POLL: Duration = Duration::from_millis(250);

/// Runs this file's tests one at a time: each starts up to ten processes, and two at once on a
/// two-core machine would mostly measure CPU contention. (A tokio mutex works across the tests'
/// separate runtimes and is not poisoned by a failing test.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One cluster of three loaded with 5,000 keys under a running read/write workload; a second
/// and a third cluster are added, then the first is removed with `ravel_node kill` (its last
/// replica drains it). Afterwards: the history checker finds no violation; every key reads back
/// its last acknowledged value; every key is stored by exactly one cluster, its owner, and no
/// copy is left anywhere else; each addition moved 1/(N+1) ± 5 points of the partitions, all to
/// the new cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_under_load_adds_two_clusters_and_drains_the_first() {
    run_e2e("migration_under_load", &[], 5_000, "ml-", under_load).await;
}

async fn under_load(tc: &mut TestCluster, config: &WorkloadConfig) -> Result<()> {
    let workload = start_loaded(tc, REPLICAS, config).await?;
    for c in 2..=3 {
        let before = partition_counts(&tc.cluster_view().await?)?;
        let t = Instant::now();
        add_cluster(tc, c).await?;
        let new_id = new_cluster_id(tc, &before).await?;
        wait_addition_done(tc, &before, new_id, t).await?;
        eprintln!("answers so far: {:?}", workload.answers().await);
    }

    // Remove the first cluster: its replicas one by one, the last one draining it.
    let first_id = tc.status("c1n1").await?.cluster_id;
    let remaining: BTreeSet<u64> = partition_counts(&tc.cluster_view().await?)?
        .into_keys()
        .filter(|id| *id != first_id)
        .collect();
    let t = Instant::now();
    for name in ["c1n3", "c1n2"] {
        let (ok, out) = tc.run_node_kill_within(name, &[], SHRINK_TIMEOUT).await?;
        ensure!(
            ok,
            "ravel_node kill {name} (not the last replica) failed: {out}"
        );
        tc.forget_node(name);
    }
    let (ok, out) = tc.run_node_kill_within("c1n1", &[], DRAIN_TIMEOUT).await?;
    ensure!(
        ok,
        "ravel_node kill c1n1 (the last replica, drains) failed: {out}"
    );
    tc.forget_node("c1n1");
    let view = wait_moves_done(tc, &remaining, MOVES_TIMEOUT).await?;
    eprintln!(
        "cluster c1 (id {first_id}) drained and removed in {:?}; partitions {:?}",
        t.elapsed(),
        partition_counts(&view)?
    );

    verify(tc, workload, &[2, 3]).await
}

/// One cluster of three with 2,000 keys under load; a second cluster is added and the admin is
/// killed with `kill -9` twice while moves are in progress, each time restarted with the same
/// command line: once as soon as `/v1/cluster` lists a planned move, once when some partitions
/// have already switched to the new cluster and more are moving. The moves complete, and the same
/// properties as under load hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_survives_admin_kill9_mid_move() {
    run_e2e(
        "migration_admin_kill9",
        &[],
        2_000,
        "mk-",
        admin_kill9_mid_move,
    )
    .await;
}

async fn admin_kill9_mid_move(tc: &mut TestCluster, config: &WorkloadConfig) -> Result<()> {
    let workload = start_loaded(tc, REPLICAS, config).await?;
    let before = partition_counts(&tc.cluster_view().await?)?;
    let t = Instant::now();
    // The new cluster's first replica alone: moves start as soon as it leads its cluster, and
    // the other two replicas join after the admin restarts (the target grows mid-move).
    tc.start_node("c2n1", true)?;
    common::wait_replica_count(tc, REPLICAS + 1).await?;
    let new_id = new_cluster_id(tc, &before).await?;

    let view = wait_view(tc, "a move planned or in progress", |v| {
        v["migrations"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await?;
    tc.kill9_admin();
    eprintln!(
        "admin kill -9 #1, {:?} after the new cluster started; moves in progress: {}",
        t.elapsed(),
        view["migrations"]
    );
    tc.start_admin().await?;

    let view = wait_view(
        tc,
        "some partitions switched to the new cluster and more moving",
        |v| {
            partition_counts(v).is_ok_and(|c| c.get(&new_id).is_some_and(|n| *n > 0))
                && v["migrations"].as_array().is_some_and(|m| !m.is_empty())
        },
    )
    .await?;
    tc.kill9_admin();
    eprintln!(
        "admin kill -9 #2, {:?} after the new cluster started; partitions {:?}; moves in \
         progress: {}",
        t.elapsed(),
        partition_counts(&view)?,
        view["migrations"]
    );
    tc.start_admin().await?;

    for n in 2..=REPLICAS {
        tc.start_node(&format!("c2n{n}"), false)?;
        common::wait_replica_count(tc, REPLICAS + n).await?;
    }
    common::wait_voters(tc, 2 * REPLICAS).await?;
    wait_addition_done(tc, &before, new_id, t).await?;
    verify(tc, workload, &[1, 2]).await
}

/// One cluster of three with 2,000 keys under load; a second cluster of three is added and,
/// while its partitions are moving, the source cluster's leader is killed with `kill -9`, then
/// (moves still in progress, and more partitions switched since: the source elected a new
/// leader) the target cluster's leader; each is restarted after the moves went on without it.
/// The moves complete, and the same properties as under load hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_survives_source_and_target_leader_kill9() {
    run_e2e(
        "migration_leader_kill9",
        &["--max-concurrent-moves", &LEADER_KILL_MOVES.to_string()],
        2_000,
        "lk-",
        leader_kill9_mid_move,
    )
    .await;
}

async fn leader_kill9_mid_move(tc: &mut TestCluster, config: &WorkloadConfig) -> Result<()> {
    let workload = start_loaded(tc, REPLICAS, config).await?;
    let before = partition_counts(&tc.cluster_view().await?)?;
    let t = Instant::now();
    add_cluster(tc, 2).await?;
    let new_id = new_cluster_id(tc, &before).await?;
    for (c, role) in [(1, "source"), (2, "target")] {
        kill9_leader_mid_move(tc, c, role, new_id).await?;
    }
    common::wait_voters(tc, 2 * REPLICAS).await?;
    wait_addition_done(tc, &before, new_id, t).await?;
    verify(tc, workload, &[1, 2]).await
}

/// A source cluster of three with 1,000 keys under load; a target cluster of three is added
/// while the source's replicas are paused (SIGSTOP: no move can get past FREEZE; the source has
/// three replicas because placement gives a new replica to the smallest cluster, lowest id on a
/// tie, so a smaller source would take the target's second replica), and once the target's
/// replicas are voters two of them (its leader among them) are killed with `kill -9`. The source
/// resumes: the moves export their partitions and stall at the pre-copy (the target cannot
/// prepare) while the source goes on serving them — every key stays readable and not one write
/// fails; after `TARGET_DOWN_ABORT_MS` the moves abort, the source serves every partition as
/// before and, during the retry backoff, every key is read and written without a single failure. The two
/// replicas restart: the moves are retried after the backoff and complete, and the same
/// properties as under load hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_to_a_target_without_quorum_aborts_and_keeps_serving() {
    run_e2e(
        "migration_target_no_quorum",
        &[
            "--move-retry-backoff-ms",
            &NO_QUORUM_RETRY_BACKOFF.as_millis().to_string(),
        ],
        1_000,
        "nq-",
        target_without_quorum,
    )
    .await;
}

async fn target_without_quorum(tc: &mut TestCluster, config: &WorkloadConfig) -> Result<()> {
    let workload = start_loaded(tc, REPLICAS, config).await?;
    let history = workload.history();
    let keys = workload.keys().to_vec();
    let before = partition_counts(&tc.cluster_view().await?)?;
    let source_id = tc.status("c1n1").await?.cluster_id;

    // Hold the source so that no move gets past FREEZE before the target lost its quorum (the
    // moves start as soon as the target's first replica leads it).
    let source = common::members(tc, 1);
    for name in &source {
        tc.pause_node(name, true);
    }
    let paused = Instant::now();
    add_cluster(tc, 2).await?;
    let new_id = new_cluster_id(tc, &before).await?;
    let view = tc.cluster_view().await?;
    ensure!(
        owned_by(&view, new_id) == 0,
        "a partition moved while its source was paused: {view}"
    );
    let target = common::members(tc, 2);
    let refs: Vec<&str> = target.iter().map(String::as_str).collect();
    let leader = tc.wait_leader(&refs).await?;
    let follower = target
        .iter()
        .find(|n| **n != leader)
        .context("the target has a follower")?
        .clone();
    let down = [leader, follower];
    for name in &down {
        tc.kill9_node(name);
    }
    for name in &source {
        tc.pause_node(name, false);
    }
    let resumed = Instant::now();
    let resumed_at = history.now();
    eprintln!(
        "source paused {:?} while the target joined; target replicas {down:?} killed (-9); \
         moves planned: {}",
        paused.elapsed(),
        view["migrations"]
    );

    // The moves export their partitions at the source and stall at the pre-copy: the source
    // still serves them, so every key is readable and writable.
    let mut stalled: BTreeSet<u64> = BTreeSet::new();
    let copying = wait_view(tc, "a move stalled at the pre-copy", |v| {
        stalled.extend(moving_partitions(v));
        moving_steps(v).contains("precopying")
    })
    .await?;
    let stalled_since = Instant::now();
    let stalled_at = history.now();
    let finals = read_finals(&tc.url(""), &keys, 16, 25).await?;
    ensure!(
        finals.len() == keys.len(),
        "while moves stalled at the pre-copy only {} of {} keys could be read",
        finals.len(),
        keys.len()
    );
    eprintln!(
        "moves stalled at the pre-copy {:?} after the source resumed: {}; all {} keys read in {:?}",
        resumed.elapsed(),
        copying["migrations"],
        keys.len(),
        stalled_since.elapsed()
    );

    // The moves abort (no ACTIVATE was ever sent): the table did not change.
    let view = wait_view(tc, "every move aborted", |v| {
        stalled.extend(moving_partitions(v));
        v["migrations"].as_array().is_some_and(Vec::is_empty)
    })
    .await?;
    let aborted = Instant::now();
    let window_start = history.now();
    // The source served the moving partitions all along: no write invoked while the moves
    // stalled failed.
    let ops = history.ops();
    let stalled_writes: Vec<&Op> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Write)
        .filter(|o| o.invoke_at >= stalled_at && o.invoke_at < window_start)
        .collect();
    let failed_while_stalled: Vec<&&Op> = stalled_writes
        .iter()
        .filter(|o| o.outcome != Outcome::Ok)
        .take(10)
        .collect();
    ensure!(
        failed_while_stalled.is_empty(),
        "writes failed while the moves stalled at the pre-copy: {failed_while_stalled:?}"
    );
    eprintln!(
        "{} writes while the moves stalled at the pre-copy, all acknowledged",
        stalled_writes.len()
    );
    eprintln!(
        "moves aborted {:?} after the first one stalled at the pre-copy ({:?} after the source \
         resumed; TARGET_DOWN_ABORT_MS is {} ms); partitions moved and restored: {stalled:?}",
        aborted - stalled_since,
        aborted - resumed,
        ravel_admin::mover::TARGET_DOWN_ABORT_MS
    );
    let counts = partition_counts(&view)?;
    ensure!(
        owned_by(&view, new_id) == 0 && owned_by(&view, source_id) == u64::from(PARTITIONS),
        "after the abort the source must own every partition: {counts:?}"
    );
    let (failed, elsewhere) = failed_writes_since(&history.ops(), resumed_at, &stalled);
    eprintln!(
        "writes not acknowledged since the source resumed: {failed}, of which {elsewhere} on \
         partitions that were not moving (the router finding the source's leader again)"
    );

    // During the backoff every key is read and written at the source without a failure.
    every_key_served_without_failure(tc, &workload, window_start, new_id).await?;
    eprintln!(
        "every key written and read at the source without a failure in the {:?} after the abort",
        aborted.elapsed()
    );

    for name in &down {
        tc.start_node(name, false)?;
    }
    wait_members_voters(tc, 2).await?;
    let view = wait_view(tc, "the moves retried", |v| {
        !moving_partitions(v).is_empty()
    })
    .await?;
    eprintln!(
        "target replicas restarted; moves retried {:?} after the abort (backoff {:?}): {}",
        aborted.elapsed(),
        NO_QUORUM_RETRY_BACKOFF,
        view["migrations"]
    );
    wait_addition_done(tc, &before, new_id, aborted).await?;
    verify(tc, workload, &[1, 2]).await
}

// ---------------------------------------------------------------------------- set-up helpers

/// Runs one test body on a fresh test cluster (admin started with `admin_args`), one test at a
/// time, with a workload of `keys` keys. A failure panics while the cluster is alive, which
/// keeps the processes' logs, and names the workload's seed.
async fn run_e2e(
    name: &str,
    admin_args: &[&str],
    keys: usize,
    key_prefix: &str,
    body: impl AsyncFnOnce(&mut TestCluster, &WorkloadConfig) -> Result<()>,
) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tc = common::new_cluster(name)
        .expect("test cluster")
        .with_admin_args(admin_args);
    let config = common::workload_config(keys, key_prefix, 8, 4);
    if let Err(e) = body(&mut tc, &config).await {
        panic!("{name} failed (seed {}): {e:#}", config.seed);
    }
    tc.finish();
}

/// Starts the admin and cluster `c1` of `replicas` replicas, then the workload, and waits until
/// every key was written once.
async fn start_loaded(
    tc: &mut TestCluster,
    replicas: usize,
    config: &WorkloadConfig,
) -> Result<Workload> {
    let started = Instant::now();
    common::start_clusters(tc, 1, replicas).await?;
    ensure_partition_count(tc).await?;
    let workload = Workload::start(&tc.url(""), config)?;
    workload.wait_loaded(LOAD_TIMEOUT).await?;
    eprintln!("loaded {} keys in {:?}", config.keys, started.elapsed());
    Ok(workload)
}

/// The admin was started with the default partition count, which `partition_of` below assumes.
async fn ensure_partition_count(tc: &TestCluster) -> Result<()> {
    let view = tc.cluster_view().await?;
    ensure!(
        view["partitions"] == PARTITIONS,
        "the admin uses {PARTITIONS} partitions: {view}"
    );
    Ok(())
}

/// Starts cluster `c{c}`: its first replica with `-l`, then the others, each after the previous
/// one registered (placement puts a replica in the cluster with the fewest replicas).
async fn add_cluster(tc: &mut TestCluster, c: usize) -> Result<()> {
    let existing = tc.node_names().len();
    for n in 1..=REPLICAS {
        tc.start_node(&format!("c{c}n{n}"), n == 1)?;
        common::wait_replica_count(tc, existing + n).await?;
    }
    wait_members_voters(tc, c).await
}

/// Waits until every replica of cluster `c{c}` is a voter of its cluster (from its own status;
/// the other clusters' replicas are not asked, so one may be paused).
async fn wait_members_voters(tc: &TestCluster, c: usize) -> Result<()> {
    let names = common::members(tc, c);
    ravel_testkit::wait_until(
        &format!("every replica of c{c} a voter"),
        ravel_testkit::READY_TIMEOUT,
        || async {
            for name in &names {
                match tc.status(name).await {
                    Ok(st) if st.voters.contains(&st.node_id) => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await
}

/// `kill -9` of the leader of cluster `c{c}` (the moves' `role`) while moves to cluster `new_id`
/// are in progress; waits until more partitions switched to `new_id` than the moves in progress
/// at the kill could switch without that cluster (so it elected a new leader and the moves went
/// on), with moves still in progress, then restarts the killed replica.
async fn kill9_leader_mid_move(
    tc: &mut TestCluster,
    c: usize,
    role: &str,
    new_id: u64,
) -> Result<()> {
    let view = wait_view(tc, "moves in progress", |v| {
        !moving_partitions(v).is_empty()
    })
    .await?;
    let switched = owned_by(&view, new_id);
    let names = common::members(tc, c);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let leader = tc.wait_leader(&refs).await?;
    tc.kill9_node(&leader);
    let killed = Instant::now();
    eprintln!(
        "kill -9 of the {role} cluster's leader {leader} with {switched} partitions switched; \
         moves in progress: {}",
        view["migrations"]
    );
    let view = wait_view(
        tc,
        &format!("moves going on without the {role}'s old leader"),
        |v| {
            owned_by(v, new_id) > switched + LEADER_KILL_MOVES as u64
                && !moving_partitions(v).is_empty()
        },
    )
    .await?;
    eprintln!(
        "moves went on {:?} after the kill of {leader} ({} partitions switched); restarting it",
        killed.elapsed(),
        owned_by(&view, new_id)
    );
    tc.start_node(&leader, false)
}

/// The id of the one cluster `/v1/cluster` lists that is not in `before`.
async fn new_cluster_id(tc: &TestCluster, before: &BTreeMap<u64, u64>) -> Result<u64> {
    let now = partition_counts(&tc.cluster_view().await?)?;
    let new: Vec<u64> = now
        .keys()
        .copied()
        .filter(|id| !before.contains_key(id))
        .collect();
    match new.as_slice() {
        [id] => Ok(*id),
        _ => bail!("expected one new cluster, found {new:?} (before {before:?}, now {now:?})"),
    }
}

// ---------------------------------------------------------------------- /v1/cluster readers

/// Partitions owned by cluster `id` in a `/v1/cluster` view (0 if it is not listed).
fn owned_by(view: &Value, id: u64) -> u64 {
    partition_counts(view)
        .ok()
        .and_then(|c| c.get(&id).copied())
        .unwrap_or(0)
}

/// The partitions of the moves in progress in a `/v1/cluster` view.
fn moving_partitions(view: &Value) -> BTreeSet<u64> {
    view["migrations"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["partition"].as_u64()).collect())
        .unwrap_or_default()
}

/// The steps of the moves in progress in a `/v1/cluster` view.
fn moving_steps(view: &Value) -> BTreeSet<String> {
    view["migrations"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["step"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Partitions owned per cluster id, from a `/v1/cluster` view.
fn partition_counts(view: &Value) -> Result<BTreeMap<u64, u64>> {
    let clusters = view["clusters"]
        .as_array()
        .with_context(|| format!("no clusters in {view}"))?;
    clusters
        .iter()
        .map(|c| {
            let id = c["id"]
                .as_u64()
                .with_context(|| format!("cluster id in {c}"))?;
            let partitions = c["partitions"]
                .as_u64()
                .with_context(|| format!("partition count in {c}"))?;
            Ok((id, partitions))
        })
        .collect()
}

/// Partitions per cluster that the ring gives `clusters`.
fn ring_counts(clusters: &BTreeSet<u64>) -> BTreeMap<u64, u64> {
    let ids: Vec<u64> = clusters.iter().copied().collect();
    let mut counts: BTreeMap<u64, u64> = ids.iter().map(|id| (*id, 0)).collect();
    for owner in ring_owners(&ids, PARTITIONS).into_iter().flatten() {
        *counts.entry(owner).or_default() += 1;
    }
    counts
}

/// Waits until the moves of the addition of cluster `new_id` to the clusters of `before` are
/// done (reporting the time since `since`), and checks the share of partitions that moved.
async fn wait_addition_done(
    tc: &TestCluster,
    before: &BTreeMap<u64, u64>,
    new_id: u64,
    since: Instant,
) -> Result<()> {
    let mut ids: BTreeSet<u64> = before.keys().copied().collect();
    ids.insert(new_id);
    let view = wait_moves_done(tc, &ids, MOVES_TIMEOUT).await?;
    let after = partition_counts(&view)?;
    eprintln!(
        "cluster {new_id} added: moves done {:?} after it started; partitions {before:?} -> \
         {after:?}; max_write_pause_ms so far {}",
        since.elapsed(),
        view["max_write_pause_ms"]
    );
    check_moved_fraction(before, &after, new_id)?;
    Ok(())
}

/// Waits until no move is in progress and the owners are the ring's over exactly `clusters`
/// (clusters not in the set own nothing); returns that view. Moves being planned in batches,
/// an empty `migrations` list alone could be a gap between batches: the counts settle it.
async fn wait_moves_done(
    tc: &TestCluster,
    clusters: &BTreeSet<u64>,
    timeout: Duration,
) -> Result<Value> {
    let expected = ring_counts(clusters);
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    loop {
        if let Ok(view) = tc.cluster_view().await {
            let idle = view["migrations"].as_array().is_some_and(Vec::is_empty);
            let owning: BTreeMap<u64, u64> = partition_counts(&view)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect();
            if idle && owning == expected {
                return Ok(view);
            }
            last = view;
        }
        if Instant::now() > deadline {
            bail!(
                "moves not done within {timeout:?}: expected partitions {expected:?} and no \
                 migration in progress; last /v1/cluster: {last}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `/v1/cluster` quickly until `ready(view)`; returns that view.
async fn wait_view(
    tc: &TestCluster,
    what: &str,
    mut ready: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + MIGRATION_VISIBLE_TIMEOUT;
    let mut last = Value::Null;
    loop {
        if let Ok(view) = tc.cluster_view().await {
            if ready(&view) {
                return Ok(view);
            }
            last = view;
        }
        if Instant::now() > deadline {
            bail!(
                "not seen within {MIGRATION_VISIBLE_TIMEOUT:?}: {what}; last /v1/cluster: {last}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The share of partitions that changed owner when `new` joined the clusters of `before`:
/// only the new cluster may gain, and the share is 1/(N+1) ± 5 points. Returns the share.
fn check_moved_fraction(
    before: &BTreeMap<u64, u64>,
    after: &BTreeMap<u64, u64>,
    new: u64,
) -> Result<f64> {
    let mut moved = 0;
    for (id, was) in before {
        let now = after.get(id).copied().unwrap_or(0);
        ensure!(
            now <= *was,
            "cluster {id} gained partitions ({was} -> {now}) when cluster {new} was added"
        );
        moved += was - now;
    }
    let gained = after.get(&new).copied().unwrap_or(0);
    ensure!(
        gained == moved,
        "the partitions that moved ({moved}) all went to the new cluster {new} (it has {gained})"
    );
    let share = moved as f64 / f64::from(PARTITIONS);
    let ideal = 1.0 / (before.len() as f64 + 1.0);
    eprintln!(
        "adding cluster {new} to {} moved {moved} of {PARTITIONS} partitions: {:.1}% (ideal \
         {:.1}%)",
        before.len(),
        share * 100.0,
        ideal * 100.0
    );
    ensure!(
        (share - ideal).abs() <= MOVED_FRACTION_TOLERANCE,
        "moved share {share:.3} is not within ±{MOVED_FRACTION_TOLERANCE} of {ideal:.3}"
    );
    Ok(share)
}

// ------------------------------------------------------------------------------ verification

/// Writes invoked at or after `since` (history clock) that were not acknowledged, and how many
/// of those were on a key whose partition is not in `moving`.
fn failed_writes_since(ops: &[Op], since: Duration, moving: &BTreeSet<u64>) -> (usize, usize) {
    let failed: Vec<&Op> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Write && o.invoke_at >= since && o.outcome != Outcome::Ok)
        .collect();
    let elsewhere = failed
        .iter()
        .filter(|o| {
            !moving.contains(&u64::from(ravel_core::partition_of(
                o.key.as_bytes(),
                PARTITIONS,
            )))
        })
        .count();
    (failed.len(), elsewhere)
}

/// After an abort, while no move may start (the retry backoff): waits until every key had a
/// write acknowledged that was invoked at or after `since` (history clock), checks that no read
/// or write invoked since then failed, that every key reads back, and that still no move is in
/// progress and cluster `target` owns nothing.
async fn every_key_served_without_failure(
    tc: &TestCluster,
    workload: &Workload,
    since: Duration,
    target: u64,
) -> Result<()> {
    let history = workload.history();
    let deadline = Instant::now() + AFTER_ABORT_WINDOW;
    loop {
        let ops = history.ops();
        let recent: Vec<&Op> = ops.iter().filter(|o| o.invoke_at >= since).collect();
        let not_ok: Vec<&&Op> = recent
            .iter()
            .filter(|o| o.outcome != Outcome::Ok)
            .take(10)
            .collect();
        ensure!(
            not_ok.is_empty(),
            "requests failed at the source after the abort: {not_ok:?}"
        );
        let written: BTreeSet<&str> = recent
            .iter()
            .filter(|o| o.kind == OpKind::Write)
            .map(|o| o.key.as_str())
            .collect();
        if written.len() == workload.keys().len() {
            eprintln!(
                "after the abort: {} reads and {} writes, all acknowledged",
                recent.iter().filter(|o| o.kind == OpKind::Read).count(),
                recent.iter().filter(|o| o.kind == OpKind::Write).count()
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "within {AFTER_ABORT_WINDOW:?} after the abort only {} of {} keys were written",
                written.len(),
                workload.keys().len()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let finals = read_finals(&tc.url(""), workload.keys(), 16, 1).await?;
    ensure!(
        finals.len() == workload.keys().len(),
        "after the abort only {} of {} keys read back at the first attempt",
        finals.len(),
        workload.keys().len()
    );
    let view = tc.cluster_view().await?;
    ensure!(
        moving_partitions(&view).is_empty() && owned_by(&view, target) == 0,
        "a move started again within the retry backoff: {view}"
    );
    Ok(())
}

/// Stops the load and checks everything that must hold after the moves, with the clusters
/// `c{n}` for n in `cluster_numbers` remaining.
async fn verify(tc: &TestCluster, workload: Workload, cluster_numbers: &[usize]) -> Result<()> {
    let history = workload.history();
    let keys = workload.keys().to_vec();
    let answers = workload.stop().await?;
    eprintln!("workload answers: {answers:?}");
    let view = tc.cluster_view().await?;
    eprintln!(
        "largest write pause of any partition (max_write_pause_ms): {}",
        view["max_write_pause_ms"]
    );

    // The history, with each key's final value read back through the admin.
    let finals = read_finals(&tc.url(""), &keys, 16, 25).await?;
    let report = history.check(&finals);
    common::ensure_history_proves(&report, finals.len(), keys.len())?;

    // Every key is stored by exactly one remaining cluster, the ring's owner, with its value.
    let leaders = leaders_by_cluster(tc, cluster_numbers).await?;
    let ids: BTreeSet<u64> = leaders.keys().copied().collect();
    let owners = ring_owners(&ids.iter().copied().collect::<Vec<_>>(), PARTITIONS);
    check_single_owner(tc, &leaders, &owners, &finals).await?;

    // And no copy is left behind: the clusters hold exactly the keys, once each (sources PURGE
    // their copy after the table switched, so this may lag the moves briefly).
    let deadline = Instant::now() + PURGE_TIMEOUT;
    loop {
        let mut held = BTreeMap::new();
        for (id, leader) in &leaders {
            held.insert(*id, tc.status(leader).await?.key_count);
        }
        if held.values().sum::<u64>() == keys.len() as u64 {
            eprintln!(
                "keys held per cluster (leaders' status): {held:?}; /v1/cluster: {}",
                tc.cluster_view().await?["clusters"]
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the clusters hold {held:?} keys in all, expected {} (a moved partition's copy \
                 was not purged, or keys were duplicated); /v1/cluster: {}",
                keys.len(),
                tc.cluster_view().await?
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// The leader's name of each cluster `c{n}`, by cluster id.
async fn leaders_by_cluster(
    tc: &TestCluster,
    cluster_numbers: &[usize],
) -> Result<BTreeMap<u64, String>> {
    let mut leaders = BTreeMap::new();
    for c in cluster_numbers {
        let names = common::members(tc, *c);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let leader = tc.wait_leader(&refs).await?;
        let id = tc.status(&leader).await?.cluster_id;
        leaders.insert(id, leader);
    }
    Ok(leaders)
}

/// Asks each cluster's leader for every key with a stale gRPC `Get` (no admin involved): exactly
/// one cluster, the key's owner on the ring, serves it, with the value the admin read back; the
/// others answer WRONG_OWNER.
async fn check_single_owner(
    tc: &TestCluster,
    leaders: &BTreeMap<u64, String>,
    owners: &[Option<u64>],
    finals: &BTreeMap<String, Observed>,
) -> Result<()> {
    const CHECKERS: usize = 8;
    let mut clients = Vec::new();
    for (id, leader) in leaders {
        clients.push((*id, tc.data_client(leader).await?));
    }
    let entries: Vec<(String, Observed)> =
        finals.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut tasks = JoinSet::new();
    for chunk in entries.chunks(entries.len().div_ceil(CHECKERS).max(1)) {
        let chunk = chunk.to_vec();
        let mut clients = clients.clone();
        let owners = owners.to_vec();
        tasks.spawn(async move {
            let mut problems = Vec::new();
            for (key, expected) in chunk {
                let partition = ravel_core::partition_of(key.as_bytes(), PARTITIONS);
                let mut holders = Vec::new();
                for (cluster_id, client) in &mut clients {
                    let reply = client
                        .get(GetRequest {
                            cluster_id: *cluster_id,
                            partition,
                            key: key.clone().into_bytes(),
                            stale: true,
                            forward: false,
                        })
                        .await
                        .map(|r| r.into_inner());
                    match reply {
                        Ok(r) => match r.error {
                            None => {
                                let stored = serde_json::from_slice::<Value>(&r.value).ok();
                                holders.push((*cluster_id, r.found, stored));
                            }
                            Some(e) if e.kind() == Kind::WrongOwner => {}
                            Some(e) => {
                                problems.push(format!("{key}: cluster {cluster_id} answered {e:?}"))
                            }
                        },
                        Err(s) => problems.push(format!("{key}: cluster {cluster_id}: {s}")),
                    }
                }
                let owner = owners[partition as usize];
                match holders.as_slice() {
                    [(id, true, Some(stored))] if Some(*id) == owner => {
                        let matches = match &expected {
                            Observed::Value(n) => stored["w"].as_u64() == Some(*n),
                            _ => false,
                        };
                        if !matches {
                            problems.push(format!(
                                "{key}: its owner {id} stores {stored}, the admin read {expected:?}"
                            ));
                        }
                    }
                    _ => problems.push(format!(
                        "{key} (partition {partition}, ring owner {owner:?}) is served by \
                         {holders:?}, expected exactly its owner with the value"
                    )),
                }
            }
            problems
        });
    }
    let mut problems = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        problems.extend(joined.context("an ownership check task failed")?);
    }
    ensure!(
        problems.is_empty(),
        "{} ownership problems, first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
