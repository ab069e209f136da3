//! openraft's own storage conformance suite, run against the sled log store and state machine.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use ravel_storage::{LogStore, StateMachine, Storage, TypeConfig};
use tempfile::TempDir;

/// Builds a fresh storage in its own temporary directory for each suite case.
struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                e,
            )
        })?;
        let storage = Storage::open(dir.path()).map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok((dir, storage.log_store(), storage.state_machine()))
    }
}

/// The log store and state machine satisfy every property of openraft's storage contract
/// that its conformance suite checks (log state, vote, append/truncate/purge, apply, snapshots).
#[test]
fn openraft_conformance_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("storage conformance failed: {e}");
    }
}
