//! Prometheus metrics of a node, served at `GET /metrics` (OpenMetrics text format).
//!
//! Request counters and latency histograms are updated on the request path (the gRPC
//! services' `observe` layer labels every call `Service/Method`); per-partition, per-group
//! and per-aggregation values (log bytes, high watermark, group lag, events, late and
//! skipped events, windows, watermark, search documents and commits) are read when scraped.
//! Values that only grow are counters (exposed with `_total`, so `rate()` works); values
//! that go up and down are gauges.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::groups::Coordinator;
use crate::topics::Topics;

/// A counter of seconds.
type SecondsCounter = Counter<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabel {
    rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    rpc: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    topic: String,
    partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AggregationLabel {
    aggregation: String,
    topic: String,
    partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
    topic: String,
    partition: u32,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    produce_records: Family<TopicLabel, Counter>,
    produce_bytes: Family<TopicLabel, Counter>,
    fetch_records: Family<TopicLabel, Counter>,
    fetch_bytes: Family<TopicLabel, Counter>,
    latency: Family<RpcLabel, Histogram>,
    errors: Family<ErrorLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Node-wide values read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeCounts {
    /// Raft groups whose core stopped on an error.
    pub stopped_groups: usize,
    /// Audit events dropped.
    pub audit_dropped: u64,
    /// Request bytes client calls hold.
    pub in_flight_request_bytes: usize,
    /// Times the controller replica was reopened after a failure.
    pub controller_recoveries: u64,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata");
        let produce_records = Family::<TopicLabel, Counter>::default();
        let produce_bytes = Family::<TopicLabel, Counter>::default();
        let fetch_records = Family::<TopicLabel, Counter>::default();
        let fetch_bytes = Family::<TopicLabel, Counter>::default();
        let latency = Family::<RpcLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        let errors = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "produce_records",
            "Records appended",
            produce_records.clone(),
        );
        registry.register(
            "produce_bytes",
            "Record batch bytes appended",
            produce_bytes.clone(),
        );
        registry.register(
            "fetch_records",
            "Records sent to consumers",
            fetch_records.clone(),
        );
        registry.register(
            "fetch_bytes",
            "Record batch bytes sent to consumers",
            fetch_bytes.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency by RPC",
            latency.clone(),
        );
        registry.register(
            "request_errors",
            "Failed requests by RPC and error code",
            errors.clone(),
        );
        Metrics {
            registry,
            produce_records,
            produce_bytes,
            fetch_records,
            fetch_bytes,
            latency,
            errors,
        }
    }

    /// Counts an appended batch.
    pub fn produced(&self, topic: &str, records: u64, bytes: u64) {
        let label = TopicLabel {
            topic: topic.to_string(),
        };
        self.produce_records.get_or_create(&label).inc_by(records);
        self.produce_bytes.get_or_create(&label).inc_by(bytes);
    }

    /// Counts batches sent to a consumer.
    pub fn fetched(&self, topic: &str, records: u64, bytes: u64) {
        let label = TopicLabel {
            topic: topic.to_string(),
        };
        self.fetch_records.get_or_create(&label).inc_by(records);
        self.fetch_bytes.get_or_create(&label).inc_by(bytes);
    }

    /// Records a request's latency (`rpc`: `Service/Method`).
    pub fn observe(&self, rpc: &str, elapsed: Duration) {
        self.latency
            .get_or_create(&RpcLabel {
                rpc: rpc.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a failed request under its error code.
    pub fn failed(&self, rpc: &str, code: &str) {
        self.errors
            .get_or_create(&ErrorLabel {
                rpc: rpc.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// The request metrics alone, as text.
    #[cfg(test)]
    pub(crate) fn render_requests(&self) -> String {
        let mut out = String::new();
        let _ = encode_registry(&mut out, &self.registry);
        out
    }

    /// The text exposition, with per-partition and per-group values read now.
    pub fn render(&self, topics: &Topics, groups: &Coordinator, node: NodeCounts) -> String {
        let mut scrape = Registry::with_prefix("strata");
        let gauge = |scrape: &mut Registry, name: &str, help: &str, value: i64| {
            let g = Gauge::<i64>::default();
            g.set(value);
            scrape.register(name, help, g);
        };
        let counter = |scrape: &mut Registry, name: &str, help: &str, value: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(value);
            scrape.register(name, help, c);
        };
        gauge(
            &mut scrape,
            "raft_groups_stopped",
            "Raft groups whose core stopped on an error (a partition's is reopened)",
            node.stopped_groups as i64,
        );
        gauge(
            &mut scrape,
            "replicas_failed",
            "Replicas out after a failed flush or a stopped Raft core, until reopened",
            topics.failed_replicas().len() as i64,
        );
        counter(
            &mut scrape,
            "replica_recoveries",
            "Replicas reopened from disk after a failure",
            topics.recoveries(),
        );
        counter(
            &mut scrape,
            "controller_recoveries",
            "Times the controller replica was reopened from disk after a failure",
            node.controller_recoveries,
        );
        counter(
            &mut scrape,
            "audit_dropped_events",
            "Audit events not written (queue full, or the audit topic unwritable)",
            node.audit_dropped,
        );
        gauge(
            &mut scrape,
            "in_flight_request_bytes",
            "Request bytes the node's client calls hold (bounded by max_in_flight_request_bytes)",
            node.in_flight_request_bytes as i64,
        );
        let partitions = Gauge::<i64>::default();
        let log_bytes = Family::<PartitionLabel, Gauge>::default();
        let high_watermark = Family::<PartitionLabel, Gauge>::default();
        let producers = Family::<PartitionLabel, Gauge>::default();
        let lag = Family::<GroupLabel, Gauge>::default();
        let [agg_events, agg_late, agg_skipped] =
            std::array::from_fn(|_| Family::<AggregationLabel, Counter>::default());
        let [agg_windows, agg_watermark] =
            std::array::from_fn(|_| Family::<AggregationLabel, Gauge>::default());
        let [search_documents, search_not_indexed] =
            std::array::from_fn(|_| Family::<PartitionLabel, Gauge>::default());
        let [search_indexed_bytes, search_commits, search_rebuilds] =
            std::array::from_fn(|_| Family::<PartitionLabel, Counter>::default());
        let search_commit_seconds = Family::<PartitionLabel, SecondsCounter>::default();
        let mut count = 0;
        for topic in topics.all() {
            for p in &topic.partitions {
                count += 1;
                let label = PartitionLabel {
                    topic: topic.name.clone(),
                    partition: p.id(),
                };
                log_bytes.get_or_create(&label).set(p.log_bytes() as i64);
                high_watermark
                    .get_or_create(&label)
                    .set(p.high_watermark() as i64);
                producers
                    .get_or_create(&label)
                    .set(p.idempotent_producers() as i64);
                if let Some(index) = p.search() {
                    use std::sync::atomic::Ordering::Relaxed;
                    let c = &index.counters;
                    search_documents
                        .get_or_create(&label)
                        .set(index.documents() as i64);
                    let behind = p
                        .high_watermark()
                        .saturating_sub(index.indexed_upto().max(p.start_offset()));
                    search_not_indexed.get_or_create(&label).set(behind as i64);
                    search_indexed_bytes
                        .get_or_create(&label)
                        .inc_by(c.bytes.load(Relaxed));
                    search_commits
                        .get_or_create(&label)
                        .inc_by(c.commits.load(Relaxed));
                    search_rebuilds
                        .get_or_create(&label)
                        .inc_by(c.rebuilds.load(Relaxed));
                    search_commit_seconds
                        .get_or_create(&label)
                        .inc_by(c.commit_micros.load(Relaxed) as f64 / 1e6);
                }
                p.with_aggs(|aggs| {
                    for running in aggs.running.values() {
                        let label = AggregationLabel {
                            aggregation: running.def.name.clone(),
                            topic: topic.name.clone(),
                            partition: p.id(),
                        };
                        let s = &running.state;
                        agg_events.get_or_create(&label).inc_by(s.events);
                        agg_late.get_or_create(&label).inc_by(s.late_events);
                        agg_skipped
                            .get_or_create(&label)
                            .inc_by(s.skipped.values().sum());
                        agg_windows
                            .get_or_create(&label)
                            .set(s.window_count() as i64);
                        if let Some(w) = s.watermark(running.def.lateness_ms) {
                            agg_watermark.get_or_create(&label).set(w);
                        }
                    }
                });
            }
        }
        partitions.set(count);
        for (group, ..) in groups.list() {
            if let Ok(description) = groups.describe(&group) {
                for p in description.partitions {
                    let label = GroupLabel {
                        group: group.clone(),
                        topic: p.topic,
                        partition: p.partition,
                    };
                    lag.get_or_create(&label).set(p.lag as i64);
                }
            }
        }
        scrape.register("partitions", "Partitions on this node", partitions);
        scrape.register("log_bytes", "Bytes of a partition's segments", log_bytes);
        scrape.register(
            "high_watermark",
            "Offset after the last readable record",
            high_watermark,
        );
        scrape.register(
            "idempotent_producers",
            "Idempotent producers a partition replica remembers (forgotten after producer_expiry_ms idle)",
            producers,
        );
        scrape.register("group_lag", "Records a group has not committed yet", lag);
        scrape.register(
            "aggregation_events",
            "Events an aggregation folded in (this replica)",
            agg_events,
        );
        scrape.register(
            "aggregation_late_events",
            "Events that came after their window closed",
            agg_late,
        );
        scrape.register(
            "aggregation_skipped_events",
            "Events left out (no time field, wrong type, not JSON)",
            agg_skipped,
        );
        scrape.register(
            "aggregation_windows",
            "Windows an aggregation holds in memory",
            agg_windows,
        );
        scrape.register(
            "aggregation_watermark_ms",
            "Largest event time minus the allowed lateness",
            agg_watermark,
        );
        scrape.register(
            "search_documents",
            "Documents in a partition replica's committed search index",
            search_documents,
        );
        scrape.register(
            "search_not_indexed",
            "Committed records not searchable yet",
            search_not_indexed,
        );
        scrape.register(
            "search_indexed_bytes",
            "Bytes of record values indexed since the node started",
            search_indexed_bytes,
        );
        scrape.register(
            "search_commits",
            "Search index commits since the node started",
            search_commits,
        );
        scrape.register(
            "search_commit_seconds",
            "Time spent in search index commits since the node started (with search_commits: the mean commit time)",
            search_commit_seconds,
        );
        scrape.register(
            "search_rebuilds",
            "Times a search index was rebuilt from the log",
            search_rebuilds,
        );
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &scrape);
        let _ = encode_eof(&mut out);
        out
    }
}
