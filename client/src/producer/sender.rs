//! The producer's background sender: turns ready batches into produce requests.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strata_proto::v1;

use super::Shared;
use super::accumulator::{PartitionKey, Ready};
use crate::error::{Error, Result, from_status};
use crate::record::RecordMetadata;

/// Longest back-off between retries: a leader fail-over takes under a second, and a
/// producer should be back within a fraction of a second of the new leader.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

pub(crate) async fn run(shared: Arc<Shared>) {
    if shared.settings.idempotent {
        acquire_identity(&shared).await;
    }
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        let force = closing || shared.flushing.load(Ordering::Acquire) > 0;
        let (batches, deadline, idle) = {
            let mut acc = shared.lock();
            let (batches, deadline) = acc.drain(Instant::now(), force);
            let idle = batches.is_empty() && acc.is_idle();
            (batches, deadline, idle)
        };
        for (key, ready) in batches {
            tokio::spawn(send(shared.clone(), key, ready));
        }
        if idle {
            shared.idle.notify_waiters();
            if closing {
                return;
            }
        }
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep_until(deadline.into()) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

async fn send(shared: Arc<Shared>, key: PartitionKey, ready: Ready) {
    let outcome = deliver(&shared, &key, &ready).await;
    match outcome {
        Ok(base_offset) => {
            for (i, waiter) in ready.waiters.into_iter().enumerate() {
                let meta = RecordMetadata {
                    topic: key.0.clone(),
                    partition: key.1,
                    offset: base_offset + i as u64,
                    timestamp: waiter.timestamp,
                };
                let _ = waiter.tx.send(Ok(meta));
            }
        }
        Err(e) => {
            tracing::warn!(topic = %key.0, partition = key.1, error = %e, "batch not delivered");
            for waiter in ready.waiters {
                let _ = waiter.tx.send(Err(duplicate(&e)));
            }
            shared.lock().reset_sequences();
        }
    }
    shared.lock().complete(&key);
    shared.budget.add_permits(ready.reserved);
    shared.wake.notify_one();
}

/// Gets an idempotent producer id before anything is sent; retries while the cluster cannot
/// answer, and falls back to plain (possibly duplicating) retries if it refuses.
async fn acquire_identity(shared: &Shared) {
    let mut backoff = shared.settings.retry_backoff;
    loop {
        match shared.settings.client.init_producer().await {
            Ok((id, epoch)) => {
                shared.lock().set_identity(id, epoch);
                return;
            }
            Err(e) if e.is_retriable() && !shared.closing.load(Ordering::Acquire) => {
                tracing::debug!(error = %e, "no producer id yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                tracing::warn!(error = %e, "no idempotent producer id; retries may duplicate batches");
                return;
            }
        }
    }
}

/// Sends one batch, retrying retriable failures.
async fn deliver(shared: &Shared, key: &PartitionKey, ready: &Ready) -> Result<u64> {
    let settings = &shared.settings;
    let mut attempt = 0;
    let deadline = Instant::now() + settings.delivery_timeout;
    loop {
        attempt += 1;
        let result = produce_once(shared, key, ready).await;
        match result {
            Ok(base) => return Ok(base),
            Err(e)
                if e.is_retriable() && attempt <= settings.retries && Instant::now() < deadline =>
            {
                tracing::debug!(topic = %key.0, partition = key.1, attempt, error = %e, "retrying a batch");
                settings.client.on_error(&key.0, key.1, &e);
                if matches!(&e, Error::Broker(b) if b.leader_hint.is_some()) {
                    // A fresh hint: go there at once.
                    continue;
                }
                let backoff = settings
                    .retry_backoff
                    .saturating_mul(1 << (attempt - 1).min(5))
                    .min(MAX_BACKOFF);
                tokio::time::sleep(backoff).await;
            }
            Err(e) if attempt > 1 => {
                return Err(Error::RetriesExhausted {
                    attempts: attempt,
                    last: Box::new(e),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

async fn produce_once(shared: &Shared, key: &PartitionKey, ready: &Ready) -> Result<u64> {
    let settings = &shared.settings;
    let channel = settings.client.leader(&key.0, key.1).await?;
    let max = settings.client.config().max_message_bytes;
    let mut rpc = v1::produce_client::ProduceClient::new(channel)
        .max_encoding_message_size(max)
        .max_decoding_message_size(max);
    let mut request = tonic::Request::new(v1::ProduceRequest {
        topic: key.0.to_string(),
        batches: vec![v1::PartitionBatch {
            partition: key.1,
            batch: ready.batch.as_bytes().clone(),
        }],
        acks: settings.acks.to_proto() as i32,
        timeout_ms: settings
            .request_timeout
            .as_millis()
            .min(u128::from(u32::MAX)) as u32,
    });
    request.set_timeout(settings.request_timeout + Duration::from_secs(1));
    let response = rpc
        .produce(request)
        .await
        .map_err(from_status)?
        .into_inner();
    let result = response
        .results
        .into_iter()
        .next()
        .ok_or_else(|| Error::Rpc(tonic::Status::internal("empty produce response")))?;
    match result.error {
        Some(detail) => Err(Error::from_detail(detail)),
        None => Ok(result.base_offset),
    }
}

/// The same error again, for each record of a failed batch.
fn duplicate(e: &Error) -> Error {
    match e {
        Error::Broker(b) => Error::Broker(b.clone()),
        Error::Rpc(s) => Error::Rpc(s.clone()),
        Error::RetriesExhausted { attempts, last } => Error::RetriesExhausted {
            attempts: *attempts,
            last: Box::new(duplicate(last)),
        },
        Error::Connect { bootstrap, message } => Error::Connect {
            bootstrap: bootstrap.clone(),
            message: message.clone(),
        },
        Error::InvalidConfig(m) => Error::InvalidConfig(m.clone()),
        Error::Closed => Error::Closed,
        other => Error::Rpc(tonic::Status::internal(other.to_string())),
    }
}
