//! Pooled gRPC channels to replicas, and the admin's cache of who leads each cluster.
//!
//! One lazily connected `tonic` channel per replica gRPC address, shared by every request to that
//! replica (HTTP/2 multiplexes them). Channels connect on first use and reconnect by themselves,
//! so creating a client never fails and never waits; connection errors surface per call.
//!
//! The leader cache is a hint, never a truth: callers must handle "not leader" answers and update
//! it. Next to it the pool keeps the last [`MAX_LEADER_CHANGES`] leader changes it observed, for
//! `/v1/cluster`. Only reports that carry a term (a replica's own leadership report, or its status
//! read by leader discovery) count as observations: Raft has at most one leader per term and a
//! report of an older term is ignored, so the history never shows a change back to a leader that
//! was already superseded. Hints and successful calls only steer the cache: they carry no term and
//! may be stale (a reply from an old leader can arrive after its successor's report).
//!
//! This module must not make calls itself and never holds a lock across an `.await`.

use ravel_core::{ClusterId, NodeId, limits};
use ravel_proto::v1::control_client::ControlClient;
use ravel_proto::v1::data_client::DataClient;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::{Channel, Endpoint};

/// Interval of HTTP/2 PING frames on a channel that received nothing for that long, so a dead
/// peer or a cut link is noticed within about two seconds, with or without traffic (calls in
/// flight on the dropped connection then fail, and the replica is marked unreachable). A busy
/// peer still answers at once: PINGs are answered by its HTTP/2 layer, not by a handler.
const KEEPALIVE_INTERVAL_MS: u64 = 1_000;

/// How long a PING may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT_MS: u64 = 1_000;

/// TCP keepalive on channels, a second line of defence behind HTTP/2 PINGs.
const TCP_KEEPALIVE_MS: u64 = 30_000;

/// The endpoint used for an address that does not parse. Registration validates addresses
/// (see [`validate_addr`]) so this is only reached through a bug; calls through it fail per call
/// (port 1 on the discard-by-convention TEST-NET address) instead of panicking the admin.
const UNUSABLE_ENDPOINT: &str = "http://192.0.2.1:1";

/// Checks that `addr` is a `host:port` a channel can be built for.
pub fn validate_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("address is empty".into());
    }
    if addr.contains("://") {
        return Err(format!(
            "address {addr:?} must be host:port, without a scheme"
        ));
    }
    let uri: tonic::codegen::http::Uri = format!("http://{addr}")
        .parse()
        .map_err(|e| format!("address {addr:?} is not host:port: {e}"))?;
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    let port_ok = uri.port_u16().is_some_and(|p| p != 0);
    let path_ok = uri.path().is_empty() || uri.path() == "/";
    if !(host_ok && port_ok && path_ok) || uri.query().is_some() {
        return Err(format!(
            "address {addr:?} is not host:port with a non-zero port"
        ));
    }
    Ok(())
}

fn endpoint(addr: &str) -> Endpoint {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap_or_else(|e| {
        tracing::error!(addr, error = %e, "unusable replica address; calls to it will fail");
        Endpoint::from_static(UNUSABLE_ENDPOINT)
    });
    endpoint
        .connect_timeout(Duration::from_millis(limits::CONNECT_TIMEOUT_MS))
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(Duration::from_millis(TCP_KEEPALIVE_MS)))
        .tcp_nodelay(true)
}

/// Most leader changes kept (`leader_changes` in `/v1/cluster`); the oldest is dropped first.
pub const MAX_LEADER_CHANGES: usize = 50;

/// The last leader known for one cluster, with the highest term reported for it.
#[derive(Clone, Copy, Debug, Default)]
struct LeaderEntry {
    leader: Option<NodeId>,
    /// Highest term a replica reported leading in; reports of older terms are stale.
    term: u64,
    /// The leader of that term. Unlike `leader` it survives a forget, so that the same leader
    /// found again is not a change.
    reported: Option<NodeId>,
}

/// One change of a cluster's leader, as this admin observed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaderChange {
    pub cluster: ClusterId,
    /// The leader reported before; `None` when this admin had seen no leader of that cluster
    /// since it started.
    pub old_leader: Option<NodeId>,
    pub new_leader: NodeId,
    /// The term the new leader reported leading in.
    pub term: u64,
    /// When the admin learned of it (wall clock, milliseconds since the Unix epoch).
    pub at_unix_ms: u64,
}

/// The leader cache per cluster and the bounded history of changes, under one lock so that a
/// change is detected and recorded atomically.
#[derive(Default)]
struct Leaders {
    entries: HashMap<ClusterId, LeaderEntry>,
    changes: VecDeque<LeaderChange>,
}

/// gRPC channels per replica address and the leader cache per cluster.
#[derive(Default)]
pub struct NodePool {
    channels: Mutex<HashMap<String, Channel>>,
    leaders: Mutex<Leaders>,
    /// Woken when a replica reports a leader the cache did not hold, so that requests waiting
    /// out a backoff while their cluster elects go at once.
    leader_news: tokio::sync::Notify,
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Locks `m`, recovering the data of a poisoned lock: every critical section here is a single
/// map operation, so a panic elsewhere cannot leave the map half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NodePool {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared channel to `grpc_addr`, created (unconnected) on first use. Must be called
    /// inside a tokio runtime.
    pub fn channel(&self, grpc_addr: &str) -> Channel {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(grpc_addr) {
            return channel.clone();
        }
        let channel = endpoint(grpc_addr).connect_lazy();
        channels.insert(grpc_addr.to_owned(), channel.clone());
        channel
    }

    pub fn data_client(&self, grpc_addr: &str) -> DataClient<Channel> {
        DataClient::new(self.channel(grpc_addr))
            .max_decoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
    }

    pub fn control_client(&self, grpc_addr: &str) -> ControlClient<Channel> {
        ControlClient::new(self.channel(grpc_addr))
            .max_decoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
    }

    /// Drops the channel to `grpc_addr` (a removed replica), so the pool does not grow with
    /// replicas that are gone. A later call to the same address builds a new one.
    pub fn drop_channel(&self, grpc_addr: &str) {
        lock(&self.channels).remove(grpc_addr);
    }

    /// The cached leader of `cluster`, if any.
    pub fn leader(&self, cluster: ClusterId) -> Option<NodeId> {
        lock(&self.leaders)
            .entries
            .get(&cluster)
            .and_then(|e| e.leader)
    }

    /// Records `node` as the leader of `cluster` (from a hint or a successful leader-only call).
    /// It steers the cache only; it is no observation of a leader change (it has no term).
    pub fn set_leader(&self, cluster: ClusterId, node: NodeId) {
        lock(&self.leaders)
            .entries
            .entry(cluster)
            .or_default()
            .leader = Some(node);
    }

    /// Forget `node` as leader of `cluster` if it is the cached one.
    pub fn forget_leader(&self, cluster: ClusterId, node: NodeId) {
        if let Some(entry) = lock(&self.leaders).entries.get_mut(&cluster)
            && entry.leader == Some(node)
        {
            entry.leader = None;
        }
    }

    /// A replica's own report that it leads `cluster` in `term`. Ignored (returns false) only
    /// when its term is older than the newest seen: Raft has at most one leader per term, so a
    /// report of the newest term is current. A report naming another node than the previous
    /// report is recorded as a leader change.
    pub fn report_leader(&self, cluster: ClusterId, node: NodeId, term: u64) -> bool {
        let mut guard = lock(&self.leaders);
        let Leaders { entries, changes } = &mut *guard;
        let entry = entries.entry(cluster).or_default();
        if term < entry.term {
            return false;
        }
        entry.term = term;
        let news = entry.leader != Some(node);
        entry.leader = Some(node);
        if news {
            self.leader_news.notify_waiters();
        }
        if entry.reported != Some(node) {
            if changes.len() == MAX_LEADER_CHANGES {
                changes.pop_front();
            }
            changes.push_back(LeaderChange {
                cluster,
                old_leader: entry.reported,
                new_leader: node,
                term,
                at_unix_ms: unix_now_ms(),
            });
            entry.reported = Some(node);
        }
        true
    }

    /// Completes when the next leader report brings a leader the cache did not hold (create it
    /// before looking at the cache, and no report in between is missed).
    pub fn leader_news(&self) -> tokio::sync::futures::Notified<'_> {
        self.leader_news.notified()
    }

    /// The leader changes observed since this admin started, oldest first, at most
    /// [`MAX_LEADER_CHANGES`].
    pub fn leader_changes(&self) -> Vec<LeaderChange> {
        lock(&self.leaders).changes.iter().cloned().collect()
    }

    /// Forgets the cache entry of a cluster that no longer exists (its past changes stay in the
    /// history).
    pub fn forget_cluster(&self, cluster: ClusterId) {
        lock(&self.leaders).entries.remove(&cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter hears of a report that brings a new leader, not of one repeating the cached one.
    #[tokio::test]
    async fn leader_news_wakes_waiters_on_a_new_leader() {
        let pool = NodePool::new();
        let wait = Duration::from_millis(200);
        let news = pool.leader_news();
        pool.report_leader(1, 10, 5);
        assert!(
            tokio::time::timeout(wait, news).await.is_ok(),
            "a new leader"
        );
        let news = pool.leader_news();
        pool.report_leader(1, 10, 5);
        assert!(
            tokio::time::timeout(wait, news).await.is_err(),
            "the same leader"
        );
        pool.forget_leader(1, 10);
        let news = pool.leader_news();
        pool.report_leader(1, 10, 5);
        assert!(
            tokio::time::timeout(wait, news).await.is_ok(),
            "found again"
        );
    }

    /// Leader reports of an older term than the newest seen are ignored; hints and forgets only
    /// touch the named cluster and node.
    #[test]
    fn leader_cache_follows_terms() {
        let pool = NodePool::new();
        assert_eq!(pool.leader(1), None);
        assert!(pool.report_leader(1, 10, 5));
        assert!(!pool.report_leader(1, 11, 4), "an older term is stale");
        assert_eq!(pool.leader(1), Some(10));
        assert!(pool.report_leader(1, 12, 6));
        assert_eq!(pool.leader(1), Some(12));
        pool.forget_leader(1, 10); // not the cached one: no effect
        assert_eq!(pool.leader(1), Some(12));
        pool.forget_leader(1, 12);
        assert_eq!(pool.leader(1), None);
        // The term survives a forget, so a stale report still cannot win afterwards.
        assert!(!pool.report_leader(1, 10, 5));
        pool.set_leader(2, 20);
        assert_eq!(pool.leader(2), Some(20));
        assert_eq!(pool.leader(1), None);
    }

    /// A report naming a new node is one change (old and new leader, term, time); the same
    /// leader reported again, found again after a forget, or named by a mere hint is none; a
    /// stale report adds nothing; and the history keeps only the newest changes.
    #[test]
    fn leader_changes_are_recorded_from_term_reports() {
        let pool = NodePool::new();
        let before = unix_now_ms();
        assert!(pool.report_leader(1, 10, 1));
        assert!(pool.report_leader(1, 10, 2), "re-elected: same leader");
        pool.forget_leader(1, 10);
        assert!(pool.report_leader(1, 10, 2), "found again after a forget");
        pool.set_leader(1, 11); // a hint: no observation
        assert!(pool.report_leader(2, 20, 1));
        assert!(pool.report_leader(1, 12, 3));
        assert!(!pool.report_leader(1, 10, 2), "stale");
        let changes = pool.leader_changes();
        let summary: Vec<_> = changes
            .iter()
            .map(|c| (c.cluster, c.old_leader, c.new_leader, c.term))
            .collect();
        assert_eq!(
            summary,
            [(1, None, 10, 1), (2, None, 20, 1), (1, Some(10), 12, 3)]
        );
        assert!(changes.iter().all(|c| c.at_unix_ms >= before));
        assert!(
            changes
                .windows(2)
                .all(|w| w[0].at_unix_ms <= w[1].at_unix_ms)
        );

        pool.forget_cluster(2);
        assert_eq!(
            pool.leader_changes().len(),
            3,
            "history outlives the cluster"
        );
        let extra = u64::try_from(MAX_LEADER_CHANGES).unwrap() + 5;
        for term in 4..4 + extra {
            assert!(pool.report_leader(1, 10 + term % 2, term));
        }
        let changes = pool.leader_changes();
        assert_eq!(changes.len(), MAX_LEADER_CHANGES);
        assert_eq!(changes.last().map(|c| c.term), Some(3 + extra));
        assert_eq!(
            changes.first().map(|c| c.term),
            Some(3 + extra - u64::try_from(MAX_LEADER_CHANGES).unwrap() + 1)
        );
    }

    /// Addresses must be plain host:port with a non-zero port.
    #[test]
    fn address_validation() {
        for ok in ["127.0.0.1:5000", "node-1.ravel:7000", "[::1]:9000"] {
            assert!(validate_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "http://a:1",
            "a:0",
            "a:1/x",
            "a b:1",
            "a:99999",
        ] {
            assert!(validate_addr(bad).is_err(), "{bad}");
        }
    }

    /// One channel per address is created lazily (no connection attempt) and then reused.
    #[tokio::test]
    async fn channels_are_cached_per_address() {
        let pool = NodePool::new();
        let _a = pool.data_client("127.0.0.1:1");
        let _b = pool.control_client("127.0.0.1:1");
        let _c = pool.control_client("127.0.0.1:2");
        assert_eq!(lock(&pool.channels).len(), 2);
        pool.drop_channel("127.0.0.1:1");
        assert_eq!(lock(&pool.channels).len(), 1);
    }
}
