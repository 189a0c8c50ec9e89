//! Unit tests of the partition log (white-box where a fault must be injected).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::batch::{BatchBuilder, NewRecord, RecordBatch};
use crate::entry::EntryKind;

fn batch(records: usize, value_len: usize, timestamp: i64) -> RecordBatch {
    let value = vec![b'x'; value_len];
    let mut b = BatchBuilder::new();
    for i in 0..records {
        b.push(NewRecord::value(timestamp + i as i64, &value))
            .unwrap();
    }
    b.finish().unwrap()
}

fn small_config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        max_entry_bytes: 2048,
        fsync,
        ..LogConfig::default()
    }
}

fn offsets(fetched: &Fetched) -> Vec<u64> {
    fetched
        .batches
        .iter()
        .flat_map(|b| {
            RecordBatch::from_bytes(b.clone())
                .unwrap()
                .records()
                .map(|r| r.offset)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn append_batches(log: &PartitionLog, n: usize, records: usize) -> Vec<Appended> {
    (0..n)
        .map(|i| {
            let a = log
                .append(
                    1,
                    1,
                    EntryBody::Data(batch(records, 100, 1_000 + i as i64 * 10)),
                )
                .unwrap();
            a.wait().unwrap();
            a.first
        })
        .collect()
}

#[test]
fn appends_assign_dense_offsets_and_read_back_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
    let appended = append_batches(&log, 60, 5);
    for (i, a) in appended.iter().enumerate() {
        assert_eq!(a.log_id.index, i as u64);
        assert_eq!(a.base_offset, 5 * i as u64);
    }
    let state = log.state();
    assert_eq!((state.next_index, state.next_offset), (60, 300));
    assert!(state.segments > 3, "small segments must roll: {state:?}");
    let all = log.read(0, usize::MAX).unwrap();
    assert_eq!(offsets(&all), (0..300).collect::<Vec<_>>());
    assert_eq!(all.next_offset, 300);
    // A read from the middle of a batch starts with that whole batch.
    let mid = log.read(102, 1).unwrap();
    assert_eq!(offsets(&mid), (100..105).collect::<Vec<_>>());
    assert_eq!(mid.next_offset, 105);
    // Past the end: empty; beyond it: an error.
    assert!(log.read(300, 1 << 20).unwrap().batches.is_empty());
    assert!(matches!(
        log.read(301, 1),
        Err(Error::OffsetOutOfRange { .. })
    ));
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
    assert_eq!(
        offsets(&log.read(0, usize::MAX).unwrap()),
        (0..300).collect::<Vec<_>>()
    );
    let entries = log.entries(0..60, usize::MAX).unwrap();
    assert_eq!(entries.len(), 60);
    assert!(
        entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.log_id == LogId::new(1, 1, i as u64) && e.kind == EntryKind::Data)
    );
}

#[test]
fn non_data_entries_take_no_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Never)).unwrap();
    log.append(1, 1, EntryBody::Blank).unwrap().wait().unwrap();
    log.append(1, 1, EntryBody::Data(batch(3, 10, 5)))
        .unwrap()
        .wait()
        .unwrap();
    log.append(2, 2, EntryBody::Membership(Bytes::from_static(b"{1,2,3}")))
        .unwrap()
        .wait()
        .unwrap();
    let a = log.append(2, 2, EntryBody::Data(batch(2, 10, 6))).unwrap();
    assert_eq!((a.first.log_id.index, a.first.base_offset), (3, 3));
    let entries = log.entries(0..10, 0).unwrap();
    assert_eq!(entries.len(), 1, "max_bytes 0 still returns one entry");
    let entries = log.entries(0..10, usize::MAX).unwrap();
    let kinds: Vec<_> = entries
        .iter()
        .map(|e| (e.kind, e.base_offset, e.record_count))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EntryKind::Blank, 0, 0),
            (EntryKind::Data, 0, 3),
            (EntryKind::Membership, 3, 0),
            (EntryKind::Data, 3, 2)
        ]
    );
    assert_eq!(&entries[2].body[..], b"{1,2,3}");
    assert_eq!(
        offsets(&log.read(0, usize::MAX).unwrap()),
        vec![0, 1, 2, 3, 4]
    );
}

#[test]
fn bad_appends_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
    append_batches(&log, 2, 1);
    let err = log
        .append_entries([NewEntry {
            log_id: LogId::new(1, 1, 5),
            body: EntryBody::Blank,
        }])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonContiguousAppend {
                expected: 2,
                got: 5
            }
        ),
        "{err}"
    );
    let too_big = batch(1, 3_000, 0);
    assert!(matches!(
        log.append(1, 1, EntryBody::Data(too_big)),
        Err(Error::EntryTooLarge { .. })
    ));
    // A bad entry in the middle of a group: none of the group is appended.
    let group = vec![
        NewEntry {
            log_id: LogId::new(1, 1, 2),
            body: EntryBody::Blank,
        },
        NewEntry {
            log_id: LogId::new(1, 1, 4),
            body: EntryBody::Blank,
        },
    ];
    assert!(log.append_entries(group).is_err());
    let lower_term = NewEntry {
        log_id: LogId::new(0, 1, 2),
        body: EntryBody::Blank,
    };
    assert!(
        log.append_entries([lower_term]).is_err(),
        "terms never go down along the log"
    );
    assert_eq!(log.state().next_index, 2);
    assert!(log.state().last_log_id == Some(LogId::new(1, 1, 1)));
}

#[test]
fn concurrent_appenders_share_flushes_and_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            segment_bytes: 1 << 20,
            max_entry_bytes: 1 << 16,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let a = log.append(1, 1, EntryBody::Data(batch(4, 256, 1))).unwrap();
                    a.wait().unwrap();
                    assert!(a.is_durable());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let state = log.state();
    assert_eq!(
        (
            state.next_index,
            state.next_offset,
            state.readable_end_offset
        ),
        (400, 1600, 1600)
    );
    assert_eq!(
        offsets(&log.read(0, usize::MAX).unwrap()),
        (0..1600).collect::<Vec<_>>()
    );
}

#[test]
fn callbacks_report_durability() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..10 {
        let tx = tx.clone();
        log.append(1, 1, EntryBody::Data(batch(1, 10, 1)))
            .unwrap()
            .on_durable(move |r| tx.send(r.is_ok()).unwrap());
    }
    for _ in 0..10 {
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    }
}

#[test]
fn a_failed_flush_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
    append_batches(&log, 3, 1);
    log.inner().fail_next_flush.store(true, Ordering::SeqCst);
    let pending = log.append(1, 1, EntryBody::Data(batch(1, 10, 1))).unwrap();
    assert!(
        matches!(pending.wait(), Err(Error::Poisoned { .. })),
        "the waiting append fails"
    );
    assert!(
        matches!(
            log.append(1, 1, EntryBody::Blank),
            Err(Error::Poisoned { .. })
        ),
        "later appends fail"
    );
    assert!(log.flush().is_err(), "no silent retry");
    // Durable data is still readable, and the not-durable entry is not exposed to readers.
    assert_eq!(offsets(&log.read(0, usize::MAX).unwrap()), vec![0, 1, 2]);
    drop(pending);
    drop(log);
    // Reopening recovers what reached the disk (here, everything: the page cache has it).
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
    assert!(log.state().next_index >= 3);
    log.append(1, 1, EntryBody::Blank).unwrap().wait().unwrap();
}

#[test]
fn truncation_rewinds_offsets_in_the_active_and_in_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(FsyncPolicy::Always);
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    append_batches(&log, 40, 2);
    let segments = log.segments().unwrap();
    assert!(segments.len() >= 4);
    // Inside the active segment.
    let last = segments.last().unwrap();
    let cut = last.first_index + 1;
    log.truncate_after(Some(cut)).unwrap();
    assert_eq!(log.state().next_index, cut + 1);
    assert_eq!(log.state().next_offset, 2 * (cut + 1));
    // Inside a sealed segment.
    let middle = &segments[1];
    let cut = middle.first_index + 2;
    log.truncate_after(Some(cut)).unwrap();
    let state = log.state();
    assert_eq!(
        (state.next_index, state.next_offset),
        (cut + 1, 2 * (cut + 1))
    );
    assert_eq!(
        offsets(&log.read(0, usize::MAX).unwrap()),
        (0..2 * (cut + 1)).collect::<Vec<_>>()
    );
    // Exactly at a segment boundary.
    log.truncate_after(Some(segments[1].first_index - 1))
        .unwrap();
    assert_eq!(log.state().next_index, segments[1].first_index);
    // New appends continue with new terms at the rewound offsets.
    let a = log.append(2, 3, EntryBody::Data(batch(2, 10, 1))).unwrap();
    a.wait().unwrap();
    assert_eq!(
        (a.first.log_id.index, a.first.base_offset),
        (segments[1].first_index, 2 * segments[1].first_index)
    );
    drop(log);
    let log = PartitionLog::open(dir.path(), config).unwrap();
    let entry = log.entry(segments[1].first_index).unwrap().unwrap();
    assert_eq!(entry.log_id, LogId::new(2, 3, segments[1].first_index));
    assert_eq!(log.state().next_index, segments[1].first_index + 1);
    // Everything.
    log.truncate_after(None).unwrap();
    assert_eq!(log.state().next_index, 0);
    assert_eq!(log.state().last_log_id, None);
    assert!(log.read(0, 100).unwrap().batches.is_empty());
}

#[test]
fn purge_moves_the_start_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(FsyncPolicy::Always);
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    append_batches(&log, 40, 2);
    let before = log.segments().unwrap().len();
    log.purge_up_to(20).unwrap();
    let state = log.state();
    assert_eq!((state.first_index, state.start_offset), (21, 42));
    assert_eq!(state.last_purged, Some(LogId::new(1, 1, 20)));
    assert!(
        log.segments().unwrap().len() < before,
        "whole purged segments are deleted"
    );
    assert!(matches!(
        log.read(41, 10),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(offsets(&log.read(42, usize::MAX).unwrap())[0], 42);
    assert!(log.entries(0..21, usize::MAX).unwrap().is_empty());
    drop(log);
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    let state = log.state();
    assert_eq!(
        (state.first_index, state.start_offset, state.last_purged),
        (21, 42, Some(LogId::new(1, 1, 20)))
    );
    // Purging everything leaves an empty log whose last id is the last purged one.
    log.purge_up_to(39).unwrap();
    let state = log.state();
    assert_eq!(
        (state.first_index, state.next_index, state.last_log_id),
        (40, 40, Some(LogId::new(1, 1, 39)))
    );
    // A reset jumps ahead, as after installing a snapshot.
    log.reset(LogId::new(5, 2, 100), 777).unwrap();
    let a = log.append(5, 2, EntryBody::Data(batch(1, 10, 1))).unwrap();
    assert_eq!((a.first.log_id.index, a.first.base_offset), (101, 777));
    a.wait().unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), config).unwrap();
    let state = log.state();
    assert_eq!(
        (
            state.first_index,
            state.next_index,
            state.start_offset,
            state.next_offset
        ),
        (101, 102, 777, 778)
    );
    assert_eq!(state.last_purged, Some(LogId::new(5, 2, 100)));
}

#[test]
fn retention_deletes_whole_old_or_excess_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Never)).unwrap();
    for i in 0..60 {
        log.append(1, 1, EntryBody::Data(batch(2, 100, i * 1000)))
            .unwrap()
            .wait()
            .unwrap();
    }
    let segments = log.segments().unwrap();
    let total: u64 = segments.iter().map(|s| s.bytes).sum();
    // By size: keep at most half.
    let point = log
        .apply_retention(
            &RetentionPolicy {
                max_age: None,
                max_bytes: Some(total / 2),
            },
            0,
        )
        .unwrap()
        .unwrap();
    let after = log.segments().unwrap();
    assert!(after.iter().map(|s| s.bytes).sum::<u64>() <= total / 2);
    assert_eq!(
        after[0].first_index,
        point + 1,
        "only whole segments are deleted"
    );
    assert!(after.len() < segments.len());
    // By age: records of entry i have timestamps i*1000 .. i*1000+1; 'now' makes the first
    // 40 entries older than 10 s.
    let now = 40_000 + 10_000;
    let point = log
        .apply_retention(
            &RetentionPolicy {
                max_age: Some(Duration::from_secs(10)),
                max_bytes: None,
            },
            now,
        )
        .unwrap();
    let first_kept = log.segments().unwrap()[0].first_index;
    if let Some(p) = point {
        assert_eq!(first_kept, p + 1);
        assert!(p < 40);
    }
    for s in log.segments().unwrap() {
        if s.sealed {
            let last = log.entry(s.end_index - 1).unwrap().unwrap();
            let newest = RecordBatch::from_bytes(last.body).unwrap().max_timestamp();
            assert!(
                s.first_index > 40 || newest >= 39_000,
                "a segment with only old records was kept"
            );
        }
    }
    // The active segment is never deleted.
    let point = log
        .apply_retention(
            &RetentionPolicy {
                max_age: Some(Duration::from_millis(1)),
                max_bytes: Some(0),
            },
            i64::MAX,
        )
        .unwrap();
    assert!(point.is_some());
    assert_eq!(log.segments().unwrap().len(), 1);
    assert!(
        !log.read(log.state().start_offset, usize::MAX)
            .unwrap()
            .batches
            .is_empty()
    );
}

#[test]
fn offsets_are_found_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Never)).unwrap();
    for i in 0..50 {
        log.append(1, 1, EntryBody::Data(batch(2, 100, i * 100)))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(log.offset_for_timestamp(i64::MIN).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(
        log.offset_for_timestamp(1).unwrap(),
        Some(0),
        "batch 0 holds timestamps 0 and 1"
    );
    assert_eq!(log.offset_for_timestamp(2).unwrap(), Some(2));
    assert_eq!(log.offset_for_timestamp(2_550).unwrap(), Some(52));
    assert_eq!(log.offset_for_timestamp(4_901).unwrap(), Some(98));
    assert_eq!(log.offset_for_timestamp(4_902).unwrap(), None);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
    assert!(matches!(
        PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)),
        Err(Error::Locked { .. })
    ));
    drop(log);
    PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
}

#[test]
fn unclean_shutdown_keeps_everything_and_starts_a_fresh_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(FsyncPolicy::Never);
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    append_batches(&log, 7, 3);
    log.simulate_crash();
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    assert_eq!(log.state().next_offset, 21);
    let segments = log.segments().unwrap();
    assert_eq!(segments.len(), 2);
    assert!(segments[0].sealed && segments[1].first_index == 7);
    let report = log.verify().unwrap();
    assert!(
        report.damaged.is_empty() && report.entries == 7,
        "{report:?}"
    );
    // A clean close reopens in place.
    log.append(1, 1, EntryBody::Blank).unwrap().wait().unwrap();
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(log.segments().unwrap().len(), 2);
    assert_eq!(log.state().next_index, 8);
}

#[test]
fn interval_policy_flushes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(
        dir.path(),
        small_config(FsyncPolicy::Interval(Duration::from_millis(5))),
    )
    .unwrap();
    let a = log.append(1, 1, EntryBody::Data(batch(1, 10, 1))).unwrap();
    assert!(a.is_durable(), "interval appends complete at once");
    assert_eq!(offsets(&log.read(0, 100).unwrap()), vec![0]);
    // The flusher checkpoints within a few intervals.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let index = log.inner().read_view().active.index.clone();
        if index.lock().unwrap().persisted() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no background checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn shared_flusher_serves_many_logs() {
    let flusher = Flusher::new().unwrap();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let logs: Vec<_> = dirs
        .iter()
        .map(|d| {
            PartitionLog::open(
                d.path(),
                LogConfig {
                    flusher: Some(flusher.clone()),
                    ..small_config(FsyncPolicy::Always)
                },
            )
            .unwrap()
        })
        .collect();
    let handles: Vec<_> = logs
        .iter()
        .map(|log| {
            let log = log.clone();
            std::thread::spawn(move || append_batches(&log, 20, 1).len())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 20);
    }
    assert!(logs.iter().all(|l| l.state().readable_end_offset == 20));
    drop(logs);
    let _keep = Arc::new(flusher);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_max_age: Some(Duration::from_millis(20)),
        ..small_config(FsyncPolicy::Never)
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    log.append(1, 1, EntryBody::Data(batch(1, 10, 1)))
        .unwrap()
        .wait()
        .unwrap();
    log.append(1, 1, EntryBody::Data(batch(1, 10, 1)))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        log.segments().unwrap().len(),
        1,
        "young segments do not roll"
    );
    // The segment's age is wall-clock time since its creation: let 20 ms pass.
    std::thread::sleep(Duration::from_millis(25));
    log.append(1, 1, EntryBody::Data(batch(1, 10, 1)))
        .unwrap()
        .wait()
        .unwrap();
    let segments = log.segments().unwrap();
    assert_eq!(
        segments.len(),
        2,
        "an aged segment rolls at the next append"
    );
    assert_eq!((segments[0].end_index, segments[1].first_index), (2, 2));
}

#[test]
fn a_failed_disk_poisons_the_log_and_fails_its_reopening_until_healed() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
    append_batches(&log, 3, 1);
    assert_eq!(log.durable_next(), Some(3));
    assert_eq!(log.poisoned(), None);
    crate::fault::fail_disk(dir.path());
    let pending = log.append(1, 1, EntryBody::Data(batch(3, 10, 1))).unwrap();
    assert!(matches!(pending.wait(), Err(Error::Poisoned { .. })));
    assert!(log.poisoned().unwrap().contains("injected disk failure"));
    assert_eq!(
        log.durable_next(),
        Some(3),
        "the failed entry is not durable"
    );
    drop(pending);
    log.close().unwrap_err();
    drop(log);
    let e = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap_err();
    assert!(e.to_string().contains("injected disk failure"), "{e}");
    crate::fault::heal_disk(dir.path());
    let log = PartitionLog::open(dir.path(), small_config(FsyncPolicy::Always)).unwrap();
    assert!(log.state().next_index >= 3);
    assert_eq!(offsets(&log.read(0, usize::MAX).unwrap())[..3], [0, 1, 2]);
}
