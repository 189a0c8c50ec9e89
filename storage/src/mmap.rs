//! Memory maps of segment files. This module holds all of Strata's `unsafe` code.
//!
//! A [`SegmentMap`] maps one file read-only. Its bytes are split at a *frozen* mark that
//! only grows:
//!
//! - below the mark, bytes are published and immutable: anyone may read them, as `&[u8]` or
//!   as zero-copy [`Bytes`] that keep the map alive;
//! - at or above the mark, bytes are private to the single [`MapWriter`] of the file, which
//!   writes them with `pwritev` and then moves the mark past them ([`MapWriter::freeze`]).
//!
//! Writes go through the file, not the map: on Linux the page cache is unified, so the map
//! sees them, and the kernel needs no page faults (or read-ahead zero-filling of fresh
//! pages, which measured several times the cost of the copy itself) to take them.
//!
//! The module enforces the split itself: `write` refuses positions below the mark, reads
//! refuse ranges above it, and only the unique writer (`&mut`) may write or look above it.
//!
//! What the module cannot see is other users of the file. Its callers keep two rules, which
//! the `SAFETY` comments below rely on:
//! 1. No other process writes or truncates a mapped file: a log directory is locked with
//!    `flock` by the one process that opens it, and Strata writes segment files only through
//!    a [`MapWriter`] (or before mapping them).
//! 2. A mapped file is never shrunk below the frozen mark of a live map (shrinking only
//!    happens through [`MapWriter::trim_file`], which checks it, or at open before mapping).
//!    Pages past the end of a file raise `SIGBUS` when touched, so this rule is what keeps
//!    published slices readable.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

/// A read-only mapped file with an immutable, growing prefix.
pub(crate) struct SegmentMap {
    raw: MmapRaw,
    frozen: AtomicUsize,
    /// The file, for syncing, when this map has a writer.
    file: Option<File>,
}

impl std::fmt::Debug for SegmentMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentMap")
            .field("len", &self.raw.len())
            .field("frozen", &self.frozen())
            .finish()
    }
}

/// The one handle that may write the file behind a [`SegmentMap`].
pub(crate) struct MapWriter {
    map: Arc<SegmentMap>,
    file: File,
}

impl SegmentMap {
    /// Maps the first `len` bytes of `file` read-only; all of them count as frozen. The file
    /// must be at least `len` bytes long.
    pub fn read_only(file: &File, len: usize) -> io::Result<Arc<SegmentMap>> {
        if (file.metadata()?.len() as usize) < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file shorter than the mapping",
            ));
        }
        if len == 0 {
            // mmap rejects empty maps; an anonymous one-byte map stands in.
            let raw = MmapOptions::new().len(1).map_anon()?.into();
            return Ok(Arc::new(SegmentMap {
                raw,
                frozen: AtomicUsize::new(0),
                file: None,
            }));
        }
        let raw = MmapOptions::new().len(len).map_raw_read_only(file)?;
        Ok(Arc::new(SegmentMap {
            raw,
            frozen: AtomicUsize::new(len),
            file: None,
        }))
    }

    /// Maps all of `file` (opened read-write) for a writer, with the first `frozen` bytes
    /// already published (as found by recovery). Returns the map for readers and its one
    /// writer.
    pub fn writable(file: File, frozen: usize) -> io::Result<(Arc<SegmentMap>, MapWriter)> {
        let len = file.metadata()?.len() as usize;
        if len == 0 || frozen > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad writable map size",
            ));
        }
        let raw = MmapOptions::new().len(len).map_raw_read_only(&file)?;
        let map = Arc::new(SegmentMap {
            raw,
            frozen: AtomicUsize::new(frozen),
            file: Some(file.try_clone()?),
        });
        Ok((map.clone(), MapWriter { map, file }))
    }

    /// Size of the mapping.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// End of the published, immutable prefix.
    pub fn frozen(&self) -> usize {
        self.frozen.load(Ordering::Acquire)
    }

    /// The published bytes in `range`, or `None` if the range is not entirely below the mark.
    pub fn get(&self, range: Range<usize>) -> Option<&[u8]> {
        if range.start > range.end || range.end > self.frozen() {
            return None;
        }
        // SAFETY: `range` lies inside the mapping (frozen <= len) and below the frozen mark.
        // Bytes below the mark are never written again (`MapWriter::write` refuses them) and
        // the file is not shrunk below it while the map lives (module rule 2), so the memory
        // stays valid and unchanged for the lifetime of `&self`. The writer stored them (a
        // `pwritev` into the page cache pages this map shares) before its Release store of
        // the mark, which the Acquire load in `frozen()` pairs with, so they are visible.
        Some(unsafe { std::slice::from_raw_parts(self.raw.as_ptr().add(range.start), range.len()) })
    }

    /// A zero-copy `Bytes` of the published bytes in `range` that keeps the map alive.
    pub fn bytes(self: &Arc<Self>, range: Range<usize>) -> Option<Bytes> {
        self.get(range.clone())?;
        Some(Bytes::from_owner(MapSlice {
            map: self.clone(),
            range,
        }))
    }

    /// Makes written bytes durable: fdatasync of a writer's file, else msync of `range`
    /// (clamped to the map).
    pub fn flush(&self, range: Range<usize>) -> io::Result<()> {
        if let Some(file) = &self.file {
            return file.sync_data();
        }
        let end = range.end.min(self.len());
        if range.start >= end {
            return Ok(());
        }
        self.raw.flush_range(range.start, end - range.start)
    }
}

impl MapWriter {
    /// The map this writer writes.
    pub fn map(&self) -> &Arc<SegmentMap> {
        &self.map
    }

    /// The file this writer writes.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes `parts` back to back at `pos`, which must be at or above the frozen mark, and
    /// the whole inside the map.
    pub fn write(&mut self, pos: usize, parts: &[&[u8]]) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let end = pos.checked_add(total).filter(|end| *end <= self.map.len());
        if pos < self.map.frozen() || end.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write outside the private part of the map",
            ));
        }
        // A short write leaves the rest to write: retry from where it stopped.
        let mut done = 0;
        while done < total {
            let mut skip = done;
            let mut slices = Vec::with_capacity(parts.len());
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices.push(IoSlice::new(&part[skip..]));
                skip = 0;
            }
            match rustix::io::pwritev(&self.file, &slices, (pos + done) as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "pwritev wrote nothing",
                    ));
                }
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads bytes of the map, including the private part above the mark (recovery scans
    /// and the writer's own checks).
    pub fn private(&self, range: Range<usize>) -> Option<&[u8]> {
        if range.start > range.end || range.end > self.map.len() {
            return None;
        }
        // SAFETY: inside the mapping (checked). Bytes above the mark change only through
        // `write(&mut self)`, which cannot run while this `&self` borrow lives, and bytes
        // below it never change; the file is not shrunk under a live map (module rule 2).
        Some(unsafe {
            std::slice::from_raw_parts(self.map.raw.as_ptr().add(range.start), range.len())
        })
    }

    /// Publishes everything below `end`: from now on those bytes are immutable.
    pub fn freeze(&mut self, end: usize) {
        let end = end.min(self.map.len());
        self.map.frozen.fetch_max(end, Ordering::Release);
    }

    /// Shrinks the file to `len` if that keeps every published byte inside it; returns whether
    /// it did. (Pages past a file's end fault with SIGBUS, so a file is never cut under a
    /// published byte; recovery cuts such files at the next open instead.)
    pub fn trim_file(&mut self, len: usize) -> io::Result<bool> {
        if len < self.map.frozen() {
            return Ok(false);
        }
        self.file.set_len(len as u64)?;
        Ok(true)
    }
}

/// The owner behind a zero-copy [`Bytes`] of a map.
struct MapSlice {
    map: Arc<SegmentMap>,
    range: Range<usize>,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        // `bytes()` checked the range when it made this owner and the mark only grows, so
        // `get` cannot fail; the empty fallback is never taken.
        self.map.get(self.range.clone()).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: u64) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        f.set_len(len).unwrap();
        (dir, f)
    }

    #[test]
    fn frozen_prefix_is_readable_and_immutable() {
        let (_dir, f) = file(4096);
        let (map, mut writer) = SegmentMap::writable(f, 0).unwrap();
        writer.write(0, &[b"hel", b"lo"]).unwrap();
        assert!(
            map.get(0..5).is_none(),
            "unpublished bytes must not be readable"
        );
        assert_eq!(writer.private(0..5).unwrap(), b"hello");
        writer.freeze(5);
        let bytes = map.bytes(0..5).unwrap();
        assert_eq!(&bytes[..], b"hello");
        assert!(
            writer.write(3, &[b"x"]).is_err(),
            "published bytes must not be rewritten"
        );
        assert!(
            writer.write(4095, &[b"xy"]).is_err(),
            "writes past the map are refused"
        );
        writer.write(5, &[b" world"]).unwrap();
        writer.freeze(11);
        assert_eq!(map.get(0..11).unwrap(), b"hello world");
        map.flush(0..11).unwrap();
        assert!(
            !writer.trim_file(4).unwrap(),
            "must not cut under published bytes"
        );
        assert!(writer.trim_file(11).unwrap());
        drop(writer);
        drop(map);
        assert_eq!(&bytes[..], b"hello", "bytes keep the map alive");
    }

    #[test]
    fn read_only_maps_everything_frozen() {
        let (_dir, f) = file(100);
        let map = SegmentMap::read_only(&f, 100).unwrap();
        assert_eq!(map.get(0..100).unwrap().len(), 100);
        assert!(SegmentMap::read_only(&f, 101).is_err());
        let empty = SegmentMap::read_only(&f, 0).unwrap();
        assert!(empty.get(0..1).is_none());
        assert_eq!(empty.get(0..0).unwrap().len(), 0);
    }
}
