//! Small durable-file helpers shared by the metadata files of topics, groups and Raft.

use std::io::Write;
use std::path::Path;

/// Writes `path` (in `dir`) atomically and durably: a temporary file, fsync, rename, fsync
/// of the directory. A crash leaves the old content or the new one, never a mix.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes the entries of `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
