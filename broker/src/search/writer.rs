//! The writing side of a partition index: opening it (or rebuilding it when it is missing
//! or unusable), adding the documents of committed batches, deleting what retention removed,
//! and committing with the offset indexing resumes from as payload, on a cadence that keeps
//! searches fresh and the segment count bounded.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_storage::RecordBatch;
use tantivy::indexer::{IndexWriterOptions, LogMergePolicy};
use tantivy::query::RangeQuery;
use tantivy::schema::Term;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy};

use super::index::{IndexCounters, IndexSnapshot};
use super::schema::{Projection, SCHEMA, document};

/// How long documents may wait for a commit on a leader when nobody searches (a search
/// asks for a commit of what it needs at once: see [`PartitionIndex::wait_searchable`]).
/// Every commit writes a new segment at a fixed cost (about 5-10 ms of CPU), so commits on a
/// timer are kept rare.
const LEADER_COMMIT_EVERY: Duration = Duration::from_secs(2);
/// The same on a follower, which only needs to keep up for a fail-over.
const FOLLOWER_COMMIT_EVERY: Duration = Duration::from_secs(5);
/// A search asks for a commit at most this often per partition.
const MIN_COMMIT_GAP: Duration = Duration::from_millis(20);
/// Commit at once when this many documents are pending.
const COMMIT_DOCS: usize = 50_000;
/// Above this many segments, commits are spaced out so merges catch up.
const MAX_SEGMENTS: usize = 24;
/// How often an idle indexer looks for records that retention deleted.
pub(super) const IDLE_CHECK: Duration = Duration::from_secs(5);

/// The commit payload.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Payload {
    /// Offset after the last record indexed.
    upto: u64,
    /// Records below this offset were deleted (retention).
    #[serde(default)]
    deleted_below: u64,
}

/// Indexes the records of `batches` into a fresh index in `dir` exactly as a replica's task
/// does (same schema, writer settings and document building), committing every
/// `commit_every` documents and at the end; returns the documents indexed. For benchmarks
/// and tools: the broker itself never calls it.
pub fn index_batches(
    dir: &Path,
    batches: &[bytes::Bytes],
    fields: &[String],
    commit_every: usize,
) -> Result<u64, String> {
    let counters = IndexCounters::default();
    let mut w = Writer::open(dir, &counters).map_err(|e| e.to_string())?;
    let projection = Projection::new(fields);
    for chunk in batches.chunks(commit_every.div_ceil(100).max(1)) {
        let end = chunk
            .last()
            .and_then(|b| RecordBatch::from_bytes(b.clone()).ok())
            .map_or(w.next, |b| b.last_offset() + 1);
        w.add(chunk, end, 0, &projection, &counters)
            .map_err(|e| e.to_string())?;
        w.commit(&counters).map_err(|e| e.to_string())?;
    }
    let documents = counters.documents.load(Ordering::Relaxed);
    w.close(&counters);
    Ok(documents)
}

/// Why an existing index was not opened.
enum Unusable {
    /// Its files cannot be used: it is rebuilt from the log.
    Damaged(String),
    /// Another writer holds its lock.
    Locked(tantivy::TantivyError),
}

/// The writing side, owned by the task (moved into blocking sections and back).
pub(super) struct Writer {
    writer: IndexWriter,
    reader: IndexReader,
    /// Offset of the next record to index.
    pub(super) next: u64,
    /// Offset the last commit covers.
    committed_upto: u64,
    pub(super) deleted_below: u64,
    pending: usize,
    first_pending: Option<Instant>,
    deletes_pending: bool,
}

impl Writer {
    /// Opens the index in `dir`, or rebuilds it when it is missing or unusable.
    pub(super) fn open(dir: &Path, counters: &IndexCounters) -> tantivy::Result<Writer> {
        match Self::open_existing(dir) {
            Ok(Some(w)) => return Ok(w),
            Ok(None) => {}
            // Another writer still holds it (one being closed): open again later, do not
            // throw the index away.
            Err(Unusable::Locked(e)) => return Err(e),
            Err(Unusable::Damaged(reason)) => {
                tracing::warn!(dir = %dir.display(), %reason, "search index unusable; rebuilding it from the log");
                counters.rebuilds.fetch_add(1, Ordering::Relaxed);
                std::fs::remove_dir_all(dir)?;
            }
        }
        std::fs::create_dir_all(dir)?;
        let index = Index::create_in_dir(dir, SCHEMA.0.clone())?;
        Self::with_index(index, Payload::default())
    }

    /// `Ok(None)`: there is no index yet.
    fn open_existing(dir: &Path) -> std::result::Result<Option<Writer>, Unusable> {
        let damaged = |e: &dyn std::fmt::Display| Unusable::Damaged(e.to_string());
        if !dir.join("meta.json").exists() {
            if dir.exists() {
                return Err(damaged(&"no meta.json"));
            }
            return Ok(None);
        }
        let index = Index::open_in_dir(dir).map_err(|e| damaged(&e))?;
        if index.schema() != SCHEMA.0 {
            return Err(damaged(&"schema differs"));
        }
        let metas = index.load_metas().map_err(|e| damaged(&e))?;
        let payload = match metas.payload {
            Some(p) => serde_json::from_str::<Payload>(&p).map_err(|e| damaged(&e))?,
            None if metas.segments.is_empty() => Payload::default(),
            None => return Err(damaged(&"documents without a payload")),
        };
        let w = Self::with_index(index, payload).map_err(|e| match e {
            e @ tantivy::TantivyError::LockFailure(..) => Unusable::Locked(e),
            e => damaged(&e),
        })?;
        // Opening every segment reader reads their footers and term dictionaries' headers.
        let searcher = w.reader.searcher();
        for segment in searcher.segment_readers() {
            segment.fast_fields().u64("offset").map_err(|e| {
                Unusable::Damaged(format!("segment {:?}: {e}", segment.segment_id()))
            })?;
        }
        Ok(Some(w))
    }

    fn with_index(index: Index, payload: Payload) -> tantivy::Result<Writer> {
        let options = IndexWriterOptions::builder()
            .num_worker_threads(1)
            .num_merge_threads(1)
            .build();
        let writer: IndexWriter = index.writer_with_options(options)?;
        let mut policy = LogMergePolicy::default();
        policy.set_min_num_segments(4);
        policy.set_del_docs_ratio_before_merge(0.3);
        writer.set_merge_policy(Box::new(policy));
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Writer {
            writer,
            reader,
            next: payload.upto,
            committed_upto: payload.upto,
            deleted_below: payload.deleted_below,
            pending: 0,
            first_pending: None,
            deletes_pending: false,
        })
    }

    pub(super) fn snapshot(&self) -> Arc<IndexSnapshot> {
        Arc::new(IndexSnapshot {
            searcher: self.reader.searcher(),
            upto: self.next,
        })
    }

    /// Adds the records of `[self.next, end)` in `batches`; `end` is where the read stopped.
    /// Records from `end` on are left for the next call, which starts there: indexing them
    /// now would index them twice.
    pub(super) fn add(
        &mut self,
        batches: &[bytes::Bytes],
        end: u64,
        partition: u32,
        projection: &Projection,
        counters: &IndexCounters,
    ) -> tantivy::Result<()> {
        let mut bytes = 0u64;
        let mut docs = 0u64;
        for raw in batches {
            let batch = match RecordBatch::from_bytes(raw.clone()) {
                Ok(b) => b,
                Err(e) => {
                    // The log verified it; this would be a bug, not bad input.
                    tracing::error!(error = %e, "unreadable batch skipped by the indexer");
                    continue;
                }
            };
            if batch.is_control() {
                continue;
            }
            for record in batch.records() {
                if record.offset < self.next || record.offset >= end {
                    continue;
                }
                self.writer
                    .add_document(document(partition, &record, projection))?;
                bytes += record.value.map_or(0, |v| v.len() as u64);
                docs += 1;
            }
        }
        self.next = self.next.max(end);
        if docs > 0 {
            self.pending += docs as usize;
            self.first_pending.get_or_insert_with(Instant::now);
            counters.documents.fetch_add(docs, Ordering::Relaxed);
            counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Deletes the documents of records below `start` (removed by retention).
    pub(super) fn delete_below(&mut self, start: u64) -> tantivy::Result<()> {
        if start <= self.deleted_below {
            return Ok(());
        }
        let f = &SCHEMA.1;
        self.writer.delete_query(Box::new(RangeQuery::new(
            std::ops::Bound::Unbounded,
            std::ops::Bound::Excluded(Term::from_field_u64(f.offset, start)),
        )))?;
        self.deleted_below = start;
        self.deletes_pending = true;
        Ok(())
    }

    pub(super) fn due(&self, leader: bool, wanted: u64, last_commit: Instant) -> bool {
        if self.deletes_pending {
            return true;
        }
        // A search waits for records (or control records) this commit would cover.
        if self.searched_soon(wanted) && last_commit.elapsed() >= MIN_COMMIT_GAP {
            return true;
        }
        let Some(first) = self.first_pending else {
            return false;
        };
        self.pending >= COMMIT_DOCS || first.elapsed() >= self.commit_every(leader)
    }

    /// How long documents may wait for a commit on the timer.
    fn commit_every(&self, leader: bool) -> Duration {
        let every = if leader {
            LEADER_COMMIT_EVERY
        } else {
            FOLLOWER_COMMIT_EVERY
        };
        // Back-pressure on segments: while merges lag, commit less often (bigger segments).
        let segments = self.reader.searcher().segment_readers().len();
        if segments > MAX_SEGMENTS {
            every * ((segments / MAX_SEGMENTS + 1) as u32 * 2)
        } else {
            every
        }
    }

    /// How long the task may sleep once caught up before a commit falls due.
    pub(super) fn until_due(&self, leader: bool, wanted: u64, last_commit: Instant) -> Duration {
        let mut wait = self.first_pending.map_or(IDLE_CHECK, |first| {
            self.commit_every(leader).saturating_sub(first.elapsed())
        });
        if self.searched_soon(wanted) {
            wait = wait.min(MIN_COMMIT_GAP.saturating_sub(last_commit.elapsed()));
        }
        wait
    }

    /// Whether a search waits for records a commit now would make searchable.
    fn searched_soon(&self, wanted: u64) -> bool {
        wanted > self.committed_upto && self.next > self.committed_upto
    }

    pub(super) fn commit(&mut self, counters: &IndexCounters) -> tantivy::Result<()> {
        let payload = serde_json::to_string(&Payload {
            upto: self.next,
            deleted_below: self.deleted_below,
        })
        .map_err(|e| tantivy::TantivyError::InternalError(e.to_string()))?;
        let started = Instant::now();
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.reader.reload()?;
        self.pending = 0;
        self.committed_upto = self.next;
        self.first_pending = None;
        self.deletes_pending = false;
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters
            .commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn close(mut self, counters: &IndexCounters) {
        if (self.pending > 0 || self.deletes_pending)
            && let Err(e) = self.commit(counters)
        {
            tracing::warn!(error = %e, "last search commit failed; indexing resumes from the one before");
        }
        if let Err(e) = self.writer.wait_merging_threads() {
            tracing::debug!(error = %e, "search merges did not finish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::index::INDEX_DIR;
    use strata_storage::{BatchBuilder, NewRecord};

    fn batches(n: u64) -> Vec<bytes::Bytes> {
        (0..n)
            .map(|i| {
                let mut b = BatchBuilder::new();
                let v = format!(r#"{{"n":{i},"level":"error"}}"#);
                b.push(NewRecord::value(1_000 + i as i64, v.as_bytes()))
                    .unwrap();
                let mut raw = b.finish().unwrap().as_bytes().to_vec();
                raw[..8].copy_from_slice(&i.to_le_bytes());
                bytes::Bytes::from(raw)
            })
            .collect()
    }

    #[test]
    fn a_search_gets_a_commit_for_control_records_too_and_an_idle_writer_sleeps() {
        let dir = tempfile::tempdir().unwrap();
        let counters = IndexCounters::default();
        let mut w = Writer::open(&dir.path().join(INDEX_DIR), &counters).unwrap();
        let mut b = BatchBuilder::new().control();
        b.push(NewRecord::value(1_000, b"start")).unwrap();
        let control = bytes::Bytes::from(b.finish().unwrap().as_bytes().to_vec());
        w.add(&[control], 1, 0, &Projection::default(), &counters)
            .unwrap();
        assert_eq!((w.next, w.pending), (1, 0));
        let long_ago = Instant::now() - Duration::from_secs(1);
        // Nobody searches: nothing is due and the task sleeps.
        assert!(!w.due(true, 0, long_ago));
        assert_eq!(w.until_due(true, 0, long_ago), IDLE_CHECK);
        // A search wants offset 1: the commit is due at once, without documents.
        assert!(w.due(true, 1, long_ago));
        assert_eq!(w.until_due(true, 1, long_ago), Duration::ZERO);
        w.commit(&counters).unwrap();
        assert!(!w.due(true, 1, long_ago));
        assert_eq!(w.until_due(true, 1, long_ago), IDLE_CHECK);
        w.close(&counters);
    }

    #[test]
    fn records_past_where_a_read_stopped_are_indexed_once() {
        // The feed read batches 0..10 with a high watermark that had moved on to 10 since
        // it looked (6): the next read starts at 6, and 6..10 must not be there twice.
        let dir = tempfile::tempdir().unwrap();
        let counters = IndexCounters::default();
        let mut w = Writer::open(&dir.path().join(INDEX_DIR), &counters).unwrap();
        let all = batches(10);
        w.add(&all, 6, 0, &Projection::default(), &counters)
            .unwrap();
        assert_eq!(w.next, 6);
        w.add(&all[6..], 10, 0, &Projection::default(), &counters)
            .unwrap();
        w.commit(&counters).unwrap();
        assert_eq!((w.next, w.reader.searcher().num_docs()), (10, 10));
        w.close(&counters);
    }

    #[test]
    fn a_commit_records_where_indexing_resumes_and_a_damaged_index_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_DIR);
        assert_eq!(index_batches(&path, &batches(250), &[], 100).unwrap(), 250);
        let counters = IndexCounters::default();
        let w = Writer::open(&path, &counters).unwrap();
        assert_eq!((w.next, w.reader.searcher().num_docs()), (250, 250));
        assert_eq!(counters.rebuilds.load(Ordering::Relaxed), 0);
        w.close(&counters);

        // A torn meta.json: the index is deleted and indexing starts again from the log.
        std::fs::write(path.join("meta.json"), b"{\"segments\": [").unwrap();
        let w = Writer::open(&path, &counters).unwrap();
        assert_eq!((w.next, w.reader.searcher().num_docs()), (0, 0));
        assert_eq!(counters.rebuilds.load(Ordering::Relaxed), 1);
        w.close(&counters);

        // Held by another writer: an error to retry on, and the index is kept.
        let w = Writer::open(&path, &counters).unwrap();
        assert!(matches!(
            Writer::open(&path, &counters),
            Err(tantivy::TantivyError::LockFailure(..))
        ));
        assert_eq!(counters.rebuilds.load(Ordering::Relaxed), 1);
        w.close(&counters);

        // A segment file gone: the same.
        index_batches(&dir.path().join("b"), &batches(10), &[], 100).unwrap();
        let b = dir.path().join("b");
        for entry in std::fs::read_dir(&b).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "fast") {
                std::fs::remove_file(p).unwrap();
            }
        }
        let w = Writer::open(&b, &counters).unwrap();
        assert_eq!(w.next, 0);
        assert_eq!(counters.rebuilds.load(Ordering::Relaxed), 2);
        w.close(&counters);
    }
}
