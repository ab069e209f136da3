//! Adding and removing admins (`ravel_admin members add|remove`): on the admins' leader, an
//! added admin first catches up as a learner, then becomes a voter; a removed one leaves the
//! membership (a leader that removes itself steps down once the change commits). A follower
//! forwards the change to the leader (`ChangeAdmins`). The added admin must be running with
//! `--join`, so that it waits to be added instead of forming a group of its own.

use super::MetaError;
use super::raft::AdminNode;
use super::store::{LeaderWait, MetaStore, admin_id_of};
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long an added admin may take to catch up as a learner before the change gives up (it
/// stays a learner; adding it again, once it runs, finishes the change).
const CATCH_UP_TIMEOUT_MS: u64 = 30_000;

/// A change of the admins' membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminChange {
    /// Make the admin serving gRPC at this address a voter.
    Add(String),
    /// Take the admin serving gRPC at this address out of the group.
    Remove(String),
}

fn change_error(e: RaftError<u64, ClientWriteError<u64, AdminNode>>) -> MetaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => MetaError::NotLeader {
            leader_id: forward.leader_id,
            leader: forward.leader_node,
        },
        other => MetaError::Raft(other.to_string()),
    }
}

impl MetaStore {
    /// Makes `change` and returns the voters after it; on an admin that does not lead, the
    /// change is forwarded to the leader.
    pub async fn change_admins(&self, change: AdminChange) -> Result<Vec<u64>, MetaError> {
        let mut wait = LeaderWait::start();
        loop {
            match self.change_admins_here(&change).await {
                Err(MetaError::NotLeader {
                    leader: Some(leader),
                    ..
                }) => {
                    if let Some(answer) = self.forwarder.forward_change(&leader, &change).await? {
                        return answer;
                    }
                }
                Err(MetaError::NotLeader { leader: None, .. }) => {}
                other => return other,
            }
            wait.pause().await?;
        }
    }

    /// Makes `change` if this admin leads the group; [`MetaError::NotLeader`] otherwise.
    pub async fn change_admins_here(&self, change: &AdminChange) -> Result<Vec<u64>, MetaError> {
        let raft = self.raft();
        let members = self.members();
        match change {
            AdminChange::Add(addr) => {
                let id = admin_id_of(addr);
                if members
                    .iter()
                    .any(|(m, node, voter)| *m == id && *voter && node.grpc_addr == *addr)
                {
                    return Ok(self.voters());
                }
                let node = AdminNode {
                    grpc_addr: addr.clone(),
                    http_addr: String::new(),
                };
                tracing::info!(admin = id, grpc = %addr, "adding an admin: catching it up as a learner");
                let learner = tokio::time::timeout(
                    Duration::from_millis(CATCH_UP_TIMEOUT_MS),
                    raft.add_learner(id, node, true),
                )
                .await
                .map_err(|_| {
                    MetaError::Peers(format!(
                        "the admin at {addr} did not catch up within {} s; is it running with --join?",
                        CATCH_UP_TIMEOUT_MS / 1_000
                    ))
                })?;
                learner.map_err(change_error)?;
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(change_error)?;
                tracing::info!(admin = id, grpc = %addr, "admin added as a voter");
            }
            AdminChange::Remove(addr) => {
                let Some((id, _, _)) = members.iter().find(|(_, node, _)| node.grpc_addr == *addr)
                else {
                    return Err(MetaError::Peers(format!(
                        "no admin of the group serves {addr}"
                    )));
                };
                let voters = self.voters();
                if voters == [*id] {
                    return Err(MetaError::Peers(format!(
                        "{addr} is the group's only voter; it cannot be removed"
                    )));
                }
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([*id])), false)
                    .await
                    .map_err(change_error)?;
                tracing::info!(admin = id, grpc = %addr, "admin removed from the group");
            }
        }
        Ok(self.voters())
    }

    /// The group's voters now.
    fn voters(&self) -> Vec<u64> {
        self.members()
            .into_iter()
            .filter(|(_, _, voter)| *voter)
            .map(|(id, _, _)| id)
            .collect()
    }
}
