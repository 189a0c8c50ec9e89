//! `Produce`: check each batch ([`ProduceRules`]: size, frame, CRC, records, timestamps) and
//! append it to its partition's leader replica ([`crate::replica::Partition::append`]);
//! answer each with its
//! base offset once it is committed. The request's `acks` is accepted for compatibility:
//! under replication both levels are answered at commit.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use strata_proto::v1;
use strata_storage::RecordBatch;
use tonic::{Request, Response, Status};

use super::{Api, status};
use crate::auth::gate::Principal;
use crate::auth::{Operation, ResourceKind};
use crate::controller::{Command, CommandResult};
use crate::error::Error;
use crate::replica::ProduceRules;

#[tonic::async_trait]
impl v1::produce_server::Produce for Api {
    async fn produce(
        &self,
        request: Request<v1::ProduceRequest>,
    ) -> Result<Response<v1::ProduceResponse>, Status> {
        let topic = &request.get_ref().topic;
        let caller = self.allow(&request, ResourceKind::Topic, topic, Operation::Write)?;
        Ok(Response::new(
            self.produce_inner(request.into_inner(), &caller).await?,
        ))
    }

    async fn init_producer(
        &self,
        request: Request<v1::InitProducerRequest>,
    ) -> Result<Response<v1::InitProducerResponse>, Status> {
        let owner = match self.caller(&request)? {
            Principal::User { name, .. } => Some(name),
            Principal::Anonymous => None,
        };
        self.check_serving()?;
        match self
            .node
            .cluster
            .propose(
                Command::AllocateProducerId { owner },
                Duration::from_secs(10),
            )
            .await?
        {
            CommandResult::ProducerId { id } => Ok(Response::new(v1::InitProducerResponse {
                producer_id: id,
                producer_epoch: 0,
            })),
            other => Err(other.unexpected().into()),
        }
    }
}

impl Api {
    async fn produce_inner(
        &self,
        request: v1::ProduceRequest,
        caller: &Principal,
    ) -> Result<v1::ProduceResponse, Error> {
        self.check_serving()?;
        let topic = self.node.topics.get(&request.topic)?;
        let timeout = if request.timeout_ms == 0 {
            self.node.config.produce_timeout()
        } else {
            Duration::from_millis(u64::from(request.timeout_ms))
        };
        let config = &self.node.config;
        let rules = ProduceRules {
            max_batch_bytes: config.max_batch_bytes as usize,
            max_ahead_ms: config.max_timestamp_ahead_ms,
            max_behind_ms: config.max_timestamp_behind_ms,
        };
        let now_ms = strata_storage::clock::now_ms();
        let mut results: Vec<v1::PartitionProduceResult> = request
            .batches
            .iter()
            .map(|b| v1::PartitionProduceResult {
                partition: b.partition,
                ..Default::default()
            })
            .collect();
        // Validate everything, grouping valid batches by partition in request order.
        let mut by_partition: BTreeMap<u32, Vec<(usize, RecordBatch)>> = BTreeMap::new();
        for (i, b) in request.batches.into_iter().enumerate() {
            let checked = topic
                .partition(b.partition)
                .and_then(|_| rules.check(&topic.name, b.partition, b.batch, now_ms))
                .and_then(|batch| {
                    if batch.producer_id() >= 0 {
                        self.node.auth.check_producer(caller, batch.producer_id())?;
                    }
                    Ok(batch)
                });
            match checked {
                Ok(batch) => by_partition
                    .entry(b.partition)
                    .or_default()
                    .push((i, batch)),
                Err(e) => results[i].error = Some(status::detail(&e)),
            }
        }
        // Partitions append in parallel; batches of one partition in order.
        let appends = by_partition.into_iter().map(|(p, batches)| {
            let topic = topic.clone();
            async move {
                let (slots, batches): (Vec<usize>, Vec<RecordBatch>) = batches.into_iter().unzip();
                let records: u64 = batches.iter().map(|b| u64::from(b.record_count())).sum();
                let bytes: u64 = batches.iter().map(|b| b.len() as u64).sum();
                let appended = match topic.partition(p) {
                    Ok(partition) => partition.append(batches, timeout).await,
                    Err(e) => Err(e),
                };
                (slots, appended.map(|offsets| (offsets, records, bytes)))
            }
        });
        for (slots, appended) in join_all(appends).await {
            match appended {
                Ok((offsets, records, bytes)) => {
                    self.node.metrics.produced(&topic.name, records, bytes);
                    for (slot, offset) in slots.into_iter().zip(offsets) {
                        results[slot].base_offset = offset;
                    }
                }
                Err(e) => {
                    let detail = status::detail(&e);
                    for slot in slots {
                        results[slot].error = Some(detail.clone());
                    }
                }
            }
        }
        Ok(v1::ProduceResponse { results })
    }
}
