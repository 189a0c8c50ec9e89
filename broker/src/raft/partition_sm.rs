//! The partition state machine.
//!
//! The records are in the log, so applying a committed batch only moves the partition's
//! state: the offset after the last committed record (the high watermark consumers read up
//! to) and the producers' recent sequence numbers for idempotent produce. That state, a few
//! hundred bytes of JSON, is the whole snapshot; a replica behind the retention point installs
//! it and continues from the leader's log start.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use serde::{Deserialize, Serialize};
use strata_storage::PartitionLog;

use crate::agg::{Control, PartitionAggs};

use super::snapshot::{MachineState, Position, Snapshots, StateSnapshotBuilder};
use super::store::SnapshotHint;
use super::{Applied, RaftLogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::sync::lock;

/// Recent batches remembered per producer, as in Kafka: a retry of any of the last five
/// batches is answered with its original offsets.
pub const PRODUCER_WINDOW: usize = 5;

/// One batch a producer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// Sequence number of its first record.
    pub first_seq: i32,
    /// Sequence number of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub base_offset: u64,
}

/// What a partition remembers about an idempotent producer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    /// The producer's epoch; batches from older epochs are fenced.
    pub epoch: i16,
    /// Its last batches, oldest first.
    pub batches: VecDeque<SeqRange>,
}

/// How a batch's sequence numbers relate to what the partition has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Not seen before and in order (or from a non-idempotent producer): append it.
    New,
    /// A retry of a batch already written at this base offset: answer with it.
    Duplicate {
        /// Offset of its first record.
        base_offset: u64,
    },
    /// A gap, or a retry older than the remembered window.
    OutOfOrder {
        /// The sequence number the partition expects next.
        expected: i32,
    },
    /// The producer's epoch is older than one already seen.
    Fenced {
        /// The current epoch.
        epoch: i16,
    },
}

/// The replicated state of a partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Where it stands in the log; `next_offset` is the high watermark.
    pub position: Position,
    /// Idempotent producers by id.
    pub producers: BTreeMap<i64, ProducerState>,
    /// Aggregations running in the partition. At run time they live behind their own lock
    /// ([`PartitionSm::aggs`], so folding never holds up the produce path's producer check);
    /// this field carries them in snapshots.
    #[serde(default)]
    pub aggs: PartitionAggs,
}

impl MachineState for PartitionState {
    fn position(&self) -> &Position {
        &self.position
    }
    fn position_mut(&mut self) -> &mut Position {
        &mut self.position
    }
}

impl PartitionState {
    /// Checks a batch of `count` records from `producer_id` at `epoch`, first sequence
    /// `base_seq`, against what is applied.
    pub fn check_sequence(
        &self,
        producer_id: i64,
        epoch: i16,
        base_seq: i32,
        count: u32,
    ) -> SeqCheck {
        if producer_id < 0 || base_seq < 0 {
            return SeqCheck::New;
        }
        let Some(p) = self.producers.get(&producer_id) else {
            return SeqCheck::New;
        };
        check_against(p, epoch, base_seq, count)
    }

    fn record(
        &mut self,
        producer_id: i64,
        epoch: i16,
        base_seq: i32,
        count: u32,
        base_offset: u64,
    ) {
        if producer_id < 0 || base_seq < 0 || count == 0 {
            return;
        }
        let p = self.producers.entry(producer_id).or_default();
        if epoch != p.epoch {
            p.epoch = epoch;
            p.batches.clear();
        }
        p.batches.push_back(SeqRange {
            first_seq: base_seq,
            last_seq: last_seq(base_seq, count),
            base_offset,
        });
        while p.batches.len() > PRODUCER_WINDOW {
            p.batches.pop_front();
        }
    }
}

/// The sequence number of the last record of a batch of `count` records from `base_seq`.
pub fn last_seq(base_seq: i32, count: u32) -> i32 {
    // Sequences wrap at i32::MAX as in Kafka.
    ((i64::from(base_seq) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1)) as i32
}

/// The sequence after `seq`.
pub fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// Checks a batch against one producer's state.
pub fn check_against(p: &ProducerState, epoch: i16, base_seq: i32, count: u32) -> SeqCheck {
    if epoch < p.epoch {
        return SeqCheck::Fenced { epoch: p.epoch };
    }
    if epoch > p.epoch {
        return if base_seq == 0 {
            SeqCheck::New
        } else {
            SeqCheck::OutOfOrder { expected: 0 }
        };
    }
    let last = last_seq(base_seq, count);
    if let Some(b) = p
        .batches
        .iter()
        .find(|b| b.first_seq == base_seq && b.last_seq == last)
    {
        return SeqCheck::Duplicate {
            base_offset: b.base_offset,
        };
    }
    let expected = p.batches.back().map_or(0, |b| next_seq(b.last_seq));
    if base_seq == expected {
        SeqCheck::New
    } else {
        SeqCheck::OutOfOrder { expected }
    }
}

/// A partition's state machine. The state is shared (behind a mutex) with the partition's
/// leader, which checks producer sequences before proposing.
pub struct PartitionSm {
    state: Arc<Mutex<PartitionState>>,
    aggs: Arc<Mutex<PartitionAggs>>,
    snapshots: Snapshots,
    hint: SnapshotHint,
    log: PartitionLog,
}

impl std::fmt::Debug for PartitionSm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionSm")
            .field("snapshots", &self.snapshots)
            .finish_non_exhaustive()
    }
}

impl PartitionSm {
    /// The state machine of the group whose files and log are `dir` and `log`; it records
    /// snapshot ends in `hint` and publishes the high watermark through it.
    pub fn open(dir: &Path, hint: SnapshotHint, log: PartitionLog) -> io::Result<PartitionSm> {
        Ok(PartitionSm {
            state: Arc::new(Mutex::new(PartitionState::default())),
            aggs: Arc::new(Mutex::new(PartitionAggs::default())),
            snapshots: Snapshots::open(dir, hint.clone())?,
            hint,
            log,
        })
    }

    /// The shared state.
    pub fn state(&self) -> Arc<Mutex<PartitionState>> {
        self.state.clone()
    }

    /// The aggregations, shared.
    pub fn aggs(&self) -> Arc<Mutex<PartitionAggs>> {
        self.aggs.clone()
    }
}

impl RaftStateMachine<TypeConfig> for PartitionSm {
    type SnapshotData = Bytes;
    type SnapshotBuilder = StateSnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<RaftLogId>, StoredMembership)> {
        Ok(lock(&self.state).position.applied_state())
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: futures_util::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        let mut to_fold = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let applied = {
                let mut s = lock(&self.state);
                match s.position.advance(&entry) {
                    None => Applied::None,
                    Some(batch) => {
                        let base_offset = batch.base_offset();
                        if !batch.is_control() {
                            s.record(
                                batch.producer_id(),
                                batch.producer_epoch(),
                                batch.base_sequence(),
                                batch.record_count(),
                                base_offset,
                            );
                        }
                        to_fold.push(batch.clone());
                        Applied::Appended { base_offset }
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        let next_offset = lock(&self.state).position.next_offset;
        self.hint.publish(next_offset);
        // Aggregations fold after the answers and the high watermark went out, so neither a
        // producer's acknowledgement nor a consumer waits for them; they are done before the
        // next apply (and so before any snapshot). Under their own lock, not the state's.
        if !to_fold.is_empty() {
            let mut aggs = lock(&self.aggs);
            for batch in &to_fold {
                if !batch.is_control() {
                    if !aggs.is_empty() {
                        aggs.fold_batch(batch, None, 0);
                    }
                    continue;
                }
                let base_offset = batch.base_offset();
                match Control::from_batch(batch) {
                    Some(control) => {
                        if let Some((id, from, to)) = aggs.control(control, base_offset) {
                            backfill(&self.log, &mut aggs, id, from, to);
                        }
                    }
                    None => {
                        tracing::warn!(offset = base_offset, "unreadable control batch left out")
                    }
                }
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> StateSnapshotBuilder {
        let mut state = lock(&self.state).clone();
        state.aggs = lock(&self.aggs).clone();
        self.snapshots.builder(&state)
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: Bytes) -> io::Result<()> {
        let mut state: PartitionState = self.snapshots.install(meta, data, "partition").await?;
        *lock(&self.aggs) = std::mem::take(&mut state.aggs);
        let next_offset = state.position.next_offset;
        *lock(&self.state) = state;
        // A snapshot past the log's end: openraft restarts the log after it next, and the
        // log store publishes the watermark then; until then reads stay below the old one.
        if self.log.state().next_offset >= next_offset {
            self.hint.publish(next_offset);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(self.snapshots.current().await)
    }
}

/// Folds the records of `[from, to)` in the local log into aggregation `id` (the backfill
/// its start record asked for). A replica whose log starts after `from` (retention) folds
/// what it still has.
fn backfill(log: &PartitionLog, aggs: &mut PartitionAggs, id: u64, from: u64, to: u64) {
    let mut offset = from.max(log.state().start_offset);
    while offset < to {
        let fetched = match log.read_bounded(offset, 1 << 20, to) {
            Ok(f) if !f.batches.is_empty() => f,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(aggregation = id, offset, error = %e, "backfill stopped early");
                break;
            }
        };
        for bytes in fetched.batches {
            match strata_storage::RecordBatch::from_bytes(bytes) {
                Ok(batch) if !batch.is_control() => aggs.fold_batch(&batch, Some(id), from),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(aggregation = id, offset, error = %e, "backfill skipped a damaged batch")
                }
            }
        }
        offset = fetched.next_offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_its_snapshot_json() {
        let mut state = PartitionState::default();
        state.position.next_offset = 42;
        state.record(7, 1, 0, 3, 39);
        state.record(-1, -1, -1, 2, 40);
        let json = serde_json::to_vec(&state).unwrap();
        let back: PartitionState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(
            back.check_sequence(7, 1, 0, 3),
            SeqCheck::Duplicate { base_offset: 39 }
        );
    }
}
