//! The consumer: an async `Stream` of records from a consumer group's share of its topics,
//! or from partitions assigned by hand.
//!
//! A background task owns the membership and the fetching: it joins the group (and rejoins
//! when a heartbeat says so), resolves where each assigned partition starts (the committed
//! offset, else [`StartAt`]), and keeps one following `Fetch` stream per topic and leader.
//! Records reach the stream in chunks tagged with an assignment *epoch*; after a rebalance,
//! chunks of the old epoch are dropped, so a partition that moved to another member is not
//! read here any more. Commits use *consumed* positions: the offset after the last record the
//! application received from the stream (at-least-once). With auto-commit, they are
//! committed periodically, before a rebalance, and on close.

mod fetcher;
mod session;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use strata_proto::v1;
use tokio::sync::{Notify, mpsc};

use crate::client::Client;
use crate::error::{Error, Result, from_status};
use crate::record::ConsumerRecord;

/// Where to start reading a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The first record still stored.
    Earliest,
    /// Only records produced from now on (the default).
    #[default]
    Latest,
    /// This offset (clamped by the broker's range check).
    Offset(u64),
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerBuilder {
    client: Client,
    group: Option<String>,
    topics: Vec<String>,
    assigned: Vec<(String, u32)>,
    start: StartAt,
    auto_commit: Option<Duration>,
    max_bytes: u32,
    max_wait: Duration,
    session_timeout: Duration,
    rebalance_timeout: Duration,
}

impl ConsumerBuilder {
    pub(crate) fn new(client: Client) -> Self {
        ConsumerBuilder {
            client,
            group: None,
            topics: Vec::new(),
            assigned: Vec::new(),
            start: StartAt::Latest,
            auto_commit: Some(Duration::from_secs(5)),
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(500),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
        }
    }

    /// Consumes as a member of this group (with [`Self::topic`]), or commits to it (with
    /// [`Self::assign`]).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Subscribes to a topic (group mode).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Reads these partitions of a topic, without group membership.
    pub fn assign(
        mut self,
        topic: impl Into<String>,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Self {
        let topic = topic.into();
        self.assigned
            .extend(partitions.into_iter().map(|p| (topic.clone(), p)));
        self
    }

    /// Where partitions without a committed offset start (default: latest).
    pub fn start_at(mut self, start: StartAt) -> Self {
        self.start = start;
        self
    }

    /// Commit consumed positions at this interval (default 5 s); `None` to commit only with
    /// [`Consumer::commit`].
    pub fn auto_commit(mut self, every: Option<Duration>) -> Self {
        self.auto_commit = every;
        self
    }

    /// Batch bytes per fetch response (default 1 MiB).
    pub fn max_bytes(mut self, bytes: u32) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How long the broker holds a fetch open when there is nothing new (default 500 ms).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Group session time-out: the member is dropped if silent this long (default 10 s).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Starts consuming (on the current Tokio runtime).
    pub async fn build(self) -> Result<Consumer> {
        match (
            &self.group,
            self.topics.is_empty(),
            self.assigned.is_empty(),
        ) {
            (_, false, false) => {
                return Err(Error::InvalidConfig(
                    "subscribe to topics or assign partitions, not both".into(),
                ));
            }
            (None, false, true) => {
                return Err(Error::InvalidConfig(
                    "subscribing to topics needs a group; use assign() without one".into(),
                ));
            }
            (_, true, true) => {
                return Err(Error::InvalidConfig(
                    "nothing to consume: give topics or partitions".into(),
                ));
            }
            _ => {}
        }
        for topic in self
            .topics
            .iter()
            .chain(self.assigned.iter().map(|(t, _)| t))
        {
            self.client.topic(topic).await?; // fails early on an unknown topic
        }
        let (tx, rx) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            membership: Mutex::new(None),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            settings: self,
        });
        let task = tokio::spawn(session::run(shared.clone(), tx));
        Ok(Consumer {
            rx,
            buffered: VecDeque::new(),
            buffered_epoch: 0,
            shared,
            task: Some(task),
        })
    }
}

/// What the background task sends to the stream.
pub(crate) enum Chunk {
    Records {
        epoch: u64,
        records: Vec<ConsumerRecord>,
    },
    Error(Error),
}

/// What changes together at a new assignment, under one lock, so that commits and
/// positions never mix two assignments.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Moves at every new assignment; chunks of older epochs are dropped.
    pub epoch: u64,
    pub assignment: Vec<(Arc<str>, u32)>,
    /// The (member id, generation) the assignment came with: commits carry it, never a
    /// newer generation joined since (the coordinator would take this assignment's
    /// positions for the new one's).
    pub member: Option<(String, u64)>,
    /// (topic, partition) → offset after the last record the application received.
    pub consumed: HashMap<(Arc<str>, u32), u64>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// (member id, generation) while in a group.
    membership: Mutex<Option<(String, u64)>>,
    closing: AtomicBool,
    close: Notify,
    settings: ConsumerBuilder,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Commits the consumed positions of the current assignment.
    async fn commit(&self) -> Result<()> {
        let Some(group) = &self.settings.group else {
            return Err(Error::InvalidConfig(
                "commits need a group (ConsumerBuilder::group)".into(),
            ));
        };
        let (member_id, generation, offsets) = {
            let state = lock(&self.state);
            let (member_id, generation) = state.member.clone().unwrap_or_default();
            let offsets: Vec<v1::OffsetCommit> = state
                .assignment
                .iter()
                .filter_map(|key| {
                    state.consumed.get(key).map(|o| v1::OffsetCommit {
                        topic: key.0.to_string(),
                        partition: key.1,
                        offset: *o,
                    })
                })
                .collect();
            (member_id, generation, offsets)
        };
        if offsets.is_empty() {
            return Ok(());
        }
        let client = &self.settings.client;
        let mut rpc = v1::groups_client::GroupsClient::new(client.coordinator_channel().await?);
        let request = v1::CommitOffsetsRequest {
            group: group.clone(),
            member_id,
            generation,
            offsets,
        };
        rpc.commit_offsets(request)
            .await
            .map_err(|s| client.coordinator_failed(from_status(s)))?;
        Ok(())
    }
}

/// A stream of records. Dropping it leaves the group (in the background).
pub struct Consumer {
    rx: mpsc::Receiver<Chunk>,
    buffered: VecDeque<ConsumerRecord>,
    buffered_epoch: u64,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.shared.settings.group)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Commits the positions of the records received so far.
    pub async fn commit(&self) -> Result<()> {
        self.shared.commit().await
    }

    /// The partitions currently assigned.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        lock(&self.shared.state)
            .assignment
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .collect()
    }

    /// The consumed position of an assigned partition: the offset after the last record
    /// received (where reading starts, before any record).
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        lock(&self.shared.state)
            .consumed
            .get(&(Arc::from(topic), partition))
            .copied()
    }

    /// Commits (with auto-commit), leaves the group and stops.
    pub async fn close(mut self) -> Result<()> {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.close.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.close.notify_one();
    }
}

impl Stream for Consumer {
    type Item = Result<ConsumerRecord>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            {
                // Epoch check and position update under the lock a reassignment takes.
                let mut state = lock(&this.shared.state);
                if this.buffered_epoch != state.epoch {
                    this.buffered.clear(); // reassigned: those partitions may belong to someone else now
                }
                if let Some(record) = this.buffered.pop_front() {
                    state
                        .consumed
                        .insert((record.topic.clone(), record.partition), record.offset + 1);
                    return Poll::Ready(Some(Ok(record)));
                }
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Chunk::Records {
                    epoch: chunk_epoch,
                    records,
                })) => {
                    if chunk_epoch == lock(&this.shared.state).epoch {
                        this.buffered_epoch = chunk_epoch;
                        this.buffered.extend(records);
                    }
                }
                Poll::Ready(Some(Chunk::Error(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
