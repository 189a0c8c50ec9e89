//! A partition replica: its log (which is its Raft log), its Raft group, its high watermark,
//! and the append and read paths.
//!
//! The high watermark is the offset after the last committed record, published by the state
//! machine as it applies entries; consumers read up to it on every replica. Appends go to the
//! partition's Raft leader ([`Partition::append`]): each record batch becomes one log entry,
//! and the produce is answered once the entries are committed by a majority of the replicas
//! (each after its fsync policy) and applied.
//!
//! Idempotent producers: a batch carries (producer id, epoch, first sequence). The leader
//! checks it against the state machine's applied producer state *and* the batches it has
//! proposed but not yet seen applied, so a retry racing with its original is answered with the
//! original's offsets instead of being written twice. A new leader takes idempotent batches only
//! once it has applied every entry of earlier terms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardReason};
use strata_proto::v1;
use strata_storage::{Fetched, PartitionLog, RecordBatch, RetentionPolicy};
use tokio::sync::watch;

use crate::agg::{Control, PartitionAggs};
use crate::error::{Error, Result};
use crate::raft::partition_sm::{SeqCheck, check_against, last_seq, next_seq};
use crate::raft::service::PartitionRaft;
use crate::raft::{Applied, Batch, ClusterState, GroupId, PartitionState, applied_own_term};
use crate::search::PartitionIndex;
use crate::sync::lock;

/// When a produce is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Once committed by a majority of the replicas (the default).
    All,
    /// Accepted for compatibility; under replication it is answered at commit as well.
    Leader,
}

impl From<v1::Acks> for Acks {
    fn from(a: v1::Acks) -> Self {
        match a {
            v1::Acks::Leader => Acks::Leader,
            v1::Acks::All | v1::Acks::Unspecified => Acks::All,
        }
    }
}

/// An idempotent batch proposed and not yet answered.
struct Pending {
    epoch: i16,
    first_seq: i32,
    last_seq: i32,
    result: watch::Sender<Option<std::result::Result<u64, String>>>,
}

/// A partition of a topic on this node.
pub struct Partition {
    topic: Arc<str>,
    id: u32,
    group: GroupId,
    node_id: u64,
    replicas: Vec<u64>,
    log: PartitionLog,
    raft: PartitionRaft,
    state: Arc<Mutex<PartitionState>>,
    aggs: Arc<Mutex<PartitionAggs>>,
    high_watermark: Arc<watch::Sender<u64>>,
    /// Idempotent batches proposed whose outcome is not known yet, by producer. An entry
    /// stays until Raft answers (committed, or discarded by a leader change), even when the
    /// request that proposed it gave up waiting: a retry must find it, not propose it again.
    pending: Arc<Mutex<HashMap<i64, Vec<Pending>>>>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    search: Option<Arc<PartitionIndex>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Facts about a partition for `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Partition id.
    pub id: u32,
    /// Leading node, when known.
    pub leader: u64,
    /// First offset still in the log.
    pub start_offset: u64,
    /// Offset after the last committed record.
    pub high_watermark: u64,
    /// Offset after the last record in this replica's log (committed or not).
    pub next_offset: u64,
    /// Bytes of its segments.
    pub bytes: u64,
    /// Number of segments.
    pub segments: u32,
}

/// The parts a partition replica is made of (see `topics`, which opens them).
pub(crate) struct PartitionParts {
    pub topic: Arc<str>,
    pub id: u32,
    pub group: GroupId,
    pub node_id: u64,
    pub replicas: Vec<u64>,
    pub log: PartitionLog,
    pub raft: PartitionRaft,
    pub state: Arc<Mutex<PartitionState>>,
    pub aggs: Arc<Mutex<PartitionAggs>>,
    pub high_watermark: Arc<watch::Sender<u64>>,
    pub cluster: watch::Receiver<Arc<ClusterState>>,
    pub search: Option<Arc<PartitionIndex>>,
}

/// What to answer for one batch of an append.
enum Slot {
    Known(u64),
    Wait(watch::Receiver<Option<std::result::Result<u64, String>>>),
    Propose(usize),
}

impl Partition {
    pub(crate) fn new(parts: PartitionParts) -> Self {
        Partition {
            topic: parts.topic,
            id: parts.id,
            group: parts.group,
            node_id: parts.node_id,
            replicas: parts.replicas,
            log: parts.log,
            raft: parts.raft,
            state: parts.state,
            aggs: parts.aggs,
            high_watermark: parts.high_watermark,
            pending: Arc::new(Mutex::new(HashMap::new())),
            cluster: parts.cluster,
            search: parts.search,
        }
    }

    /// Its search index, unless its topic is not indexed.
    pub fn search(&self) -> Option<&Arc<PartitionIndex>> {
        self.search.as_ref()
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its Raft group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Its replicas; the first is the preferred leader.
    pub fn replicas(&self) -> &[u64] {
        &self.replicas
    }

    /// Its Raft handle.
    pub fn raft(&self) -> &PartitionRaft {
        &self.raft
    }

    /// The leading node as this replica knows it (the preferred leader if none is known).
    pub fn leader(&self) -> u64 {
        self.current_leader()
            .unwrap_or_else(|| self.replicas.first().copied().unwrap_or(self.node_id))
    }

    /// The leading node, if one is known.
    pub fn current_leader(&self) -> Option<u64> {
        // Copied out: a metrics borrow must never be held across an await.
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.node_id)
    }

    fn not_leader(&self, leader: Option<u64>) -> Error {
        let leader = leader.filter(|l| *l != self.node_id);
        let address = leader.and_then(|l| self.cluster.borrow().address_of(l));
        Error::NotLeader {
            what: format!("{}/{}", self.topic, self.id),
            leader,
            address,
        }
    }

    /// Appends validated batches in order as the partition's leader; answers with each
    /// batch's base offset once the batches are committed and applied. A batch not committed
    /// within `timeout` is answered with [`Error::Timeout`] (it may still be committed).
    pub async fn append(
        &self,
        batches: Vec<RecordBatch>,
        _acks: Acks,
        timeout: Duration,
    ) -> Result<Vec<u64>> {
        let deadline = Instant::now() + timeout;
        let leader = self.current_leader();
        if leader != Some(self.node_id) {
            return Err(self.not_leader(leader));
        }
        let idempotent = batches
            .iter()
            .any(|b| b.producer_id() >= 0 && b.base_sequence() >= 0);
        if idempotent {
            self.wait_caught_up(deadline).await?;
        }
        let (slots, proposals, registered) = self.plan(batches)?;
        let proposed = if proposals.is_empty() {
            Vec::new()
        } else {
            // The proposal runs to its real outcome in its own task, which then settles the
            // pending entries; this request waits for it only until its deadline.
            let (raft, pending) = (self.raft.clone(), self.pending.clone());
            let task = tokio::spawn(async move {
                let outcome = propose(&raft, proposals, deadline).await;
                settle(&pending, &registered, &outcome);
                outcome
            });
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, task).await {
                Ok(Ok(Ok(offsets))) => offsets,
                Ok(Ok(Err(ProposeFailure::NotLeader(leader)))) => {
                    return Err(self.not_leader(leader));
                }
                Ok(Ok(Err(ProposeFailure::NoQuorum))) => {
                    return Err(Error::Timeout(format!(
                        "{}/{}: the leader has no quorum",
                        self.topic, self.id
                    )));
                }
                Ok(Ok(Err(ProposeFailure::Unavailable(e)))) => {
                    return Err(Error::Unavailable(format!(
                        "{}/{}: {e}",
                        self.topic, self.id
                    )));
                }
                Ok(Err(e)) => {
                    return Err(Error::Unavailable(format!(
                        "{}/{}: append task failed: {e}",
                        self.topic, self.id
                    )));
                }
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "append to {}/{} not committed in time (it may still be)",
                        self.topic, self.id
                    )));
                }
            }
        };
        let mut offsets = Vec::with_capacity(slots.len());
        for slot in slots {
            offsets.push(match slot {
                Slot::Known(offset) => offset,
                Slot::Propose(i) => proposed[i],
                Slot::Wait(mut rx) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let waited =
                        tokio::time::timeout(remaining, rx.wait_for(Option::is_some)).await;
                    let answer = match waited {
                        Ok(Ok(answer)) => answer.clone(),
                        Ok(Err(_)) => None,
                        Err(_) => {
                            return Err(Error::Timeout(format!(
                                "retried batch on {}/{} still in flight",
                                self.topic, self.id
                            )));
                        }
                    };
                    match answer {
                        Some(Ok(offset)) => offset,
                        Some(Err(e)) => return Err(Error::Unavailable(e)),
                        None => {
                            return Err(Error::Unavailable(format!(
                                "{}/{}: the original of a retried batch was abandoned",
                                self.topic, self.id
                            )));
                        }
                    }
                }
            });
        }
        Ok(offsets)
    }

    /// Waits until this leader has applied every entry of earlier terms, so that its
    /// producer state is complete.
    async fn wait_caught_up(&self, deadline: Instant) -> Result<()> {
        // The usual case, answered from one look at the metrics: openraft's `wait` clones
        // the whole metrics struct, which every produce request would pay for.
        if self.leader_caught_up() {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let node_id = self.node_id;
        let caught_up = self
            .raft
            .wait(Some(remaining))
            .metrics(
                |m| m.current_leader != Some(node_id) || applied_own_term(m),
                "leader applied its own term",
            )
            .await;
        match caught_up {
            Ok(m) if m.current_leader == Some(node_id) => Ok(()),
            Ok(m) => Err(self.not_leader(m.current_leader)),
            Err(_) => Err(Error::Unavailable(format!(
                "{}/{}: the new leader is still catching up",
                self.topic, self.id
            ))),
        }
    }

    /// Sorts batches into known answers (retries of applied batches), waits (retries of
    /// batches in flight) and proposals; registers the idempotent proposals as pending.
    /// Returns the slots, the proposals and, for each registered batch, its key and
    /// proposal index.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        batches: Vec<RecordBatch>,
    ) -> Result<(Vec<Slot>, Vec<RecordBatch>, Vec<(i64, i16, i32, usize)>)> {
        enum Decision {
            Plain,
            New,
            Known(u64),
            Wait(watch::Receiver<Option<std::result::Result<u64, String>>>),
        }
        let state = lock(&self.state);
        let mut pending = lock(&self.pending);
        // Decide everything first, so that a rejected request registers nothing.
        let mut decisions = Vec::with_capacity(batches.len());
        let mut newest_in_request: HashMap<i64, (i16, i32)> = HashMap::new();
        for b in &batches {
            let (pid, epoch, base) = (b.producer_id(), b.producer_epoch(), b.base_sequence());
            if pid < 0 || base < 0 {
                decisions.push(Decision::Plain);
                continue;
            }
            let count = b.record_count();
            let last = last_seq(base, count);
            let in_flight = pending.get(&pid);
            if let Some(p) = in_flight.and_then(|l| {
                l.iter()
                    .find(|p| p.epoch == epoch && p.first_seq == base && p.last_seq == last)
            }) {
                decisions.push(Decision::Wait(p.result.subscribe()));
                continue;
            }
            let newest = newest_in_request.get(&pid).copied().or_else(|| {
                in_flight
                    .and_then(|l| l.last())
                    .map(|p| (p.epoch, p.last_seq))
            });
            let check = match newest {
                Some((e, _)) if epoch < e => SeqCheck::Fenced { epoch: e },
                Some((e, s)) if epoch == e && base == next_seq(s) => SeqCheck::New,
                Some((e, s)) if epoch == e => {
                    match state
                        .producers
                        .get(&pid)
                        .map(|p| check_against(p, epoch, base, count))
                    {
                        Some(d @ SeqCheck::Duplicate { .. }) => d,
                        _ => SeqCheck::OutOfOrder {
                            expected: next_seq(s),
                        },
                    }
                }
                _ => state.check_sequence(pid, epoch, base, count),
            };
            tracing::debug!(topic = %self.topic, partition = self.id, pid, epoch, base, count, ?check, pending = ?in_flight.map(|l| l.iter().map(|p| (p.epoch, p.first_seq)).collect::<Vec<_>>()), "idempotent batch planned");
            decisions.push(match check {
                SeqCheck::OutOfOrder { expected } => {
                    return Err(Error::OutOfOrderSequence {
                        topic: self.topic.to_string(),
                        partition: self.id,
                        producer_id: pid,
                        expected,
                        got: base,
                    });
                }
                SeqCheck::Fenced { epoch: current } => {
                    return Err(Error::ProducerFenced {
                        producer_id: pid,
                        epoch,
                        current,
                    });
                }
                SeqCheck::New => {
                    newest_in_request.insert(pid, (epoch, last));
                    Decision::New
                }
                SeqCheck::Duplicate { base_offset } => Decision::Known(base_offset),
            });
        }
        let mut slots = Vec::with_capacity(batches.len());
        let mut proposals = Vec::with_capacity(batches.len());
        let mut registered = Vec::new();
        for (b, decision) in batches.into_iter().zip(decisions) {
            match decision {
                Decision::Known(offset) => slots.push(Slot::Known(offset)),
                Decision::Wait(rx) => slots.push(Slot::Wait(rx)),
                Decision::Plain | Decision::New => {
                    if matches!(decision, Decision::New) {
                        let (pid, epoch, base) =
                            (b.producer_id(), b.producer_epoch(), b.base_sequence());
                        let (result, _) = watch::channel(None);
                        pending.entry(pid).or_default().push(Pending {
                            epoch,
                            first_seq: base,
                            last_seq: last_seq(base, b.record_count()),
                            result,
                        });
                        registered.push((pid, epoch, base, proposals.len()));
                    }
                    slots.push(Slot::Propose(proposals.len()));
                    proposals.push(b);
                }
            }
        }
        Ok((slots, proposals, registered))
    }

    /// Reads whole batches from `offset`, up to the high watermark and about `max_bytes`.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Fetched> {
        let high_watermark = self.high_watermark();
        self.log
            .read_bounded(offset, max_bytes, high_watermark)
            .map_err(|e| self.storage_error(e))
            .map(|mut f| {
                f.end_offset = high_watermark;
                f
            })
    }

    /// Offset after the last committed record.
    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    /// Follows the high watermark.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.high_watermark.subscribe()
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.log.state().start_offset
    }

    /// The first committed offset whose batch holds a record at or after `timestamp_ms`, or
    /// the high watermark if there is none.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64> {
        let found = self
            .log
            .offset_for_timestamp(timestamp_ms)
            .map_err(|e| self.storage_error(e))?;
        let high_watermark = self.high_watermark();
        Ok(found
            .filter(|o| *o < high_watermark)
            .unwrap_or(high_watermark))
    }

    /// Bounds and size.
    pub fn status(&self) -> Result<PartitionStatus> {
        let state = self.log.state();
        let segments = self.log.segments().map_err(|e| self.storage_error(e))?;
        Ok(PartitionStatus {
            id: self.id,
            leader: self.leader(),
            start_offset: state.start_offset,
            high_watermark: self.high_watermark(),
            next_offset: state.next_offset,
            bytes: segments.iter().map(|s| s.bytes).sum(),
            segments: segments.len() as u32,
        })
    }

    /// Bytes of the log (cheap: the active segment plus what sealed segments report).
    pub fn log_bytes(&self) -> u64 {
        self.log
            .segments()
            .map(|s| s.iter().map(|s| s.bytes).sum())
            .unwrap_or(0)
    }

    /// Reads the partition's aggregation state.
    pub fn with_aggs<R>(&self, f: impl FnOnce(&PartitionAggs) -> R) -> R {
        f(&lock(&self.aggs))
    }

    /// Writes a control record through Raft (as the leader) and waits until it is applied.
    pub async fn propose_control(&self, control: &Control) -> Result<()> {
        let batch = control.to_batch().map_err(Error::Unavailable)?;
        match self.raft.client_write(Batch(batch)).await {
            Ok(_) => Ok(()),
            Err(openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_leader(f.leader_id))
            }
            Err(e) => Err(Error::Unavailable(format!(
                "{}/{}: control record not written: {e}",
                self.topic, self.id
            ))),
        }
    }

    /// Whether this leader has applied everything of earlier terms (so its state is current).
    pub fn leader_caught_up(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.current_leader == Some(self.node_id) && applied_own_term(&m)
    }

    /// Applies retention: finds the purge point, makes sure a snapshot covers it, and asks
    /// Raft to purge up to it. Returns the purge point.
    pub async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_ms: i64,
    ) -> Result<Option<u64>> {
        let Some(point) = self
            .log
            .retention_point(policy, now_ms)
            .map_err(|e| self.storage_error(e))?
        else {
            return Ok(None);
        };
        let snapshot = self
            .raft
            .metrics()
            .borrow_watched()
            .snapshot
            .map(|s| s.index);
        if snapshot.is_none_or(|s| s < point) {
            let _ = self.raft.trigger().snapshot().await;
            let covered = self
                .raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= point),
                    "snapshot covers the retention point",
                )
                .await;
            if covered.is_err() {
                return Ok(None);
            }
        }
        self.raft
            .trigger()
            .purge_log(point)
            .await
            .map_err(|e| Error::Unavailable(format!("{}/{}: {e}", self.topic, self.id)))?;
        Ok(Some(point))
    }

    /// Stops the Raft group, then flushes and closes the log; later appends fail.
    pub async fn close(&self) -> Result<()> {
        if let Some(search) = &self.search {
            search.stop().await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(topic = %self.topic, partition = self.id, error = %e, "raft group did not stop cleanly");
        }
        self.log.close().map_err(|e| self.storage_error(e))
    }

    fn storage_error(&self, e: strata_storage::Error) -> Error {
        Error::from_storage(&self.topic, self.id, e)
    }
}

/// Why a proposal did not complete.
#[derive(Debug)]
enum ProposeFailure {
    /// Leadership moved (the entries may still be committed by the new leader).
    NotLeader(Option<u64>),
    /// The leader could not establish a lease before the deadline (nothing was appended).
    NoQuorum,
    /// Raft failed.
    Unavailable(String),
}

/// Proposes batches to Raft and waits for their real outcome: applied, or discarded by a
/// leader change. Retries, until `deadline`, while a new leader's lease is not established
/// (openraft then refuses the write before appending anything).
async fn propose(
    raft: &PartitionRaft,
    proposals: Vec<RecordBatch>,
    deadline: Instant,
) -> std::result::Result<Vec<u64>, ProposeFailure> {
    loop {
        let stream = raft
            .client_write_many(proposals.iter().cloned().map(Batch))
            .await
            .map_err(|e| ProposeFailure::Unavailable(e.to_string()))?;
        let results: Vec<_> = stream.collect().await;
        let mut offsets = Vec::with_capacity(results.len());
        let mut retry = false;
        for r in results {
            match r {
                Ok(Ok(resp)) => match resp.response {
                    Applied::Appended { base_offset } => offsets.push(base_offset),
                    other => {
                        return Err(ProposeFailure::Unavailable(format!(
                            "unexpected apply result {other:?}"
                        )));
                    }
                },
                Ok(Err(ClientWriteError::ForwardToLeader(f)))
                    if f.reason == ForwardReason::LeaseExpired && offsets.is_empty() =>
                {
                    retry = true;
                    break;
                }
                Ok(Err(ClientWriteError::ForwardToLeader(f)))
                | Ok(Err(ClientWriteError::LogEntryDiscarded(f))) => {
                    return Err(ProposeFailure::NotLeader(f.leader_id));
                }
                Ok(Err(e)) => return Err(ProposeFailure::Unavailable(e.to_string())),
                Err(fatal) => return Err(ProposeFailure::Unavailable(fatal.to_string())),
            }
        }
        if !retry {
            return Ok(offsets);
        }
        if Instant::now() + Duration::from_millis(20) > deadline {
            return Err(ProposeFailure::NoQuorum);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Answers and forgets the pending entries of a proposal once its outcome is known.
fn settle(
    pending: &Mutex<HashMap<i64, Vec<Pending>>>,
    registered: &[(i64, i16, i32, usize)],
    outcome: &std::result::Result<Vec<u64>, ProposeFailure>,
) {
    if registered.is_empty() {
        return;
    }
    let mut pending = lock(pending);
    for (pid, epoch, base, index) in registered {
        let Some(list) = pending.get_mut(pid) else {
            continue;
        };
        if let Some(pos) = list
            .iter()
            .position(|p| p.epoch == *epoch && p.first_seq == *base)
        {
            let p = list.remove(pos);
            tracing::debug!(pid, epoch, base, outcome = ?outcome.as_ref().map(|o| o.get(*index).copied()), "pending batch settled");
            let answer = match outcome {
                Ok(offsets) => offsets
                    .get(*index)
                    .copied()
                    .ok_or_else(|| "no offset for the batch".to_string()),
                Err(e) => Err(format!("{e:?}")),
            };
            p.result.send_replace(Some(answer));
        }
        if list.is_empty() {
            pending.remove(pid);
        }
    }
}
