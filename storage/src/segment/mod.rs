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
mod sealed;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use self::format::{
    FileKind, INDEX_ENTRIES_AT, INDEX_ENTRY_LEN, INDEX_STATE_AT, IndexEntry, IndexState,
    SEGMENT_HEADER_LEN, SegmentMeta,
};
use crate::entry::{ENTRY_HEADER_LEN, Entry, EntryHeader, decode_header, verify_entry};
use crate::error::{Error, Result};
use crate::mmap::{MapWriter, SegmentMap};

pub(crate) use self::sealed::{
    Loaded, SealedSegment, check_chain, read_meta, scan_file, start_cursor, write_sealed_index,
};

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
            crate::durable::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
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
