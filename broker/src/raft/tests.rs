//! openraft's storage conformance suite, for [`LogStore`] with any [`Machine`].

use std::path::Path;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use strata_storage::{LogConfig, PartitionLog};

use super::TypeConfig;
use super::machine::{Machine, StateMachine};
use super::snapshot::SnapshotEnd;
use super::store::LogStore;

struct Builder<F>(F);

impl<F> StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder<F>
where
    F: Fn(&Path, PartitionLog) -> Box<dyn Machine> + Send + Sync,
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = LogConfig {
            segment_bytes: 1 << 20,
            max_entry_bytes: 64 << 10,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path(), config).expect("log opens");
        let end = SnapshotEnd::default();
        let store = LogStore::open(log.clone(), end.clone(), None).expect("store opens");
        let machine = (self.0)(dir.path(), log);
        let sm = StateMachine::open(dir.path(), end, machine).expect("state machine opens");
        Ok((dir, store, sm))
    }
}

/// Runs the whole suite with the machines `make` builds (from the group's directory and log).
pub(crate) async fn conformance_suite(
    make: impl Fn(&Path, PartitionLog) -> Box<dyn Machine> + Send + Sync + 'static,
) {
    Suite::test_all(Builder(make))
        .await
        .expect("every conformance test passes");
}
