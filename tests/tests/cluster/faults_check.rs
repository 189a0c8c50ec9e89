//! The fault suite's checker (`faults`): what the log holds, read back, against what was
//! acknowledged, consumed and committed; the aggregation and search answers against brute
//! force over the log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strata_client::{Client, SearchQuery, StartAt};
use strata_tests::reader;

use super::faults::{AGGREGATION, Observed, PARTITIONS, SITES, TOPIC, within};

/// One stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stored {
    partition: u32,
    offset: u64,
    w: u64,
    n: u64,
    v: u64,
    t: i64,
}

impl Stored {
    fn site(&self) -> u64 {
        self.n % SITES
    }
}

/// Every record of the topic, read from the start up to `marks`.
pub(super) async fn read_everything(client: &Client, marks: &[u64], seed: u64) -> Vec<Stored> {
    use futures_util::StreamExt;
    let mut consumer = within(
        seed,
        "building a reader",
        Duration::from_secs(10),
        reader(client, TOPIC, 0..PARTITIONS, StartAt::Earliest),
    )
    .await;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = (0..PARTITIONS).all(|p| {
            consumer
                .position(TOPIC, p)
                .is_some_and(|o| o >= marks[p as usize])
        });
        if done {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: reading the log stopped at {:?} of {marks:?}",
            (0..PARTITIONS)
                .map(|p| consumer.position(TOPIC, p))
                .collect::<Vec<_>>()
        );
        match tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
            Ok(Some(Ok(r))) => {
                let v: serde_json::Value =
                    serde_json::from_slice(r.value.as_deref().unwrap_or(b"")).unwrap_or_else(|e| {
                        panic!(
                            "seed {seed}: record {}/{} is not an event: {e}",
                            r.partition, r.offset
                        )
                    });
                let field = |name: &str| {
                    v[name].as_u64().unwrap_or_else(|| {
                        panic!(
                            "seed {seed}: record {}/{} lacks {name}",
                            r.partition, r.offset
                        )
                    })
                };
                out.push(Stored {
                    partition: r.partition,
                    offset: r.offset,
                    w: field("w"),
                    n: field("n"),
                    v: field("v"),
                    t: v["t"].as_i64().unwrap_or_default(),
                });
            }
            Ok(Some(Err(e))) => panic!("seed {seed}: reading the log failed: {e}"),
            Ok(None) => panic!("seed {seed}: the reader's stream ended"),
            // The last offsets may be control records, which no consumer receives.
            Err(_) if !out.is_empty() => return out,
            Err(_) => {}
        }
    }
}

/// No acknowledged event lost or moved, none stored twice, each producer's events in the
/// order it sent them in every partition.
pub(super) fn check_log(seen: &Observed, stored: &[Stored], seed: u64) {
    let mut at: BTreeMap<(u32, u64), (u64, u64)> = BTreeMap::new();
    let mut copies: BTreeMap<(u64, u64), Vec<(u32, u64)>> = BTreeMap::new();
    for s in stored {
        at.insert((s.partition, s.offset), (s.w, s.n));
        copies
            .entry((s.w, s.n))
            .or_default()
            .push((s.partition, s.offset));
    }
    for (event, places) in &copies {
        assert!(
            places.len() == 1,
            "seed {seed}: event {event:?} (worker, n) stored {} times, at {places:?}",
            places.len()
        );
    }
    for (event, place) in &seen.acked {
        assert_eq!(
            at.get(place),
            Some(event),
            "seed {seed}: acknowledged event {event:?} (worker, n) at partition/offset {place:?} is not there"
        );
    }
    let mut last: BTreeMap<(u32, u64), (u64, u64)> = BTreeMap::new();
    for s in stored {
        if let Some((n, offset)) = last.insert((s.partition, s.w), (s.n, s.offset)) {
            assert!(
                n < s.n && offset < s.offset,
                "seed {seed}: worker {} event {} at {}/{} comes after event {n} at offset {offset}",
                s.w,
                s.n,
                s.partition,
                s.offset
            );
        }
    }
}

/// Committed offsets never move backwards, never pass the end of the log, and every record
/// below the last commit reached a member.
pub(super) fn check_group(seen: &Observed, stored: &[Stored], seed: u64) {
    let mut high: BTreeMap<u32, (Duration, u64)> = BTreeMap::new();
    for (at, p, o) in &seen.committed {
        if let Some((then, before)) = high.get(p) {
            assert!(
                o >= before,
                "seed {seed}: partition {p}'s committed offset went back from {before} (read at {then:?}) to {o} (read at {at:?})"
            );
        }
        high.insert(*p, (*at, *o));
    }
    for s in stored {
        let committed = high.get(&s.partition).map_or(0, |(_, o)| *o);
        if s.offset < committed {
            assert!(
                seen.delivered.contains(&(s.partition, s.offset)),
                "seed {seed}: record {}/{} lies below the committed offset {committed} but reached no member",
                s.partition,
                s.offset
            );
        }
    }
}

/// The aggregation's windows equal brute force over the log: (window start, site) →
/// (count, sum of v).
pub(super) async fn check_aggregation(client: &Client, stored: &[Stored], seed: u64) {
    let mut expected: BTreeMap<(i64, String), (u64, f64)> = BTreeMap::new();
    for s in stored {
        let e = expected
            .entry((s.t.div_euclid(5_000) * 5_000, format!("s{}", s.site())))
            .or_default();
        e.0 += 1;
        e.1 += s.v as f64;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = BTreeMap::new();
    while Instant::now() < deadline {
        let aggregations = client.aggregations();
        let query = aggregations.query(AGGREGATION, None, None, &[]);
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), query).await {
            got = r
                .rows
                .iter()
                .map(|row| {
                    let v = |i: usize| row.values[i].value.unwrap_or(f64::NAN);
                    ((row.start_ms, row.group[0].clone()), (v(0) as u64, v(1)))
                })
                .collect();
            if got == expected {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let differ: Vec<_> = expected
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), *v, got.get(k).copied()))
        .take(10)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(10)
        .collect();
    panic!(
        "seed {seed}: the aggregation differs from brute force in {} windows, e.g. (window, expected, got) {differ:?}; windows it has that the log lacks: {extra:?}",
        expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .count()
    );
}

/// Search counts equal brute force over the log for a term, a range, a conjunction and all.
pub(super) async fn check_search(client: &Client, stored: &[Stored], seed: u64) {
    type Case = (&'static str, fn(&Stored) -> bool);
    let cases: [Case; 4] = [
        ("*", |_| true),
        ("site:s1", |s| s.site() == 1),
        ("v:[10 TO 19]", |s| (10..=19).contains(&s.v)),
        ("site:s2 AND w:1", |s| s.site() == 2 && s.w == 1),
    ];
    for (query, matches) in cases {
        let expected = stored.iter().filter(|s| matches(s)).count() as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = None;
        while Instant::now() < deadline {
            let searcher = client.search();
            let search = searcher.run(SearchQuery::new(query).topic(TOPIC).count_only());
            got = match tokio::time::timeout(Duration::from_secs(5), search).await {
                Ok(Ok(r)) => Some(r.total),
                _ => None,
            };
            if got == Some(expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if got != Some(expected) {
            let whereabouts = locate_difference(client, stored, matches, query).await;
            panic!(
                "seed {seed}: search `{query}` counts {got:?}, brute force over the log {expected}; {whereabouts}"
            );
        }
    }
}

/// Counts `query` within a partition's offset range.
async fn count_in(client: &Client, query: &str, p: u32, from: u64, to: u64) -> Option<u64> {
    let q = format!("({query}) AND partition:{p} AND offset:[{from} TO {to}]");
    let searcher = client.search();
    let search = searcher.run(SearchQuery::new(q).topic(TOPIC).count_only());
    match tokio::time::timeout(Duration::from_secs(5), search).await {
        Ok(Ok(r)) => Some(r.total),
        _ => None,
    }
}

/// Where search and brute force part: the partition, then (by halving its offset range)
/// the first offset whose count differs.
async fn locate_difference(
    client: &Client,
    stored: &[Stored],
    matches: fn(&Stored) -> bool,
    query: &str,
) -> String {
    let expected = |p: u32, from: u64, to: u64| {
        stored
            .iter()
            .filter(|s| s.partition == p && (from..=to).contains(&s.offset) && matches(s))
            .count() as u64
    };
    for p in 0..PARTITIONS {
        let (mut from, mut to) = (0u64, u64::from(u32::MAX));
        let got = count_in(client, query, p, from, to).await;
        if got == Some(expected(p, from, to)) {
            continue;
        }
        // Narrow [from, to] to one offset, keeping the half that differs.
        while from < to {
            let mid = from + (to - from) / 2;
            let low = count_in(client, query, p, from, mid).await;
            if low != Some(expected(p, from, mid)) {
                to = mid;
            } else {
                from = mid + 1;
            }
        }
        let here = count_in(client, query, p, from, from).await;
        let log: Vec<_> = stored
            .iter()
            .filter(|s| s.partition == p && s.offset.abs_diff(from) <= 2)
            .collect();
        return format!(
            "partition {p} differs (search {got:?}, log {}); first at offset {from}: search counts {here:?} there, the log holds near it {log:?}",
            expected(p, 0, u64::from(u32::MAX))
        );
    }
    "no partition differs when searched alone".into()
}
