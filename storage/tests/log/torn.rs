//! Torn tails.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng, rngs::StdRng};
use strata_storage::{EntryBody, FsyncPolicy, LogConfig, PartitionLog, RecordBatch};

use crate::{check_crash_batch, crash_batch, write_at};

fn tail_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_entry_bytes: 16 * 1024,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    }
}

/// Appends `n` batches to a fresh log in one segment; returns the data positions where
/// each entry starts and where the last one ends.
fn write_entries(dir: &Path, n: u64) -> (PartitionLog, Vec<u64>) {
    let log = PartitionLog::open(dir, tail_config()).unwrap();
    let mut positions = vec![64u64];
    for seq in 0..n {
        let batch = crash_batch(0, seq);
        let len = 40 + batch.len() as u64;
        log.append(1, 1, EntryBody::Data(batch))
            .unwrap()
            .wait()
            .unwrap();
        positions.push(positions.last().unwrap() + len);
    }
    assert_eq!(log.segments().unwrap().len(), 1);
    (log, positions)
}

fn active_path(dir: &Path) -> PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

/// Reopens and checks the log holds exactly entries `0..n` and its first segment was cut at
/// `end` (the file is that long), with a fresh segment after it that takes appends.
fn assert_cut_at(dir: &Path, n: u64, end: u64) {
    let log = PartitionLog::open(dir, tail_config()).unwrap();
    assert_eq!(log.state().next_index, n);
    let segments = log.segments().unwrap();
    assert_eq!(segments[0].bytes, end, "cut at the wrong position");
    assert!(segments[0].sealed);
    assert_eq!(
        std::fs::metadata(&segments[0].path).unwrap().len(),
        end,
        "torn bytes left in the file"
    );
    for (i, entry) in log
        .entries(0..n, usize::MAX)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let batch = RecordBatch::from_bytes(entry.body).unwrap();
        assert_eq!(check_crash_batch(&batch), Some((0, i as u64)));
    }
    let next = log
        .append(1, 1, EntryBody::Data(crash_batch(0, n)))
        .unwrap();
    assert_eq!(next.first.log_id.index, n);
    drop(next);
    log.close().unwrap();
    let log = PartitionLog::open(dir, tail_config()).unwrap();
    assert_eq!(log.state().next_index, n + 1);
}

/// t11: a half-written entry at the end of the active segment is cut off exactly.
#[test]
fn t11_half_written_entry_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (log, positions) = write_entries(dir.path(), 10);
    log.simulate_crash();
    // Entry 9 only got its first half to disk.
    let (start, end) = (positions[9], positions[10]);
    let half = start + (end - start) / 2;
    write_at(
        &active_path(dir.path()),
        half,
        &vec![0u8; (end - half) as usize],
    );
    assert_cut_at(dir.path(), 9, start);
}

/// t12: garbage after the last entry (a torn write of a next entry) is cut off exactly,
/// after a crash and after a clean close alike.
#[test]
fn t12_garbage_after_the_end_is_cut_off() {
    for clean in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (log, positions) = write_entries(dir.path(), 6);
        if clean {
            log.close().unwrap();
        } else {
            log.simulate_crash();
        }
        let mut rng = StdRng::seed_from_u64(7);
        let garbage: Vec<u8> = (0..300).map(|_| rng.random()).collect();
        write_at(&active_path(dir.path()), positions[6], &garbage);
        assert_cut_at(dir.path(), 6, positions[6]);
    }
}

/// t13: a flipped bit inside an entry of the active segment cuts the log before it (a
/// write torn inside the entry), and a header claiming more bytes than the file is too.
#[test]
fn t13_corrupt_tail_entry_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (log, positions) = write_entries(dir.path(), 8);
    log.simulate_crash();
    let path = active_path(dir.path());
    let mut byte = [0u8; 1];
    let at = positions[7] + 60;
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&path).unwrap(), &mut byte, at)
        .unwrap();
    write_at(&path, at, &[byte[0] ^ 0x04]);
    assert_cut_at(dir.path(), 7, positions[7]);

    let dir = tempfile::tempdir().unwrap();
    let (log, positions) = write_entries(dir.path(), 3);
    log.simulate_crash();
    // Entry 2's body length field says 1 GiB.
    write_at(
        &active_path(dir.path()),
        positions[2] + 4,
        &(1u32 << 30).to_le_bytes(),
    );
    assert_cut_at(dir.path(), 2, positions[2]);
}

/// t14: a missing or damaged index of the active segment is rebuilt from the data.
#[test]
fn t14_active_index_is_rebuilt() {
    for damage in ["delete", "garble"] {
        let dir = tempfile::tempdir().unwrap();
        let (log, positions) = write_entries(dir.path(), 5);
        log.close().unwrap();
        let index = active_path(dir.path()).with_extension("idx");
        match damage {
            "delete" => std::fs::remove_file(&index).unwrap(),
            _ => write_at(&index, 10, b"garbage!"),
        }
        let log = PartitionLog::open(dir.path(), tail_config()).unwrap();
        assert_eq!(log.state().next_index, 5, "{damage}");
        assert_eq!(log.segments().unwrap()[0].bytes, positions[5]);
        assert!(log.verify().unwrap().damaged.is_empty());
    }
}

/// t15: a power loss after a roll can leave the new segment's header unwritten while some
/// of its (never acknowledged) entry pages reached the disk. The segment is dropped and the
/// log reopens to the end of the previous one; a header with bytes in it that do not decode
/// is damage, reported as such.
#[test]
fn t15_unwritten_header_after_a_roll() {
    for damage in ["zeroed", "garbled"] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = write_entries(dir.path(), 5);
        log.roll().unwrap();
        for seq in 5..8 {
            log.append(1, 1, EntryBody::Data(crash_batch(0, seq)))
                .unwrap()
                .wait()
                .unwrap();
        }
        assert_eq!(log.segments().unwrap().len(), 2);
        log.simulate_crash();
        let header = match damage {
            "zeroed" => vec![0u8; 64],
            _ => b"not a segment header".to_vec(),
        };
        write_at(&active_path(dir.path()), 0, &header);
        let opened = PartitionLog::open(dir.path(), tail_config());
        if damage == "garbled" {
            let Err(err) = opened else {
                panic!("a garbled header must not open")
            };
            assert!(err.to_string().contains("header damaged"), "{err}");
            continue;
        }
        let log = opened.unwrap();
        assert_eq!(log.state().next_index, 5);
        let next = log
            .append(1, 1, EntryBody::Data(crash_batch(0, 5)))
            .unwrap();
        assert_eq!(next.first.log_id.index, 5);
        drop(next);
        log.close().unwrap();
        let log = PartitionLog::open(dir.path(), tail_config()).unwrap();
        assert_eq!(log.state().next_index, 6);
        assert!(log.verify().unwrap().damaged.is_empty());
    }
}
