//! The `Data` gRPC service (admin → node, on `--grpcaddr`; follower → leader, on `--raftaddr`):
//! put, get and delete of one key.
//!
//! Every answer travels in the reply's `error` field with gRPC status OK, so that the admin can
//! tell a definite refusal from an unknown outcome; the mapping is `NodeError::to_wire`. Writes go
//! through [`Replica::write`] (leader check, then a bounded `client_write`); linearizable reads
//! through [`Replica::read_barrier`] and then the local state machine.
//!
//! A request marked `forward` (the admin cannot reach the leader itself) that reaches a replica
//! which is not the leader but knows it is passed on to the leader's Raft address, unmarked, and
//! the leader's reply is answered verbatim. The outcome rules hold across the hop: a forwarded
//! write whose hop failed is OUTCOME_UNKNOWN unless the connection to the leader could not even
//! be opened; a forwarded read is linearizable because the leader runs the read barrier. This
//! module must not retry: the admin decides what is safe to retry.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ravel_core::command::{Command, CommandResult, Record};
use ravel_core::limits::{DATA_RPC_TIMEOUT_MS, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use ravel_core::{ClusterId, NodeId};
use ravel_proto::transport::never_sent;
use ravel_proto::v1::data_client::DataClient;
use ravel_proto::v1::data_server::Data;
use ravel_proto::v1::{DeleteReply, DeleteRequest, GetReply, GetRequest, PutReply, PutRequest};
use ravel_storage::ReadRefused;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::NodeError;
use crate::raft_net::NetworkFactory;
use crate::replica::{NotLeader, Replica, check_leader};

/// Deadline of a forwarded call to the leader. The server also drops a handler when the
/// caller's own gRPC deadline passes, so the hop never outlives the admin's request.
pub const FORWARD_TIMEOUT_MS: u64 = DATA_RPC_TIMEOUT_MS;

/// The `Data` service of one replica.
pub struct DataService {
    replica: Arc<Replica>,
    /// The Raft transport's channels, on which requests are forwarded to the leader.
    network: NetworkFactory,
}

/// The leader a `forward` request is passed to.
struct ForwardTo {
    leader: NodeId,
    raft_addr: String,
}

impl DataService {
    /// The service answering for `replica`, forwarding over `network`'s channels.
    #[must_use]
    pub fn new(replica: Arc<Replica>, network: NetworkFactory) -> Self {
        Self { replica, network }
    }

    /// Where a request goes instead of being served here: to the leader, when the request asks
    /// to be forwarded, names this cluster, this replica is not the leader and it knows who is.
    /// Otherwise `None`, and the request is served here (or refused with NOT_LEADER) as usual.
    fn forward_target(&self, forward: bool, cluster: ClusterId) -> Option<ForwardTo> {
        let r = &self.replica;
        // A request for another cluster is refused here, not passed on.
        if !forward || cluster != r.cluster_id {
            return None;
        }
        let Err(NotLeader {
            leader_id: Some(leader),
            ..
        }) = check_leader(&r.raft, r.node_id, &r.contact)
        else {
            return None;
        };
        let metrics = r.raft.metrics();
        let m = metrics.borrow();
        let node = m.membership_config.membership().get_node(&leader)?;
        Some(ForwardTo {
            leader,
            raft_addr: node.raft_addr.clone(),
        })
    }

    /// Sends `request` (already unmarked) to the leader with `call` and returns the leader's
    /// reply. A failed hop is OUTCOME_UNKNOWN for a write unless it certainly never left this
    /// replica; for a read, or a write never sent, it is a definite UNAVAILABLE.
    async fn forwarded<Req, Rep, F, Fut>(
        &self,
        method: &'static str,
        is_write: bool,
        to: ForwardTo,
        request: Req,
        call: F,
    ) -> Result<Rep, NodeError>
    where
        F: FnOnce(DataClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        let client = crate::raft_net::data_client(&self.network, &to.raft_addr).map_err(|e| {
            NodeError::Unavailable(format!(
                "the leader's Raft address {} is unusable: {e}",
                to.raft_addr
            ))
        })?;
        let mut request = Request::new(request);
        request.set_timeout(Duration::from_millis(FORWARD_TIMEOUT_MS));
        let outcome = call(client, request).await;
        let label = if outcome.is_ok() { "sent" } else { "failed" };
        metrics::counter!("ravel_node_forwarded_total", "method" => method, "hop" => label)
            .increment(1);
        outcome
            .map(Response::into_inner)
            .map_err(|status| hop_failure(is_write, &status, &to))
    }

    async fn put(&self, r: PutRequest) -> Result<u64, NodeError> {
        self.replica.check_cluster(r.cluster_id)?;
        check_key(&r.key)?;
        if r.value.len() > MAX_VALUE_BYTES {
            return Err(NodeError::Invalid(format!(
                "value of {} bytes exceeds the limit of {MAX_VALUE_BYTES} bytes",
                r.value.len()
            )));
        }
        let command = Command::Put {
            partition: r.partition,
            key: r.key,
            value: r.value.to_vec(),
            cas: r.cas,
        };
        match self.replica.write(command).await? {
            CommandResult::Written { version } => Ok(version),
            other => Err(refusal(other)),
        }
    }

    async fn delete(&self, r: DeleteRequest) -> Result<bool, NodeError> {
        self.replica.check_cluster(r.cluster_id)?;
        check_key(&r.key)?;
        let command = Command::Delete {
            partition: r.partition,
            key: r.key,
            cas: r.cas,
        };
        match self.replica.write(command).await? {
            CommandResult::Deleted { deleted } => Ok(deleted),
            other => Err(refusal(other)),
        }
    }

    async fn get(&self, r: GetRequest) -> Result<Option<Record>, NodeError> {
        self.replica.check_cluster(r.cluster_id)?;
        check_key(&r.key)?;
        if !r.stale {
            self.replica.read_barrier().await?;
        }
        self.replica
            .reader
            .get(r.partition, &r.key)
            .map_err(|refused| match refused {
                ReadRefused::WrongOwner { epoch } => NodeError::WrongOwner { epoch },
                // Only a partition scan asks for a frozen partition; a get never sees this.
                refused @ ReadRefused::NotCopyable { .. } => {
                    NodeError::Unavailable(format!("unexpected read refusal: {refused}"))
                }
                ReadRefused::Unavailable { reason } => {
                    NodeError::Unavailable(format!("the state machine could not be read: {reason}"))
                }
            })
    }
}

/// What a forwarded request whose hop to the leader failed with `status` answers: a write that
/// may have reached the leader has an unknown outcome; a read, or a write that certainly never
/// left this replica, is a definite UNAVAILABLE (safe to retry elsewhere).
fn hop_failure(is_write: bool, status: &Status, to: &ForwardTo) -> NodeError {
    if is_write && !never_sent(status) {
        NodeError::OutcomeUnknown(format!(
            "forwarded to leader {} at {}, which did not answer: {}",
            to.leader,
            to.raft_addr,
            status.message()
        ))
    } else {
        NodeError::Unavailable(format!(
            "could not forward to leader {} at {}: {}",
            to.leader,
            to.raft_addr,
            status.message()
        ))
    }
}

/// Refuses an empty or oversized key (the admin checks first; this is defence in depth).
fn check_key(key: &[u8]) -> Result<(), NodeError> {
    if key.is_empty() {
        return Err(NodeError::Invalid("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(NodeError::Invalid(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// The answer for a state machine result that is not the success the command expects.
/// CAS mismatch and wrong owner are deterministic refusals; anything else would be a bug, and
/// since the command was applied its effect is reported as unknown rather than guessed.
pub(crate) fn refusal(result: CommandResult) -> NodeError {
    match result {
        CommandResult::CasMismatch { current } => NodeError::CasMismatch { current },
        CommandResult::WrongOwner { epoch } => NodeError::WrongOwner { epoch },
        CommandResult::MigrationRefused { state, reason } => {
            NodeError::MigrationRefused { state, reason }
        }
        other => NodeError::OutcomeUnknown(format!("unexpected state machine answer {other:?}")),
    }
}

/// Counts one data request by method and outcome code, and times it.
fn observe(method: &'static str, started: Instant, error: Option<&NodeError>) {
    let code = error.map_or("ok", NodeError::code);
    metrics::counter!("ravel_node_requests_total", "method" => method, "code" => code).increment(1);
    metrics::histogram!("ravel_node_request_duration_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
}

fn put_reply(outcome: Result<u64, NodeError>) -> PutReply {
    match outcome {
        Ok(version) => PutReply {
            version,
            error: None,
        },
        Err(e) => PutReply {
            version: 0,
            error: Some(e.to_wire()),
        },
    }
}

fn get_reply(outcome: Result<Option<Record>, NodeError>) -> GetReply {
    match outcome {
        Ok(Some(record)) => GetReply {
            found: true,
            value: record.value.into(),
            version: record.version,
            error: None,
        },
        Ok(None) => GetReply::default(),
        Err(e) => GetReply {
            error: Some(e.to_wire()),
            ..GetReply::default()
        },
    }
}

fn delete_reply(outcome: Result<bool, NodeError>) -> DeleteReply {
    match outcome {
        Ok(deleted) => DeleteReply {
            deleted,
            error: None,
        },
        Err(e) => DeleteReply {
            deleted: false,
            error: Some(e.to_wire()),
        },
    }
}

#[tonic::async_trait]
impl Data for DataService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        let request = request.into_inner();
        if let Some(to) = self.forward_target(request.forward, request.cluster_id) {
            let unmarked = PutRequest {
                forward: false,
                ..request
            };
            let reply = self
                .forwarded("put", true, to, unmarked, |mut c, r| async move {
                    c.put(r).await
                })
                .await;
            return Ok(Response::new(reply.unwrap_or_else(|e| put_reply(Err(e)))));
        }
        let started = Instant::now();
        let outcome = DataService::put(self, request).await;
        observe("put", started, outcome.as_ref().err());
        Ok(Response::new(put_reply(outcome)))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        let request = request.into_inner();
        // A stale read is this replica's own state by definition: never forwarded.
        if let Some(to) = self.forward_target(request.forward && !request.stale, request.cluster_id)
        {
            let unmarked = GetRequest {
                forward: false,
                ..request
            };
            let reply = self
                .forwarded("get", false, to, unmarked, |mut c, r| async move {
                    c.get(r).await
                })
                .await;
            return Ok(Response::new(reply.unwrap_or_else(|e| get_reply(Err(e)))));
        }
        let started = Instant::now();
        let outcome = DataService::get(self, request).await;
        observe("get", started, outcome.as_ref().err());
        Ok(Response::new(get_reply(outcome)))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteReply>, Status> {
        let request = request.into_inner();
        if let Some(to) = self.forward_target(request.forward, request.cluster_id) {
            let unmarked = DeleteRequest {
                forward: false,
                ..request
            };
            let reply = self
                .forwarded("delete", true, to, unmarked, |mut c, r| async move {
                    c.delete(r).await
                })
                .await;
            return Ok(Response::new(
                reply.unwrap_or_else(|e| delete_reply(Err(e))),
            ));
        }
        let started = Instant::now();
        let outcome = DataService::delete(self, request).await;
        observe("delete", started, outcome.as_ref().err());
        Ok(Response::new(delete_reply(outcome)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader() -> ForwardTo {
        ForwardTo {
            leader: 2,
            raft_addr: "127.0.0.1:1".into(),
        }
    }

    /// A failed hop keeps the outcome rules: a write that may have reached the leader is
    /// unknown; a write never sent, and any read, are definite refusals.
    #[test]
    fn hop_failures_keep_the_outcome_rules() {
        let deadline = Status::deadline_exceeded("Timeout expired");
        // How tonic reports a connection the leader refused (the request never left).
        let refused = Status::unavailable("tcp connect error: Connection refused (os error 111)");
        assert!(never_sent(&refused) && !never_sent(&deadline));

        let code = |e: NodeError| e.code();
        assert_eq!(
            code(hop_failure(true, &deadline, &leader())),
            "outcome_unknown"
        );
        assert_eq!(code(hop_failure(true, &refused, &leader())), "unavailable");
        assert_eq!(
            code(hop_failure(false, &deadline, &leader())),
            "unavailable"
        );
        assert_eq!(code(hop_failure(false, &refused, &leader())), "unavailable");
    }
}
