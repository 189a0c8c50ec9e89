//! Per-partition batches waiting to be sent: the producer's bookkeeping, without I/O.
//!
//! Records go into the open batch of their partition. A batch is sealed when the next record
//! would take it past `batch_bytes`, when it reaches `batch_bytes`, when it has waited
//! `linger`, or on flush. Sealed batches of a partition are sent one at a time, in order, so
//! a retry can never reorder records.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_storage::{BatchBuilder, NewRecord, RecordBatch};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::record::RecordMetadata;

/// Where a record's outcome goes.
pub(crate) struct Waiter {
    pub tx: oneshot::Sender<Result<RecordMetadata>>,
    pub timestamp: i64,
}

struct Open {
    builder: BatchBuilder,
    waiters: Vec<Waiter>,
    reserved: usize,
    created: Instant,
}

/// A batch closed to new records, finished (sequence numbers assigned) when it is sent.
struct Sealed {
    builder: BatchBuilder,
    waiters: Vec<Waiter>,
    reserved: usize,
}

/// A batch on its way and whom to tell about it.
pub(crate) struct Ready {
    pub batch: RecordBatch,
    pub waiters: Vec<Waiter>,
    /// Budget bytes to give back once it is done.
    pub reserved: usize,
}

#[derive(Default)]
struct Queue {
    open: Option<Open>,
    ready: VecDeque<Sealed>,
    in_flight: bool,
}

/// Key of a partition.
pub(crate) type PartitionKey = (Arc<str>, u32);

/// The batches of every partition.
pub(crate) struct Accumulator {
    queues: HashMap<PartitionKey, Queue>,
    /// Topic → (current sticky partition, partition count).
    sticky: HashMap<Arc<str>, (u32, u32)>,
    batch_bytes: usize,
    linger: Duration,
    /// The idempotent producer's id and epoch, once known.
    identity: Option<(i64, i16)>,
    /// Per partition, the sequence number of the next batch's first record (kept when a
    /// partition's queue goes idle).
    sequences: HashMap<PartitionKey, i32>,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// A batch was sealed and can be sent.
    pub sealed: bool,
    /// A new batch was opened (its linger deadline starts now).
    pub opened: bool,
}

impl Accumulator {
    pub fn new(batch_bytes: usize, linger: Duration) -> Self {
        Accumulator {
            queues: HashMap::new(),
            sticky: HashMap::new(),
            batch_bytes,
            linger,
            identity: None,
            sequences: HashMap::new(),
        }
    }

    /// Makes every batch sent from now on idempotent, with this producer id and epoch.
    pub fn set_identity(&mut self, producer_id: i64, epoch: i16) {
        self.identity = Some((producer_id, epoch));
    }

    /// After a batch failed for good, its sequence numbers are a gap the partition would
    /// refuse: start a new epoch, with every partition's sequence at 0.
    pub fn reset_sequences(&mut self) {
        if let Some((_, epoch)) = &mut self.identity {
            *epoch = epoch.wrapping_add(1).max(0);
            self.sequences.clear();
        }
    }

    /// The partition for a record without key or partition: the topic's sticky partition.
    pub fn sticky_partition(&mut self, topic: &Arc<str>, partitions: u32) -> u32 {
        let entry = self.sticky.entry(topic.clone()).or_insert_with(|| {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            (seed % partitions.max(1), partitions)
        });
        if entry.1 != partitions {
            *entry = (entry.0 % partitions.max(1), partitions);
        }
        entry.0
    }

    /// Adds a record to its partition's open batch.
    pub fn push(
        &mut self,
        key: PartitionKey,
        record: NewRecord<'_>,
        reserved: usize,
        waiter: Waiter,
        now: impl FnOnce() -> Instant,
    ) -> Result<Pushed> {
        let batch_bytes = self.batch_bytes;
        let queue = self.queues.entry(key.clone()).or_default();
        let mut sealed = false;
        if let Some(open) = &queue.open
            && !open.builder.is_empty()
            && open.builder.len() + open.builder.encoded_len(&record) > batch_bytes
        {
            sealed |= Self::seal(queue)?;
        }
        let opened = queue.open.is_none();
        let open = queue.open.get_or_insert_with(|| Open {
            builder: BatchBuilder::with_capacity(batch_bytes.min(1 << 20)),
            waiters: Vec::new(),
            reserved: 0,
            created: now(),
        });
        open.builder.push(record).map_err(Error::InvalidRecord)?;
        open.waiters.push(waiter);
        open.reserved += reserved;
        if open.builder.len() >= batch_bytes {
            sealed |= Self::seal(queue)?;
        }
        if sealed {
            self.rotate_sticky(&key);
        }
        Ok(Pushed { sealed, opened })
    }

    fn seal(queue: &mut Queue) -> Result<bool> {
        let Some(open) = queue.open.take() else {
            return Ok(false);
        };
        if open.builder.is_empty() {
            return Ok(false);
        }
        queue.ready.push_back(Sealed {
            builder: open.builder,
            waiters: open.waiters,
            reserved: open.reserved,
        });
        Ok(true)
    }

    fn rotate_sticky(&mut self, key: &PartitionKey) {
        if let Some((current, count)) = self.sticky.get_mut(&key.0)
            && *current == key.1
        {
            *current = (*current + 1) % (*count).max(1);
        }
    }

    /// Seals batches that lingered long enough (all open ones if `force`) and takes the next
    /// batch of every partition with nothing in flight. Also returns when the next open
    /// batch's linger ends.
    pub fn drain(
        &mut self,
        now: Instant,
        force: bool,
    ) -> (Vec<(PartitionKey, Ready)>, Option<Instant>) {
        let mut out = Vec::new();
        let mut next_deadline: Option<Instant> = None;
        let mut rotated = Vec::new();
        for (key, queue) in &mut self.queues {
            if let Some(open) = &queue.open {
                let deadline = open.created + self.linger;
                if force || deadline <= now {
                    // A batch that cannot be finished has no records; nothing is lost.
                    if Self::seal(queue).unwrap_or(false) {
                        rotated.push(key.clone());
                    }
                } else {
                    next_deadline = Some(next_deadline.map_or(deadline, |d| d.min(deadline)));
                }
            }
            if !queue.in_flight
                && let Some(sealed) = queue.ready.pop_front()
            {
                let mut builder = sealed.builder;
                if let Some((producer_id, epoch)) = self.identity {
                    let count = builder.record_count();
                    let next = self.sequences.entry(key.clone()).or_insert(0);
                    builder = builder.producer(producer_id, epoch, *next);
                    *next =
                        ((i64::from(*next) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32;
                }
                // Only an empty batch cannot be finished, and seal never keeps one; were
                // it to happen, dropping the waiters fails their sends.
                if let Ok(batch) = builder.finish() {
                    queue.in_flight = true;
                    out.push((
                        key.clone(),
                        Ready {
                            batch,
                            waiters: sealed.waiters,
                            reserved: sealed.reserved,
                        },
                    ));
                }
            }
        }
        for key in rotated {
            self.rotate_sticky(&key);
        }
        (out, next_deadline)
    }

    /// Marks a partition's batch as done, so the next one can go.
    pub fn complete(&mut self, key: &PartitionKey) {
        if let Some(queue) = self.queues.get_mut(key) {
            queue.in_flight = false;
            if queue.open.is_none() && queue.ready.is_empty() {
                self.queues.remove(key);
            }
        }
    }

    /// Nothing open, sealed or in flight.
    pub fn is_idle(&self) -> bool {
        self.queues
            .values()
            .all(|q| q.open.is_none() && q.ready.is_empty() && !q.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> (Waiter, oneshot::Receiver<Result<RecordMetadata>>) {
        let (tx, rx) = oneshot::channel();
        (Waiter { tx, timestamp: 0 }, rx)
    }

    fn key(p: u32) -> PartitionKey {
        (Arc::from("t"), p)
    }

    #[test]
    fn sequences_continue_across_idle_queues_and_restart_in_a_new_epoch() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1 << 20, Duration::ZERO);
        acc.set_identity(9, 0);
        let send = |acc: &mut Accumulator, records: usize| {
            for _ in 0..records {
                let (w, _) = waiter();
                acc.push(key(0), NewRecord::value(1, b"v"), 1, w, || now)
                    .unwrap();
            }
            let (out, _) = acc.drain(now, true);
            acc.complete(&key(0)); // the queue goes idle and is dropped
            let b = &out[0].1.batch;
            (b.producer_id(), b.producer_epoch(), b.base_sequence())
        };
        assert_eq!(send(&mut acc, 2), (9, 0, 0));
        assert_eq!(send(&mut acc, 3), (9, 0, 2));
        assert_eq!(send(&mut acc, 1), (9, 0, 5));
        acc.reset_sequences();
        assert_eq!(send(&mut acc, 1), (9, 1, 0));
    }

    #[test]
    fn batches_seal_by_size_and_linger_and_go_one_at_a_time() {
        let now = Instant::now();
        let mut acc = Accumulator::new(2_000, Duration::from_millis(10));
        let value = [7u8; 500];
        for _ in 0..3 {
            let (w, _) = waiter();
            assert!(
                !acc.push(key(0), NewRecord::value(1, &value), 500, w, || now)
                    .unwrap()
                    .sealed
            );
        }
        let (w, _) = waiter();
        let pushed = acc
            .push(key(0), NewRecord::value(1, &value), 500, w, || now)
            .unwrap();
        assert!(
            pushed.sealed,
            "the fourth record does not fit: the first three are sealed"
        );
        let (out, deadline) = acc.drain(now, false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.batch.record_count(), 3);
        assert_eq!(deadline, Some(now + Duration::from_millis(10)));
        // The open batch lingers out, but the partition has a batch in flight: it waits.
        let (out2, _) = acc.drain(now + Duration::from_millis(10), false);
        assert!(out2.is_empty());
        acc.complete(&key(0));
        let (out3, _) = acc.drain(now + Duration::from_millis(10), false);
        assert_eq!(out3[0].1.batch.record_count(), 1);
        acc.complete(&key(0));
        assert!(acc.is_idle());
    }

    #[test]
    fn sticky_partition_moves_on_when_its_batch_is_sealed() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1_000, Duration::from_secs(1));
        let topic: Arc<str> = Arc::from("t");
        let first = acc.sticky_partition(&topic, 4);
        assert_eq!(acc.sticky_partition(&topic, 4), first);
        let (w, _) = waiter();
        acc.push(
            (topic.clone(), first),
            NewRecord::value(1, &[0u8; 2_000]),
            2_000,
            w,
            || now,
        )
        .unwrap();
        assert_eq!(acc.sticky_partition(&topic, 4), (first + 1) % 4);
    }
}
