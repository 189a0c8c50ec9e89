//! `Aggregations`: define, drop, list, describe, query and watch windowed aggregations.
//!
//! Every replica holds its partitions' aggregation state, so a query is answered from this
//! node's replicas where it has them and from a replica on another node (a partial query)
//! where it does not; the partial windows are merged here.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_core::Stream;
use strata_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Api;
use crate::agg::def::{AggregationDef, DEFAULT_RETAIN_MS, GroupBy, Measure, TimeSource, Window};
use crate::agg::state::AggState;
use crate::agg::{Row, Selection, merge_rows, partial_rows};
use crate::error::Error;
use crate::raft::{AggregationMeta, Command, CommandResult};

/// How long a definition change may take through the controller.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a partial query to another node may take.
const PARTIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a watch looks for changed windows.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// A definition from its API form; the error says what is wrong.
pub fn spec_to_def(spec: v1::AggregationSpec) -> Result<AggregationDef, Error> {
    let bad = Error::InvalidArgument;
    let window = Window::parse(&spec.window).map_err(bad)?;
    let time = if spec.time_field.trim().is_empty() {
        TimeSource::Timestamp
    } else {
        TimeSource::Field(spec.time_field.trim().to_string())
    };
    let group_by = spec
        .group_by
        .iter()
        .map(|g| GroupBy::parse(g))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let measures = spec
        .measures
        .iter()
        .map(|m| Measure::parse(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let def = AggregationDef {
        name: spec.name,
        topic: spec.topic,
        window,
        time,
        group_by,
        filter: Some(spec.filter.trim().to_string()).filter(|f| !f.is_empty()),
        measures,
        lateness_ms: spec.lateness_ms,
        retain_ms: if spec.retain_ms == 0 {
            DEFAULT_RETAIN_MS
        } else {
            spec.retain_ms
        },
        emit_to: Some(spec.emit_to.trim().to_string()).filter(|t| !t.is_empty()),
        backfill: spec.backfill,
    };
    def.validate().map_err(Error::InvalidArgument)?;
    Ok(def)
}

/// The API form of a definition.
pub fn def_to_spec(def: &AggregationDef, id: u64) -> v1::AggregationSpec {
    v1::AggregationSpec {
        name: def.name.clone(),
        topic: def.topic.clone(),
        window: def.window.to_string(),
        time_field: match &def.time {
            TimeSource::Timestamp => String::new(),
            TimeSource::Field(f) => f.clone(),
        },
        group_by: def.group_by.iter().map(ToString::to_string).collect(),
        filter: def.filter.clone().unwrap_or_default(),
        measures: def.measures.iter().map(ToString::to_string).collect(),
        lateness_ms: def.lateness_ms,
        retain_ms: def.retain_ms,
        emit_to: def.emit_to.clone().unwrap_or_default(),
        backfill: def.backfill,
        id,
    }
}

fn stats(
    partition: u32,
    state: Option<(&AggState, u64, &AggregationDef)>,
) -> v1::PartitionAggregationStats {
    match state {
        None => v1::PartitionAggregationStats {
            partition,
            ..Default::default()
        },
        Some((s, started_at, def)) => v1::PartitionAggregationStats {
            partition,
            running: true,
            started_at,
            watermark_ms: s.watermark(def.lateness_ms),
            events: s.events,
            late_events: s.late_events,
            skipped: s.skipped.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            windows: s.window_count() as u64,
            closed_windows: s.closed_windows,
        },
    }
}

fn to_row(def: &AggregationDef, row: &Row) -> v1::AggregationRow {
    v1::AggregationRow {
        start_ms: row.start,
        end_ms: row.window.end,
        group: row.group.clone(),
        values: row
            .values(def)
            .into_iter()
            .map(|value| v1::MeasureValue { value })
            .collect(),
        events: row.window.events,
        closed: row.window.closed,
    }
}

fn selection(from: Option<i64>, to: Option<i64>, r#where: HashMap<String, String>) -> Selection {
    Selection {
        from,
        to,
        groups: r#where.into_iter().collect(),
    }
}

impl Api {
    /// Waits (bounded) until this node's copy of the cluster state satisfies `done`, so a
    /// client reading from it next sees its own change.
    async fn follow_definition(&self, done: impl Fn(&crate::raft::ClusterState) -> bool) {
        let mut state = self.node.cluster.state();
        let _ = tokio::time::timeout(CHANGE_TIMEOUT, state.wait_for(|s| done(s))).await;
    }

    fn aggregation(&self, name: &str) -> Result<AggregationMeta, Error> {
        self.node
            .cluster
            .state()
            .borrow()
            .aggregations
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownAggregation(name.to_string()))
    }

    /// Partial windows and statistics of `partitions` from this node's replicas.
    fn local_partials(
        &self,
        meta: &AggregationMeta,
        partitions: &[u32],
        sel: &Selection,
        stats_only: bool,
    ) -> Result<(Vec<Row>, Vec<v1::PartitionAggregationStats>), Error> {
        let topic = self.node.topics.get(&meta.def.topic)?;
        let mut rows = Vec::new();
        let mut all_stats = Vec::new();
        for &p in partitions {
            let partition = topic.partition(p)?;
            partition.with_aggs(|aggs| {
                let running = aggs.running.get(&meta.id);
                all_stats.push(stats(p, running.map(|r| (&r.state, r.started_at, &r.def))));
                if let Some(r) = running
                    && !stats_only
                {
                    rows.extend(partial_rows(&r.def, &r.state, sel));
                }
            });
        }
        Ok((rows, all_stats))
    }

    /// Partial windows and statistics of every partition, from here or from other nodes.
    pub(super) async fn gather(
        &self,
        meta: &AggregationMeta,
        sel: &Selection,
        request: &v1::QueryAggregationRequest,
    ) -> Result<(Vec<Row>, Vec<v1::PartitionAggregationStats>), Error> {
        let cluster = self.node.cluster.state().borrow().clone();
        let topic_meta = cluster
            .topics
            .get(&meta.def.topic)
            .ok_or_else(|| Error::UnknownTopic(meta.def.topic.clone()))?;
        let hosted: Vec<u32> = self
            .node
            .topics
            .get(&meta.def.topic)
            .map(|t| t.partitions.iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let mut remote: Vec<(u32, &Vec<u64>)> = Vec::new();
        let mut local = Vec::new();
        for (p, replicas) in topic_meta.replicas.iter().enumerate() {
            let p = p as u32;
            if hosted.contains(&p) {
                local.push(p);
            } else {
                remote.push((p, replicas));
            }
        }
        let (mut rows, mut all_stats) =
            self.local_partials(meta, &local, sel, request.stats_only)?;
        // A partition this node does not hold: ask its replicas in turn until one answers.
        for (p, replicas) in remote {
            let mut last = Error::Unavailable(format!("partition {p} has no replicas"));
            let mut answered = None;
            for &node in replicas {
                let partial = v1::QueryAggregationRequest {
                    partial: true,
                    partitions: vec![p],
                    ..request.clone()
                };
                match partial_query(&self.node.cluster, node, partial).await {
                    Ok(answer) => {
                        answered = Some(answer);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let answer = answered.ok_or(last)?;
            if !answer.partial_rows.is_empty() {
                let theirs: Vec<Row> = serde_json::from_slice(&answer.partial_rows)
                    .map_err(|e| Error::Unavailable(format!("bad partial rows: {e}")))?;
                rows.extend(theirs);
            }
            all_stats.extend(answer.partitions);
        }
        all_stats.sort_by_key(|s| s.partition);
        Ok((rows, all_stats))
    }

    async fn query_inner(
        &self,
        request: v1::QueryAggregationRequest,
    ) -> Result<v1::QueryAggregationResponse, Error> {
        self.check_serving()?;
        let meta = self.aggregation(&request.name)?;
        let sel = selection(request.from_ms, request.to_ms, request.r#where.clone());
        for (name, _) in &sel.groups {
            if !meta.def.group_by.iter().any(|g| g.to_string() == *name) {
                return Err(Error::InvalidArgument(format!(
                    "`{name}` is not a group-by of {} (it groups by {})",
                    meta.def.name,
                    meta.def
                        .group_by
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let names = (
            meta.def.measures.iter().map(ToString::to_string).collect(),
            meta.def.group_by.iter().map(ToString::to_string).collect(),
        );
        if request.partial {
            let (rows, partitions) =
                self.local_partials(&meta, &request.partitions, &sel, request.stats_only)?;
            let partial_rows = serde_json::to_vec(&rows)
                .map_err(|e| Error::Unavailable(format!("encoding rows: {e}")))?;
            return Ok(v1::QueryAggregationResponse {
                measures: names.0,
                group_by: names.1,
                partitions,
                partial_rows: partial_rows.into(),
                ..Default::default()
            });
        }
        let (rows, partitions) = self.gather(&meta, &sel, &request).await?;
        let rows = merge_rows(rows);
        Ok(v1::QueryAggregationResponse {
            measures: names.0,
            group_by: names.1,
            rows: rows.iter().map(|r| to_row(&meta.def, r)).collect(),
            partitions,
            partial_rows: Default::default(),
        })
    }
}

/// Asks `node` for its replicas' partial windows.
async fn partial_query(
    cluster: &crate::cluster::Cluster,
    node: u64,
    request: v1::QueryAggregationRequest,
) -> Result<v1::QueryAggregationResponse, Error> {
    tokio::time::timeout(PARTIAL_TIMEOUT, async {
        let channel = cluster.channel_to(node).await?;
        let mut rpc = v1::aggregations_client::AggregationsClient::new(channel)
            .max_decoding_message_size(usize::MAX);
        rpc.query(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::Unavailable(format!("node {node}: {}", s.message())))
    })
    .await
    .map_err(|_| Error::Timeout(format!("node {node} did not answer the query in time")))?
}

/// A stream of watch answers.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<v1::WatchAggregationResponse, Status>> + Send>>;

#[tonic::async_trait]
impl v1::aggregations_server::Aggregations for Api {
    async fn create(
        &self,
        request: Request<v1::CreateAggregationRequest>,
    ) -> Result<Response<v1::CreateAggregationResponse>, Status> {
        let started = Instant::now();
        let result = async {
            self.check_serving()?;
            let spec = request
                .into_inner()
                .spec
                .ok_or_else(|| Error::InvalidArgument("no aggregation spec".into()))?;
            let def = spec_to_def(spec)?;
            let name = def.name.clone();
            let command = Command::CreateAggregation { def: Box::new(def) };
            match self.node.cluster.propose(command, CHANGE_TIMEOUT).await? {
                CommandResult::AggregationCreated { id } => {
                    self.follow_definition(|s| {
                        s.aggregations.get(&name).is_some_and(|a| a.id == id)
                    })
                    .await;
                    Ok(v1::CreateAggregationResponse { id })
                }
                CommandResult::AggregationExists => Err(Error::AggregationExists(name)),
                CommandResult::UnknownTopic => Err(Error::InvalidArgument(format!(
                    "aggregation `{name}`: its topic does not exist"
                ))),
                CommandResult::Invalid { message } => Err(Error::InvalidArgument(message)),
                other => Err(Error::Unavailable(format!(
                    "unexpected controller answer {other:?}"
                ))),
            }
        }
        .await;
        self.finish("Aggregations/Create", started, result)
            .map(Response::new)
    }

    async fn drop(
        &self,
        request: Request<v1::DropAggregationRequest>,
    ) -> Result<Response<v1::DropAggregationResponse>, Status> {
        let started = Instant::now();
        let result = async {
            self.check_serving()?;
            let name = request.into_inner().name;
            let command = Command::DropAggregation { name: name.clone() };
            match self.node.cluster.propose(command, CHANGE_TIMEOUT).await? {
                CommandResult::Ok => {
                    self.follow_definition(|s| !s.aggregations.contains_key(&name))
                        .await;
                    Ok(v1::DropAggregationResponse {})
                }
                CommandResult::UnknownAggregation => Err(Error::UnknownAggregation(name)),
                other => Err(Error::Unavailable(format!(
                    "unexpected controller answer {other:?}"
                ))),
            }
        }
        .await;
        self.finish("Aggregations/Drop", started, result)
            .map(Response::new)
    }

    async fn list(
        &self,
        _request: Request<v1::ListAggregationsRequest>,
    ) -> Result<Response<v1::ListAggregationsResponse>, Status> {
        let aggregations = self
            .node
            .cluster
            .state()
            .borrow()
            .aggregations
            .values()
            .map(|a| def_to_spec(&a.def, a.id))
            .collect();
        Ok(Response::new(v1::ListAggregationsResponse { aggregations }))
    }

    async fn describe(
        &self,
        request: Request<v1::DescribeAggregationRequest>,
    ) -> Result<Response<v1::DescribeAggregationResponse>, Status> {
        let started = Instant::now();
        let result = async {
            self.check_serving()?;
            let name = request.into_inner().name;
            let meta = self.aggregation(&name)?;
            let query = v1::QueryAggregationRequest {
                name,
                stats_only: true,
                ..Default::default()
            };
            let (_, partitions) = self.gather(&meta, &Selection::default(), &query).await?;
            let out_partitions = meta
                .def
                .emit_to
                .as_ref()
                .map_or(0, |t| self.node.topics.partition_count(t));
            let output = (0..out_partitions)
                .map(|p| {
                    let progress = meta.emitted.get(&p);
                    v1::OutputProgress {
                        partition: p,
                        upto_ms: progress.map(|e| e.upto),
                        records: progress.map_or(0, |e| e.next_seq.max(0) as u64),
                    }
                })
                .collect();
            Ok(v1::DescribeAggregationResponse {
                spec: Some(def_to_spec(&meta.def, meta.id)),
                partitions,
                output,
            })
        }
        .await;
        self.finish("Aggregations/Describe", started, result)
            .map(Response::new)
    }

    async fn query(
        &self,
        request: Request<v1::QueryAggregationRequest>,
    ) -> Result<Response<v1::QueryAggregationResponse>, Status> {
        let started = Instant::now();
        let result = self.query_inner(request.into_inner()).await;
        self.finish("Aggregations/Query", started, result)
            .map(Response::new)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<v1::WatchAggregationRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let request = request.into_inner();
        let query = v1::QueryAggregationRequest {
            name: request.name,
            from_ms: request.from_ms,
            r#where: request.r#where,
            ..Default::default()
        };
        // The first answer checks the request (unknown aggregation, bad selection).
        let initial = self
            .query_inner(query.clone())
            .await
            .map_err(|e| super::status::status(&e))?;
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        tokio::spawn(async move {
            let mut seen: HashMap<(i64, Vec<String>, i64), v1::AggregationRow> = HashMap::new();
            let mut answer = Ok(initial);
            let mut first = true;
            loop {
                let rows = match answer {
                    Ok(a) => {
                        let changed: Vec<v1::AggregationRow> = a
                            .rows
                            .into_iter()
                            .filter(|r| {
                                let key = (r.start_ms, r.group.clone(), r.end_ms);
                                if seen.get(&key) == Some(r) {
                                    return false;
                                }
                                seen.insert(key, r.clone());
                                true
                            })
                            .collect();
                        Ok(v1::WatchAggregationResponse {
                            measures: a.measures,
                            group_by: a.group_by,
                            rows: changed,
                        })
                    }
                    Err(e) => Err(super::status::status(&e)),
                };
                let failed = rows.is_err();
                // The first answer always goes out (it names the measures); later ones only
                // when a window changed.
                let quiet = matches!(&rows, Ok(r) if r.rows.is_empty()) && !first;
                first = false;
                if !quiet && tx.send(rows).await.is_err() || failed {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(WATCH_EVERY) => {}
                    () = tx.closed() => return,
                }
                answer = api.query_inner(query.clone()).await;
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as WatchStream
        ))
    }
}
