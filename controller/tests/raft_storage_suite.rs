#![allow(clippy::result_large_err)]
//! openraft's own conformance suite, run against twill's persistent log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use twill_controller::log_store::LogStore;
use twill_controller::state_machine::StateMachine;
use twill_controller::{NodeId, TypeConfig};

struct DiskStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for DiskStore {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft.redb")).expect("open log");
        let sm = StateMachine::open(dir.path(), 1000).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn persistent_store_passes_openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(DiskStore)
}
