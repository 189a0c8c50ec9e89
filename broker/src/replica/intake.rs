//! What a produced batch must be before a leader appends it, whichever front door it came
//! through: not over the size limit, a valid batch (frame, CRC, every record), not a control
//! batch (those are the broker's own), and with timestamps near the broker's clock, as
//! Kafka's `message.timestamp.after.max.ms` / `before.max.ms` rule them: a timestamp far
//! in the future would pin the log's max timestamp (and so retention by time) and the
//! watermarks of aggregations on record time for good.

use bytes::Bytes;
use strata_storage::RecordBatch;

use crate::error::{Error, Result};

/// The rules a produced batch is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceRules {
    /// Largest batch, in bytes.
    pub max_batch_bytes: usize,
    /// How far (ms) a record's timestamp may be ahead of the broker's clock.
    pub max_ahead_ms: u64,
    /// How far (ms) a record's timestamp may be behind the broker's clock, if bounded.
    pub max_behind_ms: Option<u64>,
}

impl ProduceRules {
    /// Checks a batch produced to `topic`/`partition` at `now_ms` on the broker's clock;
    /// the validated batch, or the error to answer for it.
    pub fn check(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        now_ms: i64,
    ) -> Result<RecordBatch> {
        if batch.len() > self.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                size: batch.len(),
                limit: self.max_batch_bytes,
            });
        }
        let batch = RecordBatch::from_bytes(batch).map_err(|source| Error::InvalidBatch {
            topic: topic.to_string(),
            partition,
            source,
        })?;
        if batch.is_control() {
            return Err(Error::InvalidArgument(format!(
                "{topic}/{partition}: control batches are the broker's own; producers may not send them"
            )));
        }
        let latest = now_ms.saturating_add(i64::try_from(self.max_ahead_ms).unwrap_or(i64::MAX));
        if batch.max_timestamp() > latest {
            return Err(Error::InvalidArgument(format!(
                "{topic}/{partition}: record timestamp {} is more than {} ms ahead of the broker's clock ({now_ms})",
                batch.max_timestamp(),
                self.max_ahead_ms
            )));
        }
        if let Some(behind) = self.max_behind_ms {
            let earliest = now_ms.saturating_sub(i64::try_from(behind).unwrap_or(i64::MAX));
            if let Some(t) = batch.records().map(|r| r.timestamp).find(|t| *t < earliest) {
                return Err(Error::InvalidArgument(format!(
                    "{topic}/{partition}: record timestamp {t} is more than {behind} ms behind the broker's clock ({now_ms})"
                )));
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use strata_storage::{BatchBuilder, NewRecord};

    use super::*;

    fn batch(timestamps: &[i64]) -> Bytes {
        let mut b = BatchBuilder::new();
        for t in timestamps {
            b.push(NewRecord::value(*t, b"v")).unwrap();
        }
        b.finish().unwrap().into_bytes()
    }

    #[test]
    fn timestamps_far_from_the_broker_clock_are_refused() {
        let now = 1_800_000_000_000;
        let rules = ProduceRules {
            max_batch_bytes: 1 << 20,
            max_ahead_ms: 3_600_000,
            max_behind_ms: Some(86_400_000),
        };
        assert!(
            rules
                .check("t", 0, batch(&[now, now + 3_600_000]), now)
                .is_ok()
        );
        for bad in [
            vec![now, now + 3_600_001],
            vec![i64::MAX],
            vec![now, now - 86_400_001],
            vec![i64::MIN],
        ] {
            let e = rules.check("t", 0, batch(&bad), now).unwrap_err();
            assert!(
                matches!(e, Error::InvalidArgument(ref m) if m.contains("broker's clock")),
                "{e}"
            );
        }
        let unbounded = ProduceRules {
            max_behind_ms: None,
            ..rules
        };
        assert!(unbounded.check("t", 0, batch(&[0, now]), now).is_ok());
        assert!(unbounded.check("t", 0, batch(&[1; 1000]), now).is_ok());
        let small = ProduceRules {
            max_batch_bytes: 100,
            ..rules
        };
        assert!(matches!(
            small.check("t", 0, batch(&[now; 100]), now),
            Err(Error::BatchTooLarge { .. })
        ));
    }
}
