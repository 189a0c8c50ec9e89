//! Scanning a segment's data to find (and index) its valid entries.
//!
//! Recovery and index rebuilds walk entries from a known-good position, checking each one:
//! a header that decodes, the expected index, a term that does not go backwards, a body
//! inside the file, a matching CRC, a data batch whose base offset continues the log. The
//! walk stops at the first entry that fails, at an all-zero header (the clean end of a
//! preallocated segment), or at a boundary index (where the next segment starts).

use super::format::IndexEntry;
use crate::batch::{self, le};
use crate::entry::{EntryKind, HeaderFault, LogId, decode_header, verify_entry};

/// Where a scan starts and the log state there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanCursor {
    /// Data position of the next entry.
    pub position: usize,
    /// Index the next entry must have.
    pub index: u64,
    /// Base offset the next entry gets.
    pub offset: u64,
    /// Running max timestamp so far.
    pub max_timestamp: i64,
    /// Term of the previous entry (terms never go down along the log).
    pub term: u64,
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// An all-zero header or the end of the file: nothing more was written.
    Clean,
    /// The entry at `position` is damaged or partly written.
    Torn {
        position: usize,
        reason: &'static str,
    },
    /// The boundary index was reached.
    Boundary,
}

/// What a scan found.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    pub entries: Vec<IndexEntry>,
    /// State after the last valid entry.
    pub next: ScanCursor,
    pub last_log_id: Option<LogId>,
    pub stop: ScanStop,
}

/// Scans `data` (a whole data file) from `cursor`, stopping before index `boundary` if given.
pub(crate) fn scan(data: &[u8], mut cursor: ScanCursor, boundary: Option<u64>) -> Scan {
    let mut entries = Vec::new();
    let mut last_log_id = None;
    let stop = loop {
        if boundary == Some(cursor.index) {
            break ScanStop::Boundary;
        }
        let pos = cursor.position;
        if pos >= data.len() {
            break ScanStop::Clean;
        }
        let header = match decode_header(&data[pos..]) {
            Ok(h) => h,
            Err(HeaderFault::Zero) => break ScanStop::Clean,
            Err(HeaderFault::Short) => {
                break ScanStop::Torn {
                    position: pos,
                    reason: "partial entry header",
                };
            }
            Err(HeaderFault::Garbage) => {
                break ScanStop::Torn {
                    position: pos,
                    reason: "not an entry header",
                };
            }
        };
        let torn = |reason| ScanStop::Torn {
            position: pos,
            reason,
        };
        if header.log_id.index != cursor.index {
            break torn("unexpected entry index");
        }
        if header.log_id.term < cursor.term {
            break torn("term lower than the previous entry's");
        }
        let end = match pos.checked_add(header.entry_len()) {
            Some(end) if end <= data.len() && u32::try_from(end).is_ok() => end,
            _ => break torn("entry runs past the end of the file"),
        };
        let bytes = &data[pos..end];
        if !verify_entry(&header, bytes) {
            break torn("entry checksum mismatch");
        }
        let mut max_timestamp = cursor.max_timestamp;
        if header.kind == EntryKind::Data {
            let body = &bytes[crate::entry::ENTRY_HEADER_LEN..];
            if le::u64_at(body, batch::layout::BASE_OFFSET) != cursor.offset {
                break torn("batch base offset does not continue the log");
            }
            max_timestamp = max_timestamp.max(le::i64_at(body, batch::layout::MAX_TIMESTAMP));
        }
        let Some(next_offset) = cursor.offset.checked_add(u64::from(header.record_count)) else {
            break torn("offset overflow");
        };
        entries.push(IndexEntry {
            position: pos as u32,
            len: header.entry_len() as u32,
            base_offset: cursor.offset,
            max_timestamp,
            record_count: header.record_count,
        });
        last_log_id = Some(header.log_id);
        cursor = ScanCursor {
            position: end,
            index: cursor.index + 1,
            offset: next_offset,
            max_timestamp,
            term: header.log_id.term,
        };
    };
    Scan {
        entries,
        next: cursor,
        last_log_id,
        stop,
    }
}
