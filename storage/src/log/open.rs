//! Opening a log: lock the directory, list segments, apply the log start, recover.
//!
//! Work at open is bounded by the active segment, never by the log's size:
//! - sealed segments are only listed (their names carry first index and offset) and loaded
//!   on first use, except the newest ones whose seal had not finished before a crash: those
//!   are checked now, and the log is cut where one of them ends early;
//! - the active segment's index is trusted up to its last checkpoint and the data after it is
//!   scanned entry by entry; the first torn entry ends the log.
//!
//! A segment that was not closed cleanly is sealed as recovered and a fresh segment takes
//! over, so nothing written before the crash (torn or stale bytes past the end) can ever be
//! mistaken for an entry later.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use super::flush::{DurableState, FlushIo};
use super::lock::DirLock;
use super::start::LogStart;
use super::write::{Tail, create_active};
use super::{ActiveView, FsyncPolicy, LogConfig, LogInner, View, Writer};
use crate::entry::{LogId, decode_header};
use crate::error::{Error, Result};
use crate::mmap::SegmentMap;
use crate::segment::format::{
    self, FileKind, INDEX_ENTRIES_AT, INDEX_ENTRY_LEN, INDEX_STATE_AT, IndexEntry, IndexState,
    SEGMENT_HEADER_LEN, SegmentMeta,
};
use crate::segment::scan::{ScanCursor, ScanStop, scan};
use crate::segment::{
    ActiveIndex, ActiveSegment, Loaded, SealedSegment, SegmentIndex, SegmentPaths, file, read_meta,
    scan_file, start_cursor, write_sealed_index,
};

pub(crate) fn open(dir: &Path, mut config: LogConfig) -> Result<Arc<LogInner>> {
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::fault::check(dir).map_err(|e| Error::io(dir, e))?;
    let lock = DirLock::acquire(dir)?;
    let flusher = match config.flusher.take() {
        Some(flusher) => flusher,
        None => super::Flusher::new()?,
    };
    let listing = list_segments(dir)?;
    let stored_start = LogStart::read(dir)?;
    let recovered = recover(dir, &config, listing, stored_start)?;
    tracing::debug!(dir = %dir.display(), next_index = recovered.next_index, next_offset = recovered.next_offset, segments = recovered.sealed.len() + 1, "log opened");

    let next_index = recovered.next_index;
    let active_first = recovered.active.meta.first_index;
    let active_end = recovered.active.end_position();
    let interval = match config.fsync {
        FsyncPolicy::Interval(every) => Some(every),
        _ => None,
    };
    let inner = Arc::new(LogInner {
        dir: dir.to_path_buf(),
        config,
        writer: Mutex::new(Writer {
            active: Some(recovered.writer),
            closed: false,
        }),
        view: RwLock::new(View {
            sealed: recovered.sealed,
            active: recovered.active,
            start: recovered.start,
            next_index,
            next_offset: recovered.next_offset,
            last_log_id: recovered.last_log_id,
            max_timestamp: recovered.max_timestamp,
            readable_next: next_index,
            readable_end_offset: recovered.next_offset,
            pending_seals: Vec::new(),
        }),
        flush_io: Mutex::new(FlushIo {
            active_first_index: active_first,
            active_flushed: active_end,
            last_checkpoint: None,
            appends_at_snapshot: 0,
            last_group: 0,
            last_sync: std::time::Duration::ZERO,
        }),
        durable: Mutex::new(DurableState {
            durable_next: next_index,
            waiters: Vec::new(),
            poisoned: None,
        }),
        durable_changed: Condvar::new(),
        flusher,
        flush_requested: AtomicBool::new(false),
        appends: std::sync::atomic::AtomicU64::new(0),
        crashed: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        lock: Mutex::new(Some(lock)),
        #[cfg(test)]
        fail_next_flush: AtomicBool::new(false),
    });
    if let Some(every) = interval {
        inner.flusher.flush_every(Arc::downgrade(&inner), every);
    }
    Ok(inner)
}

/// Segments by first index → first offset, after removing leftovers (temporary files, index
/// files without data).
fn list_segments(dir: &Path) -> Result<BTreeMap<u64, u64>> {
    let mut data = BTreeMap::new();
    let mut index_files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            file::remove(&entry.path())?;
            continue;
        }
        match format::parse_file_name(name) {
            Some((offset, index, FileKind::Data)) if data.contains_key(&index) => {
                let detail = format!("two segments start at index {index} (offset {offset})");
                return Err(Error::corrupt(entry.path(), 0, detail));
            }
            Some((offset, index, FileKind::Data)) => {
                data.insert(index, offset);
            }
            Some((offset, index, FileKind::Index)) => index_files.push((offset, index)),
            None => {}
        }
    }
    for (offset, index) in index_files {
        if data.get(&index) != Some(&offset) {
            file::remove(&SegmentPaths::new(dir, offset, index).index)?;
        }
    }
    let mut last_offset = 0;
    for (&index, &offset) in &data {
        if offset < last_offset {
            let path = SegmentPaths::new(dir, offset, index).data;
            return Err(Error::corrupt(path, 0, "segment offsets go backwards"));
        }
        last_offset = offset;
    }
    Ok(data)
}

/// What recovery hands to the new log.
struct Recovered {
    sealed: Vec<Arc<SealedSegment>>,
    active: ActiveView,
    writer: ActiveSegment,
    start: LogStart,
    next_index: u64,
    next_offset: u64,
    last_log_id: Option<LogId>,
    max_timestamp: i64,
}

fn recover(
    dir: &Path,
    config: &LogConfig,
    listing: BTreeMap<u64, u64>,
    stored_start: Option<LogStart>,
) -> Result<Recovered> {
    let mut segments: Vec<(u64, u64)> = listing.into_iter().collect(); // (first_index, first_offset)

    // Segments wholly before the log start are left over from an interrupted purge.
    if let Some(start) = stored_start {
        while segments.len() >= 2 && segments[1].0 <= start.first_index {
            let (index, offset) = segments.remove(0);
            tracing::info!(
                first_index = index,
                "removing a segment purged before the last shutdown"
            );
            SegmentPaths::new(dir, offset, index).remove()?;
        }
    }

    let Some(&(active_index, active_offset)) = segments.last() else {
        // No segment at all: a new log, or one emptied by a reset.
        let start = stored_start.unwrap_or_default();
        let tail = Tail {
            next_index: start.first_index,
            next_offset: start.first_offset,
            last: start.last_purged,
            max_timestamp: i64::MIN,
        };
        return fresh(dir, config, Vec::new(), tail, start);
    };
    let mut sealed: Vec<SealedSegment> = segments
        .windows(2)
        .map(|w| SealedSegment::lazy(dir, w[0].1, w[0].0, w[1].0, w[1].1))
        .collect();

    // The newest sealed segments may not have been sealed on disk before a crash.
    let mut cut_at = None;
    for k in (0..sealed.len()).rev() {
        if sealed[k].index_is_sealed() {
            break;
        }
        match sealed[k].load() {
            Ok(_) => {}
            Err(Error::Corrupt {
                path,
                position,
                detail,
            }) => {
                tracing::error!(path = %path.display(), position, %detail, "segment sealed before a crash ends early; cutting the log there");
                cut_at = Some(k);
            }
            Err(e) => return Err(e),
        }
    }

    if let Some(k) = cut_at {
        // Everything after segment k goes, newest first; k keeps its valid prefix.
        let active_paths = SegmentPaths::new(dir, active_offset, active_index);
        active_paths.remove()?;
        for s in sealed.drain(k + 1..).rev() {
            s.paths.remove()?;
        }
        let Some(damaged) = sealed.pop() else {
            return Err(Error::corrupt(dir, 0, "lost track of a damaged segment"));
        };
        let meta = read_meta(&damaged.paths.data)?;
        let (data, found) = scan_file(&damaged.paths.data, &meta, None)?;
        let tail = Tail {
            next_index: found.next.index,
            next_offset: found.next.offset,
            last: found.last_log_id.or(meta.prev_log_id()),
            max_timestamp: found.next.max_timestamp,
        };
        if found.entries.is_empty() {
            damaged.paths.remove()?;
        } else {
            write_sealed_index(&damaged.paths, &meta, &found.entries)?;
            let loaded = Loaded {
                meta,
                data,
                index: SegmentIndex::Memory(Arc::new(found.entries)),
                verified: true,
            };
            sealed.push(SealedSegment::with_loaded(
                damaged.paths.clone(),
                tail.next_index,
                tail.next_offset,
                loaded,
            ));
        }
        let sealed: Vec<Arc<SealedSegment>> = sealed.into_iter().map(Arc::new).collect();
        let start = choose_start(stored_start, &sealed, None)?;
        return fresh(dir, config, sealed, tail, start);
    }

    let previous = sealed.last();
    let active = recover_active(dir, active_offset, active_index, previous, stored_start)?;
    let mut sealed: Vec<Arc<SealedSegment>> = sealed.into_iter().map(Arc::new).collect();
    match active {
        ActiveRecovery::Reopened {
            writer,
            view,
            next,
            last_log_id,
        } => {
            let start = choose_start(stored_start, &sealed, Some(&view.meta))?;
            if next.index < start.first_index {
                return reset_to_start(dir, config, sealed, Some(view.paths), start);
            }
            Ok(Recovered {
                sealed,
                active: view,
                writer,
                start,
                next_index: next.index,
                next_offset: next.offset,
                last_log_id,
                max_timestamp: next.max_timestamp,
            })
        }
        ActiveRecovery::Replaced { sealed_now, tail } => {
            sealed.extend(sealed_now.map(Arc::new));
            let start = choose_start(stored_start, &sealed, None)?;
            if tail.next_index < start.first_index {
                return reset_to_start(dir, config, sealed, None, start);
            }
            fresh(dir, config, sealed, tail, start)
        }
    }
}

/// The log start: the stored one, or where the first segment begins.
fn choose_start(
    stored: Option<LogStart>,
    sealed: &[Arc<SealedSegment>],
    active: Option<&SegmentMeta>,
) -> Result<LogStart> {
    let first_meta = match sealed.first() {
        Some(s) => s
            .load()
            .map(|l| l.meta)
            .or_else(|_| read_meta(&s.paths.data))?,
        None => match active {
            Some(meta) => *meta,
            None => return Ok(stored.unwrap_or_default()),
        },
    };
    match stored {
        Some(start) if start.first_index >= first_meta.first_index => Ok(start),
        _ => Ok(LogStart {
            first_index: first_meta.first_index,
            first_offset: first_meta.first_offset,
            last_purged: first_meta.prev_log_id(),
        }),
    }
}

/// The segments end before the stored log start (a reset was interrupted): drop them all.
fn reset_to_start(
    dir: &Path,
    config: &LogConfig,
    sealed: Vec<Arc<SealedSegment>>,
    active: Option<SegmentPaths>,
    start: LogStart,
) -> Result<Recovered> {
    tracing::warn!(
        first_index = start.first_index,
        "log ends before its recorded start; discarding its segments"
    );
    if let Some(paths) = active {
        paths.remove()?;
    }
    for s in sealed.iter().rev() {
        s.paths.remove()?;
    }
    let tail = Tail {
        next_index: start.first_index,
        next_offset: start.first_offset,
        last: start.last_purged,
        max_timestamp: i64::MIN,
    };
    fresh(dir, config, Vec::new(), tail, start)
}

/// Finishes recovery with a brand-new active segment after `tail`.
fn fresh(
    dir: &Path,
    config: &LogConfig,
    sealed: Vec<Arc<SealedSegment>>,
    tail: Tail,
    start: LogStart,
) -> Result<Recovered> {
    let (writer, mut index) = create_active(dir, config, &tail)?;
    writer.sync_creation(&mut index)?;
    let view = ActiveView {
        meta: writer.meta,
        paths: writer.paths.clone(),
        map: writer.map().clone(),
        entries: Vec::new(),
        index: Arc::new(Mutex::new(index)),
    };
    Ok(Recovered {
        sealed,
        active: view,
        writer,
        start,
        next_index: tail.next_index,
        next_offset: tail.next_offset,
        last_log_id: tail.last,
        max_timestamp: tail.max_timestamp,
    })
}

enum ActiveRecovery {
    /// Closed cleanly: writing continues in it.
    Reopened {
        writer: ActiveSegment,
        view: ActiveView,
        next: ScanCursor,
        last_log_id: Option<LogId>,
    },
    /// Not closed cleanly: sealed as recovered (if it held entries); a new segment follows.
    Replaced {
        sealed_now: Option<SealedSegment>,
        tail: Tail,
    },
}

fn recover_active(
    dir: &Path,
    first_offset: u64,
    first_index: u64,
    previous: Option<&SealedSegment>,
    stored_start: Option<LogStart>,
) -> Result<ActiveRecovery> {
    let paths = SegmentPaths::new(dir, first_offset, first_index);
    let data_file = file::open_rw(&paths.data)?;
    let data_len = file::len(&data_file, &paths.data)? as usize;
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    let readable = file::read_at(&data_file, &paths.data, 0, &mut head)?;
    let meta = if readable {
        SegmentMeta::decode(&head, FileKind::Data)
    } else {
        None
    };
    let Some(meta) = meta else {
        if readable && head.iter().any(|b| *b != 0) {
            return Err(Error::corrupt(
                &paths.data,
                0,
                "active segment header damaged",
            ));
        }
        // The header never reached the disk: the crash came while the segment was being
        // created, or after a roll before its first flush. The flusher makes the header
        // durable with (and before acknowledging) the segment's first data, so nothing in
        // this file was acknowledged as durable; whatever entry bytes it holds are dropped.
        tracing::warn!(path = %paths.data.display(), "removing a segment whose creation never reached the disk");
        drop(data_file);
        paths.remove()?;
        let tail = tail_before(previous, stored_start, first_index, first_offset)?;
        return Ok(ActiveRecovery::Replaced {
            sealed_now: None,
            tail,
        });
    };
    if meta.first_index != first_index || meta.first_offset != first_offset {
        return Err(Error::corrupt(
            &paths.data,
            0,
            "segment header disagrees with the file name",
        ));
    }
    let (index_file, checkpoint, clean) = open_active_index(&paths, &meta)?;

    let (_, mut writer) =
        SegmentMap::writable(data_file, 0).map_err(|e| Error::io(&paths.data, e))?;
    let data = writer.private(0..data_len).unwrap_or(&[]);
    // Trust the checkpoint if its last entry is where the index says.
    let mut entries = checkpoint;
    let mut cursor = start_cursor(&meta);
    let mut last_log_id = meta.prev_log_id();
    if let Some(last) = entries.last().copied() {
        match decode_header(data.get(last.position as usize..).unwrap_or(&[])) {
            Ok(h)
                if h.log_id.index == first_index + entries.len() as u64 - 1
                    && h.entry_len() == last.len as usize =>
            {
                cursor = ScanCursor {
                    position: last.end_position(),
                    index: h.log_id.index + 1,
                    offset: last.end_offset(),
                    max_timestamp: last.max_timestamp,
                    term: h.log_id.term,
                };
                last_log_id = Some(h.log_id);
            }
            _ => entries.clear(),
        }
    }
    let checkpointed = entries.len();
    let found = scan(data, cursor, None);
    if let ScanStop::Torn { position, reason } = found.stop {
        tracing::warn!(path = %paths.data.display(), position, reason, index = found.next.index, "cutting a torn write off the end of the log");
    }
    let clean_reopen = clean && found.stop == ScanStop::Clean && found.entries.is_empty();
    let next = found.next;
    last_log_id = found.last_log_id.or(last_log_id);
    entries.extend(found.entries);
    writer.freeze(next.position);

    if clean_reopen {
        let mut index = ActiveIndex::reopen(index_file, paths.index.clone(), checkpointed);
        index.checkpoint(&[], next.position as u64, false)?;
        let writer = ActiveSegment::reopen(meta, paths.clone(), writer, next.position);
        let view = ActiveView {
            meta,
            paths,
            map: writer.map().clone(),
            entries,
            index: Arc::new(Mutex::new(index)),
        };
        return Ok(ActiveRecovery::Reopened {
            writer,
            view,
            next,
            last_log_id,
        });
    }

    let tail = Tail {
        next_index: next.index,
        next_offset: next.offset,
        last: last_log_id,
        max_timestamp: next.max_timestamp,
    };
    if entries.is_empty() {
        drop(writer);
        paths.remove()?;
        return Ok(ActiveRecovery::Replaced {
            sealed_now: None,
            tail,
        });
    }
    tracing::info!(path = %paths.data.display(), entries = entries.len(), "sealing the segment recovered after an unclean shutdown");
    let index = Arc::new(Mutex::new(ActiveIndex::reopen(
        index_file,
        paths.index.clone(),
        checkpointed,
    )));
    let segment = ActiveSegment::reopen(meta, paths.clone(), writer, next.position);
    let map = segment.map().clone();
    let entries = Arc::new(entries);
    let job = segment.into_seal_job(entries.clone(), index);
    job.flush_data()?;
    job.finish()?;
    let loaded = Loaded {
        meta,
        data: map,
        index: SegmentIndex::Memory(entries),
        verified: false,
    };
    Ok(ActiveRecovery::Replaced {
        sealed_now: Some(SealedSegment::with_loaded(
            paths,
            next.index,
            next.offset,
            loaded,
        )),
        tail,
    })
}

/// The log state just before a segment starting at `first_index`: from the previous segment,
/// or from the log start.
fn tail_before(
    previous: Option<&SealedSegment>,
    start: Option<LogStart>,
    first_index: u64,
    first_offset: u64,
) -> Result<Tail> {
    let (last, max_timestamp) = match previous {
        Some(p) => {
            let loaded = p.load()?;
            let last = match super::read::last_entry_id(p, loaded)? {
                Some(id) => Some(id),
                None => loaded.meta.prev_log_id(),
            };
            (last, loaded.max_timestamp())
        }
        None => (
            start
                .and_then(|s| s.last_purged)
                .filter(|l| l.index + 1 == first_index),
            i64::MIN,
        ),
    };
    Ok(Tail {
        next_index: first_index,
        next_offset: first_offset,
        last,
        max_timestamp,
    })
}

/// Opens (or recreates) the active segment's index file and reads its checkpoint: the
/// entries it vouches for (checked for consistency) and whether the segment was closed
/// cleanly. A damaged index yields no checkpoint, so the whole segment is scanned.
fn open_active_index(
    paths: &SegmentPaths,
    meta: &SegmentMeta,
) -> Result<(File, Vec<IndexEntry>, bool)> {
    let index_file = match file::open_rw(&paths.index) {
        Ok(f) => f,
        Err(_) => {
            tracing::warn!(path = %paths.index.display(), "active segment index missing; rebuilding it from the data");
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&paths.index)
                .map_err(|e| Error::io(&paths.index, e))?;
            file::write_at(&f, &paths.index, 0, &meta.encode(FileKind::Index))?;
            file::write_at(
                &f,
                &paths.index,
                INDEX_STATE_AT as u64,
                &IndexState::default().encode(),
            )?;
            return Ok((f, Vec::new(), false));
        }
    };
    let mut head = [0u8; INDEX_ENTRIES_AT];
    if !file::read_at(&index_file, &paths.index, 0, &mut head)?
        || SegmentMeta::decode(&head, FileKind::Index) != Some(*meta)
    {
        tracing::warn!(path = %paths.index.display(), "active segment index damaged; rebuilding it from the data");
        rewrite_index_head(&index_file, paths, meta)?;
        return Ok((index_file, Vec::new(), false));
    }
    let Some(state) = IndexState::decode(&head[INDEX_STATE_AT..]) else {
        rewrite_index_head(&index_file, paths, meta)?;
        return Ok((index_file, Vec::new(), false));
    };
    let count = state.checkpoint_entries as usize;
    let mut raw = vec![0u8; count.saturating_mul(INDEX_ENTRY_LEN).min(1 << 30)];
    if raw.len() != count * INDEX_ENTRY_LEN
        || !file::read_at(&index_file, &paths.index, INDEX_ENTRIES_AT as u64, &mut raw)?
    {
        return Ok((index_file, Vec::new(), false));
    }
    let entries: Option<Vec<IndexEntry>> = raw
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(IndexEntry::decode)
        .collect();
    let consistent = entries.filter(|e| {
        let end = crate::segment::check_chain(
            e,
            meta,
            e.last().map_or(meta.first_offset, IndexEntry::end_offset),
            usize::MAX,
        );
        end == Some(state.checkpoint_end as usize)
    });
    match consistent {
        Some(entries) => Ok((index_file, entries, state.clean)),
        None => Ok((index_file, Vec::new(), false)),
    }
}

fn rewrite_index_head(index_file: &File, paths: &SegmentPaths, meta: &SegmentMeta) -> Result<()> {
    file::write_at(index_file, &paths.index, 0, &meta.encode(FileKind::Index))?;
    file::write_at(
        index_file,
        &paths.index,
        INDEX_STATE_AT as u64,
        &IndexState::default().encode(),
    )
}
