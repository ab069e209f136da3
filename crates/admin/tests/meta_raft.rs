//! The admins' metadata group on the replicas' log code: `MetaStateMachine` with a
//! `LogStore<AdminTypes>` passes openraft's storage conformance suite.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use ravel_admin::meta::MetaState;
use ravel_admin::meta::raft::{AdminTypes, MetaStateMachine};
use ravel_storage::{LogStore, WalOptions};
use tempfile::TempDir;

fn io_error(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageError::from_io_error(
        ErrorSubject::Store,
        ErrorVerb::Write,
        std::io::Error::other(e.to_string()),
    )
}

/// A fresh log in its own temporary directory and a state machine of a new store, per case.
struct AdminGroupBuilder;

impl StoreBuilder<AdminTypes, LogStore<AdminTypes>, MetaStateMachine, TempDir>
    for AdminGroupBuilder
{
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<AdminTypes>, MetaStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(io_error)?;
        let log = LogStore::open(dir.path(), WalOptions::default()).map_err(io_error)?;
        Ok((dir, log, MetaStateMachine::new(MetaState::new(64))))
    }
}

/// The metadata state machine and its log satisfy every property of openraft's storage
/// contract that its conformance suite checks (log, vote, apply, snapshots).
#[test]
fn openraft_conformance_suite_for_the_metadata_group() {
    if let Err(e) = Suite::test_all(AdminGroupBuilder) {
        panic!("metadata group conformance failed: {e}");
    }
}
