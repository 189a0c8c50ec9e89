//! Idempotent producers, as a partition knows them: each batch carries (producer id, epoch,
//! first sequence); the [`ProducerTable`] holds the recent batches every replica applied
//! (replicated state, carried in snapshots) and, on the leader, the batches proposed and not
//! answered yet. A retry is answered with its original's offsets, from either, instead of
//! being written twice; a gap or an older epoch is refused.

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
#[derive(Default)]
pub(super) struct ProducerTable {
    /// Applied batches by producer id.
    applied: BTreeMap<i64, ProducerState>,
    /// Batches this leader proposed whose outcome is not known yet, by producer. An entry
    /// stays until Raft answers (committed, or discarded by a leader change), even when the
    /// request that proposed it gave up waiting: a retry must find it, not propose it again.
    in_flight: HashMap<i64, Vec<InFlight>>,
}

impl ProducerTable {
    /// Remembers an applied data batch written at `base_offset`.
    pub(super) fn record(&mut self, batch: &RecordBatch, base_offset: u64) {
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
    pub(super) fn applied(&self) -> &BTreeMap<i64, ProducerState> {
        &self.applied
    }

    /// Replaces the applied state with a snapshot's.
    pub(super) fn restore(&mut self, applied: BTreeMap<i64, ProducerState>) {
        self.applied = applied;
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

    fn batch(producer: (i64, i16, i32), records: usize) -> RecordBatch {
        let mut b = BatchBuilder::new().producer(producer.0, producer.1, producer.2);
        for i in 0..records {
            b.push(NewRecord::value(i as i64, b"v")).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn applied_batches_answer_retries_and_refuse_gaps() {
        let mut table = ProducerTable::default();
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
        let json = serde_json::to_vec(table.applied()).unwrap();
        let mut back = ProducerTable::default();
        back.restore(serde_json::from_slice(&json).unwrap());
        assert_eq!(back.applied(), table.applied());
    }

    #[test]
    fn a_retry_of_a_batch_in_flight_waits_for_its_outcome() {
        let mut table = ProducerTable::default();
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
