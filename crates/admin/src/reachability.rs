//! Which replicas this admin cannot reach right now, and the probe that notices one come back.
//!
//! A replica is marked when a call to it failed in transport or ran out of time (the router
//! decides that, see [`crate::router`]). While marked, the router tries it last, and a request
//! for its cluster that goes to another replica asks to be forwarded to the leader (so a
//! cluster whose leader only this admin cannot reach keeps serving through a follower, over
//! the links the cluster itself uses). Each mark has one probe task: a cheap `Control.Status`
//! every [`PROBE_INTERVAL_MS`], each with a [`PROBE_DEADLINE_MS`] deadline, that clears the mark
//! as soon as the replica answers, or when the replica is no longer in the metadata. Marks are
//! a routing hint, never a truth about the replica; nothing is refused because of one.

use crate::SharedState;
use crate::placement::control_request;
use ravel_proto::v1::StatusRequest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Pause between two probes of a marked replica.
pub const PROBE_INTERVAL_MS: u64 = 250;

/// Deadline of one probe.
pub const PROBE_DEADLINE_MS: u64 = 500;

/// The replicas (by gRPC address) marked unreachable, with when each was marked.
#[derive(Debug, Default)]
pub struct Reachability {
    marked: Mutex<HashMap<String, Instant>>,
    /// How many are marked, readable without the lock: every routed request asks, and almost
    /// always nothing is marked.
    count: AtomicUsize,
}

impl Reachability {
    fn marks(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.marked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether any of the replicas at `grpc_addrs` is marked unreachable (no lock taken while
    /// nothing is marked).
    pub fn any_of<'a>(&self, grpc_addrs: impl IntoIterator<Item = &'a str>) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let marks = self.marks();
        grpc_addrs.into_iter().any(|addr| marks.contains_key(addr))
    }

    /// Whether the replica at `grpc_addr` is marked unreachable.
    pub fn is_unreachable(&self, grpc_addr: &str) -> bool {
        self.any_of([grpc_addr])
    }

    /// Marks `grpc_addr`; true when it was not marked before (the caller then starts a probe).
    fn mark(&self, grpc_addr: &str) -> bool {
        let mut marks = self.marks();
        let new = marks.insert(grpc_addr.to_owned(), Instant::now()).is_none();
        self.count.store(marks.len(), Ordering::Relaxed);
        new
    }

    /// Clears the mark of `grpc_addr`; how long it was marked, if it was.
    fn clear(&self, grpc_addr: &str) -> Option<Duration> {
        let mut marks = self.marks();
        let since = marks.remove(grpc_addr);
        self.count.store(marks.len(), Ordering::Relaxed);
        since.map(|since| since.elapsed())
    }
}

/// Marks the replica at `grpc_addr` unreachable after a failed call (`why`), and starts its probe
/// unless one runs already. Must be called inside a tokio runtime.
pub fn suspect(state: &SharedState, node: u64, grpc_addr: &str, why: &str) {
    if !state.reach.mark(grpc_addr) {
        return;
    }
    metrics::counter!("ravel_admin_replicas_marked_unreachable_total").increment(1);
    tracing::warn!(
        node,
        addr = grpc_addr,
        why,
        "replica did not answer; its cluster's requests go through the other replicas until it does"
    );
    tokio::spawn(probe_until_back(state.clone(), node, grpc_addr.to_owned()));
}

/// Probes `grpc_addr` until it answers or leaves the metadata, then clears its mark.
async fn probe_until_back(state: SharedState, node: u64, grpc_addr: String) {
    loop {
        tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS)).await;
        let known = state
            .meta
            .current()
            .replicas
            .values()
            .any(|r| r.grpc_addr == grpc_addr);
        if !known {
            state.reach.clear(&grpc_addr);
            return;
        }
        let mut client = state.pool.control_client(&grpc_addr);
        let request = control_request(StatusRequest {}, PROBE_DEADLINE_MS);
        let answered = tokio::time::timeout(
            Duration::from_millis(PROBE_DEADLINE_MS),
            client.status(request),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if answered {
            let marked_for = state.reach.clear(&grpc_addr).unwrap_or_default();
            tracing::info!(
                node,
                addr = %grpc_addr,
                marked_ms = u64::try_from(marked_for.as_millis()).unwrap_or(u64::MAX),
                "replica answers again; routing to it as usual"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AdminState;
    use crate::meta::{MetaCommand, MetaStore};
    use std::sync::Arc;

    /// A mark is set once (only the first mark starts a probe) and cleared once.
    #[test]
    fn marks_are_set_and_cleared_once() {
        let reach = Reachability::default();
        assert!(!reach.is_unreachable("a:1"));
        assert!(reach.mark("a:1"));
        assert!(!reach.mark("a:1"), "already marked: no second probe");
        assert!(reach.is_unreachable("a:1"));
        assert!(!reach.is_unreachable("b:1"));
        assert!(reach.any_of(["b:1", "a:1"]));
        assert!(!reach.any_of(["b:1", "c:1"]));
        assert!(reach.clear("a:1").is_some());
        assert!(reach.clear("a:1").is_none());
        assert!(!reach.is_unreachable("a:1"));
        assert!(!reach.any_of(["a:1"]));
    }

    /// The probe keeps the mark of a replica that does not answer, and clears it once the
    /// replica is gone from the metadata.
    #[tokio::test]
    async fn probe_keeps_the_mark_while_nothing_answers() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(AdminState::new(
            MetaStore::open(dir.path(), Some(8)).await.unwrap(),
        ));
        // A port nobody listens on.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        state
            .meta
            .execute(MetaCommand::RegisterReplica {
                token: 1,
                raft_addr: free.clone(),
                grpc_addr: free.clone(),
                new_cluster: true,
            })
            .await
            .unwrap();
        suspect(&state, 1, &free, "test");
        tokio::time::sleep(Duration::from_millis(4 * PROBE_INTERVAL_MS)).await;
        assert!(state.reach.is_unreachable(&free), "nothing answered");

        // An address the metadata does not know: the probe gives up and clears the mark.
        suspect(&state, 9, "127.0.0.1:1", "test");
        tokio::time::sleep(Duration::from_millis(3 * PROBE_INTERVAL_MS)).await;
        assert!(!state.reach.is_unreachable("127.0.0.1:1"));
    }
}
