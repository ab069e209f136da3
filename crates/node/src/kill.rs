//! `ravel_node kill`: remove a replica from its cluster, stop its process, delete its directory.
//!
//! The order matters: the admin removes the replica from the Raft membership (and its records)
//! first, and only then is the data deleted — wiping a replica that is still a member can lose
//! acknowledged writes. If the admin cannot be reached or refuses, nothing is deleted. This
//! module must not change the membership itself.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill as send_signal};
use nix::unistd::Pid;
use ravel_core::limits::CONTROL_RPC_TIMEOUT_MS;
use ravel_proto::v1::RemoveReplicaRequest;

use crate::error::NodeError;
use crate::identity;
use crate::membership::{admin_client, with_deadline};

/// Deadline of the RemoveReplica call: the admin may drain partitions and change membership.
pub const REMOVE_REPLICA_TIMEOUT_MS: u64 = 6 * CONTROL_RPC_TIMEOUT_MS;

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
    let admin = admin_client(&identity.admin_addr)?;
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
    admin
        .clone()
        .remove_replica(with_deadline(request, REMOVE_REPLICA_TIMEOUT_MS))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                NodeError::AdminUnreachable {
                    addr: identity.admin_addr.clone(),
                    message: status.message().to_owned(),
                }
            }
            _ => NodeError::AdminRefused(status.message().to_owned()),
        })?;
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
