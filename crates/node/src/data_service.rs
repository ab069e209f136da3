//! The `Data` gRPC service (admin → node, on `--grpcaddr`): put, get and delete of one key.
//!
//! Every answer travels in the reply's `error` field with gRPC status OK, so that the admin can
//! tell a definite refusal from an unknown outcome; the mapping is `NodeError::to_wire`. Writes go
//! through [`Replica::write`] (leader check, then a bounded `client_write`); linearizable reads
//! through [`Replica::read_barrier`] and then the local state machine. This module must not
//! retry: the admin decides what is safe to retry.

use std::sync::Arc;
use std::time::Instant;

use ravel_core::command::{Command, CommandResult, Record};
use ravel_core::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use ravel_proto::v1::data_server::Data;
use ravel_proto::v1::{DeleteReply, DeleteRequest, GetReply, GetRequest, PutReply, PutRequest};
use ravel_storage::ReadRefused;
use tonic::{Request, Response, Status};

use crate::error::NodeError;
use crate::replica::Replica;

/// The `Data` service of one replica.
pub struct DataService {
    replica: Arc<Replica>,
}

impl DataService {
    /// The service answering for `replica`.
    #[must_use]
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
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
                refused @ ReadRefused::NotFrozen { .. } => {
                    NodeError::Unavailable(format!("unexpected read refusal: {refused}"))
                }
                ReadRefused::Unavailable { reason } => {
                    NodeError::Unavailable(format!("the state machine could not be read: {reason}"))
                }
            })
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

#[tonic::async_trait]
impl Data for DataService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        let started = Instant::now();
        let outcome = DataService::put(self, request.into_inner()).await;
        observe("put", started, outcome.as_ref().err());
        let reply = match outcome {
            Ok(version) => PutReply {
                version,
                error: None,
            },
            Err(e) => PutReply {
                version: 0,
                error: Some(e.to_wire()),
            },
        };
        Ok(Response::new(reply))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        let started = Instant::now();
        let outcome = DataService::get(self, request.into_inner()).await;
        observe("get", started, outcome.as_ref().err());
        let reply = match outcome {
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
        };
        Ok(Response::new(reply))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteReply>, Status> {
        let started = Instant::now();
        let outcome = DataService::delete(self, request.into_inner()).await;
        observe("delete", started, outcome.as_ref().err());
        let reply = match outcome {
            Ok(deleted) => DeleteReply {
                deleted,
                error: None,
            },
            Err(e) => DeleteReply {
                deleted: false,
                error: Some(e.to_wire()),
            },
        };
        Ok(Response::new(reply))
    }
}
