//! Storage: the batch codec, appends under each fsync policy, group commit with concurrent
//! appenders, catch-up reads of a 1 GiB log, and open time (clean and after a crash).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group};
use strata_benches::{batch, sensor_value};
use strata_storage::{
    BatchBuilder, EntryBody, FsyncPolicy, LogConfig, NewRecord, PartitionLog, RecordBatch,
    RetentionPolicy,
};

const RECORD: usize = 1024;
const RECORDS_PER_BATCH: usize = 64; // 64 KiB batches
const PAYLOAD: u64 = (RECORD * RECORDS_PER_BATCH) as u64;

fn bench_root() -> PathBuf {
    std::env::var_os("STRATA_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn temp_dir() -> tempfile::TempDir {
    let root = bench_root();
    std::fs::create_dir_all(&root).unwrap();
    tempfile::tempdir_in(root).unwrap()
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        fsync,
        ..LogConfig::default()
    }
}

/// Keeps a log under about 1 GiB while a benchmark appends to it.
const KEEP: RetentionPolicy = RetentionPolicy {
    max_age: None,
    max_bytes: Some(1 << 30),
};

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage/codec");
    group.throughput(Throughput::Bytes(PAYLOAD));
    let values: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH as u64)
        .map(|i| sensor_value(i, RECORD))
        .collect();
    group.bench_function("build-64x1KiB", |b| {
        b.iter(|| {
            let mut builder = BatchBuilder::with_capacity(RECORDS_PER_BATCH * (RECORD + 16) + 64);
            for (i, value) in values.iter().enumerate() {
                builder
                    .push(NewRecord::value(
                        1_700_000_000_000 + i as i64,
                        black_box(value),
                    ))
                    .unwrap();
            }
            black_box(builder.finish().unwrap())
        })
    });
    let built = batch(RECORDS_PER_BATCH, RECORD);
    group.bench_function("validate-64x1KiB", |b| {
        b.iter(|| RecordBatch::from_bytes(black_box(built.as_bytes().clone())).unwrap())
    });
    group.finish();
}

fn append(c: &mut Criterion) {
    let payload = batch(RECORDS_PER_BATCH, RECORD);
    let mut group = c.benchmark_group("storage/append");
    group
        .throughput(Throughput::Bytes(PAYLOAD))
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    let policies = [
        ("never", FsyncPolicy::Never),
        (
            "interval-100ms",
            FsyncPolicy::Interval(Duration::from_millis(100)),
        ),
        ("always", FsyncPolicy::Always),
    ];
    for (name, policy) in policies {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let dir = temp_dir();
                let log = PartitionLog::open(dir.path(), config(policy)).unwrap();
                let start = Instant::now();
                for i in 0..iters {
                    log.append(1, 1, EntryBody::Data(payload.clone()))
                        .unwrap()
                        .wait()
                        .unwrap();
                    if i % 2048 == 2047 {
                        log.apply_retention(&KEEP, 0).unwrap();
                    }
                }
                let elapsed = start.elapsed();
                log.close().unwrap();
                elapsed
            })
        });
    }
    // Group commit: appenders that each wait for their append share flushes.
    for appenders in [8u64, 32] {
        group.bench_function(format!("always-{appenders}-appenders"), |b| {
            b.iter_custom(|iters| {
                let dir = temp_dir();
                let log = PartitionLog::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
                let per_thread = iters.div_ceil(appenders);
                let start = Instant::now();
                let threads: Vec<_> = (0..appenders)
                    .map(|_| {
                        let (log, payload) = (log.clone(), payload.clone());
                        std::thread::spawn(move || {
                            for _ in 0..per_thread {
                                log.append(1, 1, EntryBody::Data(payload.clone()))
                                    .unwrap()
                                    .wait()
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
                let elapsed = start.elapsed();
                log.close().unwrap();
                // Scale to the iterations asked for (threads may do a few more).
                elapsed.mul_f64(iters as f64 / (per_thread * appenders) as f64)
            })
        });
    }
    group.finish();
}

/// Reads a whole log from its start, `max_bytes` per read, handing each batch to `consume`.
fn catch_up(log: &PartitionLog, consume: &mut impl FnMut(&Bytes)) -> u64 {
    let mut at = log.state().start_offset;
    let mut bytes = 0;
    loop {
        let fetched = log.read(at, 1 << 20).unwrap();
        if fetched.batches.is_empty() {
            return bytes;
        }
        for b in &fetched.batches {
            consume(b);
            bytes += b.len() as u64;
        }
        at = fetched.next_offset;
    }
}

fn read(c: &mut Criterion) {
    // A 1 GiB log, closed and reopened: its sealed segments are mapped afresh, as after a
    // restart (the data itself is in the page cache).
    let dir = temp_dir();
    let payload = batch(RECORDS_PER_BATCH, RECORD);
    let log = PartitionLog::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    let batches = (1u64 << 30) / payload.len() as u64;
    for _ in 0..batches {
        log.append(1, 1, EntryBody::Data(payload.clone()))
            .unwrap()
            .wait()
            .unwrap();
    }
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    let total = catch_up(&log, &mut |_| {});

    let mut group = c.benchmark_group("storage/catch-up-1GiB");
    group.throughput(Throughput::Bytes(total)).sample_size(10);
    group.bench_function("slices", |b| {
        b.iter(|| catch_up(&log, &mut |batch| drop(black_box(batch.clone()))))
    });
    group.bench_function("checksummed", |b| {
        b.iter(|| {
            catch_up(&log, &mut |batch| {
                black_box(crc32fast::hash(batch));
            })
        })
    });
    let mut sink = vec![0u8; 2 << 20];
    group.bench_function("copied", |b| {
        b.iter(|| {
            catch_up(&log, &mut |batch| {
                sink[..batch.len()].copy_from_slice(batch);
                black_box(&mut sink);
            })
        })
    });
    group.finish();
}

/// A log of `segments` segments holding `bytes` in all, closed cleanly.
fn log_with_segments(segments: u64, bytes: u64) -> tempfile::TempDir {
    let dir = temp_dir();
    let payload = batch(RECORDS_PER_BATCH, RECORD);
    let per_segment = bytes / segments;
    let config = LogConfig {
        segment_bytes: (per_segment + (1 << 20)).max(4 << 20),
        max_entry_bytes: 1 << 20,
        ..config(FsyncPolicy::Never)
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    let batches_per_segment = per_segment / payload.len() as u64;
    for _ in 0..segments {
        for _ in 0..batches_per_segment {
            log.append(1, 1, EntryBody::Data(payload.clone()))
                .unwrap()
                .wait()
                .unwrap();
        }
        log.roll().unwrap();
    }
    log.close().unwrap();
    dir
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage/open");
    group.sample_size(20).sampling_mode(SamplingMode::Flat);
    for segments in [1u64, 200] {
        let dir = log_with_segments(segments, 400 << 20);
        group.bench_function(format!("clean-400MiB-{segments}-segments"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let log = PartitionLog::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
                    total += start.elapsed();
                    log.close().unwrap();
                }
                total
            })
        });
    }

    // After a crash: the active segment is scanned from its last checkpoint. Under `Always`
    // the checkpoint trails the writes by at most `checkpoint_interval`; under `Never` there
    // is none, and the whole active segment (here 100 MiB) is scanned.
    let payload = batch(RECORDS_PER_BATCH, RECORD);
    for (name, policy, checkpointed_mib) in [
        ("always-2MiB-tail", FsyncPolicy::Always, 98u64),
        ("never-100MiB-tail", FsyncPolicy::Never, 0),
    ] {
        let crashed = temp_dir();
        let log = PartitionLog::open(crashed.path(), config(policy)).unwrap();
        let batches = (100u64 << 20) / payload.len() as u64;
        let checkpoint_at = (checkpointed_mib << 20) / payload.len() as u64;
        for i in 1..=batches {
            log.append(1, 1, EntryBody::Data(payload.clone()))
                .unwrap()
                .wait()
                .unwrap();
            if i == checkpoint_at {
                log.flush().unwrap();
            }
        }
        log.simulate_crash();
        let crashed = Arc::new(crashed);
        group.bench_function(format!("after-crash-{name}"), |b| {
            b.iter_batched(
                || {
                    let copy = temp_dir();
                    for entry in std::fs::read_dir(crashed.path()).unwrap() {
                        let entry = entry.unwrap();
                        let target = copy.path().join(entry.file_name());
                        std::fs::copy(entry.path(), &target).unwrap();
                        // As after a real crash, the data is on disk, not dirty in memory.
                        std::fs::File::open(&target).unwrap().sync_all().unwrap();
                    }
                    copy
                },
                |copy| {
                    let log = PartitionLog::open(copy.path(), config(policy)).unwrap();
                    black_box(log.state());
                    log.simulate_crash();
                    copy
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, codec, append, read, open);
