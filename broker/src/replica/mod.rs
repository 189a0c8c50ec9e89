//! One partition replica on this node: its log (which is its Raft log), its Raft group, its
//! state machine (high watermark, idempotent producers, running aggregations) and its search
//! index handle; the append path (as leader), the read path (any replica), retention and
//! leadership housekeeping.
//!
//! A produce goes `append` → (producer check) → `raft::Group::write_many` → the log; once
//! committed, every replica's `machine` applies it: producer state, high watermark, then the
//! aggregations' fold (`agg`). The search indexer (`search`) follows the high watermark.
//!
//! - `open`: opening a replica (log, machine, group) in its directory;
//! - `intake`: what a produced batch must be (size, validity, timestamps);
//! - `append`: the leader's write path;
//! - `producers`: idempotent producers' batches, applied and in flight;
//! - `machine`: the state machine and its snapshot;
//! - `watermark`: the high-watermark publisher.
//!
//! It imports `raft`, `controller` (addresses for not-leader answers, topic settings),
//! `agg` (the fold state) and `search::index` (the index handle); never the features' tasks,
//! `topics` or the front doors.

mod append;
mod intake;
mod machine;
mod open;
mod producers;
mod watermark;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_storage::{Fetched, LogState, PartitionLog, RetentionPolicy};
use tokio::sync::watch;

use self::producers::ProducerTable;
use crate::agg::PartitionAggs;
use crate::controller::ClusterState;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::raft::{Group, GroupId, GroupStatus, WriteError};
use crate::search::PartitionIndex;

pub use self::intake::ProduceRules;
pub use self::open::{ReplicaOf, ReplicaSettings};
pub use self::producers::{PRODUCER_WINDOW, ProducerState, SeqCheck, SeqRange};
pub use self::watermark::HighWatermark;

/// How long a leader about to answer OFFSET OUT OF RANGE waits for a quorum to confirm it.
const CONFIRM_LEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// A partition of a topic on this node.
pub struct Partition {
    topic: Arc<str>,
    id: u32,
    node_id: u64,
    replicas: Vec<u64>,
    log: PartitionLog,
    group: Group,
    producers: Arc<Mutex<ProducerTable>>,
    aggs: Arc<Mutex<PartitionAggs>>,
    high_watermark: HighWatermark,
    cluster: watch::Receiver<Arc<ClusterState>>,
    search: Option<Arc<PartitionIndex>>,
    /// Set by [`Partition::close`]: the replica is out (taken out after a failure and
    /// reopened as another `Partition`, or moved away); readers holding it must look the
    /// partition up again.
    closed: watch::Sender<bool>,
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
    /// Leading node, when known.
    pub leader: u64,
    /// First offset still in the log.
    pub start_offset: u64,
    /// Offset after the last committed record.
    pub high_watermark: u64,
    /// Offset after the last record in this replica's log (committed or not).
    pub next_offset: u64,
    /// Bytes of its segments.
    pub bytes: u64,
    /// Number of segments.
    pub segments: u32,
}

impl Partition {
    /// Its search index, unless its topic is not indexed.
    pub fn search(&self) -> Option<&Arc<PartitionIndex>> {
        self.search.as_ref()
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its Raft group's id.
    pub fn group_id(&self) -> GroupId {
        self.group.id()
    }

    /// Its replicas; the first is the preferred leader.
    pub fn replicas(&self) -> &[u64] {
        &self.replicas
    }

    /// Why this replica serves nothing until it is reopened, if so: its log failed a flush,
    /// or its Raft core stopped on an error.
    pub fn failure(&self) -> Option<String> {
        (self.log.poisoned().map(|cause| format!("log: {cause}"))).or_else(|| {
            self.group
                .status()
                .stopped
                .map(|why| format!("raft: {why}"))
        })
    }

    /// Under fsync `always`, the index before which its log's entries are known durable.
    pub fn durable_below(&self) -> Option<u64> {
        self.log.durable_next()
    }

    /// Its log's directory.
    pub fn dir(&self) -> &std::path::Path {
        self.log.dir()
    }

    /// Its Raft status.
    pub fn raft_status(&self) -> GroupStatus {
        self.group.status()
    }

    /// The leading node as this replica knows it (the preferred leader if none is known).
    pub fn leader(&self) -> u64 {
        self.current_leader()
            .unwrap_or_else(|| self.replicas.first().copied().unwrap_or(self.node_id))
    }

    /// The leading node, if one is known.
    pub fn current_leader(&self) -> Option<u64> {
        self.group.leader()
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.node_id)
    }

    /// Whether this leader has applied everything of earlier terms (so its state is current).
    pub fn leader_caught_up(&self) -> bool {
        self.group.leads_caught_up()
    }

    /// Waits until this replica knows a leader, for at most `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) {
        self.group
            .wait_until(timeout, |s| s.leader.is_some(), "a leader is known")
            .await;
    }

    fn not_leader(&self, leader: Option<u64>) -> Error {
        let leader = leader.filter(|l| *l != self.node_id);
        let address = leader.and_then(|l| self.cluster.borrow().address_of(l));
        Error::NotLeader {
            what: format!("{}/{}", self.topic, self.id),
            leader,
            address,
        }
    }

    /// Whether this replica may start serving a consumer at `offset`. Only the leader serves
    /// consumers: a follower may be behind (cut off, paused, or just reopened after a failed
    /// disk, its unflushed tail cut) and would answer from an old view. An offset outside
    /// the log is out of range only for a leader that has applied everything committed
    /// before its term; a new leader still catching up answers UNAVAILABLE, since an
    /// out-of-range answer sends consumers back to the earliest offset (found by the fault
    /// suite: committed offsets moving backwards while node 3's disk was full).
    ///
    /// And only for a leader a quorum confirms (ReadIndex) after the offset was found
    /// outside: a leader paused past an election (SIGSTOP) comes back believing it leads,
    /// with its log where it stopped (found by the fault suite, seed 1022: a committed
    /// offset back from 1,477 to 644).
    pub async fn check_consumer_read(&self, offset: u64) -> Result<()> {
        self.check_leads()?;
        let inside = |state: &LogState| (state.start_offset..=state.next_offset).contains(&offset);
        if inside(&self.log.state()) {
            return Ok(());
        }
        if !self.leader_caught_up() {
            return Err(Error::Unavailable(format!(
                "the new leader of {}/{} is catching up; fetch again",
                self.topic, self.id
            )));
        }
        match self.group.ensure_linearizable(CONFIRM_LEAD_TIMEOUT).await {
            Ok(()) => {}
            Err(WriteError::NotLeader(leader)) => return Err(self.not_leader(leader)),
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "{}/{}: no quorum confirmed this leader: {e}; fetch again",
                    self.topic, self.id
                )));
            }
        }
        let state = self.log.state();
        if inside(&state) {
            return Ok(());
        }
        Err(Error::OffsetOutOfRange {
            topic: self.topic.to_string(),
            partition: self.id,
            offset,
            start: state.start_offset,
            end: self.high_watermark(),
        })
    }

    /// NOT_LEADER, with the leader's address when known, unless this replica leads.
    pub fn check_leads(&self) -> Result<()> {
        match self.current_leader() {
            Some(leader) if leader == self.node_id => Ok(()),
            leader => Err(self.not_leader(leader)),
        }
    }

    /// Reads whole batches from `offset`, up to the high watermark and about `max_bytes`.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Fetched> {
        if *self.closed.borrow() {
            return Err(Error::Unavailable(format!(
                "the replica of {}/{} on this node was closed (reopened after a failure, or moved); fetch again",
                self.topic, self.id
            )));
        }
        let high_watermark = self.high_watermark();
        self.log
            .read_bounded(offset, max_bytes, high_watermark)
            .map_err(|e| self.storage_error(e))
            .map(|mut f| {
                f.end_offset = high_watermark;
                f
            })
    }

    /// Offset after the last committed record.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.get()
    }

    /// Follows the high watermark.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.high_watermark.subscribe()
    }

    /// Follows whether the replica was closed ([`Partition::close`]).
    pub fn subscribe_closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.log.state().start_offset
    }

    /// Offset after the last record in this replica's log, committed or not.
    pub fn next_offset(&self) -> u64 {
        self.log.state().next_offset
    }

    /// The first committed offset whose batch holds a record at or after `timestamp_ms`, or
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
            leader: self.leader(),
            start_offset: state.start_offset,
            high_watermark: self.high_watermark(),
            next_offset: state.next_offset,
            bytes: segments.iter().map(|s| s.bytes).sum(),
            segments: segments.len() as u32,
        })
    }

    /// Idempotent producers the replica remembers.
    pub fn idempotent_producers(&self) -> usize {
        lock(&self.producers).len()
    }

    /// Bytes of the log (cheap: the active segment plus what sealed segments report).
    pub fn log_bytes(&self) -> u64 {
        self.log
            .segments()
            .map(|s| s.iter().map(|s| s.bytes).sum())
            .unwrap_or(0)
    }

    /// Reads the partition's aggregation state.
    pub fn with_aggs<R>(&self, f: impl FnOnce(&PartitionAggs) -> R) -> R {
        f(&lock(&self.aggs))
    }

    /// Applies retention: finds the purge point, makes sure a snapshot covers it, and asks
    /// Raft to purge up to it. Returns the purge point.
    pub async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_ms: i64,
    ) -> Result<Option<u64>> {
        let Some(point) = self
            .log
            .retention_point(policy, now_ms)
            .map_err(|e| self.storage_error(e))?
        else {
            return Ok(None);
        };
        let snapshot = self.group.status().snapshot_index;
        if snapshot.is_none_or(|s| s < point) {
            self.group.snapshot().await;
            let covered = self
                .group
                .wait_until(
                    Duration::from_secs(10),
                    |s| s.snapshot_index.is_some_and(|i| i >= point),
                    "snapshot covers the retention point",
                )
                .await;
            if covered.is_none() {
                return Ok(None);
            }
        }
        self.group.purge(point).await?;
        Ok(Some(point))
    }

    /// As leader, hands leadership back to the preferred replica (the first) once it holds
    /// everything this replica's log does, so that leaders stay spread evenly. Returns
    /// whether it asked for the transfer.
    pub async fn restore_preferred_leader(&self) -> bool {
        let Some(&preferred) = self.replicas.first() else {
            return false;
        };
        if preferred == self.node_id || !self.is_leader() {
            return false;
        }
        let status = self.group.status();
        let caught_up = status
            .replication
            .as_ref()
            .and_then(|r| r.get(&preferred).copied())
            .flatten()
            .is_some_and(|matched| Some(matched) == status.last_log_index);
        if caught_up {
            tracing::info!(topic = %self.topic, partition = self.id, to = preferred, "moving leadership to the preferred replica");
            self.group.transfer_leader(preferred).await;
        }
        caught_up
    }

    /// Stops the search indexer and the Raft group, then flushes and closes the log; later
    /// appends fail.
    pub async fn close(&self) -> Result<()> {
        self.closed.send_replace(true);
        if let Some(search) = &self.search {
            search.stop().await;
        }
        if let Err(e) = self.group.shutdown().await {
            tracing::warn!(topic = %self.topic, partition = self.id, error = %e, "raft group did not stop cleanly");
        }
        self.log.close().map_err(|e| self.storage_error(e))
    }

    fn storage_error(&self, e: strata_storage::Error) -> Error {
        Error::from_storage(&self.topic, self.id, e)
    }
}
