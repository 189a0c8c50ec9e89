//! Log entries: what a partition log stores, and what Raft will replicate.
//!
//! Every entry carries its Raft log id (term, leader node id, index), a kind, and a body. A
//! [`EntryKind::Data`] entry's body is a [`RecordBatch`]; the other kinds (a blank entry a new
//! leader writes, a membership change) carry an opaque body and no records. On disk an entry
//! is a 40-byte header followed by the body, little endian:
//!
//! ```text
//! offset size field
//!      0    4 crc            CRC32 of bytes 4..40+body_len (header rest and body)
//!      4    4 body_len
//!      8    1 version        entry format version, currently 1
//!      9    1 kind           1 data, 2 blank, 3 membership
//!     10    2 reserved       zero
//!     12    4 record_count   records in the body (0 unless data)
//!     16    8 index          Raft log index
//!     24    8 term           Raft term
//!     32    8 leader         node id of the leader that created the entry
//!     40      body
//! ```
//!
//! The entry CRC covers the batch's patched base offset, which the batch's own CRC leaves
//! out, so on disk every byte is checksummed. A data entry's CRC is derived from the batch CRC
//! already verified, without a second pass over the body (`crc32fast` CRC combination).

use bytes::Bytes;

use crate::batch::{BATCH_CRC_START, RecordBatch, le};

/// Current entry format version.
pub const ENTRY_VERSION: u8 = 1;
/// Bytes of an entry header.
pub const ENTRY_HEADER_LEN: usize = 40;

mod layout {
    pub const CRC: usize = 0;
    pub const BODY_LEN: usize = 4;
    pub const VERSION: usize = 8;
    pub const KIND: usize = 9;
    pub const RESERVED: usize = 10;
    pub const RECORD_COUNT: usize = 12;
    pub const INDEX: usize = 16;
    pub const TERM: usize = 24;
    pub const LEADER: usize = 32;
}

/// A Raft log id: the position of an entry and the leadership that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LogId {
    /// Raft term.
    pub term: u64,
    /// Node id of the leader that created the entry.
    pub leader: u64,
    /// Position in the log.
    pub index: u64,
}

impl LogId {
    /// A log id from its parts.
    pub fn new(term: u64, leader: u64, index: u64) -> Self {
        LogId {
            term,
            leader,
            index,
        }
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.term, self.leader, self.index)
    }
}

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A record batch.
    Data = 1,
    /// An empty entry (a new Raft leader's first write).
    Blank = 2,
    /// A Raft membership change, opaque to storage.
    Membership = 3,
}

impl EntryKind {
    /// The kind for a stored byte, if known.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(EntryKind::Data),
            2 => Some(EntryKind::Blank),
            3 => Some(EntryKind::Membership),
            _ => None,
        }
    }
}

/// The body of an entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryBody {
    /// A validated record batch; its base offset is assigned at append.
    Data(RecordBatch),
    /// No body.
    Blank,
    /// An opaque membership change.
    Membership(Bytes),
}

impl EntryBody {
    /// The kind stored for this body.
    pub fn kind(&self) -> EntryKind {
        match self {
            EntryBody::Data(_) => EntryKind::Data,
            EntryBody::Blank => EntryKind::Blank,
            EntryBody::Membership(_) => EntryKind::Membership,
        }
    }

    /// Body length in bytes.
    pub fn len(&self) -> usize {
        match self {
            EntryBody::Data(batch) => batch.len(),
            EntryBody::Blank => 0,
            EntryBody::Membership(bytes) => bytes.len(),
        }
    }

    /// True for an empty body.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records the body adds to the log.
    pub fn record_count(&self) -> u32 {
        match self {
            EntryBody::Data(batch) => batch.record_count(),
            _ => 0,
        }
    }

    /// The body's bytes as stored (before a data body's base offset is patched).
    pub fn bytes(&self) -> &[u8] {
        match self {
            EntryBody::Data(batch) => batch.as_bytes(),
            EntryBody::Blank => &[],
            EntryBody::Membership(bytes) => bytes,
        }
    }
}

/// An entry to append: its log id and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Where it goes; its index must be the log's next index.
    pub log_id: LogId,
    /// What it holds.
    pub body: EntryBody,
}

/// An entry read back from the log. The body is a zero-copy slice of the segment map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its Raft log id.
    pub log_id: LogId,
    /// Its kind.
    pub kind: EntryKind,
    /// Offset of its first record (the next offset for an entry without records).
    pub base_offset: u64,
    /// Records it holds.
    pub record_count: u32,
    /// The body; for data entries a record batch with the base offset patched in.
    pub body: Bytes,
}

impl Entry {
    /// The body as a record batch, for data entries. The bytes were verified by the entry CRC
    /// when they were read, so this does not re-validate them.
    pub fn batch(&self) -> Option<RecordBatch> {
        (self.kind == EntryKind::Data).then(|| RecordBatch::from_validated(self.body.clone()))
    }
}

/// A decoded entry header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryHeader {
    pub crc: u32,
    pub body_len: u32,
    pub kind: EntryKind,
    pub record_count: u32,
    pub log_id: LogId,
}

impl EntryHeader {
    /// Total bytes of the entry on disk.
    pub fn entry_len(&self) -> usize {
        ENTRY_HEADER_LEN + self.body_len as usize
    }
}

/// Why bytes at a position are not a valid entry header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderFault {
    /// All zero: the clean end of the written part of a preallocated segment.
    Zero,
    /// Fewer than a header's bytes are left.
    Short,
    /// Wrong version, unknown kind or nonzero reserved bits: garbage or a torn write.
    Garbage,
}

/// Encodes the header for `body` at `log_id`, computing the CRC of header and stored body (a
/// data body is stored with `base_offset` patched into its first 8 bytes).
pub(crate) fn encode_header(
    log_id: LogId,
    body: &EntryBody,
    base_offset: u64,
) -> [u8; ENTRY_HEADER_LEN] {
    let stored = body.bytes();
    let mut header = [0u8; ENTRY_HEADER_LEN];
    header[layout::BODY_LEN..layout::BODY_LEN + 4]
        .copy_from_slice(&(stored.len() as u32).to_le_bytes());
    header[layout::VERSION] = ENTRY_VERSION;
    header[layout::KIND] = body.kind() as u8;
    header[layout::RECORD_COUNT..layout::RECORD_COUNT + 4]
        .copy_from_slice(&body.record_count().to_le_bytes());
    header[layout::INDEX..layout::INDEX + 8].copy_from_slice(&log_id.index.to_le_bytes());
    header[layout::TERM..layout::TERM + 8].copy_from_slice(&log_id.term.to_le_bytes());
    header[layout::LEADER..layout::LEADER + 8].copy_from_slice(&log_id.leader.to_le_bytes());

    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[layout::BODY_LEN..]);
    match body {
        EntryBody::Data(batch) => {
            // The batch CRC (verified when the batch was validated) covers bytes 16..; hash
            // the patched frame and combine instead of hashing the body again.
            let mut frame = [0u8; BATCH_CRC_START];
            frame.copy_from_slice(&stored[..BATCH_CRC_START]);
            frame[..8].copy_from_slice(&base_offset.to_le_bytes());
            hasher.update(&frame);
            let rest = (stored.len() - BATCH_CRC_START) as u64;
            hasher.combine(&crc32fast::Hasher::new_with_initial_len(batch.crc(), rest));
        }
        _ => hasher.update(stored),
    }
    header[layout::CRC..layout::CRC + 4].copy_from_slice(&hasher.finalize().to_le_bytes());
    header
}

/// Decodes the header at the start of `buf` (at least the header must be there, the body is
/// checked by [`verify_entry`]).
pub(crate) fn decode_header(buf: &[u8]) -> Result<EntryHeader, HeaderFault> {
    if buf.len() < ENTRY_HEADER_LEN {
        return if buf.iter().all(|b| *b == 0) {
            Err(HeaderFault::Zero)
        } else {
            Err(HeaderFault::Short)
        };
    }
    let head = &buf[..ENTRY_HEADER_LEN];
    if head.iter().all(|b| *b == 0) {
        return Err(HeaderFault::Zero);
    }
    let kind = EntryKind::from_u8(head[layout::KIND]).ok_or(HeaderFault::Garbage)?;
    if head[layout::VERSION] != ENTRY_VERSION || le::u16_at(head, layout::RESERVED) != 0 {
        return Err(HeaderFault::Garbage);
    }
    Ok(EntryHeader {
        crc: le::u32_at(head, layout::CRC),
        body_len: le::u32_at(head, layout::BODY_LEN),
        kind,
        record_count: le::u32_at(head, layout::RECORD_COUNT),
        log_id: LogId {
            index: le::u64_at(head, layout::INDEX),
            term: le::u64_at(head, layout::TERM),
            leader: le::u64_at(head, layout::LEADER),
        },
    })
}

/// Checks the CRC of the entry whose header is `header` and whose bytes (header and body)
/// are `entry`, plus the consistency of a data body with the header.
pub(crate) fn verify_entry(header: &EntryHeader, entry: &[u8]) -> bool {
    if entry.len() != header.entry_len() {
        return false;
    }
    if crc32fast::hash(&entry[layout::BODY_LEN..]) != header.crc {
        return false;
    }
    match header.kind {
        EntryKind::Data => {
            let body = &entry[ENTRY_HEADER_LEN..];
            body.len() >= crate::batch::BATCH_HEADER_LEN
                && le::u32_at(body, crate::batch::layout::RECORD_COUNT) == header.record_count
                && header.record_count > 0
        }
        _ => header.record_count == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, NewRecord, patch_base_offset};

    fn batch() -> RecordBatch {
        let mut b = BatchBuilder::new();
        for i in 0..5u8 {
            b.push(NewRecord::value(1_000 + i64::from(i), &[i; 100]))
                .unwrap();
        }
        b.finish().unwrap()
    }

    fn stored(log_id: LogId, body: &EntryBody, base_offset: u64) -> Vec<u8> {
        let mut stored_body = body.bytes().to_vec();
        if matches!(body, EntryBody::Data(_)) {
            patch_base_offset(&mut stored_body, base_offset);
        }
        let header = encode_header(log_id, body, base_offset);
        let mut entry = header.to_vec();
        entry.extend_from_slice(&stored_body);
        entry
    }

    #[test]
    fn combined_crc_equals_a_full_pass() {
        let body = EntryBody::Data(batch());
        let entry = stored(LogId::new(3, 2, 17), &body, 12_345);
        let header = decode_header(&entry).unwrap();
        assert_eq!(header.crc, crc32fast::hash(&entry[4..]));
        assert!(verify_entry(&header, &entry));
        assert_eq!(header.log_id, LogId::new(3, 2, 17));
        assert_eq!(header.record_count, 5);
    }

    #[test]
    fn every_bit_flip_is_caught() {
        for body in [
            EntryBody::Data(batch()),
            EntryBody::Blank,
            EntryBody::Membership(Bytes::from_static(b"voters")),
        ] {
            let entry = stored(LogId::new(1, 1, 1), &body, 99);
            for byte in 0..entry.len() {
                for bit in 0..8 {
                    let mut flipped = entry.clone();
                    flipped[byte] ^= 1 << bit;
                    let ok = match decode_header(&flipped) {
                        Ok(h) => verify_entry(&h, &flipped[..h.entry_len().min(flipped.len())]),
                        Err(_) => false,
                    };
                    assert!(
                        !ok,
                        "{:?}: flip of bit {bit} in byte {byte} went unnoticed",
                        body.kind()
                    );
                }
            }
        }
    }

    #[test]
    fn zeros_are_a_clean_end_and_junk_is_garbage() {
        assert_eq!(decode_header(&[0u8; 64]), Err(HeaderFault::Zero));
        assert_eq!(decode_header(&[0u8; 10]), Err(HeaderFault::Zero));
        assert_eq!(decode_header(&[1u8; 10]), Err(HeaderFault::Short));
        assert_eq!(decode_header(&[0xabu8; 64]), Err(HeaderFault::Garbage));
    }
}
