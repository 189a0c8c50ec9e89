//! Snapshots of the (small) state machines: the current one in memory and in
//! `raft-snapshot.json` beside the group's log, building one from a copy of the state, and
//! installing one received from a leader. Shared by the partition and controller machines.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use openraft::EntryPayload;
use openraft::storage::RaftSnapshotBuilder;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::store::SnapshotHint;
use strata_storage::RecordBatch;

use super::{Batch, RaftEntry, RaftLogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

const SNAPSHOT_FILE: &str = "raft-snapshot.json";

/// Where a state machine stands in its group's log: the part of every machine's state that
/// openraft and the log store need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The last entry applied.
    pub last_applied: Option<RaftLogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
    /// Offset after the last record applied (for a partition, the high watermark).
    pub next_offset: u64,
}

impl Position {
    /// Moves past an applied entry; returns its record batch if it is a data entry.
    pub fn advance<'e>(&mut self, entry: &'e RaftEntry) -> Option<&'e RecordBatch> {
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
    pub fn applied_state(&self) -> (Option<RaftLogId>, StoredMembership) {
        (self.last_applied, self.membership.clone())
    }
}

/// A state machine's state: its position and what it derives from the entries.
pub(crate) trait MachineState: Serialize + DeserializeOwned + Clone {
    /// Its position in the log.
    fn position(&self) -> &Position;
    /// Its position in the log, to change.
    fn position_mut(&mut self) -> &mut Position;
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

/// A group's snapshots: the current one and where a snapshot's log position is told to the
/// log store.
#[derive(Debug, Clone)]
pub(crate) struct Snapshots {
    file: Arc<tokio::sync::Mutex<SnapshotFile>>,
    hint: SnapshotHint,
}

impl Snapshots {
    /// The snapshots of the group whose files are in `dir`.
    pub(crate) fn open(dir: &Path, hint: SnapshotHint) -> io::Result<Snapshots> {
        Ok(Snapshots {
            file: Arc::new(tokio::sync::Mutex::new(SnapshotFile::open(dir)?)),
            hint,
        })
    }

    /// A builder over a copy of `state`.
    pub(crate) fn builder(&self, state: &impl MachineState) -> StateSnapshotBuilder {
        StateSnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: state.position().last_applied,
                last_membership: state.position().membership.clone(),
            },
            // The state holds only finite numbers (aggregations refuse larger ones), strings
            // and maps with string or integer keys, which serialize; an error here is a bug.
            data: Bytes::from(serde_json::to_vec(state).unwrap_or_else(|e| {
                tracing::error!(error = %e, "state does not serialize; empty snapshot");
                Vec::new()
            })),
            next_offset: state.position().next_offset,
            file: self.file.clone(),
            hint: self.hint.clone(),
        }
    }

    /// Decodes a snapshot from a leader, makes it the current one, and returns its state.
    pub(crate) async fn install<S: MachineState>(
        &self,
        meta: &SnapshotMeta,
        data: Bytes,
        what: &str,
    ) -> io::Result<S> {
        let mut state: S = serde_json::from_slice(&data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} snapshot undecodable: {e}"),
            )
        })?;
        let position = state.position_mut();
        position.last_applied = meta.last_log_id;
        position.membership = meta.last_membership.clone();
        if let Some(last) = meta.last_log_id {
            self.hint.set(last.index, position.next_offset);
        }
        self.file
            .lock()
            .await
            .save(Snapshot {
                meta: meta.clone(),
                snapshot: data,
            })
            .await?;
        Ok(state)
    }

    /// The current snapshot.
    pub(crate) async fn current(&self) -> Option<Snapshot> {
        self.file.lock().await.current()
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
