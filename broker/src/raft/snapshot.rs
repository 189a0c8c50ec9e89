//! Snapshots of the (small) state machines: where a machine stands in its log
//! ([`Position`]), the current snapshot in memory and in `raft-snapshot.json` beside the
//! group's log, building one from the machine's state, and installing one from a leader.
//!
//! A snapshot's data is the machine's state as JSON, with its position under `"position"`;
//! raft reads that field back and leaves the rest to the machine.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::EntryPayload;
use openraft::storage::RaftSnapshotBuilder;
use serde::{Deserialize, Serialize};
use strata_storage::RecordBatch;

use super::{Batch, RaftEntry, RaftLogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::lock::lock;

const SNAPSHOT_FILE: &str = "raft-snapshot.json";

/// Where a state machine stands in its group's log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The last entry applied.
    last_applied: Option<RaftLogId>,
    /// The last membership applied.
    membership: StoredMembership,
    /// Offset after the last record applied (for a partition, the high watermark).
    pub next_offset: u64,
}

impl Position {
    /// Moves past an applied entry; returns its record batch if it is a data entry.
    pub(super) fn advance<'e>(&mut self, entry: &'e RaftEntry) -> Option<&'e RecordBatch> {
        self.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => None,
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                None
            }
            EntryPayload::Normal(Batch(batch)) => {
                let base_offset = batch.base_offset();
                if base_offset != self.next_offset {
                    tracing::error!(
                        log_id = %entry.log_id,
                        base_offset,
                        expected = self.next_offset,
                        "applied batch does not continue the group's offsets"
                    );
                }
                self.next_offset = base_offset + u64::from(batch.record_count());
                Some(batch)
            }
        }
    }

    /// What openraft asks a state machine at start: the last applied entry and membership.
    pub(super) fn applied_state(&self) -> (Option<RaftLogId>, StoredMembership) {
        (self.last_applied, self.membership.clone())
    }

    /// Whether any entry was applied.
    pub fn applied_any(&self) -> bool {
        self.last_applied.is_some()
    }

    /// The term of the last entry applied, if any.
    pub fn applied_term(&self) -> Option<u64> {
        self.last_applied.map(|l| l.leader_id.term)
    }

    /// The index of the last entry applied, if any.
    pub fn applied_index(&self) -> Option<u64> {
        self.last_applied.map(|l| l.index)
    }

    /// The group's voters as of the last membership applied.
    pub fn voters(&self) -> Vec<u64> {
        self.membership.membership().voter_ids().collect()
    }

    /// A position whose voters are `voters` (for tests of machines and fuzzing).
    #[doc(hidden)]
    pub fn with_voters(voters: &[u64]) -> Position {
        let membership = openraft::Membership::<u64, openraft::EmptyNode>::new_with_defaults(
            vec![voters.iter().copied().collect()],
            std::collections::BTreeSet::new(),
        );
        Position {
            membership: StoredMembership::new(None, membership),
            ..Position::default()
        }
    }

    /// This position, as if the entry at `index` (of term 1) was the last applied (for
    /// tests of machines).
    #[doc(hidden)]
    pub fn applied_at(mut self, index: u64) -> Position {
        self.last_applied = Some(super::to_raft_log_id(strata_storage::LogId::new(
            1, 1, index,
        )));
        self
    }
}

/// Where the latest snapshot ends: the index it covers and the offset after its last record.
/// The state machine sets it when it builds or installs a snapshot; the log store reads it
/// when openraft purges past the log's end (the log then restarts after the snapshot).
#[derive(Debug, Clone, Default)]
pub(super) struct SnapshotEnd(Arc<Mutex<Option<(u64, u64)>>>);

impl SnapshotEnd {
    /// Records that the snapshot at `index` ends before offset `next_offset`.
    pub(super) fn set(&self, index: u64, next_offset: u64) {
        *lock(&self.0) = Some((index, next_offset));
    }

    /// The next offset after the snapshot at `index`, if that is the one recorded.
    pub(super) fn next_offset_at(&self, index: u64) -> Option<u64> {
        lock(&self.0).and_then(|(i, o)| (i == index).then_some(o))
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
struct SnapshotFile {
    dir: PathBuf,
    current: Option<Snapshot>,
}

impl SnapshotFile {
    fn open(dir: &Path) -> io::Result<SnapshotFile> {
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
    async fn save(&mut self, snapshot: Snapshot) -> io::Result<()> {
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
            strata_storage::durable::replace(&dir, &dir.join(SNAPSHOT_FILE), &json)
                .map_err(io::Error::other)
        })
        .await
        .map_err(|e| io::Error::other(format!("snapshot task failed: {e}")))??;
        self.current = Some(snapshot);
        Ok(())
    }
}

/// A group's snapshots: the current one and where the latest ends.
#[derive(Debug, Clone)]
pub(super) struct Snapshots {
    file: Arc<tokio::sync::Mutex<SnapshotFile>>,
    end: SnapshotEnd,
}

/// The position a snapshot's data records (the machine's own fields are ignored here).
#[derive(Deserialize)]
struct PositionField {
    position: Position,
}

impl Snapshots {
    /// The snapshots of the group whose files are in `dir`.
    pub(super) fn open(dir: &Path, end: SnapshotEnd) -> io::Result<Snapshots> {
        Ok(Snapshots {
            file: Arc::new(tokio::sync::Mutex::new(SnapshotFile::open(dir)?)),
            end,
        })
    }

    /// A builder of the snapshot whose state, at `position`, is `data`.
    pub(super) fn builder(&self, position: &Position, data: Bytes) -> StateSnapshotBuilder {
        StateSnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: position.last_applied,
                last_membership: position.membership.clone(),
            },
            data,
            next_offset: position.next_offset,
            file: self.file.clone(),
            end: self.end.clone(),
        }
    }

    /// Takes a snapshot from a leader: reads its position (the description's log id and
    /// membership, the data's next offset), lets `restore` replace the machine's state, then
    /// makes it the current snapshot. Returns the position.
    pub(super) async fn install(
        &self,
        meta: &SnapshotMeta,
        data: Bytes,
        restore: impl FnOnce(&Position, &[u8]) -> io::Result<()>,
    ) -> io::Result<Position> {
        let PositionField { mut position } = serde_json::from_slice(&data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot undecodable: {e}"),
            )
        })?;
        position.last_applied = meta.last_log_id;
        position.membership = meta.last_membership.clone();
        restore(&position, &data)?;
        if let Some(last) = meta.last_log_id {
            self.end.set(last.index, position.next_offset);
        }
        self.file
            .lock()
            .await
            .save(Snapshot {
                meta: meta.clone(),
                snapshot: data,
            })
            .await?;
        Ok(position)
    }

    /// The current snapshot.
    pub(super) async fn current(&self) -> Option<Snapshot> {
        self.file.lock().await.current.clone()
    }
}

/// Builds a snapshot from a copy of a state machine's state, taken when openraft asked for
/// it, and makes it the group's current snapshot.
pub(super) struct StateSnapshotBuilder {
    meta: SnapshotMeta,
    data: Bytes,
    next_offset: u64,
    file: Arc<tokio::sync::Mutex<SnapshotFile>>,
    end: SnapshotEnd,
}

impl RaftSnapshotBuilder<TypeConfig> for StateSnapshotBuilder {
    type SnapshotData = Bytes;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let snapshot = Snapshot {
            meta: self.meta.clone(),
            snapshot: self.data.clone(),
        };
        if let Some(last) = self.meta.last_log_id {
            self.end.set(last.index, self.next_offset);
        }
        self.file.lock().await.save(snapshot.clone()).await?;
        Ok(snapshot)
    }
}
