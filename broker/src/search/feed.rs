//! The task that feeds a partition replica's index from its committed log: it opens the
//! index (rebuilding it from the log when needed), reads committed batches from where the
//! last commit stopped, adds their documents and commits when due, on the blocking pool; an
//! error or a panic drops the writer, and the task reopens from the last commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::index::PartitionIndex;
use super::writer::Writer;
use crate::lock::lock;
use crate::replica::Partition;

/// Most bytes of batches read from the log per step.
const READ_BYTES: usize = 1 << 20;
/// Pause after an error before reopening the index.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Starts indexing `partition` in the background.
pub fn start(partition: &Arc<Partition>) {
    let Some(index) = partition.search() else {
        return;
    };
    let task = tokio::spawn(run(partition.clone(), index.clone()));
    *lock(&index.task) = Some(task);
}

/// Runs `f` on the blocking pool with the writer, giving it back. A panic drops the writer
/// (releasing its lock) and becomes an error: the caller reopens from the last commit.
async fn blocking(
    mut w: Writer,
    f: impl FnOnce(&mut Writer) -> tantivy::Result<()> + Send + 'static,
) -> tantivy::Result<Writer> {
    tokio::task::spawn_blocking(move || f(&mut w).map(|()| w))
        .await
        .map_err(|e| tantivy::TantivyError::InternalError(format!("indexing panicked: {e}")))?
}

async fn run(partition: Arc<Partition>, index: Arc<PartitionIndex>) {
    let mut stop = index.stop.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        let opened = {
            let (dir, index) = (index.dir.clone(), index.clone());
            tokio::task::spawn_blocking(move || Writer::open(&dir, &index.counters)).await
        };
        let writer = match opened {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                tracing::warn!(topic = partition.topic(), partition = partition.id(), error = %e, "search index cannot be opened; retrying");
                let _ = tokio::time::timeout(RETRY_AFTER, stop.changed()).await;
                continue;
            }
            Err(_) => return,
        };
        index.publish(writer.snapshot());
        match feed(&partition, &index, writer, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(topic = partition.topic(), partition = partition.id(), error = %e, "indexing failed; reopening the index from its last commit");
                let _ = tokio::time::timeout(RETRY_AFTER, stop.changed()).await;
            }
        }
    }
}

/// Indexes committed records until told to stop (`Ok`) or an error (the writer is dropped
/// then, and the caller reopens from the last commit).
async fn feed(
    partition: &Arc<Partition>,
    index: &Arc<PartitionIndex>,
    mut w: Writer,
    stop: &mut watch::Receiver<bool>,
) -> tantivy::Result<()> {
    let mut high_watermark = partition.subscribe();
    let mut wanted = index.wanted.subscribe();
    let mut last_commit = Instant::now();
    loop {
        if *stop.borrow() {
            let index = index.clone();
            tokio::task::spawn_blocking(move || w.close(&index.counters))
                .await
                .map_err(|e| tantivy::TantivyError::InternalError(e.to_string()))?;
            return Ok(());
        }
        let start = partition.start_offset();
        if start > w.next {
            w.next = start;
        }
        if start > w.deleted_below {
            w.delete_below(start)?;
        }
        let hwm = *high_watermark.borrow_and_update();
        if w.next < hwm {
            let fetched = partition
                .read(w.next, READ_BYTES)
                .map_err(|e| tantivy::TantivyError::InternalError(e.to_string()))?;
            // The read is bounded by the high watermark when it ran, which may be past
            // `hwm`: every record it returned is committed.
            let end = fetched.next_offset;
            let (pid, i) = (partition.id(), index.clone());
            w = blocking(w, move |w| {
                w.add(&fetched.batches, end, pid, &i.projection, &i.counters)
            })
            .await?;
        }
        let searched = *wanted.borrow_and_update();
        if w.due(partition.is_leader(), searched, last_commit) {
            let i = index.clone();
            w = blocking(w, move |w| w.commit(&i.counters)).await?;
            last_commit = Instant::now();
            index.publish(w.snapshot());
        }
        if w.next >= *high_watermark.borrow() {
            // Caught up: wait for more, for a commit to fall due, for a search, or the stop.
            let wait = w.until_due(partition.is_leader(), searched, last_commit);
            tokio::select! {
                _ = high_watermark.changed() => {}
                _ = wanted.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
