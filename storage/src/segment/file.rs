//! File operations on segment files, each error tagged with its path.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Creates a new file for reading and writing; fails if it exists.
pub(crate) fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Opens an existing file for reading and writing.
pub(crate) fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Opens an existing file read-only.
pub(crate) fn open_ro(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, e))
}

/// Writes all of `bytes` at `pos`.
pub(crate) fn write_at(file: &File, path: &Path, pos: u64, bytes: &[u8]) -> Result<()> {
    file.write_all_at(bytes, pos)
        .map_err(|e| Error::io(path, e))
}

/// Reads exactly `buf.len()` bytes at `pos`; `Ok(false)` if the file is too short.
pub(crate) fn read_at(file: &File, path: &Path, pos: u64, buf: &mut [u8]) -> Result<bool> {
    match file.read_exact_at(buf, pos) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Length of a file.
pub(crate) fn len(file: &File, path: &Path) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| Error::io(path, e))
}

/// Sets a file's length.
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> Result<()> {
    file.set_len(len).map_err(|e| Error::io(path, e))
}

/// fdatasync.
pub(crate) fn sync_data(file: &File, path: &Path) -> Result<()> {
    file.sync_data().map_err(|e| Error::io(path, e))
}

/// Removes a file; a file already gone is fine.
pub(crate) fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}
