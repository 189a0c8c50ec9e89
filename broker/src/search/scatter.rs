//! Searching the cluster: a query is run on every selected partition, on its leader (which
//! has indexed everything it acknowledged first), and the hits are merged here. Partitions
//! this node leads are searched locally; the others are asked of their leader's node in one
//! request per node (the `Search` RPC with `partitions` set: `strata.v1.SearchRequest` is
//! also how nodes ask each other), falling back to this node's replica or to another replica
//! when that node does not answer. Hits are read from the logs by offset: the index stores
//! no bodies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1;
use strata_storage::RecordBatch;

use super::query::{PartitionHits, SearchOrder, SearchSpec};
use crate::controller::Cluster;
use crate::error::Error;
use crate::replica::Partition;
use crate::topics::Topics;

/// Hits returned when the request says 0.
const DEFAULT_LIMIT: u32 = 20;
/// Most hits one search returns.
const MAX_LIMIT: u32 = 10_000;
/// Most histogram buckets.
const MAX_BUCKETS: i64 = 10_000;
/// How long a search waits for a partition to commit what it has acknowledged.
const FRESH_WAIT: Duration = Duration::from_secs(1);
/// How long another node may take to answer its share.
const PARTIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition to search: topic, partition, replicas (the preferred leader first).
type Target = (Arc<str>, u32, Vec<u64>);

/// What one partition contributed (before its hits are read from the log).
struct Found {
    hits: PartitionHits,
    not_indexed: u64,
}

fn order_of(o: i32) -> SearchOrder {
    match v1::SearchOrder::try_from(o).unwrap_or(v1::SearchOrder::TimeDesc) {
        v1::SearchOrder::TimeDesc => SearchOrder::TimeDesc,
        v1::SearchOrder::TimeAsc => SearchOrder::TimeAsc,
        v1::SearchOrder::Score => SearchOrder::Score,
        v1::SearchOrder::OffsetAsc => SearchOrder::OffsetAsc,
    }
}

/// The search a request asks for, checked: limits, time range, histogram size, query.
fn spec_of(request: &v1::SearchRequest) -> Result<SearchSpec, Error> {
    let limit = match request.limit {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => {
            return Err(Error::InvalidArgument(format!(
                "limit {n} is above the maximum of {MAX_LIMIT}"
            )));
        }
        n => n,
    };
    if let (Some(from), Some(to)) = (request.from_ms, request.to_ms)
        && from >= to
    {
        return Err(Error::InvalidArgument(format!(
            "the time range is empty: from {from} is not before to {to}"
        )));
    }
    let histogram_ms = (request.histogram_ms > 0).then_some(request.histogram_ms);
    if let (Some(ms), Some(from), Some(to)) = (histogram_ms, request.from_ms, request.to_ms) {
        let buckets = (to - from) / i64::try_from(ms).unwrap_or(i64::MAX);
        if buckets > MAX_BUCKETS {
            return Err(Error::InvalidArgument(format!(
                "a histogram of {buckets} buckets is too many (at most {MAX_BUCKETS}); use wider buckets"
            )));
        }
    }
    let query = super::parse(&request.query).map_err(Error::InvalidArgument)?;
    Ok(SearchSpec {
        query,
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        limit: limit as usize,
        order: order_of(request.order),
        count_only: request.count_only,
        histogram_ms,
    })
}

/// Reads the key and value of `hits` (all of this partition, in any order) from its log,
/// each batch once. Hits whose records retention deleted since the search are removed.
fn read_records(partition: &Partition, hits: &mut Vec<v1::SearchHit>) -> Result<(), Error> {
    hits.sort_unstable_by_key(|h| h.offset);
    let mut found = vec![false; hits.len()];
    let mut next = 0;
    while next < hits.len() {
        let fetched = match partition.read(hits[next].offset, 1) {
            Ok(f) => f,
            // Deleted by retention since the search ran.
            Err(Error::OffsetOutOfRange { .. }) => {
                next += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let before = next;
        for raw in fetched.batches {
            let Ok(batch) = RecordBatch::from_bytes(raw) else {
                continue;
            };
            // One pass over the batch serves every hit in it.
            for record in batch.records() {
                while next < hits.len() && hits[next].offset < record.offset {
                    next += 1;
                }
                let Some(hit) = hits.get_mut(next) else {
                    break;
                };
                if hit.offset == record.offset {
                    hit.timestamp_ms = record.timestamp;
                    hit.key = record.key.map(|k| batch.share(k));
                    hit.value = record.value.map(|v| batch.share(v));
                    found[next] = true;
                    next += 1;
                }
            }
        }
        if next == before {
            // Not where the log said (cannot happen with a sound log): skip it.
            next += 1;
        }
    }
    let mut found = found.into_iter();
    hits.retain(|_| found.next().unwrap_or(false));
    Ok(())
}

/// Runs `spec` on this node's replica of a partition, as it is.
fn search_replica(partition: &Arc<Partition>, spec: &SearchSpec) -> Result<Found, Error> {
    let index = partition.search().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "topic `{}` is not indexed for search",
            partition.topic()
        ))
    })?;
    let start = partition.start_offset();
    let high_watermark = partition.high_watermark();
    let Some(snapshot) = index.snapshot() else {
        // Still opening (or rebuilding): nothing is searchable yet, and the answer says so.
        return Ok(Found {
            hits: PartitionHits::default(),
            not_indexed: high_watermark.saturating_sub(start),
        });
    };
    let hits = super::query::search(&snapshot, start, spec).map_err(Error::InvalidArgument)?;
    Ok(Found {
        not_indexed: high_watermark.saturating_sub(snapshot.upto.max(start)),
        hits,
    })
}

/// Orders hits as requested; ties break on topic, partition and offset so that every node
/// merges the same way.
fn sort_hits(hits: &mut [v1::SearchHit], order: SearchOrder) {
    let tie = |a: &v1::SearchHit, b: &v1::SearchHit| {
        (a.topic.as_str(), a.partition, a.offset).cmp(&(b.topic.as_str(), b.partition, b.offset))
    };
    match order {
        SearchOrder::TimeDesc => {
            hits.sort_by(|a, b| b.timestamp_ms.cmp(&a.timestamp_ms).then_with(|| tie(b, a)))
        }
        SearchOrder::TimeAsc => {
            hits.sort_by(|a, b| a.timestamp_ms.cmp(&b.timestamp_ms).then_with(|| tie(a, b)))
        }
        SearchOrder::Score => hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| b.timestamp_ms.cmp(&a.timestamp_ms))
                .then_with(|| tie(a, b))
        }),
        SearchOrder::OffsetAsc => {
            hits.sort_by(|a, b| a.offset.cmp(&b.offset).then_with(|| tie(a, b)))
        }
    }
}

/// The answers of several partitions (or nodes) summed and merged.
#[derive(Default)]
struct Merged {
    hits: Vec<v1::SearchHit>,
    total: u64,
    histogram: BTreeMap<i64, u64>,
    partitions: u32,
    not_indexed: u64,
}

impl Merged {
    /// Adds a partition's counts; its hits go in without key and value, to be read from the
    /// log once the merge has picked them.
    fn add_found(&mut self, partition: &Partition, found: Found) {
        self.total += found.hits.total;
        for (k, v) in found.hits.histogram {
            *self.histogram.entry(k).or_default() += v;
        }
        self.partitions += 1;
        self.not_indexed += found.not_indexed;
        self.hits
            .extend(found.hits.hits.into_iter().map(|h| v1::SearchHit {
                topic: partition.topic().to_string(),
                partition: partition.id(),
                offset: h.offset,
                timestamp_ms: h.timestamp,
                key: None,
                value: None,
                score: h.score,
            }));
    }

    fn add_response(&mut self, r: v1::SearchResponse) {
        self.total += r.total;
        for b in r.histogram {
            *self.histogram.entry(b.start_ms).or_default() += b.count;
        }
        self.partitions += r.partitions;
        self.not_indexed += r.not_indexed;
        self.hits.extend(r.hits);
    }

    /// Keeps only the hits the answer returns, in its order.
    fn keep_best(&mut self, spec: &SearchSpec) {
        sort_hits(&mut self.hits, spec.order);
        self.hits
            .truncate(if spec.count_only { 0 } else { spec.limit });
    }

    /// Keeps the best hits whose keys and values fit in `max_bytes` (at least one).
    fn cap_bytes(&mut self, max_bytes: usize) {
        let mut bytes = 0usize;
        let fit = self
            .hits
            .iter()
            .position(|h| {
                bytes +=
                    h.key.as_ref().map_or(0, |k| k.len()) + h.value.as_ref().map_or(0, |v| v.len());
                bytes > max_bytes
            })
            .map_or(self.hits.len(), |over| over.max(1));
        self.hits.truncate(fit);
    }

    fn finish(mut self, spec: &SearchSpec, max_bytes: usize) -> v1::SearchResponse {
        self.keep_best(spec);
        self.cap_bytes(max_bytes);
        v1::SearchResponse {
            hits: self.hits,
            total: self.total,
            histogram: self
                .histogram
                .into_iter()
                .map(|(start_ms, count)| v1::HistogramBucket { start_ms, count })
                .collect(),
            partitions: self.partitions,
            not_indexed: self.not_indexed,
        }
    }
}

/// Searches the cluster's topics from this node.
#[derive(Debug, Clone)]
pub struct Search {
    topics: Arc<Topics>,
    cluster: Arc<Cluster>,
    max_answer_bytes: usize,
}

impl Search {
    /// Searches over `topics` (this node's replicas) and `cluster` (the others); an answer
    /// carries at most `max_answer_bytes` of record keys and values (the best hits that fit,
    /// at least one; its total still counts every match).
    pub fn new(topics: Arc<Topics>, cluster: Arc<Cluster>, max_answer_bytes: usize) -> Search {
        Search {
            topics,
            cluster,
            max_answer_bytes,
        }
    }

    /// Searches this node's replicas of `partitions` on the blocking pool, once each has
    /// committed its index up to its high watermark (or after [`FRESH_WAIT`]), and merges
    /// what they found.
    async fn search_here(
        &self,
        partitions: &[(Arc<str>, u32)],
        spec: &Arc<SearchSpec>,
    ) -> Result<v1::SearchResponse, Error> {
        let replicas = partitions
            .iter()
            .map(|(topic, p)| self.topics.get(topic)?.partition(*p).cloned())
            .collect::<Result<Vec<_>, _>>()?;
        futures_util::future::join_all(replicas.iter().filter_map(|p| {
            let index = p.search()?;
            Some(index.wait_searchable(p.high_watermark(), FRESH_WAIT))
        }))
        .await;
        // Each replica on the blocking pool, in parallel.
        let found = futures_util::future::join_all(replicas.iter().map(|p| {
            let (p, spec) = (p.clone(), spec.clone());
            tokio::task::spawn_blocking(move || search_replica(&p, &spec))
        }))
        .await;
        let mut merged = Merged::default();
        for (p, f) in replicas.iter().zip(found) {
            let f = f.map_err(Error::task("search"))??;
            merged.add_found(p, f);
        }
        // Only the hits that make the answer are read from the logs.
        merged.keep_best(spec);
        let mut picked = std::mem::take(&mut merged.hits);
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(picked.len());
            let mut dropped = 0u64;
            for p in &replicas {
                let mut mine: Vec<v1::SearchHit> = picked
                    .extract_if(.., |h| h.partition == p.id() && h.topic == p.topic())
                    .collect();
                let wanted = mine.len();
                read_records(p, &mut mine)?;
                dropped += (wanted - mine.len()) as u64;
                out.append(&mut mine);
            }
            Ok::<_, Error>((out, dropped))
        })
        .await
        .map_err(Error::task("search"))?;
        let (hits, dropped) = read?;
        merged.hits = hits;
        // Hits whose records retention deleted since the search ran are not counted either,
        // so an answer never has fewer hits than its limit and its total allow.
        merged.total = merged.total.saturating_sub(dropped);
        Ok(merged.finish(spec, self.max_answer_bytes))
    }

    /// The partitions a search covers, by topic: the named topics, or every indexed one.
    fn targets(&self, topics: &[String]) -> Result<Vec<Target>, Error> {
        let state = self.cluster.state().borrow().clone();
        let mut out = Vec::new();
        // Each topic once, however often the request names it.
        let names: BTreeSet<String> = if topics.is_empty() {
            state
                .topics
                .iter()
                .filter(|(_, t)| t.config.search.enabled)
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            topics.iter().cloned().collect()
        };
        for name in names {
            let meta = state
                .topics
                .get(&name)
                .ok_or_else(|| Error::UnknownTopic(name.clone()))?;
            if !meta.config.search.enabled {
                return Err(Error::InvalidArgument(format!(
                    "topic `{name}` is not indexed for search (it was created with search disabled)"
                )));
            }
            let shared: Arc<str> = Arc::from(name.as_str());
            for (p, replicas) in meta.replicas.iter().enumerate() {
                out.push((shared.clone(), p as u32, replicas.clone()));
            }
        }
        Ok(out)
    }

    /// Which node should answer for a partition: its leader as far as this node knows.
    fn answering_node(&self, topic: &str, partition: u32, replicas: &[u64]) -> u64 {
        let own = self.cluster.node_id();
        let local = self
            .topics
            .get(topic)
            .ok()
            .and_then(|t| t.partition(partition).ok().cloned());
        match local {
            Some(p) => match p.current_leader() {
                Some(leader) if replicas.contains(&leader) => leader,
                _ => own,
            },
            None => replicas.first().copied().unwrap_or(own),
        }
    }

    /// Runs `request`: over the named topics (or every indexed one), or, when it names
    /// partitions, over this node's replicas of them as they are (another node's share).
    pub async fn search(&self, request: v1::SearchRequest) -> Result<v1::SearchResponse, Error> {
        let spec = Arc::new(spec_of(&request)?);
        if !request.partitions.is_empty() {
            // Another node's share: this node's replicas, as they are, each once however
            // often the request names it.
            let wanted: Vec<(Arc<str>, u32)> = request
                .partitions
                .iter()
                .map(|p| (p.topic.as_str(), p.partition))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|(t, p)| (Arc::from(t), p))
                .collect();
            return self.search_here(&wanted, &spec).await;
        }
        let own = self.cluster.node_id();
        let mut by_node: BTreeMap<u64, Vec<Target>> = BTreeMap::new();
        for (topic, p, replicas) in self.targets(&request.topics)? {
            let node = self.answering_node(&topic, p, &replicas);
            by_node.entry(node).or_default().push((topic, p, replicas));
        }
        let local = by_node.remove(&own).unwrap_or_default();
        let remote = by_node.into_iter().map(|(node, parts)| {
            let request = request.clone();
            async move {
                let answer = self.ask(node, &parts, request).await;
                (node, parts, answer)
            }
        });
        let local: Vec<(Arc<str>, u32)> = local.into_iter().map(|(t, p, _)| (t, p)).collect();
        let (here, remote_answers) = tokio::join!(
            self.search_here(&local, &spec),
            futures_util::future::join_all(remote)
        );
        let mut merged = Merged::default();
        merged.add_response(here?);
        for (node, parts, answer) in remote_answers {
            match answer {
                Ok(r) => merged.add_response(r),
                Err(e @ Error::InvalidArgument(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(node, error = %e, "search share not answered; asking other replicas");
                    for (topic, p, replicas) in parts {
                        merged.add_response(
                            self.fallback(&topic, p, &replicas, node, &request, &spec)
                                .await?,
                        );
                    }
                }
            }
        }
        Ok(merged.finish(&spec, self.max_answer_bytes))
    }

    /// Searches a partition whose leader's node did not answer: this node's replica if it
    /// has one, else each other replica in turn.
    async fn fallback(
        &self,
        topic: &Arc<str>,
        p: u32,
        replicas: &[u64],
        failed: u64,
        request: &v1::SearchRequest,
        spec: &Arc<SearchSpec>,
    ) -> Result<v1::SearchResponse, Error> {
        let own = self.cluster.node_id();
        if replicas.contains(&own) {
            return self.search_here(&[(topic.clone(), p)], spec).await;
        }
        let mut last = Error::Unavailable(format!("no replica of {topic}/{p} answered"));
        for &node in replicas.iter().filter(|n| **n != failed) {
            match self
                .ask(
                    node,
                    &[(topic.clone(), p, replicas.to_vec())],
                    request.clone(),
                )
                .await
            {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Asks `node` to search its replicas of `parts`.
    async fn ask(
        &self,
        node: u64,
        parts: &[Target],
        request: v1::SearchRequest,
    ) -> Result<v1::SearchResponse, Error> {
        let request = v1::SearchRequest {
            topics: Vec::new(),
            partitions: parts
                .iter()
                .map(|(topic, partition, _)| v1::SearchPartition {
                    topic: topic.to_string(),
                    partition: *partition,
                })
                .collect(),
            ..request
        };
        tokio::time::timeout(PARTIAL_TIMEOUT, async {
            let channel = self.cluster.channel_to(node)?;
            // A share may hold up to MAX_LIMIT whole records.
            let mut rpc =
                v1::search_client::SearchClient::new(channel).max_decoding_message_size(usize::MAX);
            rpc.search(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| {
                    if s.code() == tonic::Code::InvalidArgument {
                        Error::InvalidArgument(s.message().to_string())
                    } else {
                        Error::PeerUnavailable {
                            node,
                            reason: s.message().to_string(),
                        }
                    }
                })
        })
        .await
        .map_err(|_| Error::Timeout(format!("node {node} did not answer the search in time")))?
    }
}
