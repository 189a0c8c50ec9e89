//! Black-box tests of the partition log: a model-based property test, crash recovery after
//! SIGKILL (a child process appends, the parent kills it), torn tails, and on-disk fixtures.
//!
//! Numbered cases: `t01`–`t09` model and recovery, `t10`–`t19` crashes and torn writes,
//! `t20`–`t29` fixtures.

// Test helpers outside `#[test]` functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod crash;
mod fixtures;
mod model;
mod torn;

// Batches that describe themselves, so a test can check any entry it finds, and damage.

use std::path::Path;

use strata_storage::{BatchBuilder, NewRecord, RecordBatch};

/// The value of record `j` of the batch appended by `thread` as its `seq`-th: self-describing
/// so the parent can check any entry it finds, and a size that varies.
fn crash_value(thread: u64, seq: u64, j: u64) -> Vec<u8> {
    let len = 16 + ((thread * 7919 + seq * 104_729 + j * 31) % 700) as usize;
    let mut v = format!("{thread}:{seq}:{j}:").into_bytes();
    while v.len() < len {
        v.push(b'a' + ((v.len() as u64 + seq) % 26) as u8);
    }
    v
}

/// The batch `thread` appends as its `seq`-th (one to four records).
pub(crate) fn crash_batch(thread: u64, seq: u64) -> RecordBatch {
    let mut b = BatchBuilder::new();
    for j in 0..1 + seq % 4 {
        b.push(NewRecord::value(seq as i64, &crash_value(thread, seq, j)))
            .unwrap();
    }
    b.finish().unwrap()
}

/// Parses the (thread, seq) a batch was made from and checks it is exactly that batch.
pub(crate) fn check_crash_batch(batch: &RecordBatch) -> Option<(u64, u64)> {
    let first = batch.records().next()?.value?;
    let text = std::str::from_utf8(first).ok()?;
    let mut parts = text.split(':');
    let thread: u64 = parts.next()?.parse().ok()?;
    let seq: u64 = parts.next()?.parse().ok()?;
    let want = crash_batch(thread, seq);
    let same = want
        .records()
        .zip(batch.records())
        .all(|(a, b)| a.value == b.value)
        && want.record_count() == batch.record_count();
    same.then_some((thread, seq))
}

/// Overwrites `bytes` at `at` in the file at `path` (damage a test makes on purpose).
pub(crate) fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}
