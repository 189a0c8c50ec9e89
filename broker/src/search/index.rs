//! A partition replica's search index as the rest of the node sees it: its latest committed
//! view (`IndexSnapshot`), how far it covers the log, a way to ask for fresher commits, and
//! its counters. The index lives in `<partition dir>/search/`; the task that writes it is in
//! `feed`, its writer in `writer`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tantivy::Searcher;
use tokio::sync::watch;

use super::schema::Projection;
use crate::lock::lock;

/// Where a partition keeps its index, inside its log directory.
pub(crate) const INDEX_DIR: &str = "search";

/// What a query searches: a point-in-time view of the committed index.
pub(crate) struct IndexSnapshot {
    /// Searches the committed documents.
    pub searcher: Searcher,
    /// Every committed record below this offset is indexed (records from here on are not).
    pub upto: u64,
}

/// Counters of an index, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct IndexCounters {
    /// Documents added.
    pub documents: AtomicU64,
    /// Bytes of record values indexed.
    pub bytes: AtomicU64,
    /// Commits made.
    pub commits: AtomicU64,
    /// Microseconds spent committing (and reloading the searcher).
    pub commit_micros: AtomicU64,
    /// Times the index was rebuilt from the log.
    pub rebuilds: AtomicU64,
}

/// The search side of a partition replica: its latest committed view and its indexing task.
pub struct PartitionIndex {
    pub(super) dir: PathBuf,
    pub(super) projection: Projection,
    snapshot: Mutex<Option<Arc<IndexSnapshot>>>,
    /// The offset up to which a search wants the index committed.
    pub(super) wanted: watch::Sender<u64>,
    /// The offset the committed index covers, as it moves.
    committed: watch::Sender<u64>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Its counters.
    pub counters: IndexCounters,
}

impl std::fmt::Debug for PartitionIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionIndex")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PartitionIndex {
    /// The index of the partition whose log is in `log_dir`, indexing the listed paths (all
    /// when empty). Nothing runs until the indexer starts (`feed::start`).
    pub(crate) fn new(log_dir: &Path, fields: &[String]) -> Self {
        let (stop, _) = watch::channel(false);
        PartitionIndex {
            dir: log_dir.join(INDEX_DIR),
            projection: Projection::new(fields),
            snapshot: Mutex::new(None),
            wanted: watch::channel(0).0,
            committed: watch::channel(0).0,
            stop,
            task: Mutex::new(None),
            counters: IndexCounters::default(),
        }
    }

    /// The latest committed view, once the index is open.
    pub(crate) fn snapshot(&self) -> Option<Arc<IndexSnapshot>> {
        lock(&self.snapshot).clone()
    }

    /// Offset up to which the partition is indexed (0 before the index is open).
    pub fn indexed_upto(&self) -> u64 {
        self.snapshot().map_or(0, |s| s.upto)
    }

    /// Asks for everything below `offset` to be searchable and waits until it is, or for at
    /// most `timeout` (then the search runs on what is committed and says how much is not).
    pub(crate) async fn wait_searchable(&self, offset: u64, timeout: Duration) {
        if self.indexed_upto() >= offset {
            return;
        }
        self.wanted.send_if_modified(|w| {
            let raise = *w < offset;
            *w = (*w).max(offset);
            raise
        });
        let mut committed = self.committed.subscribe();
        let _ = tokio::time::timeout(timeout, committed.wait_for(|c| *c >= offset)).await;
    }

    pub(super) fn publish(&self, snapshot: Arc<IndexSnapshot>) {
        let upto = snapshot.upto;
        *lock(&self.snapshot) = Some(snapshot);
        self.committed.send_replace(upto);
    }

    /// Documents in the committed index (records deleted by retention leave at the commit
    /// after their segments are deleted).
    pub fn documents(&self) -> u64 {
        self.snapshot().map_or(0, |s| s.searcher.num_docs())
    }

    /// Stops the indexing task after it commits what it has; waits for it.
    pub(crate) async fn stop(&self) {
        self.stop.send_replace(true);
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
