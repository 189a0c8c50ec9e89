//! Exactness against a brute-force computation over the same random events.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_storage::{BatchBuilder, NewRecord, RecordBatch};

use super::def::{AggregationDef, GroupBy, Measure, TimeSource, Window};
use super::*;

const LATENESS: i64 = 2_000;

fn def(window: Window, filter: Option<&str>) -> AggregationDef {
    AggregationDef {
        name: "t".into(),
        topic: "sensors".into(),
        window,
        time: TimeSource::Field("t".into()),
        group_by: vec![GroupBy::Field("device".into())],
        filter: filter.map(str::to_string),
        measures: [
            "count",
            "sum(temperature)",
            "min(temperature)",
            "max(temperature)",
            "avg(temperature)",
            "p50(temperature)",
            "p99(temperature)",
            "count_distinct(reading)",
        ]
        .iter()
        .map(|m| Measure::parse(m).unwrap())
        .collect(),
        lateness_ms: LATENESS as u64,
        retain_ms: 300 * 86_400_000,
        emit_to: None,
        backfill: false,
    }
}

/// One random event: its JSON, and what brute force needs to know about it.
struct Ev {
    json: String,
    time: Option<i64>,
    device: Option<String>,
    temperature: Option<f64>,
    status: String,
    reading: u64,
}

fn events(rng: &mut StdRng, n: usize, base: i64) -> Vec<Ev> {
    (0..n)
        .map(|i| {
            let mut t = base + i as i64 * 50 + rng.random_range(-1_500..1_500);
            if rng.random_ratio(1, 30) {
                t -= rng.random_range(3_000..20_000); // beyond the lateness
            }
            let device = format!("d{}", rng.random_range(0..4));
            let status = if rng.random_ratio(1, 3) {
                "alarm"
            } else {
                "ok"
            }
            .to_string();
            let temperature = (rng.random_range(-400..600) as f64) / 10.0;
            let reading = rng.random_range(0..200u64);
            let mut fields = vec![
                format!(r#""status":"{status}""#),
                format!(r#""reading":{reading}"#),
            ];
            let time = match rng.random_range(0..40) {
                0 => None,
                1 => {
                    fields.push(r#""t":"yesterday""#.into());
                    None
                }
                2 => {
                    let secs = t.div_euclid(1000);
                    let ms = t.rem_euclid(1000);
                    fields.push(format!(r#""t":"{}""#, rfc3339(secs, ms)));
                    Some(t)
                }
                _ => {
                    fields.push(format!(r#""t":{t}"#));
                    Some(t)
                }
            };
            let device = if rng.random_ratio(1, 50) {
                None
            } else {
                fields.push(format!(r#""device":"{device}""#));
                Some(device)
            };
            let temperature = match rng.random_range(0..25) {
                0 => None,
                1 => {
                    fields.push(r#""temperature":"hot""#.into());
                    None
                }
                _ => {
                    fields.push(format!(r#""temperature":{temperature}"#));
                    Some(temperature)
                }
            };
            fields.push(r#""extra":{"nested":[1,2,{"x":"y"}]}"#.into());
            Ev {
                json: format!("{{{}}}", fields.join(",")),
                time,
                device,
                temperature,
                status,
                reading,
            }
        })
        .collect()
}

fn rfc3339(secs: i64, ms: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The expected window contents of one partition: (group, start) → (end, included events).
type Expected = BTreeMap<(Vec<String>, i64), (i64, Vec<usize>)>;

fn brute_force(
    d: &AggregationDef,
    evs: &[Ev],
    filtered: impl Fn(&Ev) -> bool,
) -> (Expected, u64, i64) {
    let mut out: Expected = BTreeMap::new();
    let mut max_t: Option<i64> = None;
    let mut late = 0;
    let mut session_events: BTreeMap<String, Vec<(i64, usize)>> = BTreeMap::new();
    for (i, e) in evs.iter().enumerate() {
        // Any event with a time moves the watermark, also one filtered out or without a group.
        if let Some(t) = e.time {
            max_t = Some(max_t.map_or(t, |m| m.max(t)));
        }
        if !filtered(e) {
            continue;
        }
        let (Some(t), Some(device)) = (e.time, e.device.clone()) else {
            continue;
        };
        let wm = max_t.unwrap() - LATENESS;
        let windows: Vec<(i64, i64)> = match d.window {
            Window::Tumbling { size_ms } => {
                let s = t.div_euclid(size_ms as i64) * size_ms as i64;
                vec![(s, s + size_ms as i64)]
            }
            Window::Hopping {
                size_ms,
                advance_ms,
            } => {
                let (size, adv) = (size_ms as i64, advance_ms as i64);
                // Every k*adv with start <= t < start + size, by enumeration.
                let mut v = Vec::new();
                let mut s = (t - size).div_euclid(adv) * adv - adv;
                while s <= t {
                    if s <= t && t < s + size {
                        v.push((s, s + size));
                    }
                    s += adv;
                }
                v
            }
            Window::Session { .. } => {
                if t < wm {
                    late += 1;
                } else {
                    session_events.entry(device).or_default().push((t, i));
                }
                continue;
            }
        };
        let mut is_late = false;
        for (s, end) in windows {
            if end <= wm {
                is_late = true;
            } else {
                out.entry((vec![device.clone()], s))
                    .or_insert((end, vec![]))
                    .1
                    .push(i);
            }
        }
        if is_late {
            late += 1;
        }
    }
    if let Window::Session { gap_ms } = d.window {
        let gap = gap_ms as i64;
        for (device, mut list) in session_events {
            list.sort();
            let mut current: Option<(i64, i64, Vec<usize>)> = None;
            for (t, i) in list {
                current = match current {
                    Some((start, last, mut members)) if t - last < gap => {
                        members.push(i);
                        Some((start, t, members))
                    }
                    Some((start, last, members)) => {
                        out.insert((vec![device.clone()], start), (last + gap, members));
                        Some((t, t, vec![i]))
                    }
                    None => Some((t, t, vec![i])),
                };
            }
            if let Some((start, last, members)) = current {
                out.insert((vec![device.clone()], start), (last + gap, members));
            }
        }
    }
    (out, late, max_t.unwrap_or(i64::MIN) - LATENESS)
}

/// Aggregation 1 running `d` from offset 0.
fn running(d: &AggregationDef) -> PartitionAggs {
    let mut aggs = PartitionAggs::default();
    aggs.control(
        Control::StartAggregation {
            id: 1,
            def: Box::new(d.clone()),
            backfill_from: None,
        },
        0,
    );
    aggs
}

/// One batch of these values (timestamps unused: time comes from a field).
fn batch_of<'a>(values: impl IntoIterator<Item = &'a str>) -> RecordBatch {
    let mut b = BatchBuilder::new();
    for v in values {
        b.push(NewRecord::value(0, v.as_bytes())).unwrap();
    }
    b.finish().unwrap()
}

/// The events in batches of up to 20 records.
fn batches(evs: &[Ev]) -> Vec<RecordBatch> {
    evs.chunks(20)
        .map(|chunk| batch_of(chunk.iter().map(|e| e.json.as_str())))
        .collect()
}

fn fold_all(d: &AggregationDef, evs: &[Ev]) -> AggState {
    let mut aggs = running(d);
    for b in batches(evs) {
        aggs.fold_batch(&b, None, 0);
    }
    aggs.running.remove(&1).unwrap().state
}

/// Checks a merged or partial row against the events brute force put in it.
fn check_row(d: &AggregationDef, row: &Row, members: &[&Ev], what: &str) {
    let values = row.values(d);
    let temps: Vec<f64> = members.iter().filter_map(|e| e.temperature).collect();
    let mut sorted = temps.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(row.window.events, members.len() as u64, "{what}: events");
    assert_eq!(values[0], Some(members.len() as f64), "{what}: count");
    let sum: f64 = temps.iter().sum();
    assert!(
        (values[1].unwrap() - sum).abs() < 1e-6 * (1.0 + sum.abs()),
        "{what}: sum {:?} vs {sum}",
        values[1]
    );
    assert_eq!(values[2], sorted.first().copied(), "{what}: min");
    assert_eq!(values[3], sorted.last().copied(), "{what}: max");
    let avg = (!temps.is_empty()).then(|| sum / temps.len() as f64);
    match (values[4], avg) {
        (Some(a), Some(b)) => assert!((a - b).abs() < 1e-6 * (1.0 + b.abs()), "{what}: avg"),
        (a, b) => assert_eq!(a, b, "{what}: avg"),
    }
    for (slot, q) in [(5, 0.5), (6, 0.99)] {
        let exact = (!sorted.is_empty()).then(|| {
            let n = sorted.len();
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            sorted[rank]
        });
        match (values[slot], exact) {
            (Some(est), Some(exact)) => assert!(
                (est - exact).abs() <= 0.01 * exact.abs() + 1e-9,
                "{what}: p{} {est} vs exact {exact}",
                q * 100.0
            ),
            (a, b) => assert_eq!(a, b, "{what}: quantile"),
        }
    }
    let distinct: BTreeSet<u64> = members.iter().map(|e| e.reading).collect();
    assert_eq!(
        values[7],
        Some(distinct.len() as f64),
        "{what}: count_distinct"
    );
}

fn check(window: Window, filter: Option<&str>, seed: u64) {
    let d = def(window, filter);
    let mut rng = StdRng::seed_from_u64(seed);
    let base = 1_700_000_000_000;
    let partitions: Vec<Vec<Ev>> = (0..3).map(|_| events(&mut rng, 1500, base)).collect();
    let keep = |e: &Ev| match filter {
        None => true,
        Some(_) => e.status == "alarm" || e.temperature.is_some_and(|t| t > 20.0),
    };
    let mut all_partials = Vec::new();
    let mut expected_merged: BTreeMap<(i64, Vec<String>, i64), Vec<&Ev>> = BTreeMap::new();
    for (p, evs) in partitions.iter().enumerate() {
        let state = fold_all(&d, evs);
        let (expected, late, wm) = brute_force(&d, evs, keep);
        assert_eq!(state.late_events, late, "partition {p}: late events");
        let mut keys: Vec<(Vec<String>, i64)> =
            state.windows().map(|(g, s, _)| (g.to_vec(), s)).collect();
        keys.sort();
        assert_eq!(
            keys,
            expected.keys().cloned().collect::<Vec<_>>(),
            "partition {p}: the same windows"
        );
        let rows = partial_rows(&d, &state, &Selection::default());
        for row in &rows {
            let (end, members) = &expected[&(row.group.clone(), row.start)];
            assert_eq!(row.window.end, *end);
            assert_eq!(row.window.closed, *end <= wm, "partition {p}: closed flag");
            let members: Vec<&Ev> = members.iter().map(|i| &evs[*i]).collect();
            check_row(
                &d,
                row,
                &members,
                &format!("partition {p} window {:?}", (row.start, &row.group)),
            );
            expected_merged
                .entry((row.start, row.group.clone(), row.window.end))
                .or_default()
                .extend(members);
        }
        assert!(
            state.skipped.values().sum::<u64>() > 0,
            "the events include bad ones"
        );
        all_partials.extend(rows);
    }
    if matches!(window, Window::Session { .. }) {
        return; // sessions are per partition (see README)
    }
    let merged = merge_rows(all_partials);
    assert_eq!(merged.len(), expected_merged.len());
    for row in &merged {
        let members = &expected_merged[&(row.start, row.group.clone(), row.window.end)];
        check_row(
            &d,
            row,
            members,
            &format!("merged window {:?}", (row.start, &row.group)),
        );
    }
}

#[test]
fn tumbling_windows_equal_brute_force() {
    check(Window::Tumbling { size_ms: 10_000 }, None, 1);
    check(
        Window::Tumbling { size_ms: 3_000 },
        Some(r#"status == "alarm" or temperature > 20"#),
        2,
    );
}

#[test]
fn hopping_windows_equal_brute_force() {
    check(
        Window::Hopping {
            size_ms: 10_000,
            advance_ms: 5_000,
        },
        None,
        3,
    );
    check(
        Window::Hopping {
            size_ms: 9_000,
            advance_ms: 2_000,
        },
        Some(r#"status == "alarm" or temperature > 20"#),
        4,
    );
}

#[test]
fn session_windows_equal_brute_force() {
    check(Window::Session { gap_ms: 300 }, None, 5);
    check(
        Window::Session { gap_ms: 1_000 },
        Some(r#"status == "alarm" or temperature > 20"#),
        6,
    );
}

#[test]
fn closed_windows_leave_memory_after_the_retention() {
    let mut d = def(Window::Tumbling { size_ms: 1_000 }, None);
    d.retain_ms = 5_000;
    let mut rng = StdRng::seed_from_u64(9);
    let evs = events(&mut rng, 5_000, 1_700_000_000_000);
    let state = fold_all(&d, &evs);
    let wm = state.max_event_time.unwrap() - LATENESS;
    assert!(state.windows().all(|(_, _, w)| w.end >= wm - 5_000));
    // 4 devices × at most ~(lateness + retention)/size + 1 windows each.
    assert!(
        state.window_count() <= 4 * 9,
        "{} windows kept",
        state.window_count()
    );
    assert!(state.closed_windows > 100);
}

#[test]
fn state_round_trips_through_json_and_keeps_folding_the_same() {
    let d = def(Window::Tumbling { size_ms: 2_000 }, None);
    let mut rng = StdRng::seed_from_u64(11);
    let evs = events(&mut rng, 600, 1_700_000_000_000);
    let whole = fold_all(&d, &evs);
    // Fold half, snapshot, restore, fold the rest.
    let mut aggs = running(&d);
    let batches = batches(&evs);
    for b in &batches[..15] {
        aggs.fold_batch(b, None, 0);
    }
    let json = serde_json::to_vec(&aggs).unwrap();
    let mut restored: PartitionAggs = serde_json::from_slice(&json).unwrap();
    assert_eq!(restored, aggs);
    for b in &batches[15..] {
        restored.fold_batch(b, None, 0);
    }
    assert_eq!(restored.running[&1].state, whole);
}

#[test]
fn control_records_round_trip_and_start_once() {
    let d = def(Window::Tumbling { size_ms: 2_000 }, None);
    let c = Control::StartAggregation {
        id: 7,
        def: Box::new(d),
        backfill_from: Some(3),
    };
    let batch = c.to_batch().unwrap();
    assert!(batch.is_control());
    assert_eq!(Control::from_batch(&batch), Some(c.clone()));
    let mut aggs = PartitionAggs::default();
    assert_eq!(aggs.control(c.clone(), 10), Some((7, 3, 10)));
    assert_eq!(aggs.control(c, 11), None, "a duplicate start is ignored");
    assert_eq!(aggs.running[&7].started_at, 10);
    aggs.control(Control::StopAggregation { id: 7 }, 12);
    assert!(aggs.is_empty());
}

#[test]
fn huge_numbers_and_extreme_times_neither_panic_nor_break_snapshots() {
    let d = def(
        Window::Hopping {
            size_ms: 10_000,
            advance_ms: 1_000,
        },
        None,
    );
    let mut aggs = running(&d);
    let batch = batch_of([
        r#"{"t": 1700000000000, "device": "d", "temperature": 1e300, "reading": 1}"#,
        r#"{"t": 1700000000001, "device": "d", "temperature": -1e308, "reading": 1e300}"#,
        r#"{"t": -9000000000000000, "device": "d", "temperature": 1, "reading": 2}"#,
        r#"{"t": 9000000000000000, "device": "d", "temperature": 2, "reading": 3}"#,
    ]);
    aggs.fold_batch(&batch, None, 0);
    let state = &aggs.running[&1].state;
    assert!(state.skipped.keys().any(|k| k.contains("no usable value")));
    let json = serde_json::to_vec(&aggs).expect("the state serializes");
    let back: PartitionAggs = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, aggs);
}

/// Record times at the ends of the range (a record may carry any timestamp the producer
/// rules let through, and older logs hold what they held): window arithmetic neither panics
/// nor wraps; an event whose window cannot be represented is skipped and counted.
#[test]
fn record_times_at_the_ends_of_the_range_neither_panic_nor_wrap() {
    for window in [
        Window::Tumbling { size_ms: 60_000 },
        Window::Hopping {
            size_ms: 60_000,
            advance_ms: 7_000,
        },
        Window::Session { gap_ms: 60_000 },
    ] {
        let d = AggregationDef {
            time: TimeSource::Timestamp,
            ..def(window, None)
        };
        let mut aggs = running(&d);
        for t in [i64::MIN, i64::MIN + 1, 0, i64::MAX - 1, i64::MAX] {
            let mut b = BatchBuilder::new();
            b.push(NewRecord::value(
                t,
                br#"{"device": "d", "temperature": 1, "reading": 1}"#,
            ))
            .unwrap();
            aggs.fold_batch(&b.finish().unwrap(), None, 0);
        }
        let state = &aggs.running[&1].state;
        for (group, start, w) in state.windows() {
            assert!(
                start < w.end,
                "{window:?}: window {start}..{} of {group:?}",
                w.end
            );
        }
        // Only the event at 0 folds; the others neither fold nor move the watermark.
        assert_eq!(state.events, 1, "{window:?}");
        assert_eq!(state.skipped.get("event time out of range"), Some(&4));
        assert!(state.watermark(d.lateness_ms).is_some_and(|w| w <= 0));
        let json = serde_json::to_vec(&aggs).expect("the state serializes");
        let back: PartitionAggs = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, aggs, "{window:?}");
    }
}

#[test]
fn groups_beyond_the_limit_are_skipped_and_counted() {
    let d = def(Window::Tumbling { size_ms: 60_000 }, None);
    let mut aggs = running(&d);
    let event = |device: usize| {
        format!(r#"{{"t": 1000, "device": "d{device}", "temperature": 1, "reading": 1}}"#)
    };
    let values: Vec<String> = (0..super::state::MAX_GROUPS + 5).map(event).collect();
    for chunk in values.chunks(4096) {
        aggs.fold_batch(&batch_of(chunk.iter().map(String::as_str)), None, 0);
    }
    // A group that exists keeps folding.
    aggs.fold_batch(&batch_of([event(0).as_str()]), None, 0);
    let state = &aggs.running[&1].state;
    assert_eq!(state.groups.len(), super::state::MAX_GROUPS);
    assert_eq!(state.events, super::state::MAX_GROUPS as u64 + 1);
    let skipped = format!("more than {} groups", super::state::MAX_GROUPS);
    assert_eq!(state.skipped.get(&skipped), Some(&5));
}

#[test]
fn quantiles_are_nearest_rank() {
    use super::def::MeasureKind;
    let q = |values: &[f64], q: f64| {
        let mut acc = super::measure::MeasureAcc::Sketch(None);
        for v in values {
            acc.add_for_test(*v);
        }
        acc.value(MeasureKind::Quantile(q)).unwrap()
    };
    let near = |got: f64, want: f64| (got - want).abs() <= 0.01 * want.abs() + 1e-9;
    assert!(
        near(q(&[16.3, 16.7], 0.99), 16.7),
        "p99 of two values is the larger"
    );
    assert!(
        near(q(&[16.3, 16.7], 0.5), 16.3),
        "p50 of two values is the smaller"
    );
    let ten: Vec<f64> = (1..=10).map(f64::from).collect();
    assert!(near(q(&ten, 0.5), 5.0));
    assert!(near(q(&ten, 0.9), 9.0));
    assert!(near(q(&ten, 0.95), 10.0));
    assert!(near(q(&[42.0], 0.01), 42.0));
}

#[test]
fn output_progress_closes_windows_and_holds_them_in_memory_until_written() {
    let mut d = def(Window::Tumbling { size_ms: 1_000 }, None);
    d.retain_ms = 0;
    d.emit_to = Some("out".into());
    const B: i64 = 1_700_000_000_000;
    let ev = |t: i64| {
        format!(
            r#"{{"t": {}, "device": "d", "temperature": 1, "reading": 1}}"#,
            B + t
        )
    };
    // A partition without events: the output passing 10 s closes windows here too, and an
    // event for a window it passed is late.
    let mut idle = running(&d);
    idle.control(
        Control::Emitted {
            id: 1,
            upto: B + 10_000,
        },
        1,
    );
    let batch = batch_of([ev(9_500).as_str(), ev(10_200).as_str()]);
    idle.fold_batch(&batch, None, 0);
    let state = &idle.running[&1].state;
    assert_eq!(state.late_events, 1);
    assert_eq!(state.events, 1);
    assert_eq!(state.emitted_upto, Some(B + 10_000));

    // A busy partition keeps its closed windows until the output has them, however short
    // the retention.
    let mut busy = running(&d);
    let times: Vec<String> = (0..20).map(|s| ev(s * 1_000 + 500)).collect();
    busy.fold_batch(&batch_of(times.iter().map(String::as_str)), None, 0);
    let state = &busy.running[&1].state;
    assert_eq!(
        state.window_count(),
        20,
        "nothing written yet, nothing forgotten"
    );
    assert_eq!(state.closed_windows, 17, "the watermark is at 17.5 s");
    busy.control(
        Control::Emitted {
            id: 1,
            upto: B + 5_000,
        },
        2,
    );
    let state = &busy.running[&1].state;
    assert!(state.windows().all(|(_, _, w)| w.end > B + 5_000));
    assert_eq!(state.window_count(), 15);
    // Progress never goes back.
    busy.control(
        Control::Emitted {
            id: 1,
            upto: B + 3_000,
        },
        3,
    );
    assert_eq!(busy.running[&1].state.emitted_upto, Some(B + 5_000));
    // Without an output topic the retention alone decides.
    d.emit_to = None;
    let mut plain = running(&d);
    plain.fold_batch(&batch_of(times.iter().map(String::as_str)), None, 0);
    assert_eq!(plain.running[&1].state.window_count(), 3);
}
