//! The audit log: every authentication failure, permission denial and administrative change
//! (who, what, on what, when, with what result) becomes a JSON record of the internal topic
//! [`AUDIT_TOPIC`], searchable like any other topic and readable only by superusers.
//! Recording never blocks a request: events go through a bounded queue to one writer task
//! per node, which batches them and appends to the topic's leader (here, or on the leader's
//! node through its peer listener). When the queue is full an event is dropped and counted.
//! A cluster that requires no login audits nothing (every caller is the same anonymous one).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use strata_proto::v1;
use strata_storage::{BatchBuilder, NewRecord, RecordBatch};
use tokio::sync::mpsc;

use crate::controller::{Cluster, SearchSettings, TopicConfig};
use crate::error::{Error, Result};
use crate::topics::Topics;

/// The audit topic. Names starting with `_` are Strata's: clients cannot create them and
/// only superusers may use them.
pub const AUDIT_TOPIC: &str = "_audit";
/// Events waiting for the writer; more are dropped (and counted).
const QUEUE: usize = 10_000;
/// Most events in one batch.
const BATCH_EVENTS: usize = 1_000;
/// How long one append may take.
const APPEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries to write one batch before it is given up (and counted as dropped).
const ATTEMPTS: u32 = 20;
/// How long audit records are kept.
const RETENTION_MS: u64 = 7 * 24 * 3_600_000;

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// When (ms since the epoch).
    pub ts: i64,
    /// The node that saw it.
    pub node: u64,
    /// Who: a user name, `anonymous`, or `unauthenticated`.
    pub principal: String,
    /// What: the call (`Admin/CreateTopic`) or the permission asked for.
    pub action: String,
    /// On what (a topic, user, rule; empty when the action says it).
    pub resource: String,
    /// `ok`, `denied`, `unauthenticated` or `failed`.
    pub result: String,
    /// The error's message, if any.
    pub message: String,
}

/// The queue into the audit log (cheap to clone).
#[derive(Debug, Clone)]
pub struct AuditLog {
    node: u64,
    enabled: bool,
    queue: mpsc::Sender<AuditEvent>,
    dropped: Arc<AtomicU64>,
}

/// The writer's end of the queue.
#[derive(Debug)]
pub struct AuditQueue(mpsc::Receiver<AuditEvent>);

fn now_ms() -> i64 {
    strata_storage::clock::now_ms()
}

impl AuditLog {
    /// The log of node `node` and the queue its writer drains. A log that is not `enabled`
    /// (a cluster without logins: every caller is anonymous) records nothing.
    pub fn new(node: u64, enabled: bool) -> (AuditLog, AuditQueue) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let log = AuditLog {
            node,
            enabled,
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (log, AuditQueue(rx))
    }

    /// Records an event (never waits; a full queue drops it).
    pub fn record(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        result: &str,
        message: &str,
    ) {
        if !self.enabled {
            return;
        }
        let event = AuditEvent {
            ts: now_ms(),
            node: self.node,
            principal: principal.to_string(),
            action: action.to_string(),
            resource: resource.to_string(),
            result: result.to_string(),
            message: message.to_string(),
        };
        if self.queue.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped so far (queue full, or the topic could not be written).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes queued events to the audit topic until the queue closes.
    pub async fn run(self, mut queue: AuditQueue, topics: Arc<Topics>, cluster: Arc<Cluster>) {
        while let Some(first) = queue.0.recv().await {
            let mut events = vec![first];
            while events.len() < BATCH_EVENTS {
                match queue.0.try_recv() {
                    Ok(e) => events.push(e),
                    Err(_) => break,
                }
            }
            let count = events.len() as u64;
            let batch = match batch_of(&events) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "audit events could not be encoded");
                    self.dropped.fetch_add(count, Ordering::Relaxed);
                    continue;
                }
            };
            let mut attempt = 0;
            loop {
                attempt += 1;
                match write(&topics, &cluster, batch.clone()).await {
                    Ok(()) => break,
                    Err(e) if attempt < ATTEMPTS => {
                        tracing::debug!(error = %e, "writing audit events; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, events = count, "audit events were not written");
                        self.dropped.fetch_add(count, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}

fn batch_of(events: &[AuditEvent]) -> Result<RecordBatch> {
    let bad = |e: &dyn std::fmt::Display| Error::Unavailable(format!("audit batch: {e}"));
    let mut b = BatchBuilder::with_capacity(events.len() * 256);
    for event in events {
        let value = serde_json::to_vec(event).map_err(|e| bad(&e))?;
        b.push(NewRecord::value(event.ts, &value).with_key(event.principal.as_bytes()))
            .map_err(|e| bad(&e))?;
    }
    b.finish().map_err(|e| bad(&e))
}

/// Appends `batch` to the audit topic's partition on its leader, creating the topic first
/// if it does not exist.
async fn write(topics: &Topics, cluster: &Cluster, batch: RecordBatch) -> Result<()> {
    let topic = match topics.get(AUDIT_TOPIC) {
        Ok(t) => t,
        Err(Error::UnknownTopic(_)) => {
            let config = TopicConfig {
                partitions: 1,
                replication_factor: 0,
                retention_ms: Some(RETENTION_MS),
                retention_bytes: None,
                search: SearchSettings::default(),
            };
            match topics
                .create(cluster, AUDIT_TOPIC.to_string(), config, APPEND_TIMEOUT)
                .await
            {
                Ok(t) => t,
                Err(Error::TopicExists(_)) => topics.get(AUDIT_TOPIC)?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let local = topic.partition(0).ok();
    if let Some(p) = local
        && p.is_leader()
    {
        p.append(vec![batch], APPEND_TIMEOUT).await?;
        return Ok(());
    }
    let leader = local
        .and_then(|p| p.current_leader())
        .or_else(|| topic.replicas.first().and_then(|r| r.first().copied()))
        .ok_or_else(|| Error::Unavailable("the audit topic has no leader".into()))?;
    let mut rpc = v1::produce_client::ProduceClient::new(cluster.channel_to(leader)?);
    let request = v1::ProduceRequest {
        topic: AUDIT_TOPIC.to_string(),
        batches: vec![v1::PartitionBatch {
            partition: 0,
            batch: batch.into_bytes(),
        }],
        acks: v1::Acks::All as i32,
        timeout_ms: APPEND_TIMEOUT.as_millis() as u32,
    };
    let unavailable = |reason: String| Error::PeerUnavailable {
        node: leader,
        reason,
    };
    let answer = rpc
        .produce(request)
        .await
        .map_err(|s| unavailable(s.message().to_string()))?
        .into_inner();
    match answer.results.first().and_then(|r| r.error.as_ref()) {
        None => Ok(()),
        Some(e) => Err(unavailable(e.message.clone())),
    }
}
