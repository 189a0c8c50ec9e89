//! The leader's write path. Each record batch becomes one log entry, and the produce is
//! answered once the entries are committed by a majority of the replicas (each after its
//! fsync policy) and applied.
//!
//! Idempotent batches are checked first against the [`ProducerTable`](super::producers):
//! applied *and* proposed-but-unanswered batches, so a retry racing with its original is
//! answered with the original's offsets instead of being written twice. A new leader takes
//! idempotent batches only once it has applied every entry of earlier terms.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_storage::RecordBatch;

use super::Partition;
use super::producers::{ProducerTable, Registered, Slot};
use crate::agg::Control;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::raft::{Applied, Group, WriteError};

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

impl Partition {
    /// Appends validated batches in order as the partition's leader; answers with each
    /// batch's base offset once the batches are committed and applied. A batch not committed
    /// within `timeout` is answered with [`Error::Timeout`] (it may still be committed).
    pub async fn append(&self, batches: Vec<RecordBatch>, timeout: Duration) -> Result<Vec<u64>> {
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
        let plan = lock(&self.producers).plan(&self.topic, self.id, batches)?;
        let proposed = if plan.proposals.is_empty() {
            Vec::new()
        } else {
            // The proposal runs to its real outcome in its own task, which then settles the
            // in-flight entries; this request waits for it only until its deadline.
            let (group, producers) = (self.group.clone(), self.producers.clone());
            let (proposals, registered) = (plan.proposals, plan.registered);
            let task = tokio::spawn(async move {
                let outcome = propose(&group, proposals, deadline).await;
                if !registered.is_empty() {
                    settle(&producers, &registered, &outcome);
                }
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
                Ok(Err(e)) => return Err(Error::task("append")(e)),
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "append to {}/{} not committed in time (it may still be)",
                        self.topic, self.id
                    )));
                }
            }
        };
        let mut offsets = Vec::with_capacity(plan.slots.len());
        for slot in plan.slots {
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
        // The usual case, answered from one look at the metrics (a wait clones them all,
        // which every produce request would pay for).
        if self.leader_caught_up() {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let node_id = self.node_id;
        let caught_up = self
            .group
            .wait_until(
                remaining,
                |s| s.leader != Some(node_id) || s.applied_own_term(),
                "leader applied its own term",
            )
            .await;
        match caught_up {
            Some(s) if s.leader == Some(node_id) => Ok(()),
            Some(s) => Err(self.not_leader(s.leader)),
            None => Err(Error::Unavailable(format!(
                "{}/{}: the new leader is still catching up",
                self.topic, self.id
            ))),
        }
    }

    /// Writes a control record through Raft (as the leader) and waits until it is applied.
    pub async fn propose_control(&self, control: &Control) -> Result<()> {
        let batch = control.to_batch().map_err(Error::Unavailable)?;
        match self.group.write(batch).await {
            Ok(_) => Ok(()),
            Err(WriteError::NotLeader(leader)) => Err(self.not_leader(leader)),
            Err(WriteError::LeaseExpired) => Err(self.not_leader(None)),
            Err(e) => Err(Error::Unavailable(format!(
                "{}/{}: control record not written: {e}",
                self.topic, self.id
            ))),
        }
    }
}

/// Proposes batches to Raft and waits for their real outcome: applied, or discarded by a
/// leader change. Retries, until `deadline`, while a new leader's lease is not established
/// (openraft then refuses the write before appending anything).
async fn propose(
    group: &Group,
    proposals: Vec<RecordBatch>,
    deadline: Instant,
) -> std::result::Result<Vec<u64>, ProposeFailure> {
    loop {
        let results = group
            .write_many(proposals.iter().cloned())
            .await
            .map_err(|e| ProposeFailure::Unavailable(e.to_string()))?;
        let mut offsets = Vec::with_capacity(results.len());
        let mut retry = false;
        for r in results {
            match r {
                Ok(Applied::Appended { base_offset }) => offsets.push(base_offset),
                Ok(other) => {
                    return Err(ProposeFailure::Unavailable(format!(
                        "unexpected apply result {other:?}"
                    )));
                }
                Err(WriteError::LeaseExpired) if offsets.is_empty() => {
                    retry = true;
                    break;
                }
                Err(WriteError::LeaseExpired) => return Err(ProposeFailure::NotLeader(None)),
                Err(WriteError::NotLeader(leader) | WriteError::Discarded(leader)) => {
                    return Err(ProposeFailure::NotLeader(leader));
                }
                Err(WriteError::Failed(e)) => return Err(ProposeFailure::Unavailable(e)),
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

/// Answers and forgets the in-flight entries of a proposal once its outcome is known.
fn settle(
    producers: &Mutex<ProducerTable>,
    registered: &[Registered],
    outcome: &std::result::Result<Vec<u64>, ProposeFailure>,
) {
    let failure;
    let outcome = match outcome {
        Ok(offsets) => Ok(offsets.as_slice()),
        Err(e) => {
            failure = format!("{e:?}");
            Err(failure.as_str())
        }
    };
    lock(producers).settle(registered, outcome);
}
