//! Segments: the files a partition log is made of.
//!
//! The log's last segment is *active*: its data file is sized to the segment size (sparse),
//! mapped read-write, and entries are copied into the map ([`ActiveSegment`]). Its index
//! lives in memory and reaches the index file at checkpoints ([`ActiveIndex`]). When the
//! segment fills up or ages out it is *sealed*: a [`SealJob`] syncs it, trims the data file to
//! its real length and writes the complete index. Sealed segments are opened lazily
//! ([`SealedSegment`]): at log open only their names are read, so opening costs the same
//! whatever their number and size.

pub(crate) mod file;
pub(crate) mod format;
pub(crate) mod scan;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use self::format::{
    FileKind, INDEX_ENTRIES_AT, INDEX_ENTRY_LEN, INDEX_STATE_AT, IndexEntry, IndexState,
    SEGMENT_HEADER_LEN, SegmentMeta,
};
use self::scan::{ScanCursor, ScanStop, scan};
use crate::entry::{ENTRY_HEADER_LEN, Entry, EntryHeader, decode_header, verify_entry};
use crate::error::{Error, Result};
use crate::mmap::{MapWriter, SegmentMap};

/// The two files of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentPaths {
    pub data: PathBuf,
    pub index: PathBuf,
}

impl SegmentPaths {
    pub fn new(dir: &Path, first_offset: u64, first_index: u64) -> Self {
        SegmentPaths {
            data: dir.join(format::file_name(first_offset, first_index, FileKind::Data)),
            index: dir.join(format::file_name(
                first_offset,
                first_index,
                FileKind::Index,
            )),
        }
    }

    /// Deletes both files (a file already gone is fine).
    pub fn remove(&self) -> Result<()> {
        file::remove(&self.index)?;
        file::remove(&self.data)
    }
}

/// Random access to a segment's index entries, in memory or mapped from a sealed index file.
pub(crate) trait EntryIndex {
    fn count(&self) -> usize;
    fn at(&self, i: usize) -> Option<IndexEntry>;

    /// First `i` for which `pred` is false, given `pred` is true then false along the index.
    fn partition_point(&self, pred: impl Fn(&IndexEntry) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.at(mid) {
                Some(e) if pred(&e) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }
}

impl EntryIndex for [IndexEntry] {
    fn count(&self) -> usize {
        self.len()
    }
    fn at(&self, i: usize) -> Option<IndexEntry> {
        self.get(i).copied()
    }
}

impl EntryIndex for Vec<IndexEntry> {
    fn count(&self) -> usize {
        self.len()
    }
    fn at(&self, i: usize) -> Option<IndexEntry> {
        self.get(i).copied()
    }
}

/// A sealed segment's index.
#[derive(Debug, Clone)]
pub(crate) enum SegmentIndex {
    /// Built in memory (the segment was sealed by this process, or its index was rebuilt).
    Memory(Arc<Vec<IndexEntry>>),
    /// Mapped from a sealed index file that was checked when it was loaded.
    Mapped { map: Arc<SegmentMap>, count: usize },
}

impl EntryIndex for SegmentIndex {
    fn count(&self) -> usize {
        match self {
            SegmentIndex::Memory(v) => v.len(),
            SegmentIndex::Mapped { count, .. } => *count,
        }
    }

    fn at(&self, i: usize) -> Option<IndexEntry> {
        match self {
            SegmentIndex::Memory(v) => v.get(i).copied(),
            SegmentIndex::Mapped { map, count } => {
                if i >= *count {
                    return None;
                }
                let at = INDEX_ENTRIES_AT + i * INDEX_ENTRY_LEN;
                IndexEntry::decode(map.get(at..at + INDEX_ENTRY_LEN)?)
            }
        }
    }
}

/// Reads the entry that `e` points at from `map`, checking its CRC if `verify`.
pub(crate) fn read_entry(
    map: &Arc<SegmentMap>,
    path: &Path,
    e: &IndexEntry,
    verify: bool,
) -> Result<Entry> {
    let range = e.position as usize..e.end_position();
    let corrupt = |detail: &str| Error::corrupt(path, u64::from(e.position), detail);
    let bytes = map
        .get(range.clone())
        .ok_or_else(|| corrupt("entry outside the mapped segment"))?;
    let header: EntryHeader = decode_header(bytes).map_err(|_| corrupt("bad entry header"))?;
    if header.entry_len() != e.len as usize || header.record_count != e.record_count {
        return Err(corrupt("entry header disagrees with the index"));
    }
    if verify && !verify_entry(&header, bytes) {
        return Err(corrupt("entry checksum mismatch"));
    }
    let body = map
        .bytes(range.start + ENTRY_HEADER_LEN..range.end)
        .ok_or_else(|| corrupt("entry body outside the map"))?;
    Ok(Entry {
        log_id: header.log_id,
        kind: header.kind,
        base_offset: e.base_offset,
        record_count: e.record_count,
        body,
    })
}

/// The writable segment at the end of the log.
pub(crate) struct ActiveSegment {
    pub meta: SegmentMeta,
    pub paths: SegmentPaths,
    writer: MapWriter,
    /// Data position after the last entry.
    pub end: usize,
}

impl std::fmt::Debug for ActiveSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveSegment")
            .field("meta", &self.meta)
            .field("end", &self.end)
            .finish()
    }
}

/// The index file of the active segment and how much of it is on disk.
#[derive(Debug)]
pub(crate) struct ActiveIndex {
    file: File,
    path: PathBuf,
    /// Entries written to the file.
    persisted: usize,
    state: IndexState,
    /// The index file and the segment's directory entries are durable.
    creation_synced: bool,
}

impl ActiveSegment {
    /// Creates both files of a new segment: the data file sized to `capacity` bytes.
    pub fn create(
        dir: &Path,
        meta: SegmentMeta,
        capacity: u64,
    ) -> Result<(ActiveSegment, ActiveIndex)> {
        let paths = SegmentPaths::new(dir, meta.first_offset, meta.first_index);
        let created = Self::create_files(&paths, meta, capacity);
        if created.is_err() {
            // Leave nothing half-made behind (a full disk must not leave a broken segment).
            let _ = paths.remove();
        }
        let (data_file, index_file) = created?;
        let (_, writer) = SegmentMap::writable(data_file, SEGMENT_HEADER_LEN)
            .map_err(|e| Error::io(&paths.data, e))?;
        let index = ActiveIndex {
            file: index_file,
            path: paths.index.clone(),
            persisted: 0,
            state: IndexState::default(),
            creation_synced: false,
        };
        Ok((
            ActiveSegment {
                meta,
                paths,
                writer,
                end: SEGMENT_HEADER_LEN,
            },
            index,
        ))
    }

    fn create_files(
        paths: &SegmentPaths,
        meta: SegmentMeta,
        capacity: u64,
    ) -> Result<(File, File)> {
        let data = file::create_new(&paths.data)?;
        file::set_len(&data, &paths.data, capacity)?;
        file::write_at(&data, &paths.data, 0, &meta.encode(FileKind::Data))?;
        let index = file::create_new(&paths.index)?;
        let mut head = meta.encode(FileKind::Index).to_vec();
        head.extend_from_slice(&IndexState::default().encode());
        file::write_at(&index, &paths.index, 0, &head)?;
        Ok((data, index))
    }

    /// Makes the segment's creation durable now (its header, its index file, its directory
    /// entry). Operations that rely on the segment being on disk call this; a roll leaves it
    /// to the flusher, which does it before syncing any data of the segment.
    pub fn sync_creation(&self, index: &mut ActiveIndex) -> Result<()> {
        file::sync_data(self.writer.file(), &self.paths.data)?;
        index.sync_creation()
    }

    /// Reopens the active segment found at open, with `end` bytes published.
    pub fn reopen(meta: SegmentMeta, paths: SegmentPaths, writer: MapWriter, end: usize) -> Self {
        ActiveSegment {
            meta,
            paths,
            writer,
            end,
        }
    }

    /// The map readers use.
    pub fn map(&self) -> &Arc<SegmentMap> {
        self.writer.map()
    }

    /// Bytes left for entries.
    pub fn remaining(&self) -> usize {
        self.map().len().saturating_sub(self.end)
    }

    /// Writes an entry (one `pwritev`) and publishes it. `base_offset` is patched into a data
    /// body's first 8 bytes on the way. Returns the entry's position.
    pub fn write_entry(
        &mut self,
        header: &[u8; ENTRY_HEADER_LEN],
        body: &[u8],
        base_offset: Option<u64>,
    ) -> Result<usize> {
        let pos = self.end;
        let written = match base_offset {
            Some(base_offset) if body.len() >= 8 => self
                .writer
                .write(pos, &[header, &base_offset.to_le_bytes(), &body[8..]]),
            _ => self.writer.write(pos, &[header, body]),
        };
        written.map_err(|e| Error::io(&self.paths.data, e))?;
        self.end = pos + ENTRY_HEADER_LEN + body.len();
        self.writer.freeze(self.end);
        Ok(pos)
    }

    /// Turns this segment into a job that seals it with `entries` (its index, possibly cut
    /// short by a truncation) ending at data position `end`.
    pub fn into_seal_job(
        self,
        entries: Arc<Vec<IndexEntry>>,
        index: Arc<Mutex<ActiveIndex>>,
    ) -> SealJob {
        let end = entries
            .last()
            .map_or(SEGMENT_HEADER_LEN, |e| e.end_position());
        SealJob {
            paths: self.paths,
            writer: self.writer,
            end,
            entries,
            index,
        }
    }
}

impl ActiveIndex {
    /// Wraps the index file of a reopened active segment whose first `persisted` entries are
    /// valid on disk.
    pub fn reopen(file: File, path: PathBuf, persisted: usize) -> Self {
        ActiveIndex {
            file,
            path,
            persisted,
            state: IndexState::default(),
            creation_synced: true,
        }
    }

    /// Makes the index file and the segment's directory entries durable, once.
    pub fn sync_creation(&mut self) -> Result<()> {
        if !self.creation_synced {
            file::sync_data(&self.file, &self.path)?;
            file::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
            self.creation_synced = true;
        }
        Ok(())
    }

    /// Entries already in the index file.
    pub fn persisted(&self) -> usize {
        self.persisted
    }

    /// Records a checkpoint: `tail` are the entries after the persisted ones (all durable in
    /// the data file), `end` the data position after them. Writes the tail, then the state
    /// block, then syncs. `clean` marks a clean close; without it the segment reads as open
    /// (written to), which tells recovery to distrust what follows the checkpoint.
    pub fn checkpoint(&mut self, tail: &[IndexEntry], end: u64, clean: bool) -> Result<()> {
        let total = self.persisted + tail.len();
        let state = IndexState {
            sealed: false,
            clean,
            checkpoint_entries: total as u64,
            checkpoint_end: end,
        };
        if state == self.state && tail.is_empty() {
            return Ok(());
        }
        self.write_tail(tail)?;
        self.write_state(state)
    }

    fn write_tail(&mut self, tail: &[IndexEntry]) -> Result<()> {
        if !tail.is_empty() {
            let mut buf = Vec::with_capacity(tail.len() * INDEX_ENTRY_LEN);
            for e in tail {
                buf.extend_from_slice(&e.encode());
            }
            let at = (INDEX_ENTRIES_AT + self.persisted * INDEX_ENTRY_LEN) as u64;
            file::write_at(&self.file, &self.path, at, &buf)?;
        }
        self.persisted += tail.len();
        Ok(())
    }

    fn write_state(&mut self, state: IndexState) -> Result<()> {
        file::write_at(
            &self.file,
            &self.path,
            INDEX_STATE_AT as u64,
            &state.encode(),
        )?;
        file::sync_data(&self.file, &self.path)?;
        self.state = state;
        Ok(())
    }

    /// Writes the complete index of a sealed segment and trims the file to it.
    fn seal(&mut self, entries: &[IndexEntry]) -> Result<()> {
        self.persisted = self.persisted.min(entries.len());
        self.write_tail(&entries[self.persisted..])?;
        file::set_len(
            &self.file,
            &self.path,
            (INDEX_ENTRIES_AT + entries.len() * INDEX_ENTRY_LEN) as u64,
        )?;
        let end = entries
            .last()
            .map_or(SEGMENT_HEADER_LEN as u64, |e| e.end_position() as u64);
        self.write_state(IndexState {
            sealed: true,
            clean: true,
            checkpoint_entries: entries.len() as u64,
            checkpoint_end: end,
        })
    }
}

/// The work of sealing a segment, done off the append path by the flusher.
pub(crate) struct SealJob {
    paths: SegmentPaths,
    writer: MapWriter,
    end: usize,
    entries: Arc<Vec<IndexEntry>>,
    index: Arc<Mutex<ActiveIndex>>,
}

impl std::fmt::Debug for SealJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealJob")
            .field("data", &self.paths.data)
            .field("end", &self.end)
            .finish()
    }
}

impl SealJob {
    /// Syncs the segment's data (fdatasync).
    pub fn flush_data(&self) -> Result<()> {
        self.writer
            .map()
            .flush(0..self.end)
            .map_err(|e| Error::io(&self.paths.data, e))
    }

    /// The segment's files.
    pub fn paths(&self) -> &SegmentPaths {
        &self.paths
    }

    /// Trims the data file to its entries (when no published byte lies beyond them), syncs it,
    /// then writes and syncs the complete index. Call after [`Self::flush_data`].
    pub fn finish(mut self) -> Result<()> {
        let trimmed = self
            .writer
            .trim_file(self.end)
            .map_err(|e| Error::io(&self.paths.data, e))?;
        if trimmed {
            file::sync_data(self.writer.file(), &self.paths.data)?;
        }
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seal(&self.entries)
    }
}

/// A loaded sealed segment.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub meta: SegmentMeta,
    pub data: Arc<SegmentMap>,
    pub index: SegmentIndex,
    /// The index was rebuilt or written by this process, so its entries were CRC-checked
    /// against the data (otherwise reads by index verify each entry lazily).
    pub verified: bool,
}

impl Loaded {
    /// Data position after the last entry.
    pub fn end_position(&self) -> usize {
        match self.index.count() {
            0 => SEGMENT_HEADER_LEN,
            n => self
                .index
                .at(n - 1)
                .map_or(SEGMENT_HEADER_LEN, |e| e.end_position()),
        }
    }

    /// Running max timestamp at the segment's last entry.
    pub fn max_timestamp(&self) -> i64 {
        match self.index.count() {
            0 => self.meta.prev_max_timestamp,
            n => self
                .index
                .at(n - 1)
                .map_or(self.meta.prev_max_timestamp, |e| e.max_timestamp),
        }
    }
}

/// A sealed segment, opened on first use.
#[derive(Debug)]
pub(crate) struct SealedSegment {
    pub first_index: u64,
    pub first_offset: u64,
    /// Index after its last entry (the next segment's first index).
    pub end_index: u64,
    /// Offset after its last record (the next segment's first offset).
    pub end_offset: u64,
    pub paths: SegmentPaths,
    loaded: OnceLock<Loaded>,
    loading: Mutex<()>,
}

impl SealedSegment {
    /// A segment known by name only, loaded on first use.
    pub fn lazy(
        dir: &Path,
        first_offset: u64,
        first_index: u64,
        end_index: u64,
        end_offset: u64,
    ) -> Self {
        SealedSegment {
            first_index,
            first_offset,
            end_index,
            end_offset,
            paths: SegmentPaths::new(dir, first_offset, first_index),
            loaded: OnceLock::new(),
            loading: Mutex::new(()),
        }
    }

    /// A segment already in memory (just sealed, cut, or checked at open).
    pub fn with_loaded(
        paths: SegmentPaths,
        end_index: u64,
        end_offset: u64,
        loaded: Loaded,
    ) -> Self {
        let segment = SealedSegment {
            first_index: loaded.meta.first_index,
            first_offset: loaded.meta.first_offset,
            end_index,
            end_offset,
            paths,
            loaded: OnceLock::new(),
            loading: Mutex::new(()),
        };
        let _ = segment.loaded.set(loaded);
        segment
    }

    /// Entries in the segment.
    pub fn entry_count(&self) -> u64 {
        self.end_index - self.first_index
    }

    /// The segment's header, maps and index, loading (and if need be rebuilding) them on
    /// first use.
    pub fn load(&self) -> Result<&Loaded> {
        if let Some(loaded) = self.loaded.get() {
            return Ok(loaded);
        }
        let _guard = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(loaded) = self.loaded.get() {
            return Ok(loaded);
        }
        let meta = read_meta(&self.paths.data)?;
        if meta.first_index != self.first_index || meta.first_offset != self.first_offset {
            return Err(Error::corrupt(
                &self.paths.data,
                0,
                "segment header disagrees with the file name",
            ));
        }
        let loaded = match self.load_index_file(meta)? {
            Some(loaded) => loaded,
            None => {
                tracing::warn!(path = %self.paths.index.display(), "segment index missing, unsealed or damaged; rebuilding it from the data");
                self.rebuild(meta)?
            }
        };
        Ok(self.loaded.get_or_init(|| loaded))
    }

    /// Whether the index file says it is complete (a cheap check of its first 128 bytes).
    pub fn index_is_sealed(&self) -> bool {
        let Ok(f) = File::open(&self.paths.index) else {
            return false;
        };
        let mut head = [0u8; INDEX_ENTRIES_AT];
        if !matches!(file::read_at(&f, &self.paths.index, 0, &mut head), Ok(true)) {
            return false;
        }
        let meta_ok = SegmentMeta::decode(&head, FileKind::Index).is_some_and(|m| {
            m.first_index == self.first_index && m.first_offset == self.first_offset
        });
        let state = IndexState::decode(&head[INDEX_STATE_AT..]);
        meta_ok && state.is_some_and(|s| s.sealed && s.checkpoint_entries == self.entry_count())
    }

    /// Maps the index file if it is a complete, consistent sealed index for this segment.
    fn load_index_file(&self, meta: SegmentMeta) -> Result<Option<Loaded>> {
        let Ok(index_file) = File::open(&self.paths.index) else {
            return Ok(None);
        };
        let index_len = file::len(&index_file, &self.paths.index)? as usize;
        let count = self.entry_count() as usize;
        if index_len != INDEX_ENTRIES_AT + count * INDEX_ENTRY_LEN {
            return Ok(None);
        }
        let index_map = SegmentMap::read_only(&index_file, index_len)
            .map_err(|e| Error::io(&self.paths.index, e))?;
        let Some(head) = index_map.get(0..INDEX_ENTRIES_AT) else {
            return Ok(None);
        };
        if SegmentMeta::decode(head, FileKind::Index) != Some(meta) {
            return Ok(None);
        }
        match IndexState::decode(&head[INDEX_STATE_AT..]) {
            Some(s) if s.sealed && s.checkpoint_entries == count as u64 => {}
            _ => return Ok(None),
        }
        let index = SegmentIndex::Mapped {
            map: index_map,
            count,
        };
        let data_file = file::open_ro(&self.paths.data)?;
        let data_len = file::len(&data_file, &self.paths.data)? as usize;
        let Some(end) = check_chain(&index, &meta, self.end_offset, data_len) else {
            return Ok(None);
        };
        let data =
            SegmentMap::read_only(&data_file, end).map_err(|e| Error::io(&self.paths.data, e))?;
        Ok(Some(Loaded {
            meta,
            data,
            index,
            verified: false,
        }))
    }

    /// Rebuilds the index by scanning the data file up to `end_index`, and writes it.
    fn rebuild(&self, meta: SegmentMeta) -> Result<Loaded> {
        let (data, found) = scan_file(&self.paths.data, &meta, Some(self.end_index))?;
        if found.stop != ScanStop::Boundary || found.next.offset != self.end_offset {
            let (position, reason) = match found.stop {
                ScanStop::Torn { position, reason } => (position, reason),
                _ => (found.next.position, "segment ends early"),
            };
            return Err(Error::corrupt(
                &self.paths.data,
                position as u64,
                format!(
                    "{reason}: entries {}..{} unreadable",
                    found.next.index, self.end_index
                ),
            ));
        }
        write_sealed_index(&self.paths, &meta, &found.entries)?;
        Ok(Loaded {
            meta,
            data,
            index: SegmentIndex::Memory(Arc::new(found.entries)),
            verified: true,
        })
    }
}

/// Reads and checks a data file's header.
pub(crate) fn read_meta(path: &Path) -> Result<SegmentMeta> {
    let f = file::open_ro(path)?;
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    if !file::read_at(&f, path, 0, &mut head)? {
        return Err(Error::corrupt(
            path,
            0,
            "segment file shorter than its header",
        ));
    }
    SegmentMeta::decode(&head, FileKind::Data)
        .ok_or_else(|| Error::corrupt(path, 0, "segment header damaged"))
}

/// Maps a whole data file read-only and scans it from its first entry.
pub(crate) fn scan_file(
    path: &Path,
    meta: &SegmentMeta,
    boundary: Option<u64>,
) -> Result<(Arc<SegmentMap>, scan::Scan)> {
    let data_file = file::open_ro(path)?;
    let data_len = file::len(&data_file, path)? as usize;
    let data = SegmentMap::read_only(&data_file, data_len).map_err(|e| Error::io(path, e))?;
    let found = scan(
        data.get(0..data_len).unwrap_or(&[]),
        start_cursor(meta),
        boundary,
    );
    Ok((data, found))
}

/// The scan cursor at the start of a segment.
pub(crate) fn start_cursor(meta: &SegmentMeta) -> ScanCursor {
    ScanCursor {
        position: SEGMENT_HEADER_LEN,
        index: meta.first_index,
        offset: meta.first_offset,
        max_timestamp: meta.prev_max_timestamp,
        term: meta.prev.map_or(0, |(term, _)| term),
    }
}

/// Checks that index entries chain from the segment start to `end_offset` inside a data file
/// of `data_len` bytes; returns the data position after the last entry.
pub(crate) fn check_chain(
    index: &impl EntryIndex,
    meta: &SegmentMeta,
    end_offset: u64,
    data_len: usize,
) -> Option<usize> {
    let mut position = SEGMENT_HEADER_LEN;
    let mut offset = meta.first_offset;
    let mut max_timestamp = meta.prev_max_timestamp;
    for i in 0..index.count() {
        let e = index.at(i)?;
        if e.position as usize != position
            || e.base_offset != offset
            || e.max_timestamp < max_timestamp
            || (e.len as usize) < ENTRY_HEADER_LEN
        {
            return None;
        }
        position = e.end_position();
        offset = e.end_offset();
        max_timestamp = e.max_timestamp;
    }
    (offset == end_offset && position <= data_len).then_some(position)
}

/// Writes a complete sealed index file for `entries` (atomically, via a temporary file).
pub(crate) fn write_sealed_index(
    paths: &SegmentPaths,
    meta: &SegmentMeta,
    entries: &[IndexEntry],
) -> Result<()> {
    let mut buf = Vec::with_capacity(INDEX_ENTRIES_AT + entries.len() * INDEX_ENTRY_LEN);
    buf.extend_from_slice(&meta.encode(FileKind::Index));
    let end = entries
        .last()
        .map_or(SEGMENT_HEADER_LEN as u64, |e| e.end_position() as u64);
    let state = IndexState {
        sealed: true,
        clean: true,
        checkpoint_entries: entries.len() as u64,
        checkpoint_end: end,
    };
    buf.extend_from_slice(&state.encode());
    for e in entries {
        buf.extend_from_slice(&e.encode());
    }
    let dir = paths.index.parent().unwrap_or(Path::new("."));
    file::replace(dir, &paths.index, &buf)
}
