//! Replicas that failed, reopened without a restart. A replica fails when its log fails a
//! flush (after a failed `fsync` nothing more may be written to it: the kernel may have
//! dropped the pages whose write-back failed) or its Raft core stops on an error. The node
//! reports it (an error log line, `strata_replicas_failed`, `/health` answering 503), takes
//! the replica out (its Raft group stops, so it leads nothing and another replica is
//! elected), and reopens it from disk: the log's recovery scan finds what reached the disk,
//! the entries not known durable are cut (the leader sends them again), and the state
//! machine is rebuilt from its snapshot and the log as at a start. A reopening that fails
//! (the disk still fails) is retried, backing off from 100 ms to 10 s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Topic, Topics};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::replica::{Partition, ReplicaOf};

/// How often replicas are checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The wait before the first reopening, doubled after each failed one up to the most.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MOST_RETRY: Duration = Duration::from_secs(10);

/// A replica taken out after a failure, until it reopens.
#[derive(Debug, Clone)]
pub struct FailedReplica {
    /// Its topic's id (a topic deleted and created again under the name is another).
    pub topic_id: u32,
    /// What failed, or why the last reopening failed.
    pub cause: String,
    /// When the failure was seen.
    pub since: Instant,
    /// Reopenings tried.
    pub attempts: u32,
    /// Whether its replica is out of the topic (closed); `durable_below` is then known.
    out: bool,
    durable_below: Option<u64>,
    next_attempt: Instant,
}

impl Topics {
    /// The replicas taken out after a failure, by topic and partition.
    pub fn failed_replicas(&self) -> BTreeMap<(String, u32), FailedReplica> {
        lock(&self.failed).clone()
    }

    /// Replicas reopened after a failure since the node started.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// Watches every replica and reopens those that failed, for as long as the node runs.
    pub async fn recover_failed(&self) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tick.tick().await;
            self.find_failed();
            self.reopen_due().await;
        }
    }

    /// Records replicas newly failed.
    fn find_failed(&self) {
        let now = Instant::now();
        for topic in self.all() {
            for p in &topic.partitions {
                let Some(cause) = p.failure() else { continue };
                let mut failed = lock(&self.failed);
                let key = (topic.name.clone(), p.id());
                if failed.get(&key).is_some_and(|f| f.topic_id == topic.id) {
                    continue;
                }
                tracing::error!(topic = %topic.name, partition = p.id(), %cause, "replica failed; taking it out and reopening it from disk");
                failed.insert(
                    key,
                    FailedReplica {
                        topic_id: topic.id,
                        cause,
                        since: now,
                        attempts: 0,
                        out: false,
                        durable_below: None,
                        next_attempt: now,
                    },
                );
            }
        }
    }

    /// Reopens the failed replicas whose turn it is.
    async fn reopen_due(&self) {
        let now = Instant::now();
        let due: Vec<(String, u32)> = lock(&self.failed)
            .iter()
            .filter(|(_, f)| f.next_attempt <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let (topic, partition) = (&key.0, key.1);
            let outcome = self.reopen(topic, partition).await;
            let mut failed = lock(&self.failed);
            match outcome {
                Ok(reopened) => {
                    if let Some(f) = failed.remove(&key)
                        && reopened
                    {
                        self.recoveries.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%topic, partition, after = ?f.since.elapsed(), attempts = f.attempts + 1, "failed replica reopened");
                    }
                }
                Err(e) => {
                    let Some(f) = failed.get_mut(&key) else {
                        continue;
                    };
                    f.attempts += 1;
                    f.cause = format!("reopening failed: {e}");
                    let wait = FIRST_RETRY
                        .saturating_mul(1 << f.attempts.min(10))
                        .min(MOST_RETRY);
                    f.next_attempt = Instant::now() + wait;
                    tracing::warn!(%topic, partition, attempts = f.attempts, retry_in = ?wait, error = %e, "failed replica not reopened yet");
                }
            }
        }
    }

    /// Takes failed replica `partition` of `topic` out (if it is still in) and opens it
    /// again. `Ok(false)`: nothing to do any more (the topic is gone, or the replica was
    /// not failed after all).
    async fn reopen(&self, topic: &str, partition: u32) -> Result<bool> {
        let _one = self.reconciling.lock().await;
        let Some(failed) = lock(&self.failed)
            .get(&(topic.to_string(), partition))
            .cloned()
        else {
            return Ok(false);
        };
        let current = match self.get(topic) {
            Ok(t) if t.id == failed.topic_id => t,
            _ => return Ok(false),
        };
        let durable_below = if failed.out {
            failed.durable_below
        } else {
            let Some(old) = current.partitions.iter().find(|p| p.id() == partition) else {
                return Ok(false);
            };
            if old.failure().is_none() {
                return Ok(false);
            }
            let durable_below = old.durable_below();
            self.take_out(&current, old).await;
            if let Some(f) = lock(&self.failed).get_mut(&(topic.to_string(), partition)) {
                f.out = true;
                f.durable_below = durable_below;
            }
            durable_below
        };
        let current = self.get(topic)?;
        let replicas = (current.replicas.get(partition as usize).cloned())
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))?;
        let of = ReplicaOf {
            topic: Arc::from(topic),
            topic_id: current.id,
            partition,
            replicas,
        };
        let reopened = self
            .open_replica(of, &current.config, durable_below)
            .await?;
        let mut partitions = current.partitions.clone();
        partitions.push(reopened);
        partitions.sort_by_key(|p| p.id());
        self.replace(&current, partitions);
        Ok(true)
    }

    /// Stops a failed replica and removes it from its topic.
    async fn take_out(&self, topic: &Arc<Topic>, old: &Arc<Partition>) {
        self.env.groups.remove(old.group_id());
        if let Err(e) = old.close().await {
            tracing::debug!(topic = %topic.name, partition = old.id(), error = %e, "closing the failed replica");
        }
        let partitions = (topic.partitions.iter())
            .filter(|p| !Arc::ptr_eq(p, old))
            .cloned()
            .collect();
        self.replace(topic, partitions);
    }

    /// Puts `topic` back in the registry with `partitions`.
    fn replace(&self, topic: &Topic, partitions: Vec<Arc<Partition>>) {
        let next = Topic {
            name: topic.name.clone(),
            id: topic.id,
            config: topic.config.clone(),
            replicas: topic.replicas.clone(),
            partitions,
            node_id: topic.node_id,
            cluster: topic.cluster.clone(),
        };
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.name.clone(), Arc::new(next));
    }
}
