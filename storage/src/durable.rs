//! Small files that must survive a crash whole: replacing one atomically, and making a
//! directory's entries durable. The storage engine's own metadata (`START`, segment indexes)
//! and the broker's (Raft votes and snapshots, topic directories) are written through here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Replaces `path` (in `dir`) with `bytes` atomically and durably: a temporary file beside
/// it, fdatasync, rename, fsync of the directory. A crash leaves the old content or the new
/// one, never a mix.
pub fn replace(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_data().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(dir)
}

/// fsyncs a directory, making creations, renames and deletions in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_only_the_new_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        replace(dir.path(), &path, b"old").unwrap();
        replace(dir.path(), &path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!path.with_extension("tmp").exists());
        assert!(
            replace(
                &dir.path().join("missing"),
                &dir.path().join("missing/x"),
                b""
            )
            .is_err()
        );
    }
}
