//! # strata-storage
//!
//! Strata's storage engine: record batches in checksummed, memory-mapped, crash-safe segment
//! logs. A partition replica keeps one [`PartitionLog`]; the replication layer makes that log
//! its Raft log, so every record is written once.
//!
//! ```
//! use strata_storage::{BatchBuilder, EntryBody, LogConfig, NewRecord, PartitionLog};
//! # let dir = tempfile::tempdir()?;
//! let log = PartitionLog::open(dir.path(), LogConfig::default())?;
//! let mut batch = BatchBuilder::new();
//! batch.push(NewRecord::value(1_700_000_000_000, br#"{"device":"d1","temp":21.5}"#))?;
//! let appending = log.append(1, 1, EntryBody::Data(batch.finish()?))?;
//! appending.wait()?; // durable (FsyncPolicy::Always is the default)
//! let fetched = log.read(0, 1 << 20)?;
//! assert_eq!(fetched.batches.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//! - [`batch`]: the record batch format (Kafka v2-like, CRC32), its builder and zero-copy
//!   reader. Pure code, no I/O.
//! - [`durable`]: small files replaced atomically and durably (the engine's metadata and the
//!   broker's: Raft votes, snapshots).
//! - [`entry`]: log entries (Raft log id, kind, body) and their 40-byte checksummed header.
//! - `varint`: zig-zag varints for the record format.
//! - `mmap`: memory maps of segment files; **all of Strata's `unsafe` code** lives here.
//! - `segment`: segment and index file formats, the active (writable) segment, lazily
//!   loaded sealed segments, and the recovery scan.
//! - [`log`]: [`PartitionLog`] itself: append with group commit, reads, truncation, purge,
//!   retention, recovery at open, the background [`Flusher`].
//! - [`clock`]: the node's wall clock, skewable for the fault suite.
//! - [`fault`]: fault injection (a failing disk under a directory) for tests and the fault
//!   suite.
//! - [`partitioner`]: which partition a keyed record goes to (Kafka's murmur2), shared by
//!   the client and the broker's own writers.
//! - `error`: [`Error`], one enum for the crate.
#![deny(unsafe_code)]

pub mod batch;
pub mod clock;
pub mod durable;
pub mod entry;
mod error;
pub mod fault;
#[doc(hidden)]
pub mod fuzz;
pub mod log;
mod mmap;
pub mod partitioner;
mod segment;
mod varint;

pub use batch::{BatchBuilder, NewRecord, Record, RecordBatch};
pub use entry::{Entry, EntryBody, EntryKind, LogId, NewEntry};
pub use error::{Error, Result};
pub use log::{
    Appended, Appending, Damage, DirLock, Fetched, Flusher, FsyncPolicy, LogConfig, LogState,
    PartitionLog, RetentionPolicy, SegmentInfo, VerifyReport,
};
