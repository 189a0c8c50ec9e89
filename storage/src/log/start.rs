//! The log-start file: where the log begins after purges.
//!
//! Purges and retention delete whole segments, but Raft purges at any index and must find the
//! id of the last purged entry after a restart. The `START` file records it (and the first
//! index and offset that remain), written atomically (temporary file, rename, directory
//! sync) *before* any segment is deleted, so a crash mid-purge leaves segments the next open
//! deletes, never a log that starts at the wrong place.
//!
//! ```text
//!  0 6 magic "STRSTA" | 6 1 version | 7 1 flags (bit 0: last_purged present)
//!  8 8 first_index | 16 8 first_offset | 24 8 purged term | 32 8 purged leader
//! 40 8 purged index | 48 4 crc of bytes 0..48
//! ```

use std::path::Path;

use crate::batch::le;
use crate::entry::LogId;
use crate::error::{Error, Result};

const MAGIC: [u8; 6] = *b"STRSTA";
const VERSION: u8 = 1;
const LEN: usize = 52;
/// File name of the log-start file in a log directory.
pub(crate) const FILE_NAME: &str = "START";

/// Where the readable log begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LogStart {
    /// First index not purged.
    pub first_index: u64,
    /// Offset of the first record not purged.
    pub first_offset: u64,
    /// The last purged entry, if any.
    pub last_purged: Option<LogId>,
}

impl LogStart {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..6].copy_from_slice(&MAGIC);
        b[6] = VERSION;
        b[7] = u8::from(self.last_purged.is_some());
        let p = self.last_purged.unwrap_or_default();
        b[8..16].copy_from_slice(&self.first_index.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_offset.to_le_bytes());
        b[24..32].copy_from_slice(&p.term.to_le_bytes());
        b[32..40].copy_from_slice(&p.leader.to_le_bytes());
        b[40..48].copy_from_slice(&p.index.to_le_bytes());
        let crc = crc32fast::hash(&b[..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN || b[0..6] != MAGIC || b[6] != VERSION || b[7] > 1 {
            return None;
        }
        if crc32fast::hash(&b[..48]) != le::u32_at(b, 48) {
            return None;
        }
        let last_purged = (b[7] == 1).then(|| LogId {
            term: le::u64_at(b, 24),
            leader: le::u64_at(b, 32),
            index: le::u64_at(b, 40),
        });
        Some(LogStart {
            first_index: le::u64_at(b, 8),
            first_offset: le::u64_at(b, 16),
            last_purged,
        })
    }

    /// Reads the log-start file of `dir`, if there is one. A damaged file is an error: the
    /// log cannot know where it starts.
    pub fn read(dir: &Path) -> Result<Option<LogStart>> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => LogStart::decode(&bytes)
                .map(Some)
                .ok_or_else(|| Error::corrupt(&path, 0, "log-start file damaged")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Durably replaces the log-start file of `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::durable::replace(dir, &dir.join(FILE_NAME), &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LogStart::read(dir.path()).unwrap(), None);
        let s = LogStart {
            first_index: 10,
            first_offset: 500,
            last_purged: Some(LogId::new(3, 1, 9)),
        };
        s.write(dir.path()).unwrap();
        assert_eq!(LogStart::read(dir.path()).unwrap(), Some(s));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            LogStart::read(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }
}
