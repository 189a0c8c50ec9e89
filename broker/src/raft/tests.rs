//! openraft's storage conformance suite against [`LogStore`] and [`PartitionSm`].

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use strata_storage::{LogConfig, PartitionLog};
use tokio::sync::watch;

use super::store::SnapshotHint;
use super::{LogStore, PartitionSm, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, PartitionSm, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, PartitionSm), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = LogConfig {
            segment_bytes: 1 << 20,
            max_entry_bytes: 64 << 10,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path(), config).expect("log opens");
        let (hw, _) = watch::channel(0);
        let hint = SnapshotHint::publishing(Arc::new(hw));
        let store = LogStore::open(log.clone(), hint.clone()).expect("store opens");
        let sm = PartitionSm::open(dir.path(), hint, log).expect("state machine opens");
        Ok((dir, store, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite() {
    Suite::test_all(Builder)
        .await
        .expect("every conformance test passes");
}
