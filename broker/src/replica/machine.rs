//! A partition replica's state machine. The records are in the log, so applying a committed
//! batch only moves the replica's state: the high watermark, the producers' recent sequence
//! numbers (idempotent produce) and the running aggregations, folded after the answers and
//! the high watermark went out. That state, small JSON, is the whole snapshot; a replica
//! behind the retention point installs it and continues from the leader's log start.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use strata_storage::{PartitionLog, RecordBatch};

use super::producers::{ProducerState, ProducerTable, ProducersSnapshot, clock_unknown};
use super::watermark::HighWatermark;
use crate::agg::{Control, PartitionAggs};
use crate::lock::lock;
use crate::raft::{Applied, Machine, Position};

/// A replica's snapshot (field names are the format).
#[derive(Debug, Serialize, Deserialize)]
struct PartitionSnapshot {
    position: Position,
    // Not flattened: serde's flatten cannot read the map's integer keys back.
    producers: BTreeMap<i64, ProducerState>,
    #[serde(default = "clock_unknown")]
    producer_clock: i64,
    #[serde(default)]
    aggs: PartitionAggs,
}

/// The [`Machine`] of a partition replica; the producer table and the aggregations are
/// shared with the replica (the leader checks producers before proposing, queries read the
/// aggregations).
pub(super) struct ReplicaMachine {
    pub(super) producers: Arc<Mutex<ProducerTable>>,
    pub(super) aggs: Arc<Mutex<PartitionAggs>>,
    pub(super) high_watermark: HighWatermark,
    pub(super) log: PartitionLog,
    /// Batches applied in the current run, folded at its end.
    pub(super) to_fold: Vec<RecordBatch>,
}

impl Machine for ReplicaMachine {
    fn apply(&mut self, _position: &Position, batch: &RecordBatch) -> Applied {
        let base_offset = batch.base_offset();
        if !batch.is_control() {
            lock(&self.producers).record(batch, base_offset);
        }
        self.to_fold.push(batch.clone());
        Applied::Appended { base_offset }
    }

    fn applied(&mut self, position: &Position) {
        self.high_watermark.publish(position.next_offset);
        // Aggregations fold after the answers and the high watermark went out, so neither a
        // producer's acknowledgement nor a consumer waits for them; they are done before the
        // next apply (and so before any snapshot). Under their own lock, not the producers'.
        if self.to_fold.is_empty() {
            return;
        }
        let mut aggs = lock(&self.aggs);
        for batch in self.to_fold.drain(..) {
            if !batch.is_control() {
                if !aggs.is_empty() {
                    aggs.fold_batch(&batch, None, 0);
                }
                continue;
            }
            let base_offset = batch.base_offset();
            match Control::from_batch(&batch) {
                Some(control) => {
                    if let Some((id, from, to)) = aggs.control(control, base_offset) {
                        backfill(&self.log, &mut aggs, id, from, to);
                    }
                }
                None => {
                    tracing::warn!(offset = base_offset, "unreadable control batch left out")
                }
            }
        }
    }

    fn snapshot(&self, position: &Position) -> Vec<u8> {
        let ProducersSnapshot { producers, clock } = lock(&self.producers).snapshot();
        let snapshot = PartitionSnapshot {
            position: position.clone(),
            producers,
            producer_clock: clock,
            aggs: lock(&self.aggs).clone(),
        };
        // The state holds only finite numbers (aggregations refuse larger ones), strings and
        // maps with string or integer keys, which serialize; an error here is a bug.
        serde_json::to_vec(&snapshot).unwrap_or_else(|e| {
            tracing::error!(error = %e, "partition state does not serialize; empty snapshot");
            Vec::new()
        })
    }

    fn restore(&mut self, position: &Position, data: &[u8]) -> io::Result<()> {
        let snapshot: PartitionSnapshot = serde_json::from_slice(data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("partition snapshot undecodable: {e}"),
            )
        })?;
        *lock(&self.aggs) = snapshot.aggs;
        lock(&self.producers).restore(ProducersSnapshot {
            producers: snapshot.producers,
            clock: snapshot.producer_clock,
        });
        // A snapshot past the log's end: openraft restarts the log after it next, and the
        // log store publishes the watermark then; until then reads stay below the old one.
        if self.log.state().next_offset >= position.next_offset {
            self.high_watermark.publish(position.next_offset);
        }
        Ok(())
    }
}

/// Folds the records of `[from, to)` in the local log into aggregation `id` (the backfill
/// its start record asked for). A replica whose log starts after `from` (retention) folds
/// what it still has.
fn backfill(log: &PartitionLog, aggs: &mut PartitionAggs, id: u64, from: u64, to: u64) {
    let mut offset = from.max(log.state().start_offset);
    while offset < to {
        let fetched = match log.read_bounded(offset, 1 << 20, to) {
            Ok(f) if !f.batches.is_empty() => f,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(aggregation = id, offset, error = %e, "backfill stopped early");
                break;
            }
        };
        for bytes in fetched.batches {
            match RecordBatch::from_bytes(bytes) {
                Ok(batch) if !batch.is_control() => aggs.fold_batch(&batch, Some(id), from),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(aggregation = id, offset, error = %e, "backfill skipped a damaged batch")
                }
            }
        }
        offset = fetched.next_offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_with_producers_reads_back() {
        let mut producers = BTreeMap::new();
        producers.insert(7, ProducerState::default());
        let snapshot = PartitionSnapshot {
            position: Position::default(),
            producers,
            producer_clock: 42,
            aggs: PartitionAggs::default(),
        };
        let back: PartitionSnapshot =
            serde_json::from_slice(&serde_json::to_vec(&snapshot).unwrap()).unwrap();
        assert_eq!((back.producers.len(), back.producer_clock), (1, 42));
    }

    /// A snapshot taken before producer expiry existed has no clock and its producers no
    /// `last_seen`: it reads with the clock unknown and each producer seen at the next sweep
    /// (`producers.rs` tests what the table then does with them).
    #[test]
    fn a_snapshot_from_before_producer_expiry_reads() {
        let mut json: serde_json::Value = serde_json::to_value(PartitionSnapshot {
            position: Position::default(),
            producers: BTreeMap::new(),
            producer_clock: 42,
            aggs: PartitionAggs::default(),
        })
        .unwrap();
        let fields = json.as_object_mut().unwrap();
        fields.remove("producer_clock");
        fields.insert(
            "producers".into(),
            serde_json::json!({"7": {"epoch": 0, "batches": [{"first_seq": 0, "last_seq": 0, "base_offset": 4}]}}),
        );
        let old: PartitionSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(old.producer_clock, clock_unknown());
        assert_eq!(old.producers[&7].last_seen, i64::MAX);
        assert_eq!(old.producers[&7].batches[0].base_offset, 4);
    }

    /// openraft's storage conformance suite with the real partition machine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_conformance_suite() {
        crate::raft::tests::conformance_suite(|_dir, log| {
            Box::new(ReplicaMachine {
                producers: Arc::new(Mutex::new(ProducerTable::new(60_000))),
                aggs: Arc::default(),
                high_watermark: HighWatermark::default(),
                log,
                to_fold: Vec::new(),
            })
        })
        .await;
    }
}
