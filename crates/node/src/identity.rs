//! The small files of a storage directory besides the database: who this replica is.
//!
//! Layout: `DIR/sled/` (the database, opened by `ravel-storage`), `DIR/node.json` (identity,
//! written atomically), `DIR/token` (the registration token, written and fsynced before the first
//! Register call so that registering again after a crash yields the same identity) and
//! `DIR/node.pid` (the running process). This module must not talk to the network.

use std::fs;
use std::path::{Path, PathBuf};

use ravel_core::{ClusterId, NodeId};
use serde::{Deserialize, Serialize};

use crate::error::NodeError;

const IDENTITY_FILE: &str = "node.json";
const TOKEN_FILE: &str = "token";
const PID_FILE: &str = "node.pid";
const SLED_DIR: &str = "sled";

/// What a replica is, as the admin assigned it; persisted in `DIR/node.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub cluster_id: ClusterId,
    /// True when this replica must initialize a new Raft group with itself as the only voter.
    pub bootstrap: bool,
    pub raft_addr: String,
    pub grpc_addr: String,
    pub admin_addr: String,
}

/// The database directory inside a storage directory.
#[must_use]
pub fn sled_dir(dir: &Path) -> PathBuf {
    dir.join(SLED_DIR)
}

/// Reads `DIR/node.json`; `Ok(None)` when the directory has no identity yet.
pub fn load(dir: &Path) -> Result<Option<Identity>, NodeError> {
    let path = dir.join(IDENTITY_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NodeError::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| NodeError::Config(format!("{} is not a valid identity: {e}", path.display())))
}

/// Writes `DIR/node.json` atomically (temporary file, fsync, rename, fsync of the directory), so
/// that a crash leaves either the old identity or the new one, never a torn file.
pub fn store(dir: &Path, identity: &Identity) -> Result<(), NodeError> {
    let bytes = serde_json::to_vec_pretty(identity)
        .map_err(|e| NodeError::Config(format!("encoding the identity: {e}")))?;
    write_atomic(dir, IDENTITY_FILE, &bytes)
}

/// The registration token of this directory, created (and made durable) on first use.
pub fn load_or_create_token(dir: &Path) -> Result<u64, NodeError> {
    let path = dir.join(TOKEN_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| {
            NodeError::Config(format!("{} does not hold a token: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Zero is avoided so that "no token" can never be confused with a real one.
            let token = rand::random::<u64>().max(1);
            write_atomic(dir, TOKEN_FILE, token.to_string().as_bytes())?;
            Ok(token)
        }
        Err(e) => Err(NodeError::io(format!("reading {}", path.display()), e)),
    }
}

/// Records this process's id in `DIR/node.pid`.
pub fn write_pid(dir: &Path) -> Result<(), NodeError> {
    write_atomic(dir, PID_FILE, std::process::id().to_string().as_bytes())
}

/// The pid recorded in `DIR/node.pid`, if any.
#[must_use]
pub fn read_pid(dir: &Path) -> Option<i32> {
    fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
}

/// Removes `DIR/node.pid` if it names this process (a newer process may own it already).
pub fn remove_pid(dir: &Path) {
    if read_pid(dir) == i32::try_from(std::process::id()).ok() {
        let _ignored = fs::remove_file(dir.join(PID_FILE));
    }
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), NodeError> {
    ravel_storage::write_file_atomically(dir, name, bytes)
        .map_err(|e| NodeError::io(format!("writing {}", dir.join(name).display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An identity written to a directory reads back identically; a fresh directory has none.
    #[test]
    fn identity_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let id = Identity {
            node_id: 4,
            cluster_id: 2,
            bootstrap: true,
            raft_addr: "127.0.0.1:1".into(),
            grpc_addr: "127.0.0.1:2".into(),
            admin_addr: "127.0.0.1:3".into(),
        };
        store(dir.path(), &id).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(id));
        assert!(!dir.path().join("node.json.tmp").exists());
    }

    /// The token is created once and then stays the same.
    #[test]
    fn token_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_create_token(dir.path()).unwrap();
        assert_ne!(t, 0);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t);
    }

    /// The pid file names this process and is removed by it.
    #[test]
    fn pid_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_pid(dir.path()), None);
        write_pid(dir.path()).unwrap();
        assert_eq!(read_pid(dir.path()), i32::try_from(std::process::id()).ok());
        remove_pid(dir.path());
        assert_eq!(read_pid(dir.path()), None);
    }
}
