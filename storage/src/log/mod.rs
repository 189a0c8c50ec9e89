//! The partition log: an append-only sequence of entries in segment files.
//!
//! [`PartitionLog`] is what a partition replica keeps, and what will be its Raft log: entries
//! with Raft log ids, the data ones carrying record batches. Offsets are a pure function of
//! the log: an entry's base offset is the previous entry's base offset plus its record count,
//! so truncating a suffix rewinds them and every replica computes the same ones.
//!
//! One writer at a time appends (appends from several threads are serialized); any number of
//! readers read concurrently through cheap clones of the handle. Reads are zero-copy: they
//! return [`Bytes`] slices of the segment maps.
//!
//! Durability follows [`FsyncPolicy`]. Under `Always` an append is complete when
//! [`Appending::wait`] returns (or its callback runs): a background flusher syncs everything
//! written so far in one go, so concurrent appends share flushes (group commit). [`read`]
//! exposes only complete entries, and under `Always` only durable ones. A failed flush poisons
//! the log: pending and later appends fail; reopening recovers what reached the disk.
//!
//! [`read`]: PartitionLog::read

mod config;
mod flush;
mod lock;
mod open;
mod read;
mod start;
mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

pub use self::config::{FsyncPolicy, LogConfig, RetentionPolicy};
pub use self::flush::Flusher;
use self::flush::{DurableState, FlushIo};
pub use self::lock::DirLock;
use self::start::LogStart;
use crate::entry::{Entry, EntryBody, LogId, NewEntry};
use crate::error::{Error, Result};
use crate::mmap::SegmentMap;
use crate::segment::format::{IndexEntry, SEGMENT_HEADER_LEN, SegmentMeta};
use crate::segment::{ActiveIndex, ActiveSegment, SealJob, SealedSegment, SegmentPaths};

/// Where an appended entry landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its log id.
    pub log_id: LogId,
    /// Offset of its first record (for an entry without records, the next offset).
    pub base_offset: u64,
    /// Records it holds.
    pub record_count: u32,
}

/// Appended entries on their way to disk.
///
/// The entries are in the log (readable by index) as soon as `append` returns; this handle
/// tells when they are durable under the log's [`FsyncPolicy`].
#[must_use = "an append is only durable once `wait` returns or `on_durable` is called back"]
pub struct Appending {
    /// The first entry appended.
    pub first: Appended,
    /// The last entry appended.
    pub last: Appended,
    inner: Arc<LogInner>,
}

impl std::fmt::Debug for Appending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appending")
            .field("first", &self.first)
            .field("last", &self.last)
            .finish()
    }
}

impl Appending {
    /// Blocks until the entries are durable (at once unless the policy is `Always`).
    pub fn wait(&self) -> Result<()> {
        self.inner.wait_durable(self.last.log_id.index)
    }

    /// Calls `done` once the entries are durable, or with the error that poisoned the log. It
    /// runs on the flusher thread (or on this one if they are durable already), so it must
    /// not block.
    pub fn on_durable(self, done: impl FnOnce(Result<()>) + Send + 'static) {
        self.inner
            .on_durable(self.last.log_id.index, Box::new(done));
    }

    /// Whether the entries are durable now.
    pub fn is_durable(&self) -> bool {
        self.inner.is_durable(self.last.log_id.index)
    }
}

/// Record batches read from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Whole batches, zero-copy slices of the segment maps, base offsets patched. The first
    /// may start before the requested offset (the consumer skips those records).
    pub batches: Vec<Bytes>,
    /// Offset after the last batch returned: where the next read continues.
    pub next_offset: u64,
    /// Offset after the last readable record (the log end visible to readers).
    pub end_offset: u64,
}

impl Fetched {
    /// Total bytes of the batches.
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(Bytes::len).sum()
    }
}

/// A snapshot of the log's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogState {
    /// First index not purged.
    pub first_index: u64,
    /// Index the next append gets.
    pub next_index: u64,
    /// First offset not purged.
    pub start_offset: u64,
    /// Offset the next record gets.
    pub next_offset: u64,
    /// Offset after the last record readers can see (durable, under `Always`).
    pub readable_end_offset: u64,
    /// The last entry, or the last purged one if the log is empty.
    pub last_log_id: Option<LogId>,
    /// The last purged entry.
    pub last_purged: Option<LogId>,
    /// Segments (sealed ones and the active one).
    pub segments: usize,
}

/// A description of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its first entry index.
    pub first_index: u64,
    /// Index after its last entry.
    pub end_index: u64,
    /// Its first offset.
    pub first_offset: u64,
    /// Offset after its last record.
    pub end_offset: u64,
    /// Bytes of entries in the data file (with the 64-byte header).
    pub bytes: u64,
    /// False for the active segment.
    pub sealed: bool,
    /// The data file.
    pub path: PathBuf,
}

/// A damaged entry found by [`PartitionLog::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The data file.
    pub path: PathBuf,
    /// The first entry index that could not be read.
    pub index: u64,
    /// What is wrong.
    pub detail: String,
}

/// What [`PartitionLog::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: usize,
    /// Entries whose checksums matched.
    pub entries: u64,
    /// Bytes of those entries.
    pub bytes: u64,
    /// Damage found (empty for a healthy log).
    pub damaged: Vec<Damage>,
}

/// A partition's log of entries on disk. Cheap to clone: clones share one log, which is
/// closed when the last clone is dropped.
#[derive(Clone)]
pub struct PartitionLog {
    handle: Arc<Handle>,
}

/// The users' share of a log: dropping the last one closes it, even while the flusher or an
/// [`Appending`] still holds the shared state.
struct Handle {
    inner: Arc<LogInner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.inner.crashed.load(std::sync::atomic::Ordering::SeqCst) {
            self.inner.abandon();
        } else if let Err(e) = self.inner.close() {
            tracing::warn!(dir = %self.inner.dir.display(), error = %e, "closing the log on drop failed");
        }
    }
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.inner().dir)
            .field("state", &self.state())
            .finish()
    }
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering from a crash if need be: the active
    /// segment is checked from its last checkpoint and cut at the first torn entry. Sealed
    /// segments are only listed; they are checked when first read. The directory is locked
    /// against other processes while the log is open.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<PartitionLog> {
        Ok(PartitionLog {
            handle: Arc::new(Handle {
                inner: open::open(dir.as_ref(), config)?,
            }),
        })
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner().dir
    }

    /// The durability policy.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.inner().config.fsync
    }

    /// Appends one entry at the next index, with the given term and leader.
    pub fn append(&self, term: u64, leader: u64, body: EntryBody) -> Result<Appending> {
        self.inner().append(
            write::Indexing::Next { term, leader },
            vec![body],
            Vec::new(),
        )
    }

    /// Appends several entries at the next indexes, all with the given term and leader, under
    /// one lock (so no other append lands between them). Either all are checked and appended,
    /// or (for a bad entry) none.
    pub fn append_all(&self, term: u64, leader: u64, bodies: Vec<EntryBody>) -> Result<Appending> {
        self.inner()
            .append(write::Indexing::Next { term, leader }, bodies, Vec::new())
    }

    /// Appends entries with explicit log ids; the first must have the log's next index and
    /// the rest follow it. Either all are checked and appended, or (for a bad entry) none.
    pub fn append_entries(&self, entries: impl IntoIterator<Item = NewEntry>) -> Result<Appending> {
        let (ids, bodies): (Vec<LogId>, Vec<EntryBody>) =
            entries.into_iter().map(|e| (e.log_id, e.body)).unzip();
        self.inner().append(write::Indexing::Explicit, bodies, ids)
    }

    /// Reads whole record batches from `from_offset` on, up to about `max_bytes` (at least one
    /// batch if any is readable). An offset before the log start or after its end is an
    /// error; the end itself reads nothing.
    pub fn read(&self, from_offset: u64, max_bytes: usize) -> Result<Fetched> {
        self.inner().read(from_offset, max_bytes, u64::MAX)
    }

    /// Like [`Self::read`], returning no batch that starts at or after `upper_offset` (a high
    /// watermark).
    pub fn read_bounded(
        &self,
        from_offset: u64,
        max_bytes: usize,
        upper_offset: u64,
    ) -> Result<Fetched> {
        self.inner().read(from_offset, max_bytes, upper_offset)
    }

    /// The entries with indexes in `range` that are in the log, oldest first, stopping once
    /// `max_bytes` of bodies are collected (but always returning at least one entry when the
    /// range holds one). Entries from sealed segments are checked against their CRC.
    pub fn entries(&self, range: std::ops::Range<u64>, max_bytes: usize) -> Result<Vec<Entry>> {
        self.inner().entries(range, max_bytes)
    }

    /// The entry at `index`, if it is in the log.
    pub fn entry(&self, index: u64) -> Result<Option<Entry>> {
        Ok(self
            .inner()
            .entries(index..index.saturating_add(1), 0)?
            .pop())
    }

    /// The base offset of the first batch holding a record with a timestamp at or after
    /// `timestamp` (using running max timestamps, as Kafka's time index does), or `None` if
    /// every readable record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        self.inner().offset_for_timestamp(timestamp)
    }

    /// Removes every entry after `last` (all entries if `None`); offsets rewind with them.
    pub fn truncate_after(&self, last: Option<u64>) -> Result<()> {
        self.inner().truncate_after(last)
    }

    /// Purges every entry up to and including `index` (an entry in the log): they stop being
    /// readable and whole segments holding only purged entries are deleted.
    pub fn purge_up_to(&self, index: u64) -> Result<()> {
        self.inner().purge_up_to(index)
    }

    /// Empties the log so that it continues after `last` with offset `next_offset`, as after
    /// a Raft snapshot that is ahead of the whole log.
    pub fn reset(&self, last: LogId, next_offset: u64) -> Result<()> {
        self.inner().reset(last, next_offset)
    }

    /// The index retention would purge up to at time `now_ms`: the last entry of the last
    /// whole sealed segment that is too old or over the size limit. Only sealed segments are
    /// ever candidates.
    pub fn retention_point(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<Option<u64>> {
        self.inner().retention_point(policy, now_ms)
    }

    /// Applies retention now: purges up to [`Self::retention_point`]. Returns the purge point.
    pub fn apply_retention(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<Option<u64>> {
        let point = self.retention_point(policy, now_ms)?;
        if let Some(index) = point {
            self.purge_up_to(index)?;
        }
        Ok(point)
    }

    /// Seals the active segment (if it holds entries) and starts a new one.
    pub fn roll(&self) -> Result<()> {
        self.inner().roll()
    }

    /// Flushes everything written so far, whatever the policy, and checkpoints the index.
    pub fn flush(&self) -> Result<()> {
        self.inner().flush_now(flush::Checkpoint::Now)
    }

    /// Why the log refuses writes, if a flush failed: it stays so until it is reopened.
    pub fn poisoned(&self) -> Option<String> {
        self.inner().poisoned()
    }

    /// Under [`FsyncPolicy::Always`], the index before which every entry was flushed: after
    /// a failed flush the entries from it on may be in the page cache only (the kernel can
    /// mark pages clean whose write-back failed), so whoever reopens the log should not take
    /// them for durable. `None` under the other policies.
    pub fn durable_next(&self) -> Option<u64> {
        self.inner().durable_next()
    }

    /// Bounds of the log.
    pub fn state(&self) -> LogState {
        self.inner().state()
    }

    /// The segments, oldest first. Loads sealed segments that were not loaded yet.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>> {
        self.inner().segments()
    }

    /// Reads every entry of every segment and checks its CRC; reports what is damaged.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.inner().verify()
    }

    /// Flushes, marks the log cleanly closed, refuses further appends and releases the
    /// directory, for every handle. (Dropping the last handle does the same, ignoring errors.)
    pub fn close(&self) -> Result<()> {
        self.inner().close()
    }

    /// Test hook: drop the log as a crash would, without syncing or marking it clean.
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        self.inner()
            .crashed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn inner(&self) -> &Arc<LogInner> {
        &self.handle.inner
    }
}

/// The shared state of an open log.
pub(crate) struct LogInner {
    dir: PathBuf,
    config: LogConfig,
    /// Serializes everything that changes the log.
    writer: Mutex<Writer>,
    /// What readers see.
    view: RwLock<View>,
    /// Held while flushing, and by operations that restructure segments.
    flush_io: Mutex<FlushIo>,
    durable: Mutex<DurableState>,
    durable_changed: Condvar,
    flusher: Flusher,
    flush_requested: AtomicBool,
    /// Appends so far (append calls, not entries): the flusher's measure of concurrency.
    appends: std::sync::atomic::AtomicU64,
    crashed: AtomicBool,
    /// Set once closed (or abandoned): flushes stop touching the files.
    closed: AtomicBool,
    /// The directory lock, held until the log is closed.
    lock: Mutex<Option<lock::DirLock>>,
    #[cfg(test)]
    fail_next_flush: AtomicBool,
}

/// The writer's state.
pub(crate) struct Writer {
    /// `None` only while truncation swaps segments, or after a failure there.
    active: Option<ActiveSegment>,
    closed: bool,
}

/// What readers see, and the bookkeeping of the log's bounds.
pub(crate) struct View {
    sealed: Vec<Arc<SealedSegment>>,
    active: ActiveView,
    start: LogStart,
    next_index: u64,
    next_offset: u64,
    /// Last entry physically in the log, or the last before the first segment.
    last_log_id: Option<LogId>,
    /// Running max timestamp at the end of the log.
    max_timestamp: i64,
    /// Entries below this index are visible to `read`.
    readable_next: u64,
    /// Offset after the records visible to `read`.
    readable_end_offset: u64,
    /// Segments rolled but not yet sealed on disk.
    pending_seals: Vec<SealJob>,
}

/// The active segment as readers see it.
pub(crate) struct ActiveView {
    meta: SegmentMeta,
    paths: SegmentPaths,
    map: Arc<SegmentMap>,
    entries: Vec<IndexEntry>,
    index: Arc<Mutex<ActiveIndex>>,
}

impl ActiveView {
    fn end_position(&self) -> usize {
        self.entries
            .last()
            .map_or(SEGMENT_HEADER_LEN, IndexEntry::end_position)
    }
}

impl LogInner {
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_view(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_view(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> LogState {
        let v = self.read_view();
        let empty = v.next_index <= v.start.first_index;
        LogState {
            first_index: v.start.first_index,
            next_index: v.next_index,
            start_offset: v.start.first_offset,
            next_offset: v.next_offset,
            readable_end_offset: v.readable_end_offset,
            last_log_id: if empty {
                v.start.last_purged
            } else {
                v.last_log_id
            },
            last_purged: v.start.last_purged,
            segments: v.sealed.len() + 1,
        }
    }

    fn closed_error(&self) -> Error {
        Error::Closed {
            path: self.dir.clone(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    crate::clock::now_ms()
}
