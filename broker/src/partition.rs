//! A partition replica: its log, its high watermark, and the append and read paths.
//!
//! The high watermark is the offset after the last record consumers may read: durable under
//! the node's fsync policy (with replication, committed by a majority). It is published on
//! a `watch` channel so that long-polling fetches wake as soon as it moves. Appends go
//! through [`Partition::append`]; the replication issue puts Raft behind that call without
//! changing its callers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1;
use strata_storage::{EntryBody, Fetched, LogConfig, PartitionLog, RecordBatch, RetentionPolicy};
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};

/// When a produce is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Once durable (the default).
    All,
    /// Once appended by the leader, before it is durable.
    Leader,
}

impl From<v1::Acks> for Acks {
    fn from(a: v1::Acks) -> Self {
        match a {
            v1::Acks::Leader => Acks::Leader,
            v1::Acks::All | v1::Acks::Unspecified => Acks::All,
        }
    }
}

/// A partition of a topic on this node.
pub struct Partition {
    topic: Arc<str>,
    id: u32,
    log: PartitionLog,
    high_watermark: Arc<watch::Sender<u64>>,
    /// The node that leads it (this one, on a single node) and its Raft term.
    leader: u64,
    term: u64,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Facts about a partition for `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Partition id.
    pub id: u32,
    /// Leading node.
    pub leader: u64,
    /// First offset still in the log.
    pub start_offset: u64,
    /// Offset after the last readable record.
    pub high_watermark: u64,
    /// Offset the next record gets.
    pub next_offset: u64,
    /// Bytes of its segments.
    pub bytes: u64,
    /// Number of segments.
    pub segments: u32,
}

impl Partition {
    /// Opens (or creates) the partition's log in `dir`.
    pub(crate) fn open(
        dir: &Path,
        topic: Arc<str>,
        id: u32,
        config: LogConfig,
        node_id: u64,
    ) -> Result<Self> {
        let log =
            PartitionLog::open(dir, config).map_err(|e| Error::from_storage(&topic, id, e))?;
        let state = log.state();
        let term = state.last_log_id.map_or(1, |l| l.term.max(1));
        let (high_watermark, _) = watch::channel(state.readable_end_offset);
        Ok(Partition {
            topic,
            id,
            log,
            high_watermark: Arc::new(high_watermark),
            leader: node_id,
            term,
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The leading node.
    pub fn leader(&self) -> u64 {
        self.leader
    }

    /// Appends validated batches in order; answers with each batch's base offset once `acks`
    /// is met. With `Acks::All` a batch that is not durable within `timeout` is answered
    /// with [`Error::Timeout`] (it may still become durable).
    pub async fn append(
        &self,
        batches: Vec<RecordBatch>,
        acks: Acks,
        timeout: Duration,
    ) -> Result<Vec<u64>> {
        let counts: Vec<u64> = batches
            .iter()
            .map(|b| u64::from(b.record_count()))
            .collect();
        let bodies = batches.into_iter().map(EntryBody::Data).collect();
        let appending = self
            .log
            .append_all(self.term, self.leader, bodies)
            .map_err(|e| self.storage_error(e))?;
        let mut base_offsets = Vec::with_capacity(counts.len());
        let mut next = appending.first.base_offset;
        for count in counts {
            base_offsets.push(next);
            next += count;
        }
        let end = next;
        let (done_tx, done_rx) = oneshot::channel();
        let high_watermark = self.high_watermark.clone();
        appending.on_durable(move |result| {
            if result.is_ok() {
                // Durable entries are readable, in order; the mark only moves forward.
                high_watermark.send_if_modified(|hw| {
                    let moved = end > *hw;
                    *hw = (*hw).max(end);
                    moved
                });
            }
            let _ = done_tx.send(result);
        });
        if acks == Acks::Leader {
            return Ok(base_offsets);
        }
        match tokio::time::timeout(timeout, done_rx).await {
            Ok(Ok(Ok(()))) => Ok(base_offsets),
            Ok(Ok(Err(e))) => Err(self.storage_error(e)),
            Ok(Err(_)) => Err(Error::Unavailable(format!(
                "{}/{} closed before the append was durable",
                self.topic, self.id
            ))),
            Err(_) => Err(Error::Timeout(format!(
                "append to {}/{} not durable after {timeout:?}",
                self.topic, self.id
            ))),
        }
    }

    /// Reads whole batches from `offset`, up to the high watermark and about `max_bytes`.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Fetched> {
        let high_watermark = self.high_watermark();
        self.log
            .read_bounded(offset, max_bytes, high_watermark)
            .map_err(|e| self.storage_error(e))
            .map(|mut f| {
                f.end_offset = high_watermark;
                f
            })
    }

    /// Offset after the last readable record.
    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    /// Follows the high watermark.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.high_watermark.subscribe()
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.log.state().start_offset
    }

    /// The first readable offset whose batch holds a record at or after `timestamp_ms`, or
    /// the high watermark if there is none.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64> {
        let found = self
            .log
            .offset_for_timestamp(timestamp_ms)
            .map_err(|e| self.storage_error(e))?;
        let high_watermark = self.high_watermark();
        Ok(found
            .filter(|o| *o < high_watermark)
            .unwrap_or(high_watermark))
    }

    /// Bounds and size.
    pub fn status(&self) -> Result<PartitionStatus> {
        let state = self.log.state();
        let segments = self.log.segments().map_err(|e| self.storage_error(e))?;
        Ok(PartitionStatus {
            id: self.id,
            leader: self.leader,
            start_offset: state.start_offset,
            high_watermark: self.high_watermark(),
            next_offset: state.next_offset,
            bytes: segments.iter().map(|s| s.bytes).sum(),
            segments: segments.len() as u32,
        })
    }

    /// Bytes of the log (cheap: the active segment plus what sealed segments report).
    pub fn log_bytes(&self) -> u64 {
        self.log
            .segments()
            .map(|s| s.iter().map(|s| s.bytes).sum())
            .unwrap_or(0)
    }

    /// Deletes whole old segments as `policy` says; returns the purge point.
    pub fn apply_retention(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<Option<u64>> {
        self.log
            .apply_retention(policy, now_ms)
            .map_err(|e| self.storage_error(e))
    }

    /// Flushes and closes the log; later appends fail.
    pub fn close(&self) -> Result<()> {
        self.log.close().map_err(|e| self.storage_error(e))
    }

    fn storage_error(&self, e: strata_storage::Error) -> Error {
        Error::from_storage(&self.topic, self.id, e)
    }
}
