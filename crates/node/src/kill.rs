//! `ravel_node kill`: remove a replica from its cluster, stop its process, delete its directory.
//!
//! The order matters: the admin removes the replica from the Raft membership (and its records)
//! first, and only then is the data deleted — wiping a replica that is still a member can lose
//! acknowledged writes. If the admin cannot be reached or refuses, nothing is deleted.
//!
//! Removing the last replica of a cluster that owns partitions first drains them to the other
//! clusters (`docs/design.md#draining-and-removing-a-cluster`). The admin starts the drain on the
//! first `RemoveReplica` call and answers `done = false` with the progress; `kill` repeats the call
//! every [`DRAIN_POLL_MS`] until the admin answers `done`, for at most [`DRAIN_TIMEOUT_MS`], and
//! only then stops the process and deletes the directory. Once the admin has answered, a moment in
//! which it cannot be reached (it restarts; moves resume from its persisted plan) is waited out
//! within the same bound. This module must not change the membership itself.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill as send_signal};
use nix::unistd::Pid;
use ravel_core::limits::CONTROL_RPC_TIMEOUT_MS;
use ravel_proto::v1::admin_client::AdminClient;
use ravel_proto::v1::{RemoveReplicaReply, RemoveReplicaRequest};
use tonic::transport::Channel;

use crate::admins::Admins;
use crate::error::NodeError;
use crate::identity;
use crate::membership::with_deadline;

/// Deadline of the RemoveReplica call: the admin may drain partitions and change membership.
pub const REMOVE_REPLICA_TIMEOUT_MS: u64 = 6 * CONTROL_RPC_TIMEOUT_MS;

/// Overall bound on waiting for the admin to drain the cluster's partitions and remove the
/// replica. Moving every partition of a large cluster takes a while; past this, `kill` fails
/// and deletes nothing (calling it again resumes waiting on the same drain).
pub const DRAIN_TIMEOUT_MS: u64 = 30 * 60 * 1_000;

/// Pause between `RemoveReplica` calls while the admin drains.
pub const DRAIN_POLL_MS: u64 = 1_000;

/// While the drain's progress does not change, it is logged at most this often.
const DRAIN_LOG_EVERY_MS: u64 = 10_000;

/// How long a replica may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_GRACE_MS: u64 = 10_000;

/// How often the process is polled while waiting for it to exit.
const STOP_POLL_MS: u64 = 50;

/// Removes the replica whose storage directory is `storagedir` (see the module doc).
pub async fn kill(storagedir: &Path, force: bool) -> Result<(), NodeError> {
    let identity = identity::load(storagedir)?.ok_or_else(|| {
        NodeError::Config(format!(
            "{} is not a ravel_node storage directory (it has no node.json)",
            storagedir.display()
        ))
    })?;
    let admins = Admins::new(&identity.admin_addr)?;
    let request = RemoveReplicaRequest {
        node_id: identity.node_id,
        force,
    };
    tracing::info!(
        node = identity.node_id,
        cluster = identity.cluster_id,
        admin = %identity.admin_addr,
        "asking the admin to remove this replica"
    );
    remove_until_done(&admins, request, Duration::from_millis(DRAIN_TIMEOUT_MS)).await?;
    tracing::info!(node = identity.node_id, "the admin removed this replica");
    if let Some(pid) = identity::read_pid(storagedir) {
        stop_process(pid).await;
    }
    tokio::fs::remove_dir_all(storagedir)
        .await
        .map_err(|e| NodeError::io(format!("deleting {}", storagedir.display()), e))?;
    tracing::info!("deleted {}", storagedir.display());
    Ok(())
}

/// Calls `RemoveReplica` until an admin answers `done` (see the module doc), at most for
/// `timeout`; an unreachable admin makes it try the next. A refusal, or every admin
/// unreachable before one ever answered, fails at once.
async fn remove_until_done(
    admins: &Admins,
    request: RemoveReplicaRequest,
    timeout: Duration,
) -> Result<(), NodeError> {
    let deadline = Instant::now() + timeout;
    let mut answered = false;
    let mut last_progress: Option<(u32, u32)> = None;
    let mut last_log = Instant::now();
    let mut unreachable_in_a_row = 0;
    loop {
        let (admin_addr, admin) = admins.client();
        match remove_once(&admin, &admin_addr, request).await {
            Ok(reply) if reply.done => return Ok(()),
            Ok(reply) => {
                answered = true;
                unreachable_in_a_row = 0;
                let progress = (reply.partitions_left, reply.moves_in_progress);
                if last_progress != Some(progress)
                    || last_log.elapsed() >= Duration::from_millis(DRAIN_LOG_EVERY_MS)
                {
                    tracing::info!(
                        "draining: {} partitions left, {} moves in progress",
                        reply.partitions_left,
                        reply.moves_in_progress
                    );
                    last_progress = Some(progress);
                    last_log = Instant::now();
                }
            }
            Err(e @ NodeError::AdminUnreachable { .. })
                if answered || unreachable_in_a_row + 1 < admins.len() =>
            {
                unreachable_in_a_row += 1;
                admins.failed(&admin_addr);
                tracing::warn!("{e}; retrying");
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(NodeError::Unavailable(format!(
                "the admin did not finish draining this cluster within {} s; nothing was \
                 deleted, run kill again to keep waiting",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
}

/// One `RemoveReplica` call under its deadline, with its failure classified.
async fn remove_once(
    admin: &AdminClient<Channel>,
    admin_addr: &str,
    request: RemoveReplicaRequest,
) -> Result<RemoveReplicaReply, NodeError> {
    admin
        .clone()
        .remove_replica(with_deadline(request, REMOVE_REPLICA_TIMEOUT_MS))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                NodeError::AdminUnreachable {
                    addr: admin_addr.to_owned(),
                    message: status.message().to_owned(),
                }
            }
            _ => NodeError::AdminRefused(status.message().to_owned()),
        })
}

/// Whether the process with this pid is still running. A zombie (exited, not yet reaped by its
/// parent) counts as gone: it holds no files and will never exit "more".
fn alive(pid: Pid) -> bool {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        return stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X");
    }
    // No procfs: signal 0 checks existence. EPERM means it exists but belongs to someone else.
    !matches!(send_signal(pid, None), Err(nix::errno::Errno::ESRCH))
}

/// Whether `pid` runs `ravel_node start`: a pid file left behind by a `kill -9` may name a pid
/// that the system has since given to an unrelated process, which must never be signalled.
/// Without procfs this cannot be checked, and the pid is trusted.
fn runs_ravel_node(pid: Pid) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let mut args = cmdline.split(|b| *b == 0);
            let program = args.next().unwrap_or_default();
            let is_node = Path::new(std::ffi::OsStr::from_bytes(program))
                .file_name()
                .is_some_and(|name| name == "ravel_node");
            is_node && args.any(|a| a == b"start")
        }
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// SIGTERM, a bounded wait, then SIGKILL.
async fn stop_process(raw_pid: i32) {
    let pid = Pid::from_raw(raw_pid);
    if raw_pid == std::process::id() as i32 || !alive(pid) {
        return;
    }
    if !runs_ravel_node(pid) {
        tracing::warn!(
            pid = raw_pid,
            "the pid file names a process that is not a ravel_node replica; not signalling it"
        );
        return;
    }
    tracing::info!(pid = raw_pid, "stopping the running replica (SIGTERM)");
    if let Err(e) = send_signal(pid, Signal::SIGTERM) {
        tracing::warn!(pid = raw_pid, "SIGTERM failed: {e}");
    }
    let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
    while Instant::now() < deadline {
        if !alive(pid) {
            tracing::info!(pid = raw_pid, "the replica exited");
            return;
        }
        tokio::time::sleep(Duration::from_millis(STOP_POLL_MS)).await;
    }
    tracing::warn!(
        pid = raw_pid,
        "the replica did not exit in time; sending SIGKILL"
    );
    if let Err(e) = send_signal(pid, Signal::SIGKILL) {
        tracing::warn!(pid = raw_pid, "SIGKILL failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory without node.json is refused before anything is contacted or deleted.
    #[tokio::test]
    async fn refuses_foreign_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), b"x").unwrap();
        let err = kill(dir.path(), false).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("not a ravel_node storage directory"),
            "{err}"
        );
        assert!(dir.path().join("keep").exists());
    }

    /// With the admin unreachable, kill fails and deletes nothing.
    #[tokio::test]
    async fn admin_unreachable_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A port that was just free: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let identity = identity::Identity {
            node_id: 1,
            cluster_id: 1,
            bootstrap: true,
            raft_addr: "127.0.0.1:1".into(),
            grpc_addr: "127.0.0.1:2".into(),
            admin_addr: format!("127.0.0.1:{port}"),
        };
        identity::store(dir.path(), &identity).unwrap();
        let err = kill(dir.path(), false).await.unwrap_err();
        assert_eq!(err.code(), "admin_unreachable", "{err}");
        assert!(dir.path().join("node.json").exists());
    }

    /// An admin that answers RemoveReplica with a scripted sequence of replies.
    #[derive(Clone)]
    struct ScriptedAdmin {
        replies: std::sync::Arc<std::sync::Mutex<Vec<Result<RemoveReplicaReply, tonic::Status>>>>,
        calls: std::sync::Arc<std::sync::atomic::AtomicU32>,
    }

    #[tonic::async_trait]
    impl ravel_proto::v1::admin_server::Admin for ScriptedAdmin {
        async fn register(
            &self,
            _: tonic::Request<ravel_proto::v1::RegisterRequest>,
        ) -> Result<tonic::Response<ravel_proto::v1::RegisterReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn cluster_info(
            &self,
            _: tonic::Request<ravel_proto::v1::ClusterInfoRequest>,
        ) -> Result<tonic::Response<ravel_proto::v1::ClusterInfoReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn report_leader(
            &self,
            _: tonic::Request<ravel_proto::v1::LeaderReport>,
        ) -> Result<tonic::Response<ravel_proto::v1::LeaderReportReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn remove_replica(
            &self,
            _: tonic::Request<RemoveReplicaRequest>,
        ) -> Result<tonic::Response<RemoveReplicaReply>, tonic::Status> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut replies = self.replies.lock().unwrap();
            let next = if replies.len() > 1 {
                replies.remove(0)
            } else {
                replies[0].clone()
            };
            next.map(tonic::Response::new)
        }
        async fn propose_meta(
            &self,
            _: tonic::Request<ravel_proto::v1::MetaProposal>,
        ) -> Result<tonic::Response<ravel_proto::v1::MetaProposalReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn change_admins(
            &self,
            _: tonic::Request<ravel_proto::v1::ChangeAdminsRequest>,
        ) -> Result<tonic::Response<ravel_proto::v1::ChangeAdminsReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn admin_status(
            &self,
            _: tonic::Request<ravel_proto::v1::AdminStatusRequest>,
        ) -> Result<tonic::Response<ravel_proto::v1::AdminStatusReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
    }

    /// Starts a scripted admin and writes an identity pointing at it into a new directory.
    async fn scripted(
        replies: Vec<Result<RemoveReplicaReply, tonic::Status>>,
    ) -> (ScriptedAdmin, tempfile::TempDir) {
        let admin = ScriptedAdmin {
            replies: std::sync::Arc::new(std::sync::Mutex::new(replies)),
            calls: std::sync::Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ravel_proto::v1::admin_server::AdminServer::new(
                    admin.clone(),
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let dir = tempfile::tempdir().unwrap();
        let identity = identity::Identity {
            node_id: 4,
            cluster_id: 2,
            bootstrap: true,
            raft_addr: "127.0.0.1:1".into(),
            grpc_addr: "127.0.0.1:2".into(),
            admin_addr: addr,
        };
        identity::store(dir.path(), &identity).unwrap();
        (admin, dir)
    }

    fn draining(partitions_left: u32, moves_in_progress: u32) -> RemoveReplicaReply {
        RemoveReplicaReply {
            done: false,
            partitions_left,
            moves_in_progress,
        }
    }

    /// While the admin drains, kill keeps asking and deletes nothing; once the admin answers
    /// `done`, it deletes the directory.
    #[tokio::test]
    async fn waits_for_the_drain_then_deletes() {
        let done = RemoveReplicaReply {
            done: true,
            ..RemoveReplicaReply::default()
        };
        let (admin, dir) = scripted(vec![Ok(draining(3, 2)), Ok(draining(1, 1)), Ok(done)]).await;
        let storagedir = dir.path().to_path_buf();
        kill(&storagedir, false).await.unwrap();
        assert_eq!(admin.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(!storagedir.exists());
    }

    /// A drain that never finishes within the bound fails kill and deletes nothing; a refusal
    /// (the last cluster holding keys, without --force) fails at once and deletes nothing.
    #[tokio::test]
    async fn unfinished_drain_or_refusal_deletes_nothing() {
        let (admin, dir) = scripted(vec![Ok(draining(5, 1))]).await;
        let identity = identity::load(dir.path()).unwrap().unwrap();
        let admins = Admins::new(&identity.admin_addr).unwrap();
        let request = RemoveReplicaRequest {
            node_id: identity.node_id,
            force: false,
        };
        let err = remove_until_done(&admins, request, Duration::from_millis(1_500))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "unavailable", "{err}");
        assert!(admin.calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);

        let (_admin, dir) = scripted(vec![Err(tonic::Status::failed_precondition(
            "the last cluster holds keys; use --force",
        ))])
        .await;
        let err = kill(dir.path(), false).await.unwrap_err();
        assert_eq!(err.code(), "admin_refused", "{err}");
        assert!(dir.path().join("node.json").exists());
    }

    /// A process that is gone is reported as not alive.
    #[test]
    fn dead_pid_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(alive(Pid::from_raw(std::process::id() as i32)));
    }

    /// An exited child that its parent has not reaped yet (a zombie) counts as stopped.
    #[test]
    fn zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !alive(pid),
            "the exited child is seen as gone before it is reaped"
        );
        child.wait().unwrap();
    }

    /// A pid that runs something other than `ravel_node start` is never signalled.
    #[test]
    fn foreign_process_is_not_a_replica() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert!(alive(pid));
        assert!(!runs_ravel_node(pid));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
