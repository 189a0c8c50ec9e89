//! The model: a Vec of entries and where the log starts.

use bytes::Bytes;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use strata_storage::{
    BatchBuilder, EntryBody, EntryKind, Error, FsyncPolicy, LogConfig, LogId, NewEntry, NewRecord,
    PartitionLog, RecordBatch, RetentionPolicy,
};

use crate::{check_crash_batch, crash_batch};

#[derive(Debug, Clone, PartialEq)]
enum ModelBody {
    Data {
        timestamp: i64,
        values: Vec<Vec<u8>>,
    },
    Blank,
    Membership(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
struct ModelEntry {
    log_id: LogId,
    base_offset: u64,
    body: ModelBody,
}

impl ModelEntry {
    fn records(&self) -> u64 {
        match &self.body {
            ModelBody::Data { values, .. } => values.len() as u64,
            _ => 0,
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    /// Entries from index `first_index` on.
    entries: Vec<ModelEntry>,
    first_index: u64,
    start_offset: u64,
    last_purged: Option<LogId>,
}

impl Model {
    fn next_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }

    fn next_offset(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.start_offset, |e| e.base_offset + e.records())
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.last().map(|e| e.log_id).or(self.last_purged)
    }

    fn truncate_after(&mut self, last: Option<u64>) {
        let keep_next = last.map_or(self.first_index, |l| l + 1);
        self.entries
            .truncate((keep_next - self.first_index) as usize);
    }

    fn purge_up_to(&mut self, index: u64) {
        if index < self.first_index {
            return;
        }
        let n = (index + 1 - self.first_index) as usize;
        let purged: Vec<_> = self.entries.drain(..n).collect();
        let last = purged.last().expect("purged something");
        self.first_index = index + 1;
        self.start_offset = last.base_offset + last.records();
        self.last_purged = Some(last.log_id);
    }
}

fn to_body(body: &ModelBody) -> EntryBody {
    match body {
        ModelBody::Data { timestamp, values } => {
            let mut b = BatchBuilder::new();
            for (i, v) in values.iter().enumerate() {
                b.push(NewRecord::value(timestamp + i as i64, v)).unwrap();
            }
            EntryBody::Data(b.finish().unwrap())
        }
        ModelBody::Blank => EntryBody::Blank,
        ModelBody::Membership(m) => EntryBody::Membership(Bytes::from(m.clone())),
    }
}

/// Checks everything the log shows against the model.
fn check(log: &PartitionLog, model: &Model, probe: u64) -> Result<(), TestCaseError> {
    let state = log.state();
    prop_assert_eq!(state.first_index, model.first_index, "first index");
    prop_assert_eq!(state.next_index, model.next_index(), "next index");
    prop_assert_eq!(state.start_offset, model.start_offset, "start offset");
    prop_assert_eq!(state.next_offset, model.next_offset(), "next offset");
    prop_assert_eq!(state.last_log_id, model.last_log_id(), "last log id");
    prop_assert_eq!(state.last_purged, model.last_purged, "last purged");

    let entries = log
        .entries(0..u64::MAX, usize::MAX)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(entries.len(), model.entries.len());
    for (got, want) in entries.iter().zip(&model.entries) {
        prop_assert_eq!(got.log_id, want.log_id);
        prop_assert_eq!(got.base_offset, want.base_offset);
        prop_assert_eq!(u64::from(got.record_count), want.records());
        match &want.body {
            ModelBody::Data { timestamp, values } => {
                prop_assert_eq!(got.kind, EntryKind::Data);
                let batch = RecordBatch::from_bytes(got.body.clone())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(batch.base_offset(), want.base_offset);
                for (i, (r, v)) in batch.records().zip(values).enumerate() {
                    prop_assert_eq!(r.offset, want.base_offset + i as u64);
                    prop_assert_eq!(r.timestamp, timestamp + i as i64);
                    prop_assert_eq!(r.value, Some(&v[..]));
                }
            }
            ModelBody::Blank => prop_assert_eq!((got.kind, got.body.len()), (EntryKind::Blank, 0)),
            ModelBody::Membership(m) => {
                prop_assert_eq!(got.kind, EntryKind::Membership);
                prop_assert_eq!(&got.body[..], &m[..]);
            }
        }
    }

    // A read from some offset returns the batches from the one holding it to the end.
    let span = model.next_offset() - model.start_offset;
    let from = model.start_offset + if span == 0 { 0 } else { probe % (span + 1) };
    let fetched = log
        .read(from, usize::MAX)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want: Vec<u64> = model
        .entries
        .iter()
        .filter(|e| e.records() > 0 && e.base_offset + e.records() > from)
        .flat_map(|e| e.base_offset..e.base_offset + e.records())
        .collect();
    let got: Vec<u64> = fetched
        .batches
        .iter()
        .flat_map(|b| {
            RecordBatch::from_bytes(b.clone())
                .unwrap()
                .records()
                .map(|r| r.offset)
                .collect::<Vec<_>>()
        })
        .collect();
    prop_assert_eq!(got, want, "read from {}", from);
    if model.start_offset > 0 {
        let before_start = matches!(
            log.read(model.start_offset - 1, 1),
            Err(Error::OffsetOutOfRange { .. })
        );
        prop_assert!(before_start, "a read before the start must fail");
    }
    let past_end = matches!(
        log.read(model.next_offset() + 1, 1),
        Err(Error::OffsetOutOfRange { .. })
    );
    prop_assert!(past_end, "a read past the end must fail");
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<ModelBody>, bool),
    Truncate(u16),
    Purge(u16),
    Roll,
    Retention(u16),
    Reopen,
    Crash,
    Reset(u8),
}

fn body_strategy() -> impl Strategy<Value = ModelBody> {
    prop_oneof![
        6 => (0i64..1_000_000, proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..5))
            .prop_map(|(timestamp, values)| ModelBody::Data { timestamp, values }),
        1 => Just(ModelBody::Blank),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(ModelBody::Membership),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (proptest::collection::vec(body_strategy(), 1..4), any::<bool>()).prop_map(|(b, t)| Op::Append(b, t)),
        2 => any::<u16>().prop_map(Op::Truncate),
        2 => any::<u16>().prop_map(Op::Purge),
        1 => Just(Op::Roll),
        1 => any::<u16>().prop_map(Op::Retention),
        2 => Just(Op::Reopen),
        2 => Just(Op::Crash),
        1 => any::<u8>().prop_map(Op::Reset),
    ]
}

fn model_config(always: bool) -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        max_entry_bytes: 1500,
        fsync: if always {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Never
        },
        ..LogConfig::default()
    }
}

proptest! {
    // 48 cases by default; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48), ..ProptestConfig::default() })]

    /// t01: any sequence of appends, truncations, purges, rolls, retention, resets, clean
    /// reopens and crashes reads back exactly as the model says.
    #[test]
    fn t01_log_matches_a_model(ops in proptest::collection::vec(op_strategy(), 1..40), always in any::<bool>(), probe in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        let config = model_config(always);
        let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
        let mut model = Model::default();
        let mut term = 1;
        for op in ops {
            match op {
                Op::Append(bodies, new_term) => {
                    if new_term {
                        term += 1;
                    }
                    let mut entries = Vec::new();
                    let mut offset = model.next_offset();
                    for (i, body) in bodies.into_iter().enumerate() {
                        let log_id = LogId::new(term, term % 3, model.next_index() + i as u64);
                        let entry = ModelEntry { log_id, base_offset: offset, body };
                        offset += entry.records();
                        entries.push(entry);
                    }
                    let appending = log.append_entries(entries.iter().map(|e| NewEntry { log_id: e.log_id, body: to_body(&e.body) })).unwrap();
                    prop_assert_eq!(appending.first.base_offset, entries[0].base_offset);
                    appending.wait().unwrap();
                    model.entries.extend(entries);
                }
                Op::Truncate(x) => {
                    let n = model.entries.len() as u64;
                    let keep = u64::from(x) % (n + 1);
                    let last = (model.first_index + keep).checked_sub(1);
                    let last = if keep == 0 && model.first_index == 0 { None } else { last };
                    log.truncate_after(last).unwrap();
                    model.truncate_after(last);
                }
                Op::Purge(x) => {
                    if !model.entries.is_empty() {
                        let index = model.first_index + u64::from(x) % model.entries.len() as u64;
                        log.purge_up_to(index).unwrap();
                        model.purge_up_to(index);
                    }
                }
                Op::Roll => log.roll().unwrap(),
                Op::Retention(x) => {
                    let before = log.segments().unwrap();
                    let total: u64 = before.iter().map(|s| s.bytes).sum();
                    let limit = total * u64::from(x % 100) / 100;
                    let policy = RetentionPolicy { max_age: None, max_bytes: Some(limit) };
                    if let Some(point) = log.apply_retention(&policy, 0).unwrap() {
                        prop_assert!(before.iter().any(|s| s.sealed && s.end_index == point + 1), "retention cut inside a segment");
                        model.purge_up_to(point);
                    }
                }
                Op::Reopen => {
                    log.close().unwrap();
                    log = PartitionLog::open(dir.path(), config.clone()).unwrap();
                }
                Op::Crash => {
                    log.simulate_crash();
                    log = PartitionLog::open(dir.path(), config.clone()).unwrap();
                }
                Op::Reset(x) => {
                    let last = LogId::new(term, 1, model.next_index() + u64::from(x));
                    let next_offset = model.next_offset() + u64::from(x) * 3;
                    log.reset(last, next_offset).unwrap();
                    model = Model { entries: Vec::new(), first_index: last.index + 1, start_offset: next_offset, last_purged: Some(last) };
                }
            }
            check(&log, &model, probe)?;
        }
        let report = log.verify().unwrap();
        prop_assert!(report.damaged.is_empty(), "{:?}", report);
    }
}

/// t02: readers running beside a writer that appends, rolls segments and purges only ever
/// see whole, correct batches with dense offsets, and a read never goes backwards.
#[test]
fn t02_concurrent_readers_see_consistent_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 16 * 1024,
        max_entry_bytes: 8 * 1024,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let log = log.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut rng = StdRng::seed_from_u64(r);
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let state = log.state();
                    let span = state.readable_end_offset.saturating_sub(state.start_offset);
                    let from = state.start_offset
                        + if span == 0 {
                            0
                        } else {
                            rng.random_range(0..span)
                        };
                    let fetched = match log.read(from, 64 * 1024) {
                        Ok(f) => f,
                        Err(Error::OffsetOutOfRange { .. }) => continue, // purged meanwhile
                        Err(e) => panic!("read failed: {e}"),
                    };
                    let mut expected = None;
                    for b in &fetched.batches {
                        let batch =
                            RecordBatch::from_bytes(b.clone()).expect("a torn batch was exposed");
                        assert!(check_crash_batch(&batch).is_some(), "foreign content");
                        if let Some(expected) = expected {
                            assert_eq!(batch.base_offset(), expected, "offsets not dense");
                        }
                        expected = Some(batch.base_offset() + u64::from(batch.record_count()));
                    }
                    assert!(fetched.next_offset >= from);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for seq in 0..1500u64 {
        log.append(1, 1, EntryBody::Data(crash_batch(0, seq)))
            .unwrap()
            .wait()
            .unwrap();
        if seq % 300 == 299 {
            log.purge_up_to(seq / 2).unwrap();
        }
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert!(log.state().segments > 10);
}
