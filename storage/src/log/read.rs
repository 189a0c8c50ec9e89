//! Reading the log: batches by offset, entries by index, offsets by time, and a full check.
//!
//! Lookups are binary searches: over the segment list (by first offset or first index),
//! then over a segment's dense index. The active segment is read under the view's read lock
//! (its index is in memory and nothing there does I/O); sealed segments are read without it,
//! so loading one from disk never holds up the writer.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::{Damage, Fetched, LogInner, SegmentInfo, VerifyReport, View};
use crate::entry::{ENTRY_HEADER_LEN, Entry, LogId};
use crate::error::{Error, Result};
use crate::mmap::SegmentMap;
use crate::segment::format::IndexEntry;
use crate::segment::{EntryIndex, Loaded, SealedSegment, read_entry};

/// Which segment holds a position.
enum Located {
    Sealed(Arc<SealedSegment>),
    Active,
}

/// The segment holding offset `offset`: the last one starting at or before it (segments
/// without records share their first offset with the next one and hold nothing to read).
/// `None` if the offset is before every segment (purged while a read was under way).
fn locate_offset(v: &View, offset: u64) -> Option<Located> {
    if v.active.meta.first_offset <= offset {
        return Some(Located::Active);
    }
    let i = v.sealed.partition_point(|s| s.first_offset <= offset);
    Some(Located::Sealed(v.sealed.get(i.checked_sub(1)?)?.clone()))
}

/// The segment holding entry `index`, or `None` if it is before every segment.
fn locate_index(v: &View, index: u64) -> Option<Located> {
    if v.active.meta.first_index <= index {
        return Some(Located::Active);
    }
    let i = v.sealed.partition_point(|s| s.first_index <= index);
    Some(Located::Sealed(v.sealed.get(i.checked_sub(1)?)?.clone()))
}

/// Progress of a read of batches.
struct BatchRead {
    at: u64,
    limit: u64,
    max_bytes: usize,
    bytes: usize,
    batches: Vec<Bytes>,
}

impl BatchRead {
    fn full(&self) -> bool {
        self.at >= self.limit || (!self.batches.is_empty() && self.bytes >= self.max_bytes)
    }

    /// Collects batches from one segment, starting at its entry that holds `self.at`.
    /// Returns false if it stopped early (limits reached).
    fn collect(&mut self, index: &impl EntryIndex, map: &Arc<SegmentMap>) -> bool {
        let Some(whole) = map.bytes(0..map.frozen()) else {
            return false;
        };
        let mut i = index.partition_point(|e| e.end_offset() <= self.at);
        while let Some(e) = index.at(i) {
            if e.base_offset >= self.limit {
                return false;
            }
            if e.record_count > 0 {
                let body_len = (e.len as usize).saturating_sub(ENTRY_HEADER_LEN);
                if !self.batches.is_empty() && self.bytes + body_len > self.max_bytes {
                    self.bytes = self.max_bytes;
                    return false;
                }
                let start = e.position as usize + ENTRY_HEADER_LEN;
                if start + body_len > whole.len() {
                    return false;
                }
                self.batches.push(whole.slice(start..start + body_len));
                self.bytes += body_len;
                self.at = e.end_offset();
            }
            i += 1;
        }
        true
    }
}

impl LogInner {
    pub(crate) fn read(
        &self,
        from_offset: u64,
        max_bytes: usize,
        upper_offset: u64,
    ) -> Result<Fetched> {
        let (start, next, readable_end) = {
            let v = self.read_view();
            (v.start.first_offset, v.next_offset, v.readable_end_offset)
        };
        if from_offset < start || from_offset > next {
            return Err(Error::OffsetOutOfRange {
                requested: from_offset,
                start,
                end: next,
            });
        }
        let mut read = BatchRead {
            at: from_offset,
            limit: readable_end.min(upper_offset),
            max_bytes,
            bytes: 0,
            batches: Vec::new(),
        };
        while !read.full() {
            let segment = {
                let v = self.read_view();
                match locate_offset(&v, read.at) {
                    Some(Located::Active) => {
                        read.collect(&v.active.entries, &v.active.map);
                        break;
                    }
                    Some(Located::Sealed(segment)) => segment,
                    None => {
                        let (start, end) = (v.start.first_offset, v.next_offset);
                        return Err(Error::OffsetOutOfRange {
                            requested: read.at,
                            start,
                            end,
                        });
                    }
                }
            };
            let loaded = segment.load()?;
            let before = read.at;
            if !read.collect(&loaded.index, &loaded.data) {
                break;
            }
            // Past the last batch of this segment: continue with the next one.
            read.at = read.at.max(segment.end_offset);
            if read.at == before {
                break; // no progress: nothing readable follows
            }
        }
        let next_offset = if read.batches.is_empty() {
            from_offset
        } else {
            read.at
        };
        Ok(Fetched {
            batches: read.batches,
            next_offset,
            end_offset: readable_end,
        })
    }

    pub(crate) fn entries(&self, range: Range<u64>, max_bytes: usize) -> Result<Vec<Entry>> {
        let (first, next) = {
            let v = self.read_view();
            (v.start.first_index, v.next_index)
        };
        let mut index = range.start.max(first);
        let end = range.end.min(next);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while index < end && (out.is_empty() || bytes < max_bytes) {
            let segment = {
                let v = self.read_view();
                match locate_index(&v, index) {
                    Some(Located::Active) => {
                        let from = (index - v.active.meta.first_index) as usize;
                        for e in v.active.entries.iter().skip(from) {
                            if index >= end || (!out.is_empty() && bytes >= max_bytes) {
                                break;
                            }
                            let entry = read_entry(&v.active.map, &v.active.paths.data, e, false)?;
                            bytes += entry.body.len();
                            out.push(entry);
                            index += 1;
                        }
                        break;
                    }
                    Some(Located::Sealed(segment)) => segment,
                    None => break, // purged meanwhile: the range comes up short at the front
                }
            };
            let loaded = segment.load()?;
            let before = index;
            while index < end.min(segment.end_index) && (out.is_empty() || bytes < max_bytes) {
                let i = (index - segment.first_index) as usize;
                let e = loaded.index.at(i).ok_or_else(|| {
                    Error::corrupt(
                        &segment.paths.index,
                        0,
                        format!("index entry {index} unreadable"),
                    )
                })?;
                let entry = read_entry(&loaded.data, &segment.paths.data, &e, !loaded.verified)?;
                if entry.log_id.index != index {
                    return Err(Error::corrupt(
                        &segment.paths.data,
                        u64::from(e.position),
                        "entry has the wrong index",
                    ));
                }
                bytes += entry.body.len();
                out.push(entry);
                index += 1;
            }
            if index == before {
                break;
            }
        }
        Ok(out)
    }

    pub(crate) fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        let (sealed, start, readable_end) = {
            let v = self.read_view();
            (
                v.sealed.clone(),
                v.start.first_offset,
                v.readable_end_offset,
            )
        };
        // Running max timestamps only grow along the log, so binary search the segments.
        let (mut lo, mut hi) = (0, sealed.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if sealed[mid].load()?.max_timestamp() < timestamp {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let found = match sealed.get(lo) {
            Some(segment) => first_batch_at(&segment.load()?.index, timestamp),
            None => first_batch_at(&self.read_view().active.entries, timestamp),
        };
        Ok(found
            .map(|offset| offset.max(start))
            .filter(|offset| *offset < readable_end))
    }

    pub(crate) fn segments(&self) -> Result<Vec<SegmentInfo>> {
        let (sealed, active) = {
            let v = self.read_view();
            let active = SegmentInfo {
                first_index: v.active.meta.first_index,
                end_index: v.next_index,
                first_offset: v.active.meta.first_offset,
                end_offset: v.next_offset,
                bytes: v.active.end_position() as u64,
                sealed: false,
                path: v.active.paths.data.clone(),
            };
            (v.sealed.clone(), active)
        };
        let mut out = Vec::with_capacity(sealed.len() + 1);
        for s in &sealed {
            let loaded = s.load()?;
            out.push(SegmentInfo {
                first_index: s.first_index,
                end_index: s.end_index,
                first_offset: s.first_offset,
                end_offset: s.end_offset,
                bytes: loaded.end_position() as u64,
                sealed: true,
                path: s.paths.data.clone(),
            });
        }
        out.push(active);
        Ok(out)
    }

    pub(crate) fn verify(&self) -> Result<VerifyReport> {
        let (sealed, active_map, active_path, active_entries, active_first) = {
            let v = self.read_view();
            (
                v.sealed.clone(),
                v.active.map.clone(),
                v.active.paths.data.clone(),
                v.active.entries.clone(),
                v.active.meta.first_index,
            )
        };
        let report = std::cell::RefCell::new(VerifyReport {
            segments: sealed.len() + 1,
            ..VerifyReport::default()
        });
        let check_failed = |damage: Damage| report.borrow_mut().damaged.push(damage);
        let check = |map: &Arc<SegmentMap>,
                     path: &std::path::Path,
                     first: u64,
                     index: &dyn Fn(usize) -> Option<IndexEntry>,
                     count: usize| {
            for i in 0..count {
                let result = index(i)
                    .ok_or_else(|| Error::corrupt(path, 0, "index entry unreadable"))
                    .and_then(|e| read_entry(map, path, &e, true));
                match result {
                    Ok(entry) => {
                        let mut r = report.borrow_mut();
                        r.entries += 1;
                        r.bytes += (entry.body.len() + ENTRY_HEADER_LEN) as u64;
                    }
                    Err(e) => check_failed(Damage {
                        path: path.to_path_buf(),
                        index: first + i as u64,
                        detail: e.to_string(),
                    }),
                }
            }
        };
        for s in &sealed {
            match s.load() {
                Ok(loaded) => check(
                    &loaded.data,
                    &s.paths.data,
                    s.first_index,
                    &|i| loaded.index.at(i),
                    loaded.index.count(),
                ),
                Err(e) => check_failed(Damage {
                    path: s.paths.data.clone(),
                    index: s.first_index,
                    detail: e.to_string(),
                }),
            }
        }
        check(
            &active_map,
            &active_path,
            active_first,
            &|i| active_entries.get(i).copied(),
            active_entries.len(),
        );
        Ok(report.into_inner())
    }
}

/// Base offset of the first data entry whose running max timestamp reaches `timestamp`.
fn first_batch_at(index: &impl EntryIndex, timestamp: i64) -> Option<u64> {
    let mut i = index.partition_point(|e| e.max_timestamp < timestamp);
    while let Some(e) = index.at(i) {
        if e.record_count > 0 {
            return Some(e.base_offset);
        }
        i += 1;
    }
    None
}

/// Log id of a sealed segment's last entry, if it has any.
pub(crate) fn last_entry_id(segment: &SealedSegment, loaded: &Loaded) -> Result<Option<LogId>> {
    let Some(last) = loaded.index.count().checked_sub(1) else {
        return Ok(None);
    };
    let e = loaded
        .index
        .at(last)
        .ok_or_else(|| Error::corrupt(&segment.paths.index, 0, "index entry unreadable"))?;
    Ok(Some(
        read_entry(&loaded.data, &segment.paths.data, &e, false)?.log_id,
    ))
}
