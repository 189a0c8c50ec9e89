//! `Fetch` (a server stream with long polling) and `ListOffsets`.
//!
//! Each fetch runs as a task that reads every requested partition from its position and
//! sends what it finds; when nothing is readable it waits on the partitions' high-watermark
//! channels (or the time-out, or the client going away, or the node stopping). The stream's
//! channel is bounded, so a slow consumer slows its task down instead of filling memory.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::select_all;
use strata_proto::v1;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Api, record_count, status};
use crate::auth::{Operation, ResourceKind};
use crate::error::Error;
use crate::node::Node;
use crate::replica::Partition;

/// Batch bytes per response when the request gives none.
const DEFAULT_MAX_BYTES: u32 = 1 << 20;
/// Keep-alive of a following stream when the request gives no wait.
const DEFAULT_FOLLOW_WAIT: Duration = Duration::from_secs(1);

struct Cursor {
    partition: Arc<Partition>,
    offset: u64,
    high_watermark: watch::Receiver<u64>,
    /// Whether the replica was closed: a following stream must not wait on a replica that
    /// was reopened as another one (its high watermark never moves again).
    closed: watch::Receiver<bool>,
    done: bool,
}

impl Cursor {
    fn response(&self) -> v1::FetchResponse {
        v1::FetchResponse {
            partition: self.partition.id(),
            next_offset: self.offset,
            high_watermark: self.partition.high_watermark(),
            log_start_offset: self.partition.start_offset(),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl v1::fetch_server::Fetch for Api {
    type FetchStream = ReceiverStream<Result<v1::FetchResponse, Status>>;

    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let topic = &request.get_ref().topic;
        self.allow(&request, ResourceKind::Topic, topic, Operation::Read)?;
        Ok(Response::new(self.start_fetch(request.into_inner()).await?))
    }

    async fn list_offsets(
        &self,
        request: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let topic = &request.get_ref().topic;
        self.allow(&request, ResourceKind::Topic, topic, Operation::Describe)?;
        Ok(Response::new(
            self.list_offsets_inner(request.into_inner())?,
        ))
    }
}

impl Api {
    async fn start_fetch(
        &self,
        request: v1::FetchRequest,
    ) -> Result<ReceiverStream<Result<v1::FetchResponse, Status>>, Error> {
        self.check_serving()?;
        let topic = self.node.topics.get(&request.topic)?;
        if request.partitions.is_empty() {
            return Err(Error::InvalidArgument(
                "a fetch names at least one partition".into(),
            ));
        }
        let mut cursors: Vec<Cursor> = Vec::with_capacity(request.partitions.len());
        for position in &request.partitions {
            if cursors
                .iter()
                .any(|c| c.partition.id() == position.partition)
            {
                return Err(Error::InvalidArgument(format!(
                    "partition {} is named twice",
                    position.partition
                )));
            }
            let partition = topic.partition(position.partition)?.clone();
            partition.check_consumer_read(position.offset).await?;
            let high_watermark = partition.subscribe();
            let closed = partition.subscribe_closed();
            cursors.push(Cursor {
                partition,
                offset: position.offset,
                high_watermark,
                closed,
                done: false,
            });
        }
        let max_bytes = if request.max_bytes == 0 {
            DEFAULT_MAX_BYTES
        } else {
            request.max_bytes
        };
        let max_bytes =
            max_bytes.min(self.node.config.max_request_bytes.saturating_sub(64 * 1024)) as usize;
        let wait = Duration::from_millis(u64::from(request.max_wait_ms));
        let (tx, rx) = mpsc::channel(4);
        let job = FetchJob {
            node: self.node.clone(),
            topic: topic.name.clone(),
            cursors,
            max_bytes,
            wait,
            follow: request.follow,
            tx,
        };
        tokio::spawn(job.run());
        Ok(ReceiverStream::new(rx))
    }

    fn list_offsets_inner(
        &self,
        request: v1::ListOffsetsRequest,
    ) -> Result<v1::ListOffsetsResponse, Error> {
        self.check_serving()?;
        let topic = self.node.topics.get(&request.topic)?;
        let offsets = request
            .partitions
            .iter()
            .map(|q| {
                // Only the leader answers: a follower's bounds may be old.
                let found = topic.partition(q.partition).and_then(|p| {
                    p.check_leads()?;
                    match q.position {
                        Some(v1::offset_query::Position::Earliest(_)) => Ok(p.start_offset()),
                        Some(v1::offset_query::Position::Latest(_)) => Ok(p.high_watermark()),
                        Some(v1::offset_query::Position::TimestampMs(ts)) => {
                            p.offset_for_timestamp(ts)
                        }
                        None => Err(Error::InvalidArgument(
                            "an offset query needs earliest, latest or a timestamp".into(),
                        )),
                    }
                });
                match found {
                    Ok(offset) => v1::PartitionOffset {
                        partition: q.partition,
                        offset,
                        error: None,
                    },
                    Err(e) => v1::PartitionOffset {
                        partition: q.partition,
                        offset: 0,
                        error: Some(status::detail(&e)),
                    },
                }
            })
            .collect();
        Ok(v1::ListOffsetsResponse { offsets })
    }
}

struct FetchJob {
    node: Arc<Node>,
    topic: String,
    cursors: Vec<Cursor>,
    max_bytes: usize,
    wait: Duration,
    follow: bool,
    tx: mpsc::Sender<Result<v1::FetchResponse, Status>>,
}

/// Why a wait ended.
enum Woken {
    Data,
    TimedOut,
    Gone,
}

impl FetchJob {
    async fn run(mut self) {
        let mut waited = false;
        loop {
            let sent = match self.send_available().await {
                Some(sent) => sent,
                None => return, // the client went away
            };
            if self.cursors.iter().all(|c| c.done) {
                return;
            }
            if sent {
                if self.follow {
                    continue;
                }
                return;
            }
            if !self.follow && (waited || self.wait.is_zero()) {
                // Nothing came: say where each partition stands, and end.
                self.send_positions().await;
                return;
            }
            let wait = if self.follow && self.wait.is_zero() {
                DEFAULT_FOLLOW_WAIT
            } else {
                self.wait
            };
            match self.wait_for_data(wait).await {
                Woken::Data => {}
                Woken::Gone => return,
                Woken::TimedOut if self.follow => {
                    if !self.send_positions().await {
                        return;
                    }
                }
                Woken::TimedOut => {}
            }
            waited = true;
        }
    }

    /// Sends what each partition has past its cursor. `None` if the client is gone.
    async fn send_available(&mut self) -> Option<bool> {
        let mut budget = self.max_bytes;
        let mut sent = false;
        for i in 0..self.cursors.len() {
            if self.cursors[i].done || budget == 0 {
                continue;
            }
            let cursor = &mut self.cursors[i];
            // A stream outlives leadership: once this replica no longer leads, the consumer
            // goes to the one that does (this one may fall behind, or be cut off).
            let read = (cursor.partition.check_leads())
                .and_then(|()| cursor.partition.read(cursor.offset, budget));
            let response = match read {
                Ok(fetched) if fetched.batches.is_empty() => continue,
                Ok(fetched) => {
                    let bytes = fetched.bytes();
                    let records = fetched.batches.iter().map(|b| record_count(b)).sum();
                    self.node
                        .metrics
                        .fetched(&self.topic, records, bytes as u64);
                    budget = budget.saturating_sub(bytes);
                    cursor.offset = fetched.next_offset;
                    v1::FetchResponse {
                        batches: fetched.batches,
                        ..cursor.response()
                    }
                }
                Err(e) => {
                    cursor.done = true;
                    v1::FetchResponse {
                        error: Some(status::detail(&e)),
                        ..cursor.response()
                    }
                }
            };
            if self.tx.send(Ok(response)).await.is_err() {
                return None;
            }
            sent = true;
        }
        Some(sent)
    }

    /// Sends an empty response per partition (positions and high watermarks).
    async fn send_positions(&self) -> bool {
        for cursor in self.cursors.iter().filter(|c| !c.done) {
            if self.tx.send(Ok(cursor.response())).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn wait_for_data(&mut self, wait: Duration) -> Woken {
        let node = self.node.clone();
        let tx = self.tx.clone();
        let waits = self.cursors.iter_mut().filter(|c| !c.done).map(|c| {
            let offset = c.offset;
            Box::pin(async move {
                // A closed replica wakes the wait: the next read answers UNAVAILABLE and
                // the client fetches from the replica that replaced it.
                tokio::select! {
                    _ = c.high_watermark.wait_for(|hw| *hw > offset) => {}
                    _ = c.closed.wait_for(|closed| *closed) => {}
                }
            })
        });
        let any = select_all(waits);
        tokio::select! {
            _ = any => Woken::Data,
            () = tokio::time::sleep(wait) => Woken::TimedOut,
            () = tx.closed() => Woken::Gone,
            () = node.stopped() => {
                let _ = tx.send(Err(status::status(&Error::ShuttingDown))).await;
                Woken::Gone
            }
        }
    }
}
