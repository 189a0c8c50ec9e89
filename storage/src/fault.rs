//! Fault injection: makes the disk under a directory fail as a failing disk does, for tests
//! and the fault suite. While a directory is failed, every log flush under it fails as an
//! `fsync` returning `EIO` would (the log is then poisoned) and opening a log under it fails
//! too; [`heal_disk`] lets later opens and flushes succeed. Nothing is failed unless a caller
//! asks; the cost when nothing is failed is one atomic load per flush and per open.
//!
//! Another process is failed through files: in a process started with the environment
//! variable `STRATA_FAULT_INJECTION` set, a file named [`FAIL_DISK_MARKER`] in a directory
//! fails the disk under it until the file is removed (each flush and open then looks for
//! the file in every ancestor directory, so only tests and fault runs should set it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// The file that fails the disk under its directory (with `STRATA_FAULT_INJECTION` set).
pub const FAIL_DISK_MARKER: &str = "FAIL-DISK";

static ANY_FAILED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn failed() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails the disk under `dir` (and every directory below it) from now on.
pub fn fail_disk(dir: &Path) {
    let mut f = failed();
    if !f.iter().any(|d| d == dir) {
        f.push(dir.to_path_buf());
    }
    ANY_FAILED.store(true, Ordering::SeqCst);
}

/// Undoes [`fail_disk`] for `dir`.
pub fn heal_disk(dir: &Path) {
    let mut f = failed();
    f.retain(|d| d != dir);
    ANY_FAILED.store(!f.is_empty(), Ordering::SeqCst);
}

fn markers_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("STRATA_FAULT_INJECTION").is_some())
}

/// `EIO` if the disk under `path` is failed.
pub(crate) fn check(path: &Path) -> std::io::Result<()> {
    let marked =
        || markers_enabled() && path.ancestors().any(|a| a.join(FAIL_DISK_MARKER).exists());
    let failed_here =
        || ANY_FAILED.load(Ordering::Relaxed) && failed().iter().any(|d| path.starts_with(d));
    if failed_here() || marked() {
        return Err(std::io::Error::other("injected disk failure (EIO)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_directory_fails_below_it_until_healed() {
        let dir = Path::new("/tmp/strata-fault-test/a");
        assert!(check(&dir.join("0")).is_ok());
        fail_disk(dir);
        assert!(check(&dir.join("0/segment")).is_err());
        assert!(check(Path::new("/tmp/strata-fault-test/b")).is_ok());
        heal_disk(dir);
        assert!(check(&dir.join("0")).is_ok());
    }
}
