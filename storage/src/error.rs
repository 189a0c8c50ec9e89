//! The storage crate's error type.
//!
//! Errors fall in two groups. *Input* errors ([`Error::is_invalid_input`]) describe a bad
//! request: a malformed or oversized batch, an append out of order, an offset out of range.
//! The caller reports them and carries on; nothing was written. *Storage* errors describe the
//! disk: I/O failures, corrupt files, a log poisoned by a failed flush. Those must stop the
//! writer of the affected log.

use std::io;
use std::path::PathBuf;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record batch is shorter than its header or its declared length says.
    #[error("record batch truncated: need {needed} bytes, have {available}")]
    BatchTruncated {
        /// Bytes the batch needs.
        needed: u64,
        /// Bytes that are there.
        available: u64,
    },
    /// A record batch's declared length does not match the buffer it came in.
    #[error("record batch length field says {declared} bytes, buffer holds {actual}")]
    BatchLengthMismatch {
        /// Total length the header declares.
        declared: u64,
        /// Length of the buffer.
        actual: u64,
    },
    /// A record batch's CRC32 does not match its contents.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BatchCrcMismatch {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// A record batch has a format version this build does not know.
    #[error("unsupported record batch format version {0}")]
    UnsupportedBatchVersion(u8),
    /// A record batch uses attribute bits (compression, flags) this build does not support.
    #[error("unsupported record batch attributes {0:#06x}")]
    UnsupportedBatchAttributes(u16),
    /// A record batch passed its CRC but its contents do not parse.
    #[error("malformed record batch at byte {position}: {reason}")]
    BatchMalformed {
        /// Position inside the batch where parsing failed.
        position: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// A batch with no records was built or submitted.
    #[error("a record batch must hold at least one record")]
    EmptyBatch,
    /// An entry is larger than the log accepts.
    #[error("entry of {size} bytes exceeds the limit of {limit} bytes")]
    EntryTooLarge {
        /// Size of the entry with its header.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// An append did not continue the log at its next index.
    #[error("append out of order: the log expects index {expected}, got {got}")]
    NonContiguousAppend {
        /// The next index of the log.
        expected: u64,
        /// The index of the entry offered.
        got: u64,
    },
    /// An entry's term is lower than the term of the entry before it (terms never go down
    /// along a Raft log).
    #[error("entry {log_id} has a lower term than the entry before it (term {previous_term})")]
    TermRegression {
        /// The entry offered.
        log_id: crate::entry::LogId,
        /// The term of the entry before it.
        previous_term: u64,
    },
    /// An append with no entries.
    #[error("nothing to append")]
    NothingToAppend,
    /// A batch would push offsets past `u64::MAX`.
    #[error("offset overflow appending {records} records at offset {base_offset}")]
    OffsetOverflow {
        /// Base offset the batch would get.
        base_offset: u64,
        /// Records in the batch.
        records: u32,
    },
    /// A read asked for an offset outside `[start, end]`.
    #[error("offset {requested} is out of range: the log holds [{start}, {end})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// First offset still in the log.
        start: u64,
        /// Next offset to be written.
        end: u64,
    },
    /// An entry index outside the log was asked for, or a truncation/purge point is invalid.
    #[error("index {requested} is out of range: the log holds [{first}, {next})")]
    IndexOutOfRange {
        /// The index asked for.
        requested: u64,
        /// First index still in the log.
        first: u64,
        /// Next index to be written.
        next: u64,
    },
    /// Data on disk fails a check (magic, version, CRC, contiguity).
    #[error("corrupt data in {path} at position {position}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte position in the file.
        position: u64,
        /// What is wrong.
        detail: String,
    },
    /// An I/O call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The disk is full; the append was refused and nothing was written.
    #[error("no space left on the device holding {path}")]
    DiskFull {
        /// The file that could not be created or grown.
        path: PathBuf,
    },
    /// A flush failed earlier, so the log refuses writes until it is reopened.
    #[error("log {path} is poisoned by a failed flush ({cause}); reopen it to recover")]
    Poisoned {
        /// The log directory.
        path: PathBuf,
        /// The failure that poisoned it.
        cause: String,
    },
    /// Another process (or handle) has the log directory open.
    #[error("log directory {path} is locked by another process")]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// The log was closed.
    #[error("log {path} is closed")]
    Closed {
        /// The log directory.
        path: PathBuf,
    },
    /// A configuration value is out of range.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
}

impl Error {
    /// True when the error describes bad input from the caller rather than a storage fault:
    /// the request can be answered with an error and the log keeps serving.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::BatchTruncated { .. }
                | Error::BatchLengthMismatch { .. }
                | Error::BatchCrcMismatch { .. }
                | Error::UnsupportedBatchVersion(_)
                | Error::UnsupportedBatchAttributes(_)
                | Error::BatchMalformed { .. }
                | Error::EmptyBatch
                | Error::EntryTooLarge { .. }
                | Error::NonContiguousAppend { .. }
                | Error::TermRegression { .. }
                | Error::NothingToAppend
                | Error::OffsetOverflow { .. }
                | Error::OffsetOutOfRange { .. }
                | Error::IndexOutOfRange { .. }
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            Error::DiskFull { path }
        } else {
            Error::Io { path, source }
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        position: u64,
        detail: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            position,
            detail: detail.into(),
        }
    }
}
