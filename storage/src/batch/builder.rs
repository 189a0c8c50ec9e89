//! Building record batches (the producer's side of the format in [`super`]).

use bytes::Bytes;

use super::{
    ATTR_CONTROL, ATTR_LOG_APPEND_TIME, BATCH_CRC_START, BATCH_HEADER_LEN, BATCH_LENGTH_FIELD_END,
    BATCH_VERSION, RecordBatch, TimestampType, layout,
};
use crate::error::{Error, Result};
use crate::varint::{put_varint, varint_len};

/// Largest batch the format can describe (its length field is a `u32`).
pub const MAX_BATCH_LEN: usize = u32::MAX as usize;

/// A record to add to a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewRecord<'a> {
    /// Timestamp in ms since the epoch.
    pub timestamp: i64,
    /// Optional key.
    pub key: Option<&'a [u8]>,
    /// The value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// Headers: UTF-8 keys, optional values.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

impl<'a> NewRecord<'a> {
    /// A record with a value and a timestamp, no key, no headers.
    pub fn value(timestamp: i64, value: &'a [u8]) -> Self {
        NewRecord {
            timestamp,
            key: None,
            value: Some(value),
            headers: &[],
        }
    }

    /// Same record with a key.
    pub fn with_key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// Same record with headers.
    pub fn with_headers(mut self, headers: &'a [(&'a str, Option<&'a [u8]>)]) -> Self {
        self.headers = headers;
        self
    }

    fn encoded_fields_len(&self, timestamp_delta: i64, offset_delta: i64) -> usize {
        fn bytes_len(b: Option<&[u8]>) -> usize {
            match b {
                None => varint_len(-1),
                Some(b) => varint_len(b.len() as i64) + b.len(),
            }
        }
        let mut len = 1 + varint_len(timestamp_delta) + varint_len(offset_delta);
        len += bytes_len(self.key) + bytes_len(self.value);
        len += varint_len(self.headers.len() as i64);
        for (key, value) in self.headers {
            len += bytes_len(Some(key.as_bytes())) + bytes_len(*value);
        }
        len
    }
}

/// Accumulates records into one [`RecordBatch`].
///
/// ```
/// use strata_storage::batch::{BatchBuilder, NewRecord};
/// let mut builder = BatchBuilder::new();
/// builder.push(NewRecord::value(1_700_000_000_000, b"{\"temp\": 21.5}").with_key(b"sensor-1"))?;
/// let batch = builder.finish()?;
/// assert_eq!(batch.record_count(), 1);
/// let record = batch.records().next().unwrap();
/// assert_eq!(record.key, Some(&b"sensor-1"[..]));
/// # Ok::<(), strata_storage::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    timestamp_type: TimestampType,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    control: bool,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty builder for a non-idempotent producer.
    pub fn new() -> Self {
        Self::with_capacity(4096)
    }

    /// An empty builder that preallocates `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(BATCH_HEADER_LEN));
        buf.resize(BATCH_HEADER_LEN, 0);
        BatchBuilder {
            buf,
            count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
            timestamp_type: TimestampType::CreateTime,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            control: false,
        }
    }

    /// Marks the batch as coming from an idempotent producer.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch as a control batch (the broker's own records; see
    /// [`RecordBatch::is_control`]).
    pub fn control(mut self) -> Self {
        self.control = true;
        self
    }

    /// Sets who assigned the timestamps.
    pub fn timestamp_type(mut self, timestamp_type: TimestampType) -> Self {
        self.timestamp_type = timestamp_type;
        self
    }

    /// Records so far.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch would have if finished now.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes `record` would add.
    pub fn encoded_len(&self, record: &NewRecord<'_>) -> usize {
        let first = if self.count == 0 {
            record.timestamp
        } else {
            self.first_timestamp
        };
        let fields =
            record.encoded_fields_len(record.timestamp.wrapping_sub(first), i64::from(self.count));
        varint_len(fields as i64) + fields
    }

    /// Appends a record. Fails, leaving the builder unchanged, if the batch would outgrow the
    /// format's 4 GiB limit or the record count would overflow.
    pub fn push(&mut self, record: NewRecord<'_>) -> Result<()> {
        if self.count == 0 {
            self.first_timestamp = record.timestamp;
        }
        let timestamp_delta = record.timestamp.wrapping_sub(self.first_timestamp);
        let offset_delta = i64::from(self.count);
        let fields = record.encoded_fields_len(timestamp_delta, offset_delta);
        let total = self.buf.len() + varint_len(fields as i64) + fields;
        if total > MAX_BATCH_LEN || self.count == u32::MAX {
            return Err(Error::EntryTooLarge {
                size: total as u64,
                limit: MAX_BATCH_LEN as u64,
            });
        }
        let buf = &mut self.buf;
        put_varint(buf, fields as i64);
        buf.push(0); // record attributes
        put_varint(buf, timestamp_delta);
        put_varint(buf, offset_delta);
        put_bytes(buf, record.key);
        put_bytes(buf, record.value);
        put_varint(buf, record.headers.len() as i64);
        for (key, value) in record.headers {
            put_bytes(buf, Some(key.as_bytes()));
            put_bytes(buf, *value);
        }
        self.count += 1;
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        Ok(())
    }

    /// Writes the header and CRC and returns the batch (base offset 0, patched by the log).
    pub fn finish(self) -> Result<RecordBatch> {
        if self.count == 0 {
            return Err(Error::EmptyBatch);
        }
        let mut buf = self.buf;
        let length = (buf.len() - BATCH_LENGTH_FIELD_END) as u32;
        let mut attributes: u16 = match self.timestamp_type {
            TimestampType::CreateTime => 0,
            TimestampType::LogAppendTime => ATTR_LOG_APPEND_TIME,
        };
        if self.control {
            attributes |= ATTR_CONTROL;
        }
        buf[layout::BASE_OFFSET..layout::BASE_OFFSET + 8].copy_from_slice(&0u64.to_le_bytes());
        buf[layout::LENGTH..layout::LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        buf[layout::VERSION] = BATCH_VERSION;
        buf[layout::ATTRIBUTES..layout::ATTRIBUTES + 2].copy_from_slice(&attributes.to_le_bytes());
        buf[layout::RECORD_COUNT..layout::RECORD_COUNT + 4]
            .copy_from_slice(&self.count.to_le_bytes());
        buf[layout::FIRST_TIMESTAMP..layout::FIRST_TIMESTAMP + 8]
            .copy_from_slice(&self.first_timestamp.to_le_bytes());
        buf[layout::MAX_TIMESTAMP..layout::MAX_TIMESTAMP + 8]
            .copy_from_slice(&self.max_timestamp.to_le_bytes());
        buf[layout::PRODUCER_ID..layout::PRODUCER_ID + 8]
            .copy_from_slice(&self.producer_id.to_le_bytes());
        buf[layout::PRODUCER_EPOCH..layout::PRODUCER_EPOCH + 2]
            .copy_from_slice(&self.producer_epoch.to_le_bytes());
        buf[layout::BASE_SEQUENCE..layout::BASE_SEQUENCE + 4]
            .copy_from_slice(&self.base_sequence.to_le_bytes());
        let crc = crc32fast::hash(&buf[BATCH_CRC_START..]);
        buf[layout::CRC..layout::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(RecordBatch::from_validated(Bytes::from(buf)))
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.extend_from_slice(b);
        }
    }
}
