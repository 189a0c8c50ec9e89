//! Idempotent producers, as a partition knows them: each batch carries (producer id, epoch,
//! first sequence); the [`ProducerTable`] holds the recent batches every replica applied
//! (replicated state, carried in snapshots) and, on the leader, the batches proposed and not
//! answered yet. A retry is answered with its original's offsets, from either, instead of
//! being written twice; a gap or an older epoch is refused.
//!
//! A producer idle for longer than the expiry is forgotten, as Kafka's
//! `producer.id.expiration.ms` does. Idle is measured on the partition's own clock, the
//! newest record timestamp applied, not on a node's wall clock: every replica applies the same
//! batches, so every replica forgets the same producers at the same batch, and a replica that
//! installs a snapshot (which carries the clock) continues exactly as the others.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use strata_storage::RecordBatch;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Recent batches remembered per producer, as in Kafka: a retry of any of the last five
/// batches is answered with its original offsets.
pub const PRODUCER_WINDOW: usize = 5;

/// One batch a producer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// Sequence number of its first record.
    pub first_seq: i32,
    /// Sequence number of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub base_offset: u64,
}

/// What a partition remembers about an idempotent producer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    /// The producer's epoch; batches from older epochs are fenced.
    pub epoch: i16,
    /// Its last batches, oldest first.
    pub batches: VecDeque<SeqRange>,
    /// The partition's clock (ms) when it last wrote. Snapshots taken before expiry existed
    /// lack it: such a producer counts as seen at the next sweep.
    #[serde(default = "seen_at_next_sweep")]
    pub last_seen: i64,
}

fn seen_at_next_sweep() -> i64 {
    i64::MAX
}

pub(super) fn clock_unknown() -> i64 {
    i64::MIN
}

/// A partition's idempotent producers as a snapshot takes them (the partition snapshot in
/// `machine.rs` is their format on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducersSnapshot {
    /// By producer id.
    pub producers: BTreeMap<i64, ProducerState>,
    /// The partition's clock: the newest record timestamp applied (ms).
    pub clock: i64,
}

/// How a batch's sequence numbers relate to what the partition has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Not seen before and in order (or from a non-idempotent producer): append it.
    New,
    /// A retry of a batch already written at this base offset: answer with it.
    Duplicate {
        /// Offset of its first record.
        base_offset: u64,
    },
    /// A gap, or a retry older than the remembered window.
    OutOfOrder {
        /// The sequence number the partition expects next.
        expected: i32,
    },
    /// The producer's epoch is older than one already seen.
    Fenced {
        /// The current epoch.
        epoch: i16,
    },
}

/// The sequence number of the last record of a batch of `count` records from `base_seq`.
pub fn last_seq(base_seq: i32, count: u32) -> i32 {
    // Sequences wrap at i32::MAX as in Kafka.
    ((i64::from(base_seq) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1)) as i32
}

/// The sequence after `seq`.
pub fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// Checks a batch against one producer's applied state.
fn check_against(p: &ProducerState, epoch: i16, base_seq: i32, count: u32) -> SeqCheck {
    if epoch < p.epoch {
        return SeqCheck::Fenced { epoch: p.epoch };
    }
    if epoch > p.epoch {
        return if base_seq == 0 {
            SeqCheck::New
        } else {
            SeqCheck::OutOfOrder { expected: 0 }
        };
    }
    let last = last_seq(base_seq, count);
    if let Some(b) = p
        .batches
        .iter()
        .find(|b| b.first_seq == base_seq && b.last_seq == last)
    {
        return SeqCheck::Duplicate {
            base_offset: b.base_offset,
        };
    }
    let expected = p.batches.back().map_or(0, |b| next_seq(b.last_seq));
    if base_seq == expected {
        SeqCheck::New
    } else {
        SeqCheck::OutOfOrder { expected }
    }
}

/// The answer to a batch proposed and not yet applied (its base offset, or why it failed),
/// once Raft gives it.
type Outcome = Option<std::result::Result<u64, String>>;

/// An idempotent batch proposed and not yet answered.
struct InFlight {
    epoch: i16,
    first_seq: i32,
    last_seq: i32,
    outcome: watch::Sender<Outcome>,
}

/// What to answer for one batch of an append.
pub(super) enum Slot {
    /// A retry of an applied batch: its base offset.
    Known(u64),
    /// A retry of a batch in flight: its outcome, when known.
    Wait(watch::Receiver<Outcome>),
    /// A batch to propose: its index among the proposals.
    Propose(usize),
}

/// An idempotent batch registered as in flight, and its index among the proposals.
pub(super) struct Registered {
    producer_id: i64,
    epoch: i16,
    first_seq: i32,
    proposal: usize,
}

/// How an append's batches are answered.
pub(super) struct Plan {
    /// One per batch, in order.
    pub slots: Vec<Slot>,
    /// The batches to propose, in order.
    pub proposals: Vec<RecordBatch>,
    /// The proposals registered as in flight, to [`ProducerTable::settle`] with the outcome.
    pub registered: Vec<Registered>,
}

/// The idempotent producers of a partition replica (see the module's documentation).
pub(super) struct ProducerTable {
    /// Applied batches by producer id.
    applied: BTreeMap<i64, ProducerState>,
    /// The newest record timestamp applied (ms): the clock idleness is measured on.
    clock: i64,
    /// How long (ms of that clock) a producer may be idle before it is forgotten.
    expiry_ms: i64,
    /// Batches this leader proposed whose outcome is not known yet, by producer. An entry
    /// stays until Raft answers (committed, or discarded by a leader change), even when the
    /// request that proposed it gave up waiting: a retry must find it, not propose it again.
    in_flight: HashMap<i64, Vec<InFlight>>,
}

impl ProducerTable {
    /// An empty table that forgets producers idle for `expiry_ms`.
    pub(super) fn new(expiry_ms: u64) -> ProducerTable {
        ProducerTable {
            applied: BTreeMap::new(),
            clock: i64::MIN,
            expiry_ms: i64::try_from(expiry_ms).unwrap_or(i64::MAX).max(1),
            in_flight: HashMap::new(),
        }
    }

    /// Remembers an applied data batch written at `base_offset`, moves the partition's clock
    /// to its newest timestamp, and forgets the producers that clock finds idle.
    pub(super) fn record(&mut self, batch: &RecordBatch, base_offset: u64) {
        let before = self.clock;
        self.clock = self.clock.max(batch.max_timestamp());
        self.expire(before);
        let (producer_id, epoch, base_seq, count) = (
            batch.producer_id(),
            batch.producer_epoch(),
            batch.base_sequence(),
            batch.record_count(),
        );
        if producer_id < 0 || base_seq < 0 || count == 0 {
            return;
        }
        let p = self.applied.entry(producer_id).or_default();
        p.last_seen = self.clock;
        if epoch != p.epoch {
            p.epoch = epoch;
            p.batches.clear();
        }
        p.batches.push_back(SeqRange {
            first_seq: base_seq,
            last_seq: last_seq(base_seq, count),
            base_offset,
        });
        while p.batches.len() > PRODUCER_WINDOW {
            p.batches.pop_front();
        }
    }

    /// Forgets the producers idle for longer than the expiry. The table is swept only when the
    /// clock enters a new eighth of the expiry since `before`, so a producer is forgotten
    /// between 1 and 1⅛ expiries after its last batch, at the same batch on every replica.
    fn expire(&mut self, before: i64) {
        let step = (self.expiry_ms / 8).max(1);
        if before != i64::MIN && self.clock.div_euclid(step) == before.div_euclid(step) {
            return;
        }
        let (clock, oldest) = (self.clock, self.clock.saturating_sub(self.expiry_ms));
        self.applied.retain(|_, p| {
            if p.last_seen == seen_at_next_sweep() {
                p.last_seen = clock;
            }
            p.last_seen >= oldest
        });
    }

    /// Checks a batch of `count` records from `producer_id` at `epoch`, first sequence
    /// `base_seq`, against what is applied.
    pub(super) fn check_applied(
        &self,
        producer_id: i64,
        epoch: i16,
        base_seq: i32,
        count: u32,
    ) -> SeqCheck {
        if producer_id < 0 || base_seq < 0 {
            return SeqCheck::New;
        }
        let Some(p) = self.applied.get(&producer_id) else {
            return SeqCheck::New;
        };
        check_against(p, epoch, base_seq, count)
    }

    /// The applied state, for a snapshot.
    pub(super) fn snapshot(&self) -> ProducersSnapshot {
        ProducersSnapshot {
            producers: self.applied.clone(),
            clock: self.clock,
        }
    }

    /// Replaces the applied state with a snapshot's.
    pub(super) fn restore(&mut self, snapshot: ProducersSnapshot) {
        self.applied = snapshot.producers;
        self.clock = snapshot.clock;
    }

    /// How many producers the partition remembers.
    pub(super) fn len(&self) -> usize {
        self.applied.len()
    }

    /// Sorts `batches` of an append to `topic`/`partition` into known answers (retries of
    /// applied batches), waits (retries of batches in flight) and proposals, and registers
    /// the idempotent proposals as in flight. Everything is decided first, so a refused
    /// request registers nothing.
    pub(super) fn plan(
        &mut self,
        topic: &str,
        partition: u32,
        batches: Vec<RecordBatch>,
    ) -> Result<Plan> {
        enum Decision {
            Plain,
            New,
            Known(u64),
            Wait(watch::Receiver<Outcome>),
        }
        let mut decisions = Vec::with_capacity(batches.len());
        let mut newest_in_request: HashMap<i64, (i16, i32)> = HashMap::new();
        for b in &batches {
            let (pid, epoch, base) = (b.producer_id(), b.producer_epoch(), b.base_sequence());
            if pid < 0 || base < 0 {
                decisions.push(Decision::Plain);
                continue;
            }
            let count = b.record_count();
            let last = last_seq(base, count);
            let in_flight = self.in_flight.get(&pid);
            if let Some(p) = in_flight.and_then(|l| {
                l.iter()
                    .find(|p| p.epoch == epoch && p.first_seq == base && p.last_seq == last)
            }) {
                decisions.push(Decision::Wait(p.outcome.subscribe()));
                continue;
            }
            let newest = newest_in_request.get(&pid).copied().or_else(|| {
                in_flight
                    .and_then(|l| l.last())
                    .map(|p| (p.epoch, p.last_seq))
            });
            let check = match newest {
                Some((e, _)) if epoch < e => SeqCheck::Fenced { epoch: e },
                Some((e, s)) if epoch == e && base == next_seq(s) => SeqCheck::New,
                Some((e, s)) if epoch == e => {
                    match self
                        .applied
                        .get(&pid)
                        .map(|p| check_against(p, epoch, base, count))
                    {
                        Some(d @ SeqCheck::Duplicate { .. }) => d,
                        _ => SeqCheck::OutOfOrder {
                            expected: next_seq(s),
                        },
                    }
                }
                _ => self.check_applied(pid, epoch, base, count),
            };
            tracing::debug!(topic, partition, pid, epoch, base, count, ?check, in_flight = ?in_flight.map(|l| l.iter().map(|p| (p.epoch, p.first_seq)).collect::<Vec<_>>()), "idempotent batch planned");
            decisions.push(match check {
                SeqCheck::OutOfOrder { expected } => {
                    return Err(Error::OutOfOrderSequence {
                        topic: topic.to_string(),
                        partition,
                        producer_id: pid,
                        expected,
                        got: base,
                    });
                }
                SeqCheck::Fenced { epoch: current } => {
                    return Err(Error::ProducerFenced {
                        producer_id: pid,
                        epoch,
                        current,
                    });
                }
                SeqCheck::New => {
                    newest_in_request.insert(pid, (epoch, last));
                    Decision::New
                }
                SeqCheck::Duplicate { base_offset } => Decision::Known(base_offset),
            });
        }
        let mut plan = Plan {
            slots: Vec::with_capacity(batches.len()),
            proposals: Vec::with_capacity(batches.len()),
            registered: Vec::new(),
        };
        for (b, decision) in batches.into_iter().zip(decisions) {
            match decision {
                Decision::Known(offset) => plan.slots.push(Slot::Known(offset)),
                Decision::Wait(rx) => plan.slots.push(Slot::Wait(rx)),
                Decision::Plain | Decision::New => {
                    if matches!(decision, Decision::New) {
                        let (pid, epoch, base) =
                            (b.producer_id(), b.producer_epoch(), b.base_sequence());
                        let (outcome, _) = watch::channel(None);
                        self.in_flight.entry(pid).or_default().push(InFlight {
                            epoch,
                            first_seq: base,
                            last_seq: last_seq(base, b.record_count()),
                            outcome,
                        });
                        plan.registered.push(Registered {
                            producer_id: pid,
                            epoch,
                            first_seq: base,
                            proposal: plan.proposals.len(),
                        });
                    }
                    plan.slots.push(Slot::Propose(plan.proposals.len()));
                    plan.proposals.push(b);
                }
            }
        }
        Ok(plan)
    }

    /// Answers and forgets the in-flight batches of a proposal once its outcome is known:
    /// the proposals' base offsets, or why they failed.
    pub(super) fn settle(
        &mut self,
        registered: &[Registered],
        outcome: std::result::Result<&[u64], &str>,
    ) {
        for r in registered {
            let Some(list) = self.in_flight.get_mut(&r.producer_id) else {
                continue;
            };
            if let Some(pos) = list
                .iter()
                .position(|p| p.epoch == r.epoch && p.first_seq == r.first_seq)
            {
                let p = list.remove(pos);
                let answer = match outcome {
                    Ok(offsets) => offsets
                        .get(r.proposal)
                        .copied()
                        .ok_or_else(|| "no offset for the batch".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                tracing::debug!(
                    pid = r.producer_id,
                    epoch = r.epoch,
                    base = r.first_seq,
                    ?answer,
                    "in-flight batch settled"
                );
                p.outcome.send_replace(Some(answer));
            }
            if list.is_empty() {
                self.in_flight.remove(&r.producer_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use strata_storage::{BatchBuilder, NewRecord};

    use super::*;

    const DAY: u64 = 86_400_000;

    fn batch(producer: (i64, i16, i32), records: usize) -> RecordBatch {
        batch_at(producer, records, 0)
    }

    /// A batch of `records` records stamped `timestamp` (ms).
    fn batch_at(producer: (i64, i16, i32), records: usize, timestamp: i64) -> RecordBatch {
        let mut b = BatchBuilder::new().producer(producer.0, producer.1, producer.2);
        for _ in 0..records {
            b.push(NewRecord::value(timestamp, b"v")).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn idle_producers_are_forgotten_on_the_partitions_clock_alike_on_every_replica() {
        let t0 = 1_700_000_000_000;
        // Producer 1 writes once; producer 2 keeps writing, hourly; plain batches move the
        // clock too. Replica `b` installs `a`'s snapshot half-way and applies the rest.
        let mut batches = vec![batch_at((1, 0, 0), 1, t0)];
        for h in 0..30 {
            batches.push(batch_at((2, 0, h), 1, t0 + i64::from(h) * 3_600_000));
            batches.push(batch_at((-1, -1, -1), 1, t0 + i64::from(h) * 3_600_000 + 1));
        }
        let (mut a, mut b) = (ProducerTable::new(DAY), ProducerTable::new(DAY));
        let mut lens = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            a.record(batch, i as u64);
            if i == 20 {
                b.restore(a.snapshot());
            } else if i > 20 {
                b.record(batch, i as u64);
                assert_eq!(
                    a.snapshot(),
                    b.snapshot(),
                    "replicas differ after batch {i}"
                );
            }
            lens.push(a.len());
        }
        // Remembered within one expiry of its only batch, forgotten by 1⅛ expiries.
        assert_eq!(lens[2 * 24], 2, "forgotten before a day passed");
        assert_eq!(lens[2 * 28], 1, "still remembered after 28 hours");
        assert_eq!(a.check_applied(1, 0, 0, 1), SeqCheck::New);
        assert_eq!(
            a.check_applied(2, 0, 29, 1),
            SeqCheck::Duplicate { base_offset: 59 }
        );
        // Old timestamps do not move the clock back, so nothing is forgotten early.
        a.record(&batch_at((3, 0, 0), 1, 0), 61);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn a_producer_from_a_snapshot_before_expiry_existed_is_kept_for_an_expiry() {
        // What `machine.rs` reads from such a snapshot (its test checks the reading).
        let old = ProducersSnapshot {
            producers: BTreeMap::from([(
                7,
                serde_json::from_str(
                    r#"{"epoch":0,"batches":[{"first_seq":0,"last_seq":0,"base_offset":4}]}"#,
                )
                .unwrap(),
            )]),
            clock: clock_unknown(),
        };
        let mut table = ProducerTable::new(DAY);
        table.restore(old);
        assert_eq!(
            table.check_applied(7, 0, 0, 1),
            SeqCheck::Duplicate { base_offset: 4 }
        );
        // Counted as seen at the first sweep, then kept for an expiry.
        table.record(&batch_at((-1, -1, -1), 1, 1_000), 5);
        table.record(&batch_at((-1, -1, -1), 1, 1_000 + DAY as i64 / 2), 6);
        assert_eq!(table.len(), 1);
        table.record(&batch_at((-1, -1, -1), 1, 1_000 + 2 * DAY as i64), 7);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn applied_batches_answer_retries_and_refuse_gaps() {
        let mut table = ProducerTable::new(DAY);
        table.record(&batch((7, 1, 0), 3), 39);
        table.record(&batch((-1, -1, -1), 2), 42);
        assert_eq!(
            table.check_applied(7, 1, 0, 3),
            SeqCheck::Duplicate { base_offset: 39 }
        );
        assert_eq!(table.check_applied(7, 1, 3, 1), SeqCheck::New);
        assert_eq!(
            table.check_applied(7, 1, 5, 1),
            SeqCheck::OutOfOrder { expected: 3 }
        );
        assert_eq!(
            table.check_applied(7, 0, 3, 1),
            SeqCheck::Fenced { epoch: 1 }
        );
        let mut back = ProducerTable::new(DAY);
        back.restore(table.snapshot());
        assert_eq!(back.snapshot(), table.snapshot());
    }

    #[test]
    fn a_retry_of_a_batch_in_flight_waits_for_its_outcome() {
        let mut table = ProducerTable::new(DAY);
        let first = table.plan("t", 0, vec![batch((7, 0, 0), 2)]).unwrap();
        assert!(matches!(first.slots[..], [Slot::Propose(0)]));
        let retry = table.plan("t", 0, vec![batch((7, 0, 0), 2)]).unwrap();
        let Slot::Wait(mut outcome) = retry.slots.into_iter().next().unwrap() else {
            panic!("the retry should wait for its original");
        };
        assert!(table.plan("t", 0, vec![batch((7, 0, 5), 1)]).is_err());
        let next = table.plan("t", 0, vec![batch((7, 0, 2), 1)]).unwrap();
        assert_eq!(next.proposals.len(), 1);
        table.settle(&first.registered, Ok(&[10]));
        assert_eq!(*outcome.borrow_and_update(), Some(Ok(10)));
        table.settle(&next.registered, Err("no quorum"));
        assert!(table.in_flight.is_empty());
    }
}
