//! The producer: batches records per partition and sends them in the background.
//!
//! [`Producer::send`] places a record in its partition's open batch and answers with a
//! [`DeliveryFuture`] that resolves once the broker has acknowledged it (at the requested
//! [`Acks`] level) with the record's offset. `send` itself waits only when the producer's
//! memory budget (`max_in_flight_bytes`) is spent: that is the back-pressure. Batches go out
//! when full (`batch_bytes`), after `linger`, or on [`Producer::flush`]; one request per
//! partition is in flight at a time, so records of a partition keep their order across
//! retries. Retriable failures (leader moved, broker unavailable, time-out) are retried with
//! exponential back-off after refreshing metadata. Until idempotent produce arrives with
//! replication, a retry of a request whose answer was lost can store its batch twice.

mod accumulator;
mod sender;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use strata_proto::v1;
use strata_storage::NewRecord;
use tokio::sync::{Notify, Semaphore, oneshot};

use self::accumulator::{Accumulator, Waiter};

/// How long `send` keeps asking about a topic the brokers call unknown: one created a moment
/// ago reaches every broker well within it; a misspelt name fails after it.
const UNKNOWN_TOPIC_WAIT: Duration = Duration::from_secs(2);
use crate::client::Client;
use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;
use crate::record::{ProducerRecord, RecordMetadata, now_ms};

/// When the broker answers a produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Once the batch is durable (and, with replication, committed by a majority).
    #[default]
    All,
    /// Once the leader has appended it: faster, but a crash right after can lose it.
    Leader,
}

impl Acks {
    fn to_proto(self) -> v1::Acks {
        match self {
            Acks::All => v1::Acks::All,
            Acks::Leader => v1::Acks::Leader,
        }
    }
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    client: Client,
    linger: Duration,
    batch_bytes: usize,
    acks: Acks,
    retries: u32,
    retry_backoff: Duration,
    max_in_flight_bytes: usize,
    request_timeout: Duration,
    delivery_timeout: Duration,
    pub(crate) idempotent: bool,
}

impl ProducerBuilder {
    pub(crate) fn new(client: Client) -> Self {
        let request_timeout = client.config().request_timeout;
        ProducerBuilder {
            client,
            linger: Duration::from_millis(5),
            batch_bytes: 1 << 20,
            acks: Acks::All,
            retries: 10_000,
            retry_backoff: Duration::from_millis(20),
            max_in_flight_bytes: 64 << 20,
            request_timeout,
            delivery_timeout: Duration::from_secs(60),
            idempotent: true,
        }
    }

    /// Whether retries are deduplicated (default on): the producer gets a producer id from
    /// the cluster and numbers its records per partition, so a batch retried after a lost
    /// answer is stored once and answered with its original offsets.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// How long a batch waits for more records before it is sent (default 5 ms).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Size at which a batch is sent at once (default 1 MiB).
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Acknowledgement level (default [`Acks::All`]).
    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// Retries of a retriable failure at most (default 10,000: retries are bounded by
    /// [`Self::delivery_timeout`] first).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// First back-off between retries; it doubles each time, up to 200 ms (default 20 ms).
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Memory for records not yet acknowledged; `send` waits when it is spent (default 64 MiB).
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes.max(1);
        self
    }

    /// How long a batch may take, retries included, before it fails (default 60 s). A leader
    /// fail-over takes about a second; retries go on through it.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// Time limit of one produce request (default: the client's request time-out).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Starts the producer (its sender runs on the current Tokio runtime).
    pub fn build(self) -> Producer {
        let shared = Arc::new(Shared {
            accumulator: Mutex::new(Accumulator::new(self.batch_bytes, self.linger)),
            budget: Arc::new(Semaphore::new(self.max_in_flight_bytes)),
            wake: Notify::new(),
            idle: Notify::new(),
            flushing: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            settings: self,
        });
        let task = tokio::spawn(sender::run(shared.clone()));
        Producer {
            shared: shared.clone(),
            guard: Arc::new(CloseOnDrop {
                shared,
                task: Mutex::new(Some(task)),
            }),
        }
    }
}

pub(crate) struct Shared {
    accumulator: Mutex<Accumulator>,
    budget: Arc<Semaphore>,
    /// Wakes the sender: a batch is ready, a batch was opened, a request finished, a flush.
    wake: Notify,
    /// Tells flushes that the producer went idle.
    idle: Notify,
    flushing: AtomicUsize,
    closing: AtomicBool,
    settings: ProducerBuilder,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Accumulator> {
        self.accumulator.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct CloseOnDrop {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // The sender sends what is left, then stops.
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// Sends records. Cheap to clone; clones share batches and the memory budget. When the
/// last clone is dropped, records already sent are still delivered.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    guard: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

/// Resolves to where a record was stored, once the broker acknowledged it.
#[must_use = "a delivery future says whether the record was stored"]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryFuture").finish_non_exhaustive()
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

impl Producer {
    /// Queues a record; waits only for room in the memory budget. The returned future
    /// resolves when the record is acknowledged.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let client = &self.shared.settings.client;
        // Metadata may be briefly out of reach (a broker died under the request): wait for
        // it like a retry would, up to the delivery time-out.
        // A topic unknown to the broker that answered may just have been created: the others
        // learn of it from the controller within milliseconds, so ask again for a moment.
        let started = std::time::Instant::now();
        let deadline = started + self.shared.settings.delivery_timeout;
        let unknown_until = started + UNKNOWN_TOPIC_WAIT.min(self.shared.settings.delivery_timeout);
        let mut backoff = self.shared.settings.retry_backoff;
        let topic = loop {
            match client.topic(&record.topic).await {
                Ok(topic) => break topic,
                Err(e)
                    if (e.is_retriable() && std::time::Instant::now() < deadline)
                        || (e.code() == Some(v1::ErrorCode::UnknownTopic)
                            && std::time::Instant::now() < unknown_until) =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        };
        let partitions = topic.leaders.len() as u32;
        let topic_name = topic.name.clone();
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p < partitions => p,
            (Some(p), _) => {
                return Err(Error::Broker(crate::BrokerError {
                    code: v1::ErrorCode::UnknownPartition,
                    message: format!(
                        "topic `{}` has {partitions} partitions, not {}",
                        record.topic,
                        p + 1
                    ),
                    leader_hint: None,
                    leader_address: None,
                }));
            }
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => self.shared.lock().sticky_partition(&topic_name, partitions),
        };
        let size = record.key.as_ref().map_or(0, |k| k.len())
            + record.value.as_ref().map_or(0, |v| v.len())
            + record
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
            + 32;
        if size > self.shared.settings.max_in_flight_bytes {
            return Err(Error::InvalidConfig(format!(
                "a record of {size} bytes exceeds the producer's memory budget of {} bytes",
                self.shared.settings.max_in_flight_bytes
            )));
        }
        // Given back when the batch is done; waits only when the budget is spent.
        match self.shared.budget.try_acquire_many(size as u32) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let permit = self
                    .shared
                    .budget
                    .acquire_many(size as u32)
                    .await
                    .map_err(|_| Error::Closed)?;
                permit.forget();
            }
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), Some(&v[..])))
            .collect();
        let new = NewRecord {
            timestamp,
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &headers,
        };
        let (tx, rx) = oneshot::channel();
        let pushed = self.shared.lock().push(
            (topic_name, partition),
            new,
            size,
            Waiter { tx, timestamp },
            Instant::now,
        );
        match pushed {
            Ok(p) if p.sealed || p.opened => self.shared.wake.notify_one(),
            Ok(_) => {}
            Err(e) => {
                self.shared.budget.add_permits(size);
                return Err(e);
            }
        }
        Ok(DeliveryFuture { rx })
    }

    /// Sends a record and waits for its acknowledgement.
    pub async fn send_and_wait(&self, record: ProducerRecord) -> Result<RecordMetadata> {
        self.send(record).await?.await
    }

    /// Sends every queued record now and waits until all are acknowledged (or failed).
    pub async fn flush(&self) -> Result<()> {
        self.shared.flushing.fetch_add(1, Ordering::AcqRel);
        self.shared.wake.notify_one();
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.lock().is_idle() {
                break;
            }
            idle.await;
        }
        self.shared.flushing.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }

    /// Flushes, then stops the producer; later sends fail with [`Error::Closed`].
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let task = self
            .guard
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(())
    }
}
