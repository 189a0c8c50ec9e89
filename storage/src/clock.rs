//! The node's wall clock: milliseconds since the Unix epoch, as every part of a node reads
//! them (record and control timestamps, segment ages, retention, token expiry, audit). One
//! place to read it means one place to skew it: the fault suite moves a node's clock with
//! [`set_skew_ms`], as a misconfigured NTP or a VM resumed from a snapshot would, without
//! touching the machine's clock. Time-outs and elections use the monotonic clock and are not
//! skewed, as on a real machine.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static SKEW_MS: AtomicI64 = AtomicI64::new(0);

/// Now, as milliseconds since the Unix epoch (0 before the epoch), skewed by
/// [`set_skew_ms`].
pub fn now_ms() -> i64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    skewed(real, SKEW_MS.load(Ordering::Relaxed))
}

fn skewed(real_ms: i64, skew_ms: i64) -> i64 {
    real_ms.saturating_add(skew_ms).max(0)
}

/// Now, as nanoseconds since the Unix epoch, skewed by [`set_skew_ms`] (for names that
/// must not repeat).
pub fn now_nanos() -> u128 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let skew = SKEW_MS.load(Ordering::Relaxed);
    let skew_nanos = u128::from(skew.unsigned_abs()) * 1_000_000;
    if skew >= 0 {
        real.saturating_add(skew_nanos)
    } else {
        real.saturating_sub(skew_nanos)
    }
}

/// Moves this process's wall clock by `skew_ms` (negative: behind) from the real one.
pub fn set_skew_ms(skew_ms: i64) {
    SKEW_MS.store(skew_ms, Ordering::Relaxed);
}

/// The current skew.
pub fn skew_ms() -> i64 {
    SKEW_MS.load(Ordering::Relaxed)
}

/// Follows the skew written in a file (milliseconds, signed; no file or an unreadable one is
/// no skew), re-read every `every` on a thread of its own: how the fault suite skews
/// another process's clock while it runs. Only the test node calls this.
pub fn follow_skew_file(path: std::path::PathBuf, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("clock-skew".into())
        .spawn(move || {
            loop {
                let skew = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                if skew != skew_ms() {
                    tracing::warn!(skew_ms = skew, "wall clock skewed (fault injection)");
                    set_skew_ms(skew);
                }
                std::thread::sleep(every);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot follow the clock-skew file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // (The process-wide skew is left alone: other tests read the clock concurrently.)
    #[test]
    fn a_skew_moves_the_clock_both_ways_and_never_before_the_epoch() {
        assert_eq!(skewed(1_000, 3_600_000), 3_601_000);
        assert_eq!(skewed(3_601_000, -3_600_000), 1_000);
        assert_eq!(skewed(1_000, -3_600_000), 0);
        assert_eq!(skewed(i64::MAX, 1), i64::MAX);
        assert_eq!(skew_ms(), 0);
    }
}
