//! Aggregations over the cluster from this node: definitions through the controller, and
//! queries. Every replica holds its partitions' aggregation state, so a query is answered
//! from this node's replicas where it has them and from a replica on another node (a partial
//! query: `strata.v1.QueryAggregationRequest` with `partial` set is also how nodes ask each
//! other) where it does not; the partial windows are merged here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1;

use super::def::AggregationDef;
use super::state::AggState;
use super::{Row, Selection, merge_rows, partial_rows};
use crate::controller::{AggregationMeta, Cluster, ClusterState, Command, CommandResult};
use crate::error::Error;
use crate::topics::Topics;

/// How long a definition change may take through the controller.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a partial query to another node may take.
const PARTIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's aggregations as this node answers for them.
#[derive(Debug, Clone)]
pub struct Aggregations {
    topics: Arc<Topics>,
    cluster: Arc<Cluster>,
    max_per_topic: usize,
}

impl Aggregations {
    /// Aggregations over `topics` (this node's replicas) and `cluster` (definitions, other
    /// nodes), at most `max_per_topic` on one topic (each one folds every record).
    pub fn new(topics: Arc<Topics>, cluster: Arc<Cluster>, max_per_topic: usize) -> Aggregations {
        Aggregations {
            topics,
            cluster,
            max_per_topic,
        }
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

/// The API form of a window row.
pub fn to_row(def: &AggregationDef, row: &Row) -> v1::AggregationRow {
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

/// A query's selection.
pub fn selection(
    from: Option<i64>,
    to: Option<i64>,
    r#where: HashMap<String, String>,
) -> Selection {
    Selection {
        from,
        to,
        groups: r#where.into_iter().collect(),
    }
}

impl Aggregations {
    /// Waits (bounded) until this node's copy of the cluster state satisfies `done`, so a
    /// client reading from it next sees its own change.
    async fn follow_definition(&self, done: impl Fn(&ClusterState) -> bool) {
        let mut state = self.cluster.state();
        let _ = tokio::time::timeout(CHANGE_TIMEOUT, state.wait_for(|s| done(s))).await;
    }

    /// Defines an aggregation (checked again by the controller); its id, once this node
    /// follows the change.
    pub async fn create(&self, def: AggregationDef) -> Result<u64, Error> {
        let name = def.name.clone();
        let on_topic = (self.cluster.current().aggregations.values())
            .filter(|a| a.def.topic == def.topic)
            .count();
        if on_topic >= self.max_per_topic {
            return Err(Error::LimitExceeded(format!(
                "topic `{}` has {on_topic} aggregations, the most one topic takes \
                 (max_aggregations_per_topic)",
                def.topic
            )));
        }
        let command = Command::CreateAggregation { def: Box::new(def) };
        match self.cluster.propose(command, CHANGE_TIMEOUT).await? {
            CommandResult::AggregationCreated { id } => {
                self.follow_definition(|s| s.aggregations.get(&name).is_some_and(|a| a.id == id))
                    .await;
                self.wait_running(&name, id).await?;
                Ok(id)
            }
            CommandResult::AggregationExists => Err(Error::AggregationExists(name)),
            CommandResult::UnknownTopic => Err(Error::InvalidArgument(format!(
                "aggregation `{name}`: its topic does not exist"
            ))),
            CommandResult::Invalid { message } => Err(Error::InvalidArgument(message)),
            other => Err(other.unexpected()),
        }
    }

    /// Waits until every partition of aggregation `name` (`id`) runs it: its start record is
    /// committed in each partition's log, so every record produced from now on comes after
    /// it and is folded. (Returning sooner let a burst produced right after a create go
    /// uncounted while the partitions' leaders had yet to start it.)
    async fn wait_running(&self, name: &str, id: u64) -> Result<(), Error> {
        let request = v1::QueryAggregationRequest {
            name: name.to_string(),
            stats_only: true,
            ..Default::default()
        };
        let sel = selection(None, None, HashMap::new());
        let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
        let mut pause = Duration::from_millis(5);
        let mut waiting_for = Vec::new();
        while tokio::time::Instant::now() < deadline {
            let meta = self.get(name)?;
            if meta.id != id {
                return Err(Error::UnknownAggregation(name.to_string()));
            }
            if let Ok((_, stats)) = self.gather(&meta, &sel, &request).await {
                waiting_for = stats
                    .iter()
                    .filter(|s| !s.running)
                    .map(|s| s.partition)
                    .collect();
                if waiting_for.is_empty() {
                    return Ok(());
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Err(Error::Unavailable(format!(
            "aggregation `{name}` is defined but does not run yet in partitions {waiting_for:?} \
             of its topic (no leader there?); records produced to them before it starts \
             are not folded"
        )))
    }

    /// Drops an aggregation, once this node follows the change.
    pub async fn drop(&self, name: &str) -> Result<(), Error> {
        let command = Command::DropAggregation {
            name: name.to_string(),
        };
        match self.cluster.propose(command, CHANGE_TIMEOUT).await? {
            CommandResult::Ok => {
                self.follow_definition(|s| !s.aggregations.contains_key(name))
                    .await;
                Ok(())
            }
            CommandResult::UnknownAggregation => Err(Error::UnknownAggregation(name.to_string())),
            other => Err(other.unexpected()),
        }
    }

    /// Every aggregation of the cluster, by name.
    pub fn list(&self) -> Vec<AggregationMeta> {
        self.cluster
            .state()
            .borrow()
            .aggregations
            .values()
            .cloned()
            .collect()
    }

    /// An aggregation by name.
    pub fn get(&self, name: &str) -> Result<AggregationMeta, Error> {
        self.cluster
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
        let topic = self.topics.get(&meta.def.topic)?;
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
    pub async fn gather(
        &self,
        meta: &AggregationMeta,
        sel: &Selection,
        request: &v1::QueryAggregationRequest,
    ) -> Result<(Vec<Row>, Vec<v1::PartitionAggregationStats>), Error> {
        let cluster = self.cluster.state().borrow().clone();
        let topic_meta = cluster
            .topics
            .get(&meta.def.topic)
            .ok_or_else(|| Error::UnknownTopic(meta.def.topic.clone()))?;
        let hosted: Vec<u32> = self
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
                match partial_query(&self.cluster, node, partial).await {
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

    /// Answers a query: windows merged over every partition, or (`partial`) the partial
    /// windows of this node's replicas of the partitions named, for another node to merge.
    pub async fn query(
        &self,
        request: v1::QueryAggregationRequest,
    ) -> Result<v1::QueryAggregationResponse, Error> {
        let meta = self.get(&request.name)?;
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
    cluster: &Cluster,
    node: u64,
    request: v1::QueryAggregationRequest,
) -> Result<v1::QueryAggregationResponse, Error> {
    tokio::time::timeout(PARTIAL_TIMEOUT, async {
        let channel = cluster.channel_to(node)?;
        let mut rpc = v1::aggregations_client::AggregationsClient::new(channel)
            .max_decoding_message_size(usize::MAX);
        rpc.query(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::PeerUnavailable {
                node,
                reason: s.message().to_string(),
            })
    })
    .await
    .map_err(|_| Error::Timeout(format!("node {node} did not answer the query in time")))?
}
