//! Exclusive use of a log directory: an `flock` on its `LOCK` file.
//!
//! The lock belongs to the open file description, so a second open of the directory in this
//! process is refused as surely as one in another process. It is released explicitly
//! (`LOCK_UN`) rather than by closing the file: a child process that another thread is
//! spawning shares the description until it calls `exec`, and closing our descriptor alone
//! would leave the directory locked for that moment.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::error::{Error, Result};

/// File name of the directory lock.
const LOCK_FILE: &str = "LOCK";

/// The right to use a log directory; released on drop.
#[derive(Debug)]
pub struct DirLock {
    file: File,
}

impl DirLock {
    /// Takes the directory, or fails with [`Error::Locked`] if it is open elsewhere.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                path: dir.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file would release the lock too, unless a half-spawned child shares it.
        let _ = self.file.unlock();
    }
}
