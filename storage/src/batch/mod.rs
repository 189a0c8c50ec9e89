//! The record batch: Strata's unit of writing, replication, storage and fetching.
//!
//! A batch is built by the producer ([`BatchBuilder`]), validated once by whoever receives it
//! ([`RecordBatch::from_bytes`]), stored verbatim in the log with only its base offset patched
//! in, and fetched as the same bytes. It follows Kafka's v2 layout, in little endian:
//!
//! ```text
//! offset size field
//!      0    8 base_offset       offset of the first record; patched at append, not in the CRC
//!      8    4 length            bytes after this field (total length - 12)
//!     12    4 crc               CRC32 (crc32fast, IEEE) of bytes 16..end
//!     16    1 version           format version, currently 1
//!     17    2 attributes        bits 0-2 compression (0 = none), bit 3 timestamp type,
//!                                 bit 5 control (the broker's own records, not the producer's)
//!     19    4 record_count      at least 1; offsets are base_offset .. base_offset+count
//!     23    8 first_timestamp   timestamp (ms) of the first record; deltas are from it
//!     31    8 max_timestamp     greatest record timestamp in the batch
//!     39    8 producer_id       -1 when the producer is not idempotent
//!     47    2 producer_epoch    -1 when none
//!     49    4 base_sequence     sequence number of the first record, -1 when none
//!     53      records           `record_count` records, back to back
//! ```
//!
//! The first 16 bytes are the *frame*, the same in every format version; the version byte is
//! covered by the CRC. Each record is
//!
//! ```text
//! length varint | attributes u8 | timestamp_delta varint | offset_delta varint
//! | key_length varint (-1 = none) | key | value_length varint (-1 = none) | value
//! | header_count varint | (header_key_length varint | header_key utf-8
//! |                        | header_value_length varint (-1 = none) | header_value)*
//! ```
//!
//! with zig-zag varints. Offset deltas are dense (`0, 1, 2, ...`). Every length is checked
//! against the buffer before it is used.

mod builder;

pub use builder::{BatchBuilder, NewRecord};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::varint::get_varint;

/// Current batch format version.
pub const BATCH_VERSION: u8 = 1;
/// Bytes of the batch header, before the first record.
pub const BATCH_HEADER_LEN: usize = 53;
/// Bytes at the front that the length field does not count.
pub const BATCH_LENGTH_FIELD_END: usize = 12;
/// Where the CRC's coverage starts.
pub const BATCH_CRC_START: usize = 16;

pub(crate) mod layout {
    pub const BASE_OFFSET: usize = 0;
    pub const LENGTH: usize = 8;
    pub const CRC: usize = 12;
    pub const VERSION: usize = 16;
    pub const ATTRIBUTES: usize = 17;
    pub const RECORD_COUNT: usize = 19;
    pub const FIRST_TIMESTAMP: usize = 23;
    pub const MAX_TIMESTAMP: usize = 31;
    pub const PRODUCER_ID: usize = 39;
    pub const PRODUCER_EPOCH: usize = 47;
    pub const BASE_SEQUENCE: usize = 49;
}

const ATTR_COMPRESSION_MASK: u16 = 0b111;
const ATTR_LOG_APPEND_TIME: u16 = 0b1000;
const ATTR_CONTROL: u16 = 0b10_0000;
const ATTR_KNOWN: u16 = ATTR_COMPRESSION_MASK | ATTR_LOG_APPEND_TIME | ATTR_CONTROL;

/// Who assigned the record timestamps of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// The producer set them (event time).
    #[default]
    CreateTime,
    /// The broker set them when it appended the batch.
    LogAppendTime,
}

/// Reads little-endian integers at fixed positions of a buffer whose length was checked.
pub(crate) mod le {
    pub fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[at..at + 4]);
        u32::from_le_bytes(a)
    }
    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    }
    pub fn i64_at(b: &[u8], at: usize) -> i64 {
        u64_at(b, at) as i64
    }
}

/// Total length of the batch starting at `buf[0]`, as its frame declares, if the frame is
/// there. Used to cut batches out of a stream of them.
pub fn framed_len(buf: &[u8]) -> Option<u64> {
    if buf.len() < BATCH_LENGTH_FIELD_END {
        return None;
    }
    Some(u64::from(le::u32_at(buf, layout::LENGTH)) + BATCH_LENGTH_FIELD_END as u64)
}

/// A validated record batch over shared bytes.
///
/// Construction checks everything (frame, CRC, version, attributes, every record), so the
/// accessors and the record iterator never fail and never read out of bounds. Cloning is
/// cheap (a reference count).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordBatch {
    bytes: Bytes,
}

impl std::fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBatch")
            .field("base_offset", &self.base_offset())
            .field("record_count", &self.record_count())
            .field("len", &self.bytes.len())
            .field("crc", &format_args!("{:#010x}", self.crc()))
            .finish()
    }
}

impl RecordBatch {
    /// Validates `bytes` as exactly one batch: frame, CRC, version, attributes and every
    /// record. A malformed batch is an error, never a panic.
    pub fn from_bytes(bytes: Bytes) -> Result<Self> {
        validate(&bytes)?;
        Ok(RecordBatch { bytes })
    }

    /// Wraps bytes already validated (by the builder or by the log's own CRC check).
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(
            validate(&bytes).is_ok(),
            "from_validated on an invalid batch"
        );
        RecordBatch { bytes }
    }

    /// The batch's bytes, exactly as stored and sent.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Gives the bytes back.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a valid batch has a header. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        le::u64_at(&self.bytes, layout::BASE_OFFSET)
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset()
            .saturating_add(u64::from(self.record_count()) - 1)
    }

    /// The stored CRC32 (of bytes 16..end).
    pub fn crc(&self) -> u32 {
        le::u32_at(&self.bytes, layout::CRC)
    }

    /// Number of records, at least 1.
    pub fn record_count(&self) -> u32 {
        le::u32_at(&self.bytes, layout::RECORD_COUNT)
    }

    /// Timestamp of the first record, the base of the records' deltas.
    pub fn first_timestamp(&self) -> i64 {
        le::i64_at(&self.bytes, layout::FIRST_TIMESTAMP)
    }

    /// Greatest record timestamp.
    pub fn max_timestamp(&self) -> i64 {
        le::i64_at(&self.bytes, layout::MAX_TIMESTAMP)
    }

    /// Who set the timestamps.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes() & ATTR_LOG_APPEND_TIME != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Whether this is a control batch: written by the broker itself (for example to start
    /// an aggregation at this point of the log), skipped by consumers. Producers may not send
    /// one.
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }

    /// Producer id, or -1 when the producer is not idempotent.
    pub fn producer_id(&self) -> i64 {
        le::i64_at(&self.bytes, layout::PRODUCER_ID)
    }

    /// Producer epoch, or -1.
    pub fn producer_epoch(&self) -> i16 {
        le::u16_at(&self.bytes, layout::PRODUCER_EPOCH) as i16
    }

    /// Sequence number of the first record, or -1.
    pub fn base_sequence(&self) -> i32 {
        le::u32_at(&self.bytes, layout::BASE_SEQUENCE) as i32
    }

    fn attributes(&self) -> u16 {
        le::u16_at(&self.bytes, layout::ATTRIBUTES)
    }

    /// Iterates the records without copying keys, values or headers.
    pub fn records(&self) -> Records<'_> {
        Records {
            buf: &self.bytes,
            pos: BATCH_HEADER_LEN,
            index: 0,
            count: self.record_count(),
            base_offset: self.base_offset(),
            first_timestamp: self.first_timestamp(),
        }
    }

    /// A zero-copy `Bytes` for a part of this batch (a key or value from [`Record`]).
    ///
    /// `part` must be a subslice of this batch's bytes, as handed out by [`Self::records`].
    pub fn share(&self, part: &[u8]) -> Bytes {
        if part.is_empty() {
            return Bytes::new();
        }
        self.bytes.slice_ref(part)
    }
}

/// One record of a batch, borrowing from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Absolute offset (base offset + delta).
    pub offset: u64,
    /// Timestamp in ms since the epoch.
    pub timestamp: i64,
    /// Key, if any.
    pub key: Option<&'a [u8]>,
    /// Value, if any (`None` is a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers.
    pub headers: Headers<'a>,
}

/// The headers of a record: `(key, value)` pairs with UTF-8 keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers<'a> {
    raw: &'a [u8],
    count: u32,
}

impl<'a> Headers<'a> {
    /// Number of headers.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates `(key, value)` pairs.
    pub fn iter(&self) -> HeaderIter<'a> {
        HeaderIter {
            raw: self.raw,
            pos: 0,
            left: self.count,
        }
    }
}

/// Iterator over [`Headers`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    raw: &'a [u8],
    pos: usize,
    left: u32,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let key = read_bytes(self.raw, &mut self.pos).ok()??;
        let value = read_bytes(self.raw, &mut self.pos).ok()?;
        Some((std::str::from_utf8(key).ok()?, value))
    }
}

/// Iterator over the records of a [`RecordBatch`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    index: u32,
    count: u32,
    base_offset: u64,
    first_timestamp: i64,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.index >= self.count {
            return None;
        }
        // The batch was validated, so this cannot fail; if it somehow did, stop.
        let (parsed, next) = decode_record(self.buf, self.pos, self.index).ok()?;
        let record = Record {
            offset: self.base_offset.wrapping_add(u64::from(self.index)),
            timestamp: self.first_timestamp.wrapping_add(parsed.timestamp_delta),
            key: parsed.key,
            value: parsed.value,
            headers: parsed.headers,
        };
        self.pos = next;
        self.index += 1;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count - self.index) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Records<'_> {}

struct ParsedRecord<'a> {
    timestamp_delta: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Headers<'a>,
}

fn malformed(position: usize, reason: &'static str) -> Error {
    Error::BatchMalformed {
        position: position as u64,
        reason,
    }
}

/// Reads a length-prefixed byte string (-1 = none) inside `buf`.
fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>> {
    let at = *pos;
    let len = get_varint(buf, pos).ok_or_else(|| malformed(at, "truncated length"))?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| malformed(at, "negative length"))?;
    let end = pos
        .checked_add(len)
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| malformed(at, "length past the record"))?;
    let bytes = &buf[*pos..end];
    *pos = end;
    Ok(Some(bytes))
}

/// Decodes the record at `start` (its length prefix) and returns it with the position after it.
fn decode_record(buf: &[u8], start: usize, index: u32) -> Result<(ParsedRecord<'_>, usize)> {
    let mut pos = start;
    let len =
        get_varint(buf, &mut pos).ok_or_else(|| malformed(start, "truncated record length"))?;
    let len = usize::try_from(len).map_err(|_| malformed(start, "negative record length"))?;
    let end = pos
        .checked_add(len)
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| malformed(start, "record longer than the batch"))?;
    let record = &buf[..end];

    let attributes = *record
        .get(pos)
        .ok_or_else(|| malformed(pos, "truncated record attributes"))?;
    if attributes != 0 {
        return Err(malformed(pos, "unknown record attributes"));
    }
    pos += 1;
    let at = pos;
    let timestamp_delta =
        get_varint(record, &mut pos).ok_or_else(|| malformed(at, "truncated timestamp delta"))?;
    let at = pos;
    let offset_delta =
        get_varint(record, &mut pos).ok_or_else(|| malformed(at, "truncated offset delta"))?;
    if offset_delta != i64::from(index) {
        return Err(malformed(at, "offset deltas must be dense (0, 1, 2, ...)"));
    }
    let key = read_bytes(record, &mut pos)?;
    let value = read_bytes(record, &mut pos)?;
    let at = pos;
    let header_count =
        get_varint(record, &mut pos).ok_or_else(|| malformed(at, "truncated header count"))?;
    let header_count =
        u32::try_from(header_count).map_err(|_| malformed(at, "bad header count"))?;
    let headers_start = pos;
    for _ in 0..header_count {
        let at = pos;
        let key = read_bytes(record, &mut pos)?
            .ok_or_else(|| malformed(at, "header key must not be null"))?;
        if std::str::from_utf8(key).is_err() {
            return Err(malformed(at, "header key is not UTF-8"));
        }
        read_bytes(record, &mut pos)?;
    }
    if pos != end {
        return Err(malformed(pos, "record length does not match its fields"));
    }
    let headers = Headers {
        raw: &record[headers_start..end],
        count: header_count,
    };
    Ok((
        ParsedRecord {
            timestamp_delta,
            key,
            value,
            headers,
        },
        end,
    ))
}

/// Checks the whole batch; see [`RecordBatch::from_bytes`].
pub(crate) fn validate(buf: &[u8]) -> Result<()> {
    if buf.len() < BATCH_HEADER_LEN {
        return Err(Error::BatchTruncated {
            needed: BATCH_HEADER_LEN as u64,
            available: buf.len() as u64,
        });
    }
    let declared = u64::from(le::u32_at(buf, layout::LENGTH)) + BATCH_LENGTH_FIELD_END as u64;
    if declared > buf.len() as u64 {
        return Err(Error::BatchTruncated {
            needed: declared,
            available: buf.len() as u64,
        });
    }
    if declared != buf.len() as u64 {
        return Err(Error::BatchLengthMismatch {
            declared,
            actual: buf.len() as u64,
        });
    }
    let stored = le::u32_at(buf, layout::CRC);
    let computed = crc32fast::hash(&buf[BATCH_CRC_START..]);
    if stored != computed {
        return Err(Error::BatchCrcMismatch { stored, computed });
    }
    let version = buf[layout::VERSION];
    if version != BATCH_VERSION {
        return Err(Error::UnsupportedBatchVersion(version));
    }
    let attributes = le::u16_at(buf, layout::ATTRIBUTES);
    if attributes & !ATTR_KNOWN != 0 || attributes & ATTR_COMPRESSION_MASK != 0 {
        return Err(Error::UnsupportedBatchAttributes(attributes));
    }
    let count = le::u32_at(buf, layout::RECORD_COUNT);
    if count == 0 {
        return Err(Error::EmptyBatch);
    }
    let producer_id = le::i64_at(buf, layout::PRODUCER_ID);
    let base_sequence = le::u32_at(buf, layout::BASE_SEQUENCE) as i32;
    if producer_id < -1 || base_sequence < -1 || (producer_id == -1 && base_sequence != -1) {
        return Err(malformed(
            layout::PRODUCER_ID,
            "invalid producer id or base sequence",
        ));
    }
    let first_timestamp = le::i64_at(buf, layout::FIRST_TIMESTAMP);
    let mut max_seen = i64::MIN;
    let mut pos = BATCH_HEADER_LEN;
    for index in 0..count {
        if pos >= buf.len() {
            return Err(malformed(pos, "fewer records than the record count"));
        }
        let (record, next) = decode_record(buf, pos, index)?;
        max_seen = max_seen.max(first_timestamp.wrapping_add(record.timestamp_delta));
        pos = next;
    }
    if pos != buf.len() {
        return Err(malformed(pos, "bytes after the last record"));
    }
    if max_seen != le::i64_at(buf, layout::MAX_TIMESTAMP) {
        return Err(malformed(
            layout::MAX_TIMESTAMP,
            "max timestamp does not match the records",
        ));
    }
    Ok(())
}

/// Writes `base_offset` into a batch's header (the batch must be at least a frame long).
#[cfg(test)]
pub(crate) fn patch_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[layout::BASE_OFFSET..layout::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
}

#[cfg(test)]
mod tests;
