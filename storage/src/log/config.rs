//! Log configuration: segment sizing, durability and retention policies.

use std::time::Duration;

use super::flush::Flusher;
use crate::entry::ENTRY_HEADER_LEN;
use crate::error::{Error, Result};
use crate::segment::format::SEGMENT_HEADER_LEN;

/// When appended data is forced to disk, and so when an append is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// An append completes once its bytes are on disk (msync). Concurrent appends share one
    /// flush (group commit). Nothing acknowledged is lost in a machine crash. The default.
    #[default]
    Always,
    /// An append completes at once; a background flush runs at this interval. A machine crash
    /// loses at most about one interval of acknowledged appends; a process crash loses nothing.
    Interval(Duration),
    /// An append completes at once and the operating system decides when to write. A process
    /// crash loses nothing; a machine crash can lose anything not yet written back. Sealing
    /// a segment and closing the log still flush.
    Never,
}

/// How a log's segments are sized and how it syncs.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Size of a segment's data file (preallocated). A segment rolls when the next entry does
    /// not fit. At most 4 GiB.
    pub segment_bytes: u64,
    /// A non-empty segment older than this rolls at the next append.
    pub segment_max_age: Option<Duration>,
    /// Most entries in one segment (its index is sized for them).
    pub segment_max_entries: u32,
    /// Largest entry (header and body) accepted.
    pub max_entry_bytes: u64,
    /// Durability of appends.
    pub fsync: FsyncPolicy,
    /// Under `Always` and `Interval`, how often the active segment's index is checkpointed;
    /// recovery after a crash scans only what was written since the last checkpoint.
    pub checkpoint_interval: Duration,
    /// The background flusher to use; `None` starts one for this log. Share one per disk.
    pub flusher: Option<Flusher>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 << 20,
            segment_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            segment_max_entries: 1 << 20,
            max_entry_bytes: 16 << 20,
            fsync: FsyncPolicy::Always,
            checkpoint_interval: Duration::from_millis(200),
            flusher: None,
        }
    }
}

impl LogConfig {
    /// Checks the values; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        let min_segment = (SEGMENT_HEADER_LEN + ENTRY_HEADER_LEN) as u64 + 64;
        if self.segment_bytes < min_segment || self.segment_bytes > u64::from(u32::MAX) {
            return Err(Error::InvalidConfig(format!(
                "segment_bytes must be between {min_segment} and {} (got {})",
                u32::MAX,
                self.segment_bytes
            )));
        }
        if self.max_entry_bytes < ENTRY_HEADER_LEN as u64 + 53 {
            return Err(Error::InvalidConfig(format!(
                "max_entry_bytes {} is too small for one batch",
                self.max_entry_bytes
            )));
        }
        if self.max_entry_bytes > self.segment_bytes - SEGMENT_HEADER_LEN as u64 {
            return Err(Error::InvalidConfig(format!(
                "max_entry_bytes {} does not fit a segment of {} bytes",
                self.max_entry_bytes, self.segment_bytes
            )));
        }
        if self.segment_max_entries == 0 {
            return Err(Error::InvalidConfig(
                "segment_max_entries must be at least 1".into(),
            ));
        }
        if let FsyncPolicy::Interval(every) = self.fsync
            && every.is_zero()
        {
            return Err(Error::InvalidConfig(
                "the fsync interval must be positive".into(),
            ));
        }
        if self.segment_max_age.is_some_and(|age| age.is_zero()) {
            return Err(Error::InvalidConfig(
                "segment_max_age must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Which whole segments retention deletes. Only sealed segments are ever deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Delete segments whose newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}
