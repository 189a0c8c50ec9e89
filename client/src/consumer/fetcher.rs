//! One following `Fetch` stream for the partitions of a topic that one broker leads.

use std::sync::Arc;

use strata_proto::v1;
use strata_storage::RecordBatch;
use tokio::sync::mpsc;

use super::{Chunk, Shared};
use crate::error::{Error, from_status};
use crate::record::ConsumerRecord;

/// How a fetcher ended: where each of its partitions got to, and why it stopped.
pub(crate) struct FetchEnd {
    pub topic: Arc<str>,
    pub positions: Vec<(u32, u64)>,
    /// The partition the error is about, when it is about one.
    pub failed: Option<u32>,
    pub error: Error,
}

/// Streams records of `positions` (partition, next offset) into `tx` until something fails
/// or the consumer goes away.
pub(crate) async fn run(
    shared: Arc<Shared>,
    epoch: u64,
    topic: Arc<str>,
    mut positions: Vec<(u32, u64)>,
    tx: mpsc::Sender<Chunk>,
) -> FetchEnd {
    let end = |positions, failed, error| FetchEnd {
        topic: topic.clone(),
        positions,
        failed,
        error,
    };
    let settings = &shared.settings;
    let Some(&(first, _)) = positions.first() else {
        return end(
            positions,
            None,
            Error::InvalidConfig("a fetcher with no partitions".into()),
        );
    };
    let channel = match settings.client.leader(&topic, first).await {
        Ok(c) => c,
        Err(e) => return end(positions, None, e),
    };
    let max = settings.client.config().max_message_bytes;
    let mut rpc = v1::fetch_client::FetchClient::new(channel).max_decoding_message_size(max);
    let request = v1::FetchRequest {
        topic: topic.to_string(),
        partitions: positions
            .iter()
            .map(|(partition, offset)| v1::PartitionPosition {
                partition: *partition,
                offset: *offset,
            })
            .collect(),
        max_bytes: settings.max_bytes,
        max_wait_ms: settings.max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
        follow: true,
    };
    let mut stream = match rpc.fetch(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let e = from_status(status);
            let failed = (positions.len() == 1).then_some(first);
            return end(positions, failed, e);
        }
    };
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                return end(
                    positions,
                    None,
                    Error::Rpc(tonic::Status::unavailable("the fetch stream ended")),
                );
            }
            Err(status) => return end(positions, None, from_status(status)),
        };
        let partition = response.partition;
        if let Some(detail) = response.error {
            return end(positions, Some(partition), Error::from_detail(detail));
        }
        let Some(slot) = positions.iter_mut().find(|(p, _)| *p == partition) else {
            continue;
        };
        let mut records = Vec::new();
        for bytes in response.batches {
            let batch = match RecordBatch::from_bytes(bytes) {
                Ok(batch) => batch,
                Err(source) => {
                    let e = Error::CorruptBatch {
                        topic: topic.to_string(),
                        partition,
                        source,
                    };
                    return end(positions, Some(partition), e);
                }
            };
            if batch.is_control() {
                // The broker's own records (e.g. where an aggregation starts): not the
                // application's; they only take offsets.
                continue;
            }
            for r in batch.records().filter(|r| r.offset >= slot.1) {
                records.push(ConsumerRecord {
                    topic: topic.clone(),
                    partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.map(|k| batch.share(k)),
                    value: r.value.map(|v| batch.share(v)),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            (k.to_string(), v.map(|v| batch.share(v)).unwrap_or_default())
                        })
                        .collect(),
                });
            }
        }
        slot.1 = slot.1.max(response.next_offset);
        if !records.is_empty() && tx.send(Chunk::Records { epoch, records }).await.is_err() {
            return end(positions, None, Error::Closed);
        }
    }
}
