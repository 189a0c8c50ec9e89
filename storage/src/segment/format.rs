//! Byte layouts of segment data files and their index files.
//!
//! A segment is two files named by its first offset and first index,
//! `<first_offset:020>-<first_index:020>.log` and `.idx`.
//!
//! The data file (`.log`) is a 64-byte header followed by entries (see [`crate::entry`]):
//!
//! ```text
//! offset size field
//!      0    6 magic              "STRSEG"
//!      6    1 version            1
//!      7    1 flags              bit 0: the entry before the first one is known (prev_*)
//!      8    8 first_index        index of the first entry
//!     16    8 first_offset       offset of the first record
//!     24    8 prev_term          log id of the entry before the first one: term
//!     32    8 prev_leader        ... and leader (its index is first_index - 1)
//!     40    8 prev_max_timestamp running max timestamp of the log before this segment
//!     48    8 created_ms         when the segment was created (for roll by age)
//!     56    4 reserved
//!     60    4 crc                CRC32 of bytes 0..60
//! ```
//!
//! The index file (`.idx`) repeats that header (magic "STRIDX"), then a 64-byte state block
//! rewritten in place, then one 32-byte entry per log entry:
//!
//! ```text
//! state block (at 64)                   index entry (at 128 + 32 * i)
//!  64 1 sealed (0 active, 1 sealed)       0 4 position of the entry in the data file
//!  65 1 clean  (active closed cleanly)    4 4 length of the entry (header and body)
//!  72 8 checkpoint_entries                8 8 base offset
//!  80 8 checkpoint_end (data position)   16 8 running max timestamp up to this entry
//! 124 4 crc of bytes 64..124             24 4 record count
//!                                        28 4 crc of bytes 0..28
//! ```
//!
//! The checkpoint says how many entries are durable in both files: recovery trusts the index
//! up to it and scans the data file after it. A sealed index is complete and exact.

use crate::batch::le;
use crate::entry::LogId;

/// Bytes before the first entry of a data file.
pub(crate) const SEGMENT_HEADER_LEN: usize = 64;
/// Position of the state block in an index file.
pub(crate) const INDEX_STATE_AT: usize = 64;
/// Position of the first entry in an index file.
pub(crate) const INDEX_ENTRIES_AT: usize = 128;
/// Bytes per index entry.
pub(crate) const INDEX_ENTRY_LEN: usize = 32;
/// Current segment format version.
pub(crate) const SEGMENT_VERSION: u8 = 1;

const DATA_MAGIC: [u8; 6] = *b"STRSEG";
const INDEX_MAGIC: [u8; 6] = *b"STRIDX";

/// Which of a segment's two files a header belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Data,
    Index,
}

impl FileKind {
    fn magic(self) -> [u8; 6] {
        match self {
            FileKind::Data => DATA_MAGIC,
            FileKind::Index => INDEX_MAGIC,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            FileKind::Data => "log",
            FileKind::Index => "idx",
        }
    }
}

/// File name of a segment file.
pub(crate) fn file_name(first_offset: u64, first_index: u64, kind: FileKind) -> String {
    format!("{first_offset:020}-{first_index:020}.{}", kind.extension())
}

/// Parses a segment file name into (first offset, first index, kind).
pub(crate) fn parse_file_name(name: &str) -> Option<(u64, u64, FileKind)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let kind = match ext {
        "log" => FileKind::Data,
        "idx" => FileKind::Index,
        _ => return None,
    };
    let (offset, index) = stem.split_once('-')?;
    if offset.len() != 20 || index.len() != 20 {
        return None;
    }
    Some((offset.parse().ok()?, index.parse().ok()?, kind))
}

/// The immutable facts of a segment, stored at the head of both of its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    pub first_index: u64,
    pub first_offset: u64,
    /// Term and leader of the entry at `first_index - 1`, when known.
    pub prev: Option<(u64, u64)>,
    pub prev_max_timestamp: i64,
    pub created_ms: i64,
}

impl SegmentMeta {
    /// Log id of the entry just before this segment, when known.
    pub fn prev_log_id(&self) -> Option<LogId> {
        let (term, leader) = self.prev?;
        Some(LogId::new(term, leader, self.first_index.checked_sub(1)?))
    }

    pub fn encode(&self, kind: FileKind) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..6].copy_from_slice(&kind.magic());
        b[6] = SEGMENT_VERSION;
        b[7] = u8::from(self.prev.is_some());
        let (term, leader) = self.prev.unwrap_or((0, 0));
        b[8..16].copy_from_slice(&self.first_index.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_offset.to_le_bytes());
        b[24..32].copy_from_slice(&term.to_le_bytes());
        b[32..40].copy_from_slice(&leader.to_le_bytes());
        b[40..48].copy_from_slice(&self.prev_max_timestamp.to_le_bytes());
        b[48..56].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8], kind: FileKind) -> Option<Self> {
        if b.len() < SEGMENT_HEADER_LEN
            || b[0..6] != kind.magic()
            || b[6] != SEGMENT_VERSION
            || b[7] > 1
        {
            return None;
        }
        if crc32fast::hash(&b[..60]) != le::u32_at(b, 60) {
            return None;
        }
        let first_index = le::u64_at(b, 8);
        let prev = (b[7] == 1 && first_index > 0).then(|| (le::u64_at(b, 24), le::u64_at(b, 32)));
        Some(SegmentMeta {
            first_index,
            first_offset: le::u64_at(b, 16),
            prev,
            prev_max_timestamp: le::i64_at(b, 40),
            created_ms: le::i64_at(b, 48),
        })
    }
}

/// One index entry: where an entry is and what offsets and times it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub position: u32,
    pub len: u32,
    pub base_offset: u64,
    /// Greatest record timestamp in the log up to and including this entry.
    pub max_timestamp: i64,
    pub record_count: u32,
}

impl IndexEntry {
    /// Offset after this entry's records.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Data position after this entry.
    pub fn end_position(&self) -> usize {
        self.position as usize + self.len as usize
    }

    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..4].copy_from_slice(&self.position.to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.base_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.max_timestamp.to_le_bytes());
        b[24..28].copy_from_slice(&self.record_count.to_le_bytes());
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < INDEX_ENTRY_LEN || crc32fast::hash(&b[..28]) != le::u32_at(b, 28) {
            return None;
        }
        Some(IndexEntry {
            position: le::u32_at(b, 0),
            len: le::u32_at(b, 4),
            base_offset: le::u64_at(b, 8),
            max_timestamp: le::i64_at(b, 16),
            record_count: le::u32_at(b, 24),
        })
    }
}

/// The mutable state block of an index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct IndexState {
    pub sealed: bool,
    pub clean: bool,
    pub checkpoint_entries: u64,
    pub checkpoint_end: u64,
}

impl IndexState {
    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = u8::from(self.sealed);
        b[1] = u8::from(self.clean);
        b[8..16].copy_from_slice(&self.checkpoint_entries.to_le_bytes());
        b[16..24].copy_from_slice(&self.checkpoint_end.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 64 || b[0] > 1 || b[1] > 1 || crc32fast::hash(&b[..60]) != le::u32_at(b, 60) {
            return None;
        }
        Some(IndexState {
            sealed: b[0] == 1,
            clean: b[1] == 1,
            checkpoint_entries: le::u64_at(b, 8),
            checkpoint_end: le::u64_at(b, 16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = file_name(1234, 56, FileKind::Index);
        assert_eq!(name, "00000000000000001234-00000000000000000056.idx");
        assert_eq!(parse_file_name(&name), Some((1234, 56, FileKind::Index)));
        assert_eq!(parse_file_name("00000000000000001234.log"), None);
        assert_eq!(parse_file_name("LOCK"), None);
    }

    #[test]
    fn headers_round_trip_and_detect_damage() {
        let meta = SegmentMeta {
            first_index: 9,
            first_offset: 100,
            prev: Some((2, 1)),
            prev_max_timestamp: -5,
            created_ms: 77,
        };
        let b = meta.encode(FileKind::Data);
        assert_eq!(SegmentMeta::decode(&b, FileKind::Data), Some(meta));
        assert_eq!(meta.prev_log_id(), Some(LogId::new(2, 1, 8)));
        assert_eq!(
            SegmentMeta::decode(&b, FileKind::Index),
            None,
            "magic distinguishes the files"
        );
        for i in 0..b.len() {
            let mut d = b;
            d[i] ^= 0x10;
            assert_eq!(SegmentMeta::decode(&d, FileKind::Data), None, "byte {i}");
        }
        let e = IndexEntry {
            position: 64,
            len: 100,
            base_offset: 5,
            max_timestamp: 9,
            record_count: 3,
        };
        let eb = e.encode();
        assert_eq!(IndexEntry::decode(&eb), Some(e));
        let mut d = eb;
        d[3] ^= 1;
        assert_eq!(IndexEntry::decode(&d), None);
        let s = IndexState {
            sealed: true,
            clean: false,
            checkpoint_entries: 4,
            checkpoint_end: 1000,
        };
        assert_eq!(IndexState::decode(&s.encode()), Some(s));
        assert_eq!(
            IndexState::decode(&[0u8; 64]),
            None,
            "an all-zero block is not a valid state"
        );
    }
}
