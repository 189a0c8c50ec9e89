//! A running Raft group as the rest of the node uses it: started over a log and a
//! [`Machine`], written to, observed, waited on, purged and stopped. openraft's handle, its
//! metrics and its errors stay in here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardReason, RaftError};
use strata_storage::{LogConfig, PartitionLog, RecordBatch};

use super::machine::{Machine, StateMachine};
use super::snapshot::SnapshotEnd;
use super::store::{LogRestarted, LogStore};
use super::{Applied, Batch, GroupId, Raft, RaftEnv, TypeConfig, to_storage_log_id};
use crate::error::{Error, Result};

/// Why a write was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This replica does not lead (the leader, when known). Nothing was appended.
    #[error("not the leader{}", .0.map(|l| format!(" (node {l} is)")).unwrap_or_default())]
    NotLeader(Option<u64>),
    /// This replica was just elected and has no lease yet (no quorum acknowledged it).
    /// Nothing was appended; the write may be retried here.
    #[error("the new leader has no lease yet")]
    LeaseExpired,
    /// Leadership moved after the entry was appended: it may still be committed by the new
    /// leader (the leader, when known).
    #[error("the entry was discarded by a leader change")]
    Discarded(Option<u64>),
    /// The group failed or is stopping.
    #[error("{0}")]
    Failed(String),
}

impl WriteError {
    fn from_client(e: ClientWriteError<TypeConfig>) -> WriteError {
        match e {
            ClientWriteError::ForwardToLeader(f) if f.reason == ForwardReason::LeaseExpired => {
                WriteError::LeaseExpired
            }
            ClientWriteError::ForwardToLeader(f) => WriteError::NotLeader(f.leader_id),
            ClientWriteError::LogEntryDiscarded(f) => WriteError::Discarded(f.leader_id),
            e => WriteError::Failed(e.to_string()),
        }
    }
}

/// A replica's view of its group, for status pages, waits and housekeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// This node.
    pub node_id: u64,
    /// The leader, when known.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// Index of the last entry in this replica's log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry this replica knows committed.
    pub committed_index: Option<u64>,
    /// The last entry applied.
    pub applied: Option<strata_storage::LogId>,
    /// On a leader: the index each replica (itself included) is known to hold up to.
    pub replication: Option<BTreeMap<u64, Option<u64>>>,
    /// Index the latest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Why the group's Raft core stopped, if it stopped other than by a shutdown (a storage
    /// error, a panic): the replica serves nothing until the node restarts.
    pub stopped: Option<String>,
}

impl GroupStatus {
    fn of(m: &openraft::RaftMetrics<TypeConfig>) -> GroupStatus {
        GroupStatus {
            node_id: m.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.map(|l| l.index),
            applied: m.last_applied.as_ref().map(to_storage_log_id),
            replication: m.replication.as_ref().map(|r| {
                r.iter()
                    .map(|(id, matched)| (*id, matched.as_ref().map(|l| l.index)))
                    .collect()
            }),
            snapshot_index: m.snapshot.map(|s| s.index),
            stopped: match &m.running_state {
                Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
                Err(e) => Some(e.to_string()),
            },
        }
    }

    /// Whether the replica has applied an entry of its current term: for a leader, that it
    /// has applied everything committed before its election (openraft's leader restore is
    /// off, so a leader always has an entry of its own term; see [`super::RaftTuning`]).
    pub fn applied_own_term(&self) -> bool {
        self.applied.is_some_and(|l| l.term == self.term)
    }
}

fn applied_own_term(m: &openraft::RaftMetrics<TypeConfig>) -> bool {
    m.last_applied
        .is_some_and(|l| l.leader_id.term == m.current_term)
}

/// A Raft group this node runs. Cheap to clone: every clone is the same group.
#[derive(Clone)]
pub struct Group {
    id: GroupId,
    node_id: u64,
    raft: Raft,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &format_args!("{:#x}", self.id))
            .finish_non_exhaustive()
    }
}

/// Opens the log a group keeps its entries in (creating its directory), on the blocking pool
/// (recovery at open reads the active segment's tail). `topic` and `partition` name it in
/// errors.
///
/// `durable_below`, when reopening a log that failed a flush, is the index before which its
/// entries were known durable: the entries from it on are cut (they may be in the page
/// cache only; a leader sends them again), so that the replica never counts towards a
/// quorum for an entry its disk may not hold.
pub async fn open_log(
    dir: &Path,
    config: LogConfig,
    topic: &str,
    partition: u32,
    durable_below: Option<u64>,
) -> Result<PartitionLog> {
    let dir = dir.to_owned();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let log = tokio::task::spawn_blocking(move || PartitionLog::open(&dir, config))
        .await
        .map_err(Error::task("open"))?
        .map_err(|e| Error::from_storage(topic, partition, e))?;
    if let Some(below) = durable_below {
        cut_undurable(&log, below, topic, partition).await?;
    }
    Ok(log)
}

/// Cuts the entries from index `below` on from a reopened `log` (see [`open_log`]).
async fn cut_undurable(log: &PartitionLog, below: u64, topic: &str, id: u32) -> Result<()> {
    let state = log.state();
    if state.next_index <= below {
        return Ok(());
    }
    let last = below.checked_sub(1).filter(|l| *l >= state.first_index);
    tracing::warn!(%topic, partition = id, from = below, to = state.next_index, "cutting entries not known durable after a failed flush; the leader sends them again");
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.truncate_after(last))
        .await
        .map_err(Error::task("truncate"))?
        .map_err(|e| Error::from_storage(topic, id, e))
}

impl Group {
    /// Starts group `id` over `log` (its vote, commit and snapshot files live in the log's
    /// directory) with `machine` applying its entries, registers it with the node's Raft
    /// service, and, if the group is new, initializes it with `members` (every replica does,
    /// with the same membership, which openraft allows); the first member stands for
    /// election at once. `name` says which group it is in errors.
    pub async fn start(
        env: &RaftEnv,
        id: GroupId,
        name: &str,
        log: PartitionLog,
        machine: Box<dyn Machine>,
        restarted: Option<LogRestarted>,
        members: &[u64],
    ) -> Result<Group> {
        let dir = log.dir().to_owned();
        let end = SnapshotEnd::default();
        let sm = StateMachine::open(&dir, end.clone(), machine).map_err(|e| Error::io(&dir, e))?;
        let store = LogStore::open(log, end, restarted).map_err(|e| Error::io(&dir, e))?;
        let raft = openraft::Raft::new(
            env.node_id,
            env.config.clone(),
            env.router.factory(id),
            store,
            sm,
        )
        .await
        .map_err(|e| Error::Unavailable(format!("{name}: raft did not start: {e}")))?;
        let group = Group {
            id,
            node_id: env.node_id,
            raft,
        };
        env.groups.insert(id, group.clone());
        group.initialize(members).await;
        Ok(group)
    }

    async fn initialize(&self, members: &[u64]) {
        match self.raft.is_initialized().await {
            Ok(true) | Err(_) => return,
            Ok(false) => {}
        }
        let voters: BTreeSet<u64> = members.iter().copied().collect();
        if let Err(e) = self.raft.initialize(voters).await {
            tracing::debug!(error = %e, "group initialized elsewhere first");
        }
        if members.first() == Some(&self.node_id) && members.len() > 1 {
            let _ = self.raft.trigger().elect(false).await;
        }
    }

    /// Its id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The leading node, if one is known.
    pub fn leader(&self) -> Option<u64> {
        // Copied out: a metrics borrow must never be held across an await.
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        // A core stopped on an error leaves its last view behind: it leads nothing now.
        match &m.running_state {
            Ok(()) => m.current_leader,
            Err(_) => None,
        }
    }

    /// The replica's current term. One look at the metrics.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// Whether this replica has applied an entry of its current term (see
    /// [`GroupStatus::applied_own_term`]).
    pub fn applied_own_term(&self) -> bool {
        applied_own_term(&self.raft.metrics().borrow_watched())
    }

    /// Whether this replica leads and has applied everything of earlier terms (so its state
    /// is current). One look at the metrics: cheap enough for every request.
    pub fn leads_caught_up(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.current_leader == Some(self.node_id) && applied_own_term(&m)
    }

    /// Where the replica stands.
    pub fn status(&self) -> GroupStatus {
        GroupStatus::of(&self.raft.metrics().borrow_watched())
    }

    /// Waits until `done` holds for the replica's status, for at most `timeout`; the status
    /// that satisfied it, or `None` on time-out or when the group stops.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&GroupStatus) -> bool + Send + Sync,
        what: &str,
    ) -> Option<GroupStatus> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| done(&GroupStatus::of(m)), what)
            .await
            .ok()
            .map(|m| GroupStatus::of(&m))
    }

    /// Proposes `batch` and waits until it is applied here; the machine's answer.
    pub async fn write(&self, batch: RecordBatch) -> std::result::Result<Applied, WriteError> {
        match self.raft.client_write(Batch(batch)).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(e)) => Err(WriteError::from_client(e)),
            Err(RaftError::Fatal(e)) => Err(WriteError::Failed(e.to_string())),
        }
    }

    /// Confirms that this replica still leads — a quorum answers a heartbeat of its term
    /// (openraft's ReadIndex) — and waits until it has applied everything committed before:
    /// a read of its state afterwards is linearizable, never the view of a leader deposed
    /// without knowing it (cut off, paused, or back from a failed disk).
    pub async fn ensure_linearizable(
        &self,
        timeout: Duration,
    ) -> std::result::Result<(), WriteError> {
        let read = self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(match e.forward_to_leader() {
                Some(f) => WriteError::NotLeader(f.leader_id),
                None => WriteError::Failed(e.to_string()),
            }),
            Err(_) => Err(WriteError::Failed(format!(
                "no quorum confirmed the leader within {timeout:?}"
            ))),
        }
    }

    /// Proposes `batches` as one submission (they are appended in order) and waits until
    /// each is applied or refused: the machine's answer for each.
    pub async fn write_many(
        &self,
        batches: impl IntoIterator<Item = RecordBatch>,
    ) -> std::result::Result<Vec<std::result::Result<Applied, WriteError>>, WriteError> {
        use futures_util::StreamExt;
        let stream = self
            .raft
            .client_write_many(batches.into_iter().map(Batch))
            .await
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        Ok(stream
            .map(|r| match r {
                Ok(Ok(written)) => Ok(written.response),
                Ok(Err(e)) => Err(WriteError::from_client(e)),
                Err(fatal) => Err(WriteError::Failed(fatal.to_string())),
            })
            .collect()
            .await)
    }

    /// Asks for a snapshot of the state machine now (it is built in the background).
    pub async fn snapshot(&self) {
        let _ = self.raft.trigger().snapshot().await;
    }

    /// Purges the log up to `index` (at most what the latest snapshot covers).
    pub async fn purge(&self, index: u64) -> Result<()> {
        self.raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(|e| Error::Unavailable(format!("raft group {:#x}: {e}", self.id)))
    }

    /// Hands leadership to `node` (this replica must lead; otherwise nothing happens).
    pub async fn transfer_leader(&self, node: u64) {
        let _ = self.raft.trigger().transfer_leader(node).await;
    }

    /// Stops the group (its peers see it as unreachable from then on).
    pub async fn shutdown(&self) -> std::result::Result<(), String> {
        self.raft.shutdown().await.map_err(|e| e.to_string())
    }

    /// openraft's handle, for the peer service.
    pub(super) fn raft(&self) -> &Raft {
        &self.raft
    }
}
