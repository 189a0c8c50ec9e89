//! The partition state machine.
//!
//! The records are in the log, so applying a committed batch only moves the partition's
//! state: the offset after the last committed record (the high watermark consumers read up
//! to) and the producers' recent sequence numbers for idempotent produce. That state, a few
//! hundred bytes of JSON, is the whole snapshot; a replica behind the retention point installs
//! it and continues from the leader's log start.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::TryStreamExt;
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::store::SnapshotHint;
use super::{Applied, RaftLogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// Recent batches remembered per producer, as in Kafka: a retry of any of the last five
/// batches is answered with its original offsets.
pub const PRODUCER_WINDOW: usize = 5;

const SNAPSHOT_FILE: &str = "raft-snapshot.json";

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
    /// The last entry applied.
    pub last_applied: Option<RaftLogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
    /// Offset the next record gets: the high watermark.
    pub next_offset: u64,
    /// Idempotent producers by id.
    pub producers: BTreeMap<i64, ProducerState>,
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

fn last_seq(base_seq: i32, count: u32) -> i32 {
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

/// A stored snapshot: its description and the state's JSON.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: String,
}

/// The current snapshot of a group, kept in memory and in `raft-snapshot.json`.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    dir: PathBuf,
    current: Option<Snapshot>,
}

impl SnapshotFile {
    pub(crate) fn open(dir: &Path) -> io::Result<SnapshotFile> {
        let path = dir.join(SNAPSHOT_FILE);
        let current = match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is damaged: {e}", path.display()),
                    )
                })?;
                Some(Snapshot {
                    meta: stored.meta,
                    snapshot: Bytes::from(stored.data),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(SnapshotFile {
            dir: dir.to_owned(),
            current,
        })
    }

    /// Durably makes `snapshot` the current one.
    pub(crate) async fn save(&mut self, snapshot: Snapshot) -> io::Result<()> {
        let current = self.current.as_ref().and_then(|c| c.meta.last_log_id);
        if current.is_some() && snapshot.meta.last_log_id <= current {
            return Ok(()); // an older build finishing after a newer install
        }
        let stored = StoredSnapshot {
            meta: snapshot.meta.clone(),
            data: String::from_utf8(snapshot.snapshot.to_vec())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        };
        let json = serde_json::to_vec(&stored).map_err(io::Error::other)?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            crate::fsutil::write_atomically(&dir, &dir.join(SNAPSHOT_FILE), &json)
        })
        .await
        .map_err(|e| io::Error::other(format!("snapshot task failed: {e}")))??;
        self.current = Some(snapshot);
        Ok(())
    }

    pub(crate) fn current(&self) -> Option<Snapshot> {
        self.current.clone()
    }
}

/// A partition's state machine. The state is shared (behind a mutex) with the partition's
/// leader, which checks producer sequences before proposing.
pub struct PartitionSm {
    state: Arc<Mutex<PartitionState>>,
    snapshot: Arc<tokio::sync::Mutex<SnapshotFile>>,
    hint: SnapshotHint,
    high_watermark: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for PartitionSm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionSm")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PartitionSm {
    /// The state machine of the group whose files are in `dir`; it publishes the high
    /// watermark on `high_watermark` and records snapshot ends in `hint`.
    pub fn open(
        dir: &Path,
        hint: SnapshotHint,
        high_watermark: Arc<watch::Sender<u64>>,
    ) -> io::Result<PartitionSm> {
        Ok(PartitionSm {
            state: Arc::new(Mutex::new(PartitionState::default())),
            snapshot: Arc::new(tokio::sync::Mutex::new(SnapshotFile::open(dir)?)),
            hint,
            high_watermark,
        })
    }

    /// The shared state.
    pub fn state(&self) -> Arc<Mutex<PartitionState>> {
        self.state.clone()
    }

    fn publish(&self, next_offset: u64) {
        self.high_watermark.send_if_modified(|hw| {
            let moved = next_offset != *hw;
            *hw = next_offset;
            moved
        });
    }
}

/// Builds a snapshot from a copy of a state machine's state, taken when openraft asked for
/// it, and makes it the group's current snapshot.
pub struct StateSnapshotBuilder {
    pub(crate) meta: SnapshotMeta,
    pub(crate) data: Bytes,
    pub(crate) next_offset: u64,
    pub(crate) file: Arc<tokio::sync::Mutex<SnapshotFile>>,
    pub(crate) hint: SnapshotHint,
}

impl RaftSnapshotBuilder<TypeConfig> for StateSnapshotBuilder {
    type SnapshotData = Bytes;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let snapshot = Snapshot {
            meta: self.meta.clone(),
            snapshot: self.data.clone(),
        };
        if let Some(last) = self.meta.last_log_id {
            self.hint.set(last.index, self.next_offset);
        }
        self.file.lock().await.save(snapshot.clone()).await?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for PartitionSm {
    type SnapshotData = Bytes;
    type SnapshotBuilder = StateSnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<RaftLogId>, StoredMembership)> {
        let s = lock(&self.state);
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: futures_util::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let applied = {
                let mut s = lock(&self.state);
                s.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => Applied::None,
                    EntryPayload::Membership(m) => {
                        s.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Applied::None
                    }
                    EntryPayload::Normal(batch) => {
                        let batch = &batch.0;
                        let base_offset = batch.base_offset();
                        if base_offset != s.next_offset {
                            tracing::error!(
                                log_id = %entry.log_id,
                                base_offset,
                                expected = s.next_offset,
                                "applied batch does not continue the partition's offsets"
                            );
                        }
                        let count = batch.record_count();
                        s.next_offset = base_offset + u64::from(count);
                        s.record(
                            batch.producer_id(),
                            batch.producer_epoch(),
                            batch.base_sequence(),
                            count,
                            base_offset,
                        );
                        Applied::Appended { base_offset }
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        let next_offset = lock(&self.state).next_offset;
        self.publish(next_offset);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> StateSnapshotBuilder {
        let state = lock(&self.state).clone();
        StateSnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
            },
            // Serializing a map of plain numbers cannot fail.
            data: Bytes::from(serde_json::to_vec(&state).unwrap_or_default()),
            next_offset: state.next_offset,
            file: self.snapshot.clone(),
            hint: self.hint.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: Bytes) -> io::Result<()> {
        let mut state: PartitionState = serde_json::from_slice(&data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("partition snapshot undecodable: {e}"),
            )
        })?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        if let Some(last) = meta.last_log_id {
            self.hint.set(last.index, state.next_offset);
        }
        self.snapshot
            .lock()
            .await
            .save(Snapshot {
                meta: meta.clone(),
                snapshot: data,
            })
            .await?;
        let next_offset = state.next_offset;
        *lock(&self.state) = state;
        self.publish(next_offset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(self.snapshot.lock().await.current())
    }
}
