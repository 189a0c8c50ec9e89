//! Writing an aggregation's closed windows to its output topic: one JSON record per window
//! and group, merged over every source partition, exactly once also across fail-overs.
//!
//! The leader of each output partition writes that partition's share of the windows (a
//! window's record goes to the partition its key maps to). A window is written once it is
//! closed everywhere: its end is at or before the *horizon*, the smallest watermark of the
//! source partitions (read from whichever replica this node has: a replica behind the
//! others only lowers it). A partition without events holds the output back. Closed
//! windows are final, so the records are a pure function of the log: they are
//! written in a fixed order (window end, start, group), one batch per window end (split at
//! [`BATCH_RECORDS`]), as an idempotent producer whose id is fixed by the aggregation and
//! whose sequence numbers count the records of that partition. After a round the progress
//! (last window end, next sequence) is committed through the controller. A new leader
//! resumes from the committed progress: a batch the old leader had already written is
//! recognised by its sequence numbers and not written again.

use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1;
use strata_storage::{BatchBuilder, NewRecord, RecordBatch, partitioner};

use super::query::Aggregations;
use super::{Row, Selection, merge_rows};
use crate::controller::{AggregationMeta, Cluster, Command, EmitProgress};
use crate::error::Error;
use crate::replica::Partition;
use crate::topics::Topics;

/// Producer ids from here up are the broker's own aggregation writers (id + aggregation id);
/// ids the controller hands out count up from 1 and never get here.
pub const EMIT_PRODUCER_BASE: i64 = 1 << 62;
/// How often leaders of output partitions look for newly closed windows.
const EMIT_EVERY: Duration = Duration::from_millis(500);
/// Records per batch (a window end's records are split into batches of this size).
pub const BATCH_RECORDS: usize = 500;
/// Records one round writes to a partition before it commits its progress (at least one
/// window end's records).
const ROUND_RECORDS: usize = 10_000;
/// How long one batch may take to commit.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the progress may take through the controller.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes the closed windows of every aggregation with an output topic to the output
/// partitions this node leads.
#[derive(Debug, Clone)]
pub struct Emitter {
    aggregations: Aggregations,
    topics: Arc<Topics>,
    cluster: Arc<Cluster>,
}

impl Emitter {
    /// An emitter over this node's replicas.
    pub fn new(aggregations: Aggregations, topics: Arc<Topics>, cluster: Arc<Cluster>) -> Self {
        Emitter {
            aggregations,
            topics,
            cluster,
        }
    }

    /// Runs a round every 500 ms, for as long as the node runs.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(EMIT_EVERY);
        loop {
            tick.tick().await;
            self.round().await;
        }
    }

    /// One round over every aggregation with an output topic.
    async fn round(&self) {
        let cluster = self.cluster.current();
        for meta in cluster.aggregations.values() {
            let Some(out) = &meta.def.emit_to else {
                continue;
            };
            let Ok(topic) = self.topics.get(out) else {
                continue;
            };
            let led: Vec<&Arc<Partition>> = topic
                .partitions
                .iter()
                .filter(|p| p.leader_caught_up())
                .collect();
            if led.is_empty() {
                continue;
            }
            if let Err(e) = self.emit(meta, topic.partition_count(), &led).await {
                tracing::debug!(aggregation = %meta.def.name, error = %e, "closed windows not written yet; retrying");
            }
        }
    }
}

/// A closed window ready to be written, with its record key and output partition.
struct Ready<'r> {
    row: &'r Row,
    key: String,
    partition: u32,
}

/// The output record's key: the group values joined with `|` (the aggregation's name when
/// it has no group-by).
fn output_key(meta: &AggregationMeta, row: &Row) -> String {
    if row.group.is_empty() {
        meta.def.name.clone()
    } else {
        row.group.join("|")
    }
}

/// The output record of a closed window.
fn output_value(meta: &AggregationMeta, row: &Row) -> serde_json::Value {
    let def = &meta.def;
    let group: serde_json::Map<String, serde_json::Value> = def
        .group_by
        .iter()
        .zip(&row.group)
        .map(|(g, v)| (g.to_string(), v.clone().into()))
        .collect();
    let measures: serde_json::Map<String, serde_json::Value> = def
        .measures
        .iter()
        .zip(row.values(def))
        .map(|(m, v)| (m.to_string(), json_number(v)))
        .collect();
    serde_json::json!({
        "aggregation": def.name,
        "window_start": row.start,
        "window_end": row.window.end,
        "group": group,
        "events": row.window.events,
        "measures": measures,
    })
}

/// A measure's value as JSON: whole numbers (counts) without a fraction, none as null.
fn json_number(v: Option<f64>) -> serde_json::Value {
    match v {
        Some(n) if n.fract() == 0.0 && n.abs() < 1e15 => (n as i64).into(),
        other => other.into(),
    }
}

/// One batch of output records from `seq` on.
fn output_batch(
    meta: &AggregationMeta,
    windows: &[&Ready<'_>],
    seq: i32,
) -> Result<RecordBatch, Error> {
    let bad = |e: strata_storage::Error| Error::Unavailable(format!("output batch: {e}"));
    let mut b = BatchBuilder::new().producer(EMIT_PRODUCER_BASE + meta.id as i64, 0, seq);
    for w in windows {
        let value = serde_json::to_vec(&output_value(meta, w.row))
            .map_err(|e| Error::Unavailable(format!("output record: {e}")))?;
        b.push(NewRecord {
            key: Some(w.key.as_bytes()),
            ..NewRecord::value(w.row.window.end, &value)
        })
        .map_err(bad)?;
    }
    b.finish().map_err(bad)
}

/// The windows closed in every source partition: the smallest watermark. None while a
/// partition has not started the aggregation or has seen no event: it cannot be told apart
/// from a replica that is only behind, whose windows are not final yet.
fn horizon(stats: &[v1::PartitionAggregationStats]) -> Option<i64> {
    stats
        .iter()
        .map(|s| s.watermark_ms.filter(|_| s.running))
        .min()
        .flatten()
}

impl Emitter {
    /// One round for the output partitions `led` (of `partitions`) of `meta`.
    async fn emit(
        &self,
        meta: &AggregationMeta,
        partitions: u32,
        led: &[&Arc<Partition>],
    ) -> Result<(), Error> {
        let progress = |p: u32| {
            meta.emitted.get(&p).copied().unwrap_or(EmitProgress {
                upto: i64::MIN,
                next_seq: 0,
            })
        };
        let from = led.iter().map(|p| progress(p.id()).upto).min();
        let sel = Selection {
            from: from.filter(|f| *f > i64::MIN),
            ..Selection::default()
        };
        let request = v1::QueryAggregationRequest {
            name: meta.def.name.clone(),
            ..Default::default()
        };
        let (rows, stats) = self.aggregations.gather(meta, &sel, &request).await?;
        let Some(horizon) = horizon(&stats) else {
            return Ok(());
        };
        let rows = merge_rows(rows);
        // A window some partition has not closed yet (it just had its first events) holds
        // the output back before its end.
        let horizon = rows
            .iter()
            .filter(|r| !r.window.closed)
            .map(|r| r.window.end.saturating_sub(1))
            .fold(horizon, i64::min);
        let mut ready: Vec<Ready<'_>> = rows
            .iter()
            .filter(|r| r.window.end <= horizon)
            .map(|row| {
                let key = output_key(meta, row);
                let partition = partitioner::partition_for_key(key.as_bytes(), partitions);
                Ready {
                    row,
                    key,
                    partition,
                }
            })
            .collect();
        ready.sort_by(|a, b| {
            let (a, b) = (a.row, b.row);
            (a.window.end, a.start, &a.group).cmp(&(b.window.end, b.start, &b.group))
        });
        let mut first_error = None;
        for p in led {
            let done = self.emit_to(meta, p, progress(p.id()), &ready).await;
            if let Err(e) = done {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Writes the windows of `ready` (ordered by end) after `progress` that belong to output
    /// partition `p`, then commits the progress.
    async fn emit_to(
        &self,
        meta: &AggregationMeta,
        p: &Partition,
        mut progress: EmitProgress,
        ready: &[Ready<'_>],
    ) -> Result<(), Error> {
        let start = progress;
        let mut written = 0;
        let pending = &ready[ready.partition_point(|r| r.row.window.end <= progress.upto)..];
        for same_end in pending.chunk_by(|a, b| a.row.window.end == b.row.window.end) {
            let mine: Vec<&Ready<'_>> = same_end.iter().filter(|r| r.partition == p.id()).collect();
            if written > 0 && written + mine.len() > ROUND_RECORDS {
                break;
            }
            for rows in mine.chunks(BATCH_RECORDS) {
                progress.next_seq = write_batch(meta, p, rows, progress.next_seq).await?;
            }
            written += mine.len();
            progress.upto = same_end[0].row.window.end;
        }
        if progress == start {
            return Ok(());
        }
        let command = Command::AggregationEmitted {
            id: meta.id,
            partition: p.id(),
            progress,
        };
        self.cluster.propose(command, PROGRESS_TIMEOUT).await?;
        Ok(())
    }
}

/// Writes `rows` from sequence number `seq` on; returns the next sequence number.
async fn write_batch(
    meta: &AggregationMeta,
    p: &Partition,
    mut rows: &[&Ready<'_>],
    mut seq: i32,
) -> Result<i32, Error> {
    let mut realigned = false;
    loop {
        let batch = output_batch(meta, rows, seq)?;
        match p.append(vec![batch], APPEND_TIMEOUT).await {
            // Written now, or a retry of one of the last batches (answered as a duplicate).
            Ok(_) => break,
            // An older batch: an earlier round or leader wrote it.
            Err(Error::OutOfOrderSequence { expected, got, .. })
                if expected > got && (expected - got) as usize >= rows.len() =>
            {
                break;
            }
            // The partition's sequence does not fall on this batch's boundaries (an
            // earlier leader saw other windows): continue where it stands, once.
            Err(Error::OutOfOrderSequence { expected, got, .. }) if !realigned => {
                tracing::warn!(aggregation = %meta.def.name, partition = p.id(), expected, got, "output sequence realigned");
                if expected > got {
                    rows = rows.get((expected - got) as usize..).unwrap_or_default();
                }
                seq = expected;
                realigned = true;
            }
            Err(e) => return Err(e),
        }
    }
    seq.checked_add(rows.len() as i32)
        .ok_or_else(|| Error::Unavailable("output sequence numbers ran out".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::*;
    use crate::agg::def::{GroupBy, Measure, TimeSource, tests::sample};
    use crate::controller::TopicConfig;
    use crate::node::Node;
    use crate::{Broker, Config};

    const BASE: i64 = 1_700_000_000_000;

    async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Events `from..to` of 5 devices, 100 ms apart, into every partition of `in`.
    async fn produce(node: &Node, from: i64, to: i64) {
        let topic = node.topics.get("in").unwrap();
        for p in &topic.partitions {
            let mut b = BatchBuilder::new();
            for i in from..to {
                let v = format!(r#"{{"t":{},"device":"d{}"}}"#, BASE + 100 * i, i % 5);
                b.push(NewRecord::value(0, v.as_bytes())).unwrap();
            }
            p.append(vec![b.finish().unwrap()], APPEND_TIMEOUT)
                .await
                .unwrap();
        }
    }

    fn written(node: &Node) -> u64 {
        let out = node.topics.get("out").unwrap();
        out.partitions.iter().map(|p| p.high_watermark()).sum()
    }

    /// The aggregation once the output has every window ending at or before `upto`.
    async fn emitted(node: &Node, upto: i64) -> AggregationMeta {
        until("the output's progress", || {
            let meta = node.cluster.current().aggregations["a"].clone();
            (meta.emitted_everywhere(2) >= Some(upto)).then_some(meta)
        })
        .await
    }

    /// A leader that resumes from older progress (its predecessor wrote windows but did
    /// not get to record it) writes none of them again: the recent batches are answered as
    /// duplicates, the older ones as behind the partition's sequence.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_repeated_from_older_progress_writes_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            peer_listen: "127.0.0.1:0".parse().unwrap(),
            http: None,
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        })
        .await
        .unwrap();
        let node = broker.node().clone();
        for name in ["in", "out"] {
            let config = TopicConfig {
                partitions: 2,
                replication_factor: 0,
                retention_ms: None,
                retention_bytes: None,
                search: Default::default(),
            };
            let command = Command::CreateTopic {
                name: name.into(),
                config,
            };
            node.cluster.propose(command, APPEND_TIMEOUT).await.unwrap();
        }
        let def = crate::agg::def::AggregationDef {
            time: TimeSource::Field("t".into()),
            group_by: vec![GroupBy::Field("device".into())],
            measures: vec![Measure::parse("count").unwrap()],
            emit_to: Some("out".into()),
            ..sample("a", "in")
        };
        let command = Command::CreateAggregation { def: Box::new(def) };
        node.cluster.propose(command, APPEND_TIMEOUT).await.unwrap();
        until("the aggregation to run everywhere", || {
            let topic = node.topics.get("in").ok()?;
            topic
                .partitions
                .iter()
                .all(|p| p.with_aggs(|a| a.running.contains_key(&1)))
                .then_some(())
        })
        .await;

        // Windows of 1 s: events up to 14.9 s close 14 windows × 5 devices.
        produce(&node, 0, 150).await;
        let first = emitted(&node, BASE + 14_000).await;
        assert_eq!(written(&node), 70);
        produce(&node, 150, 300).await;
        let second = emitted(&node, BASE + 29_000).await;
        assert_eq!(written(&node), 145);

        let emitter = Emitter::new(
            node.aggregations.clone(),
            node.topics.clone(),
            node.cluster.clone(),
        );
        let out = node.topics.get("out").unwrap();
        let led: Vec<&Arc<Partition>> = out.partitions.iter().collect();
        let from_nothing = AggregationMeta {
            emitted: BTreeMap::new(),
            ..second.clone()
        };
        for stale in [&first, &from_nothing, &second] {
            emitter.emit(stale, 2, &led).await.unwrap();
            assert_eq!(written(&node), 145, "rewritten from {:?}", stale.emitted);
        }
        broker.shutdown().await.unwrap();
    }
}
