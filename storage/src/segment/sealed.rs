//! Sealed segments: complete, read-only, opened on first use. At log open only their names
//! are listed; the first read checks the index (header, state, per-entry CRC, position and
//! offset chain) and maps it, or rebuilds a missing or damaged index by scanning the data and
//! writes it back.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use super::format::{
    FileKind, INDEX_ENTRIES_AT, INDEX_ENTRY_LEN, INDEX_STATE_AT, IndexEntry, IndexState,
    SEGMENT_HEADER_LEN, SegmentMeta,
};
use super::scan::{self, ScanCursor, ScanStop, scan};
use super::{EntryIndex, SegmentIndex, SegmentPaths, file};
use crate::entry::ENTRY_HEADER_LEN;
use crate::error::{Error, Result};
use crate::mmap::SegmentMap;

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
    crate::durable::replace(dir, &paths.index, &buf)
}
