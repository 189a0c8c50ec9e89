//! The Raft log of a group *is* its storage log: [`LogStore`] implements openraft's
//! `RaftLogStorage` over a [`PartitionLog`], so a produced batch is written once, in the
//! segment files consumers read.
//!
//! Beside the segments, a group keeps two small files in its directory:
//! - `raft-vote`: the vote, checksummed, replaced atomically and fsynced before `save_vote`
//!   returns (Raft's safety rests on it);
//! - `raft-commit`: the last committed log id, a hint written at most every
//!   [`COMMIT_WRITE_INTERVAL`] without fsync. At start openraft re-applies the log up to it; a
//!   stale or damaged hint is harmless (the leader tells the rest), and one beyond the log (a
//!   tail lost in a crash under a relaxed fsync policy) is clamped to the log's end.
//!
//! A snapshot ahead of the whole log (a follower that fell behind the retention point)
//! makes openraft purge past the log's end; the log then restarts after the snapshot with
//! the next offset the snapshot recorded ([`SnapshotEnd`]), and [`LogRestarted`] is told.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::EntryPayload;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use strata_storage::{EntryBody, EntryKind, NewEntry, PartitionLog};

use super::snapshot::SnapshotEnd;
use super::{Batch, RaftEntry, RaftLogId, TypeConfig, Vote, to_raft_log_id, to_storage_log_id};
use crate::lock::lock;

/// How often the commit hint is written at most.
const COMMIT_WRITE_INTERVAL: Duration = Duration::from_millis(100);
/// Body bytes per AppendEntries request at most (at least one entry is always sent).
const MAX_APPEND_BYTES: usize = 4 << 20;

const VOTE_FILE: &str = "raft-vote";
const COMMIT_FILE: &str = "raft-commit";
const VOTE_MAGIC: &[u8; 4] = b"SVOT";
const COMMIT_MAGIC: &[u8; 4] = b"SCOM";
const META_VERSION: u8 = 1;

/// Called with the next offset when the log restarts after an installed snapshot that was
/// ahead of it: a partition publishes it as its high watermark then (its state machine
/// cannot: the log still ended before the snapshot when the snapshot was installed).
pub type LogRestarted = Arc<dyn Fn(u64) + Send + Sync>;

/// The vote and commit files of a group.
#[derive(Debug)]
struct GroupMeta {
    dir: PathBuf,
    vote: Mutex<Option<Vote>>,
    committed: Mutex<Committed>,
}

#[derive(Debug)]
struct Committed {
    value: Option<RaftLogId>,
    written: Option<RaftLogId>,
    last_write: Option<Instant>,
}

impl GroupMeta {
    fn open(dir: &Path) -> io::Result<GroupMeta> {
        let vote = match std::fs::read(dir.join(VOTE_FILE)) {
            Ok(bytes) => Some(decode_vote(&bytes).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is damaged", dir.join(VOTE_FILE).display()),
                )
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        // The commit hint may be torn (it is written without fsync): then it is ignored.
        let committed = match std::fs::read(dir.join(COMMIT_FILE)) {
            Ok(bytes) => decode_committed(&bytes).flatten(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(GroupMeta {
            dir: dir.to_owned(),
            vote: Mutex::new(vote),
            committed: Mutex::new(Committed {
                value: committed,
                written: committed,
                last_write: None,
            }),
        })
    }

    fn write_committed(&self, value: Option<RaftLogId>) -> io::Result<()> {
        std::fs::write(self.dir.join(COMMIT_FILE), encode_committed(value.as_ref()))
    }

    /// Writes the commit hint if it changed since the last write.
    fn flush_committed(&self) {
        let mut c = lock(&self.committed);
        if c.value != c.written {
            match self.write_committed(c.value) {
                Ok(()) => c.written = c.value,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "writing the commit hint failed")
                }
            }
        }
    }
}

fn encode_vote(vote: &Vote) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..4].copy_from_slice(VOTE_MAGIC);
    b[4] = META_VERSION;
    b[5] = u8::from(vote.committed);
    b[8..16].copy_from_slice(&vote.leader_id.term.to_le_bytes());
    b[16..24].copy_from_slice(&vote.leader_id.node_id.to_le_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_vote(b: &[u8]) -> Option<Vote> {
    if b.len() != 28 || &b[..4] != VOTE_MAGIC || b[4] != META_VERSION {
        return None;
    }
    if crc32fast::hash(&b[..24]).to_le_bytes() != b[24..28] {
        return None;
    }
    let term = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let node = u64::from_le_bytes(b[16..24].try_into().ok()?);
    Some(if b[5] == 1 {
        Vote::new_committed(term, node)
    } else {
        Vote::new(term, node)
    })
}

fn encode_committed(id: Option<&RaftLogId>) -> [u8; 36] {
    let mut b = [0u8; 36];
    b[..4].copy_from_slice(COMMIT_MAGIC);
    b[4] = META_VERSION;
    if let Some(id) = id {
        b[5] = 1;
        b[8..16].copy_from_slice(&id.leader_id.term.to_le_bytes());
        b[16..24].copy_from_slice(&id.leader_id.node_id.to_le_bytes());
        b[24..32].copy_from_slice(&id.index.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `None` for a damaged file, `Some(None)` for "nothing committed".
fn decode_committed(b: &[u8]) -> Option<Option<RaftLogId>> {
    if b.len() != 36 || &b[..4] != COMMIT_MAGIC || b[4] != META_VERSION {
        return None;
    }
    if crc32fast::hash(&b[..32]).to_le_bytes() != b[32..36] {
        return None;
    }
    if b[5] != 1 {
        return Some(None);
    }
    let u = |r: std::ops::Range<usize>| b[r].try_into().ok().map(u64::from_le_bytes);
    Some(Some(to_raft_log_id(strata_storage::LogId::new(
        u(8..16)?,
        u(16..24)?,
        u(24..32)?,
    ))))
}

fn io_err(e: strata_storage::Error) -> io::Error {
    io::Error::other(e)
}

/// Runs blocking file work (fsync, unlink) off the async worker, in submission order (the
/// caller awaits it before anything else touches the log).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

/// The openraft entry for a stored entry.
fn to_raft_entry(e: strata_storage::Entry) -> io::Result<RaftEntry> {
    let payload = match e.kind {
        EntryKind::Data => {
            let batch = e
                .batch()
                .ok_or_else(|| io::Error::other("data entry without a batch"))?;
            EntryPayload::Normal(Batch(batch))
        }
        EntryKind::Blank => EntryPayload::Blank,
        EntryKind::Membership => {
            EntryPayload::Membership(serde_json::from_slice(&e.body).map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("membership entry {} undecodable: {err}", e.log_id),
                )
            })?)
        }
    };
    Ok(openraft::impls::Entry {
        log_id: to_raft_log_id(e.log_id),
        payload,
    })
}

/// The storage entry for an openraft entry.
fn to_new_entry(e: RaftEntry) -> io::Result<NewEntry> {
    let body = match e.payload {
        EntryPayload::Normal(batch) => EntryBody::Data(batch.0),
        EntryPayload::Blank => EntryBody::Blank,
        EntryPayload::Membership(m) => EntryBody::Membership(Bytes::from(
            serde_json::to_vec(&m).map_err(io::Error::other)?,
        )),
    };
    Ok(NewEntry {
        log_id: to_storage_log_id(&e.log_id),
        body,
    })
}

/// A group's Raft log: its storage log and its vote and commit files.
pub(super) struct LogStore {
    log: PartitionLog,
    meta: Arc<GroupMeta>,
    end: SnapshotEnd,
    restarted: Option<LogRestarted>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.log.dir())
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// The Raft log over `log`, with its vote and commit files in the log's directory.
    /// `end` is shared with the group's state machine.
    pub(super) fn open(
        log: PartitionLog,
        end: SnapshotEnd,
        restarted: Option<LogRestarted>,
    ) -> io::Result<LogStore> {
        let meta = Arc::new(GroupMeta::open(log.dir())?);
        Ok(LogStore {
            log,
            meta,
            end,
            restarted,
        })
    }

    fn reader(&self) -> LogReader {
        LogReader {
            log: self.log.clone(),
            meta: self.meta.clone(),
        }
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.meta.flush_committed();
    }
}

/// Reads a group's log; every clone sees every append as soon as `append` returns.
#[derive(Clone)]
pub(super) struct LogReader {
    log: PartitionLog,
    meta: Arc<GroupMeta>,
}

fn bounds(range: &impl RangeBounds<u64>) -> std::ops::Range<u64> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    start..end
}

impl LogReader {
    fn read(&self, range: std::ops::Range<u64>, max_bytes: usize) -> io::Result<Vec<RaftEntry>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        self.log
            .entries(range, max_bytes)
            .map_err(io_err)?
            .into_iter()
            .map(to_raft_entry)
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<RaftEntry>> {
        self.read(bounds(&range), usize::MAX)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(*lock(&self.meta.vote))
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> io::Result<Vec<RaftEntry>> {
        self.read(start..end, MAX_APPEND_BYTES)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<RaftEntry>> {
        self.reader().read(bounds(&range), usize::MAX)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(*lock(&self.meta.vote))
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> io::Result<Vec<RaftEntry>> {
        self.reader().read(start..end, MAX_APPEND_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let state = self.log.state();
        Ok(LogState {
            last_purged_log_id: state.last_purged.map(to_raft_log_id),
            last_log_id: state.last_log_id.map(to_raft_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let bytes = encode_vote(vote);
        let dir = self.meta.dir.clone();
        blocking(move || {
            strata_storage::durable::replace(&dir, &dir.join(VOTE_FILE), &bytes).map_err(io_err)
        })
        .await?;
        *lock(&self.meta.vote) = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<RaftLogId>) -> io::Result<()> {
        let mut c = lock(&self.meta.committed);
        c.value = committed;
        let due = c
            .last_write
            .is_none_or(|t| t.elapsed() >= COMMIT_WRITE_INTERVAL);
        if due && c.value != c.written {
            // A hint: no fsync, and a failed write only costs re-applying less at start.
            match self.meta.write_committed(committed) {
                Ok(()) => c.written = committed,
                Err(e) => tracing::warn!(error = %e, "writing the commit hint failed"),
            }
            c.last_write = Some(Instant::now());
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<RaftLogId>> {
        let committed = lock(&self.meta.committed).value;
        let Some(committed) = committed else {
            return Ok(None);
        };
        // Entries up to the commit point may have been lost with an unsynced tail; what is
        // left of the log up to it was committed.
        let last = self.log.state().last_log_id.map(to_raft_log_id);
        Ok(match last {
            Some(last) if last.index < committed.index => Some(last),
            None => None,
            _ => Some(committed),
        })
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = RaftEntry> + Send,
        I::IntoIter: Send,
    {
        let entries = entries
            .into_iter()
            .map(to_new_entry)
            .collect::<io::Result<Vec<_>>>()?;
        let Some(first) = entries.first() else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let state = self.log.state();
        if first.log_id.index != state.next_index && state.first_index == state.next_index {
            // An empty log may start anywhere (openraft's first entry, or the first after a
            // snapshot that the log never saw).
            let last = first
                .log_id
                .index
                .checked_sub(1)
                .map(|index| strata_storage::LogId::new(0, 0, index));
            let last = last.ok_or_else(|| {
                io::Error::other(format!(
                    "cannot append index 0 to an empty log that starts at {}",
                    state.first_index
                ))
            })?;
            let log = self.log.clone();
            let next_offset = state.next_offset;
            blocking(move || log.reset(last, next_offset).map_err(io_err)).await?;
        }
        let appending = self.log.append_entries(entries).map_err(io_err)?;
        appending.on_durable(move |result| callback.io_completed(result.map_err(io_err)));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<RaftLogId>) -> io::Result<()> {
        let log = self.log.clone();
        let last = last.map(|l| l.index);
        blocking(move || log.truncate_after(last).map_err(io_err)).await
    }

    async fn purge(&mut self, log_id: RaftLogId) -> io::Result<()> {
        let state = self.log.state();
        let index = log_id.index;
        if state.last_purged.is_some_and(|p| p.index >= index) {
            return Ok(());
        }
        let log = self.log.clone();
        if index < state.next_index {
            return blocking(move || log.purge_up_to(index).map_err(io_err)).await;
        }
        // A snapshot ahead of the whole log: restart the log after it, at the offset the
        // snapshot recorded (without one, nothing was appended since: keep the next offset).
        let next_offset = self.end.next_offset_at(index).unwrap_or(state.next_offset);
        let last = to_storage_log_id(&log_id);
        blocking(move || log.reset(last, next_offset).map_err(io_err)).await?;
        if let Some(restarted) = &self.restarted {
            restarted(next_offset);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_and_commit_files_round_trip_and_detect_damage() {
        let vote = Vote::new_committed(7, 3);
        let b = encode_vote(&vote);
        assert_eq!(decode_vote(&b), Some(vote));
        let mut bad = b;
        bad[9] ^= 1;
        assert_eq!(decode_vote(&bad), None);
        assert_eq!(decode_vote(&b[..20]), None);

        let id = to_raft_log_id(strata_storage::LogId::new(4, 2, 99));
        let b = encode_committed(Some(&id));
        assert_eq!(decode_committed(&b), Some(Some(id)));
        assert_eq!(decode_committed(&encode_committed(None)), Some(None));
        let mut bad = b;
        bad[30] ^= 0x10;
        assert_eq!(decode_committed(&bad), None);
    }
}
