//! Fixtures: logs written by this format version, committed under tests/fixtures.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use strata_storage::{EntryBody, Error, FsyncPolicy, LogConfig, LogId, PartitionLog, RecordBatch};

use crate::{check_crash_batch, crash_batch, write_at};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        max_entry_bytes: 4096,
        fsync: FsyncPolicy::Always,
        ..LogConfig::default()
    }
}

/// The entries of the fixture log, in order: data batches made by `crash_batch(1, seq)`,
/// with a blank and a membership entry in between.
fn fixture_body(i: u64) -> EntryBody {
    match i {
        0 => EntryBody::Blank,
        7 => EntryBody::Membership(Bytes::from_static(b"voters=1,2,3")),
        _ => EntryBody::Data(crash_batch(1, i)),
    }
}

const FIXTURE_ENTRIES: u64 = 36;
const FIXTURE_PURGED: u64 = 2;

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Writes the fixtures. Run with `STRATA_WRITE_FIXTURES=1 cargo test -p strata-storage
/// --test log -- --ignored write_fixtures`, only when the format changes on purpose.
#[test]
#[ignore = "writes the committed fixtures"]
fn write_fixtures() {
    if std::env::var_os("STRATA_WRITE_FIXTURES").is_none() {
        return;
    }
    let valid = fixtures().join("valid");
    let _ = std::fs::remove_dir_all(&valid);
    let log = PartitionLog::open(&valid, fixture_config()).unwrap();
    for i in 0..FIXTURE_ENTRIES {
        log.append(1 + i / 10, 1, fixture_body(i))
            .unwrap()
            .wait()
            .unwrap();
    }
    log.purge_up_to(FIXTURE_PURGED - 1).unwrap();
    let segments = log.segments().unwrap();
    assert!(segments.len() >= 4, "{segments:?}");
    log.close().unwrap();
    std::fs::remove_file(valid.join("LOCK")).unwrap();

    // The damaged copy: segment 1's index deleted, a bit flipped in a batch of segment 2,
    // and a torn write after the last entry.
    let damaged = fixtures().join("damaged");
    let _ = std::fs::remove_dir_all(&damaged);
    std::fs::create_dir_all(&damaged).unwrap();
    copy_dir(&valid, &damaged);
    std::fs::remove_file(
        segments[1]
            .path
            .with_extension("idx")
            .to_str()
            .unwrap()
            .replace("/valid/", "/damaged/"),
    )
    .unwrap();
    let flip_path = PathBuf::from(
        segments[2]
            .path
            .to_str()
            .unwrap()
            .replace("/valid/", "/damaged/"),
    );
    write_at(&flip_path, 64 + 40 + 60, b"\xff");
    let active = PathBuf::from(
        segments
            .last()
            .unwrap()
            .path
            .to_str()
            .unwrap()
            .replace("/valid/", "/damaged/"),
    );
    write_at(
        &active,
        segments.last().unwrap().bytes,
        b"torn write: not an entry header at all",
    );
}

fn check_fixture_entry(entry: &strata_storage::Entry, i: u64) {
    assert_eq!(entry.log_id, LogId::new(1 + i / 10, 1, i));
    match fixture_body(i) {
        EntryBody::Data(want) => {
            let got = RecordBatch::from_bytes(entry.body.clone()).unwrap();
            assert_eq!(check_crash_batch(&got), check_crash_batch(&want));
        }
        other => assert_eq!(&entry.body[..], other.bytes()),
    }
}

/// t20: the committed valid log opens and reads back exactly what was written.
#[test]
fn t20_valid_fixture_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("valid"), dir.path());
    let log = PartitionLog::open(dir.path(), fixture_config()).unwrap();
    let state = log.state();
    assert_eq!(
        (state.first_index, state.next_index),
        (FIXTURE_PURGED, FIXTURE_ENTRIES)
    );
    assert_eq!(
        state.last_purged,
        Some(LogId::new(1, 1, FIXTURE_PURGED - 1))
    );
    let entries = log.entries(0..FIXTURE_ENTRIES, usize::MAX).unwrap();
    assert_eq!(entries.len() as u64, FIXTURE_ENTRIES - FIXTURE_PURGED);
    for entry in &entries {
        check_fixture_entry(entry, entry.log_id.index);
    }
    let report = log.verify().unwrap();
    assert!(report.damaged.is_empty(), "{report:?}");
    assert!(log.segments().unwrap().len() >= 4);
    // It keeps working: append, reopen.
    log.append(9, 1, EntryBody::Data(crash_batch(1, 99)))
        .unwrap()
        .wait()
        .unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), fixture_config()).unwrap();
    assert_eq!(log.state().next_index, FIXTURE_ENTRIES + 1);
}

/// t21: the committed damaged log opens; the torn write is cut, the lost index is rebuilt,
/// and the flipped bit is reported by `verify` and by reads of that entry, nowhere else.
#[test]
fn t21_damaged_fixture_recovers_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("damaged"), dir.path());
    let log = PartitionLog::open(dir.path(), fixture_config()).unwrap();
    let state = log.state();
    assert_eq!(
        (state.first_index, state.next_index),
        (FIXTURE_PURGED, FIXTURE_ENTRIES),
        "the torn write is cut"
    );
    let segments = log.segments().unwrap();
    let damaged_index = segments[2].first_index;
    let report = log.verify().unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.damaged[0].index, damaged_index);
    assert!(matches!(
        log.entry(damaged_index),
        Err(Error::Corrupt { .. })
    ));
    for i in FIXTURE_PURGED..FIXTURE_ENTRIES {
        if i != damaged_index {
            check_fixture_entry(&log.entry(i).unwrap().unwrap(), i);
        }
    }
    // The rebuilt index was written back.
    assert!(segments[1].path.with_extension("idx").exists());
}
