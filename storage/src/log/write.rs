//! Changing the log: append, roll, truncate, purge, reset, retention.
//!
//! Every change holds the writer lock. Entries are copied into the active segment's map and
//! then published to readers under a short write lock of the view. Operations that remove
//! entries first flush everything, then hold the flush lock while they restructure segments,
//! and always remove from the end backwards (truncation) or the front forwards (purge), so a
//! crash in the middle leaves a log that is a longer version of the result, never one with
//! a hole.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::flush::Checkpoint;
use super::start::LogStart;
use super::{
    ActiveView, Appended, Appending, LogConfig, LogInner, RetentionPolicy, Writer, now_ms,
};
use crate::entry::{ENTRY_HEADER_LEN, EntryBody, LogId, encode_header};
use crate::error::{Error, Result};
use crate::segment::format::{IndexEntry, SegmentMeta};
use crate::segment::{
    ActiveIndex, ActiveSegment, EntryIndex, Loaded, SealedSegment, SegmentIndex, write_sealed_index,
};

/// The end of a log: what the next segment continues from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    pub next_index: u64,
    pub next_offset: u64,
    /// The last entry (its index is `next_index - 1`), when known.
    pub last: Option<LogId>,
    pub max_timestamp: i64,
}

/// Creates a new, empty active segment continuing `tail`.
pub(crate) fn create_active(
    dir: &Path,
    config: &LogConfig,
    tail: &Tail,
) -> Result<(ActiveSegment, ActiveIndex)> {
    let meta = SegmentMeta {
        first_index: tail.next_index,
        first_offset: tail.next_offset,
        prev: tail
            .last
            .filter(|l| l.index.checked_add(1) == Some(tail.next_index))
            .map(|l| (l.term, l.leader)),
        prev_max_timestamp: tail.max_timestamp,
        created_ms: now_ms(),
    };
    ActiveSegment::create(dir, meta, config.segment_bytes)
}

/// How appended entries get their indexes.
pub(crate) enum Indexing {
    /// The log's next indexes, with this term and leader.
    Next { term: u64, leader: u64 },
    /// The log ids given with the entries.
    Explicit,
}

impl LogInner {
    fn writable<'a>(&self, w: &'a mut Writer) -> Result<&'a mut ActiveSegment> {
        self.check_poisoned()?;
        if w.closed {
            return Err(self.closed_error());
        }
        w.active
            .as_mut()
            .ok_or_else(|| self.poisoned_error("an earlier truncation failed"))
    }

    pub(crate) fn append(
        self: &Arc<Self>,
        indexing: Indexing,
        bodies: Vec<EntryBody>,
        ids: Vec<LogId>,
    ) -> Result<Appending> {
        if bodies.is_empty() {
            return Err(Error::NothingToAppend);
        }
        let mut w = self.lock_writer();
        self.writable(&mut w)?;
        let (mut next_index, mut next_offset, last_term) = {
            let v = self.read_view();
            (
                v.next_index,
                v.next_offset,
                v.last_log_id.map_or(0, |l| l.term),
            )
        };
        // Check everything before writing anything.
        let mut log_ids = Vec::with_capacity(bodies.len());
        let mut term_floor = last_term;
        for (i, body) in bodies.iter().enumerate() {
            let log_id = match indexing {
                Indexing::Next { term, leader } => LogId::new(term, leader, next_index),
                Indexing::Explicit => ids[i],
            };
            if log_id.index != next_index {
                return Err(Error::NonContiguousAppend {
                    expected: next_index,
                    got: log_id.index,
                });
            }
            if log_id.term < term_floor {
                return Err(Error::TermRegression {
                    log_id,
                    previous_term: term_floor,
                });
            }
            let size = (ENTRY_HEADER_LEN + body.len()) as u64;
            if size > self.config.max_entry_bytes {
                return Err(Error::EntryTooLarge {
                    size,
                    limit: self.config.max_entry_bytes,
                });
            }
            let records = body.record_count();
            next_offset =
                next_offset
                    .checked_add(u64::from(records))
                    .ok_or(Error::OffsetOverflow {
                        base_offset: next_offset,
                        records,
                    })?;
            term_floor = log_id.term;
            next_index += 1;
            log_ids.push(log_id);
        }

        let mut first = None;
        let mut last = None;
        for (log_id, body) in log_ids.into_iter().zip(bodies) {
            let appended = self.append_one(&mut w, log_id, &body)?;
            first.get_or_insert(appended);
            last = Some(appended);
        }
        drop(w);
        self.appends
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let (Some(first), Some(last)) = (first, last) else {
            return Err(Error::NothingToAppend);
        };
        if self.config.fsync == super::FsyncPolicy::Always {
            self.request_flush();
        }
        Ok(Appending {
            first,
            last,
            inner: self.clone(),
        })
    }

    fn append_one(
        self: &Arc<Self>,
        w: &mut Writer,
        log_id: LogId,
        body: &EntryBody,
    ) -> Result<Appended> {
        let size = ENTRY_HEADER_LEN + body.len();
        let needs_roll = {
            let active = self.writable(w)?;
            let v = self.read_view();
            let full = active.remaining() < size
                || v.active.entries.len() >= self.config.segment_max_entries as usize;
            let aged = self.config.segment_max_age.is_some_and(|age| {
                now_ms().saturating_sub(active.meta.created_ms) >= age.as_millis() as i64
            });
            !v.active.entries.is_empty() && (full || aged)
        };
        if needs_roll {
            self.roll_locked(w)?;
        }
        let active = self.writable(w)?;
        if active.remaining() < size {
            return Err(Error::EntryTooLarge {
                size: size as u64,
                limit: active.remaining() as u64,
            });
        }
        let base_offset = self.read_view().next_offset;
        let header = encode_header(log_id, body, base_offset);
        let patch = matches!(body, EntryBody::Data(_)).then_some(base_offset);
        let position = active.write_entry(&header, body.bytes(), patch)?;

        let record_count = body.record_count();
        let always = self.config.fsync == super::FsyncPolicy::Always;
        let mut v = self.write_view();
        let max_timestamp = match body {
            EntryBody::Data(batch) => v.max_timestamp.max(batch.max_timestamp()),
            _ => v.max_timestamp,
        };
        v.active.entries.push(IndexEntry {
            position: position as u32,
            len: size as u32,
            base_offset,
            max_timestamp,
            record_count,
        });
        v.next_index = log_id.index + 1;
        v.next_offset = base_offset + u64::from(record_count);
        v.last_log_id = Some(log_id);
        v.max_timestamp = max_timestamp;
        if !always {
            v.readable_next = v.next_index;
            v.readable_end_offset = v.next_offset;
        }
        Ok(Appended {
            log_id,
            base_offset,
            record_count,
        })
    }

    pub(crate) fn roll(self: &Arc<Self>) -> Result<()> {
        let mut w = self.lock_writer();
        self.writable(&mut w)?;
        if self.read_view().active.entries.is_empty() {
            return Ok(());
        }
        self.roll_locked(&mut w)
    }

    /// Seals the active segment (in the background) and starts a new one.
    fn roll_locked(self: &Arc<Self>, w: &mut Writer) -> Result<()> {
        let tail = self.tail();
        let (new_segment, new_index) = create_active(&self.dir, &self.config, &tail)?;
        let Some(old) = w.active.replace(new_segment) else {
            return Err(self.poisoned_error("no active segment"));
        };
        let new_view = w.active.as_ref().map(|a| ActiveView {
            meta: a.meta,
            paths: a.paths.clone(),
            map: a.map().clone(),
            entries: Vec::new(),
            index: Arc::new(Mutex::new(new_index)),
        });
        let Some(new_view) = new_view else {
            return Err(self.poisoned_error("no active segment"));
        };
        {
            let mut v = self.write_view();
            let old_view = std::mem::replace(&mut v.active, new_view);
            let entries = Arc::new(old_view.entries);
            let index = old_view.index;
            let loaded = Loaded {
                meta: old.meta,
                data: old.map().clone(),
                index: SegmentIndex::Memory(entries.clone()),
                verified: true,
            };
            let sealed = SealedSegment::with_loaded(
                old.paths.clone(),
                tail.next_index,
                tail.next_offset,
                loaded,
            );
            v.sealed.push(Arc::new(sealed));
            v.pending_seals.push(old.into_seal_job(entries, index));
        }
        tracing::debug!(dir = %self.dir.display(), first_index = tail.next_index, "rolled to a new segment");
        self.request_flush();
        Ok(())
    }

    /// The current end of the log.
    fn tail(&self) -> Tail {
        let v = self.read_view();
        Tail {
            next_index: v.next_index,
            next_offset: v.next_offset,
            last: v.last_log_id,
            max_timestamp: v.max_timestamp,
        }
    }

    pub(crate) fn truncate_after(self: &Arc<Self>, last: Option<u64>) -> Result<()> {
        let mut w = self.lock_writer();
        self.writable(&mut w)?;
        let (first_index, next_index) = {
            let v = self.read_view();
            (v.start.first_index, v.next_index)
        };
        let keep_next = match last {
            Some(index) => index.checked_add(1).ok_or(Error::IndexOutOfRange {
                requested: index,
                first: first_index,
                next: next_index,
            })?,
            None => first_index,
        };
        if keep_next >= next_index {
            return Ok(());
        }
        if keep_next < first_index {
            return Err(Error::IndexOutOfRange {
                requested: keep_next.saturating_sub(1),
                first: first_index,
                next: next_index,
            });
        }
        let mut io = self.lock_flush_io();
        self.flush_locked(&mut io, Checkpoint::IfDue)?;
        let result = self.truncate_locked(&mut w, keep_next);
        if let Err(e) = &result {
            self.poison(e);
        }
        result
    }

    fn truncate_locked(self: &Arc<Self>, w: &mut Writer, keep_next: u64) -> Result<()> {
        let (mut sealed, active_meta, active_paths, active_entries) = {
            let v = self.read_view();
            (
                v.sealed.clone(),
                v.active.meta,
                v.active.paths.clone(),
                v.active.entries.clone(),
            )
        };
        // 1. Delete whole segments after the cut, newest first.
        let mut active = w.active.take();
        let cut_in_active = active_meta.first_index < keep_next;
        if !cut_in_active {
            drop(active.take());
            active_paths.remove()?;
            while sealed.last().is_some_and(|s| s.first_index >= keep_next) {
                if let Some(s) = sealed.pop() {
                    s.paths.remove()?;
                }
            }
        }
        // 2. The new end of the log.
        let tail = if cut_in_active {
            let kept = (keep_next - active_meta.first_index) as usize;
            let last_entry = active_entries[kept - 1];
            let last = read_log_id(&active, &active_paths.data, &last_entry)?;
            Tail {
                next_index: keep_next,
                next_offset: last_entry.end_offset(),
                last: Some(last),
                max_timestamp: last_entry.max_timestamp,
            }
        } else if let Some(s) = sealed.last().filter(|s| s.end_index > keep_next) {
            let loaded = s.load()?;
            let i = (keep_next - s.first_index - 1) as usize;
            let e = loaded.index.at(i).ok_or_else(|| {
                Error::corrupt(&s.paths.index, 0, "index shorter than the segment")
            })?;
            let entry = crate::segment::read_entry(&loaded.data, &s.paths.data, &e, false)?;
            Tail {
                next_index: keep_next,
                next_offset: e.end_offset(),
                last: Some(entry.log_id),
                max_timestamp: e.max_timestamp,
            }
        } else {
            // The cut falls at a segment boundary (or before every segment).
            self.tail_at_boundary(&sealed, keep_next)?
        };
        // 3. The new active segment, so a crash from here on stops every scan at `keep_next`.
        let (new_segment, mut new_index) = create_active(&self.dir, &self.config, &tail)?;
        new_segment.sync_creation(&mut new_index)?;
        // 4. Cut the segment that holds the new last entry: the active one is sealed short
        //    once the new view is published; a sealed one gets a shorter index now.
        let mut seal_after = None;
        if cut_in_active {
            let kept = (keep_next - active_meta.first_index) as usize;
            let entries = Arc::new(active_entries[..kept].to_vec());
            let Some(segment) = active.take() else {
                return Err(self.poisoned_error("no active segment"));
            };
            let loaded = Loaded {
                meta: active_meta,
                data: segment.map().clone(),
                index: SegmentIndex::Memory(entries.clone()),
                verified: true,
            };
            sealed.push(Arc::new(SealedSegment::with_loaded(
                active_paths,
                keep_next,
                tail.next_offset,
                loaded,
            )));
            seal_after = Some((segment, entries));
        } else if let Some(s) = sealed.pop() {
            if s.end_index > keep_next {
                let loaded = s.load()?;
                let kept = (keep_next - s.first_index) as usize;
                let entries: Vec<IndexEntry> =
                    (0..kept).filter_map(|i| loaded.index.at(i)).collect();
                write_sealed_index(&s.paths, &loaded.meta, &entries)?;
                let cut = Loaded {
                    meta: loaded.meta,
                    data: loaded.data.clone(),
                    index: SegmentIndex::Memory(Arc::new(entries)),
                    verified: loaded.verified,
                };
                sealed.push(Arc::new(SealedSegment::with_loaded(
                    s.paths.clone(),
                    keep_next,
                    tail.next_offset,
                    cut,
                )));
            } else {
                sealed.push(s);
            }
        }
        // 5. Publish, then finish sealing the cut active segment.
        let view = ActiveView {
            meta: new_segment.meta,
            paths: new_segment.paths.clone(),
            map: new_segment.map().clone(),
            entries: Vec::new(),
            index: Arc::new(Mutex::new(new_index)),
        };
        w.active = Some(new_segment);
        let old_view = self.replace_segments(sealed, view, tail);
        if let Some((segment, entries)) = seal_after {
            let job = segment.into_seal_job(entries, old_view.index);
            let paths = job.paths().clone();
            job.flush_data()?;
            job.finish()?;
            self.reopen_sealed(&[paths]);
        }
        tracing::info!(dir = %self.dir.display(), next_index = keep_next, "truncated the log");
        Ok(())
    }

    /// The tail when the log is cut exactly at the start of a segment (or of the log).
    fn tail_at_boundary(&self, sealed: &[Arc<SealedSegment>], keep_next: u64) -> Result<Tail> {
        match sealed.last() {
            Some(s) if s.end_index == keep_next => {
                let loaded = s.load()?;
                let last = super::read::last_entry_id(s, loaded)?.or(loaded.meta.prev_log_id());
                Ok(Tail {
                    next_index: keep_next,
                    next_offset: s.end_offset,
                    last,
                    max_timestamp: loaded.max_timestamp(),
                })
            }
            _ => {
                let v = self.read_view();
                let start = v.start;
                if keep_next != start.first_index {
                    return Err(Error::IndexOutOfRange {
                        requested: keep_next,
                        first: start.first_index,
                        next: v.next_index,
                    });
                }
                Ok(Tail {
                    next_index: keep_next,
                    next_offset: start.first_offset,
                    last: start.last_purged,
                    max_timestamp: i64::MIN,
                })
            }
        }
    }

    /// Installs a new segment list and active segment ending at `tail`; returns the old
    /// active segment's view.
    fn replace_segments(
        &self,
        sealed: Vec<Arc<SealedSegment>>,
        active: ActiveView,
        tail: Tail,
    ) -> ActiveView {
        let old = {
            let mut v = self.write_view();
            v.sealed = sealed;
            let old = std::mem::replace(&mut v.active, active);
            v.next_index = tail.next_index;
            v.next_offset = tail.next_offset;
            v.last_log_id = tail.last;
            v.max_timestamp = tail.max_timestamp;
            v.readable_next = tail.next_index;
            v.readable_end_offset = tail.next_offset;
            old
        };
        self.set_durable(tail.next_index);
        old
    }

    pub(crate) fn purge_up_to(self: &Arc<Self>, index: u64) -> Result<()> {
        let mut w = self.lock_writer();
        self.writable(&mut w)?;
        let (start, next_index) = {
            let v = self.read_view();
            (v.start, v.next_index)
        };
        if index < start.first_index {
            return Ok(());
        }
        if index >= next_index {
            return Err(Error::IndexOutOfRange {
                requested: index,
                first: start.first_index,
                next: next_index,
            });
        }
        let entry = self
            .entries(index..index + 1, 0)?
            .pop()
            .ok_or(Error::IndexOutOfRange {
                requested: index,
                first: start.first_index,
                next: next_index,
            })?;
        let new_start = LogStart {
            first_index: index + 1,
            first_offset: entry.base_offset + u64::from(entry.record_count),
            last_purged: Some(entry.log_id),
        };
        let mut io = self.lock_flush_io();
        self.flush_locked(&mut io, Checkpoint::IfDue)?;
        new_start.write(&self.dir)?;
        let doomed: Vec<Arc<SealedSegment>> = {
            let mut v = self.write_view();
            v.start = new_start;
            let keep_from = v
                .sealed
                .iter()
                .position(|s| s.end_index > new_start.first_index)
                .unwrap_or(v.sealed.len());
            v.sealed.drain(..keep_from).collect()
        };
        for s in doomed {
            s.paths.remove()?;
        }
        tracing::debug!(dir = %self.dir.display(), index, "purged the log");
        Ok(())
    }

    pub(crate) fn reset(self: &Arc<Self>, last: LogId, next_offset: u64) -> Result<()> {
        let mut w = self.lock_writer();
        self.writable(&mut w)?;
        let mut io = self.lock_flush_io();
        self.flush_locked(&mut io, Checkpoint::IfDue)?;
        let result = (|| {
            let (sealed, active_paths, max_timestamp) = {
                let v = self.read_view();
                (v.sealed.clone(), v.active.paths.clone(), v.max_timestamp)
            };
            drop(w.active.take());
            active_paths.remove()?;
            for s in sealed.iter().rev() {
                s.paths.remove()?;
            }
            let start = LogStart {
                first_index: last.index + 1,
                first_offset: next_offset,
                last_purged: Some(last),
            };
            start.write(&self.dir)?;
            let tail = Tail {
                next_index: start.first_index,
                next_offset,
                last: Some(last),
                max_timestamp,
            };
            let (segment, mut index) = create_active(&self.dir, &self.config, &tail)?;
            segment.sync_creation(&mut index)?;
            let view = ActiveView {
                meta: segment.meta,
                paths: segment.paths.clone(),
                map: segment.map().clone(),
                entries: Vec::new(),
                index: Arc::new(Mutex::new(index)),
            };
            w.active = Some(segment);
            self.write_view().start = start;
            drop(self.replace_segments(Vec::new(), view, tail));
            Ok(())
        })();
        if let Err(e) = &result {
            self.poison(e);
        }
        result
    }

    pub(crate) fn retention_point(
        &self,
        policy: &RetentionPolicy,
        now_ms: i64,
    ) -> Result<Option<u64>> {
        let (sealed, active_bytes, first_index) = {
            let v = self.read_view();
            (
                v.sealed.clone(),
                v.active.end_position() as u64,
                v.start.first_index,
            )
        };
        let mut expired = 0; // segments [0, expired) go
        if let Some(age) = policy.max_age {
            let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            for s in &sealed {
                if s.load()?.max_timestamp() >= cutoff {
                    break;
                }
                expired += 1;
            }
        }
        if let Some(max_bytes) = policy.max_bytes {
            let mut sizes = Vec::with_capacity(sealed.len());
            for s in &sealed {
                sizes.push(s.load()?.end_position() as u64);
            }
            let mut total: u64 = sizes.iter().sum::<u64>() + active_bytes;
            let mut over = 0;
            while total > max_bytes && over < sizes.len() {
                total -= sizes[over];
                over += 1;
            }
            expired = expired.max(over);
        }
        Ok(expired
            .checked_sub(1)
            .and_then(|i| sealed.get(i))
            .map(|s| s.end_index - 1)
            .filter(|last| *last >= first_index))
    }
}

/// The log id of the entry `e` of the active segment.
fn read_log_id(active: &Option<ActiveSegment>, path: &Path, e: &IndexEntry) -> Result<LogId> {
    let Some(active) = active else {
        return Err(Error::corrupt(path, 0, "no active segment"));
    };
    Ok(crate::segment::read_entry(active.map(), path, e, false)?.log_id)
}
