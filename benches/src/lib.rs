//! # strata-benches
//!
//! Criterion benchmarks of Strata's hot paths (`cargo bench -p strata-benches`), and the
//! workloads they share. Benchmarks report throughput in bytes/s of record payload; the
//! numbers that matter are compared with this machine's own limits (see the README's
//! performance section for how those are measured).
//!
//! # Layout
//! - `benches/main.rs`: the one criterion `main`, with a suite module per subsystem:
//!   `machine` (memcpy, the reference point), `storage` (codec, append per fsync policy,
//!   group commit, catch-up reads, open and crash-recovery time).
//! - this library: workload builders.
#![forbid(unsafe_code)]

use strata_storage::{BatchBuilder, NewRecord, RecordBatch};

/// A JSON sensor reading padded to exactly `len` bytes.
pub fn sensor_value(seq: u64, len: usize) -> Vec<u8> {
    let mut value = format!(
        r#"{{"device":"sensor-{:04}","seq":{seq},"temperature":{:.1},"pad":""#,
        seq % 1000,
        15.0 + (seq % 200) as f64 / 10.0
    )
    .into_bytes();
    while value.len() + 2 < len {
        value.push(b'a' + (value.len() % 26) as u8);
    }
    value.extend_from_slice(b"\"}");
    value.truncate(len.max(1));
    value
}

/// A batch of `records` sensor readings of `value_len` bytes each.
pub fn batch(records: usize, value_len: usize) -> RecordBatch {
    let mut builder = BatchBuilder::with_capacity(records * (value_len + 16) + 64);
    for i in 0..records {
        let value = sensor_value(i as u64, value_len);
        // A batch of a few MiB at most: pushing cannot outgrow the format.
        if builder
            .push(NewRecord::value(1_700_000_000_000 + i as i64, &value))
            .is_err()
        {
            break;
        }
    }
    // At least one record was pushed, so finishing cannot fail.
    builder
        .finish()
        .unwrap_or_else(|e| panic!("benchmark batch: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn workload_has_the_requested_shape() {
        let batch = super::batch(64, 1024);
        assert_eq!(batch.record_count(), 64);
        assert!(
            batch
                .records()
                .all(|r| r.value.map(<[u8]>::len) == Some(1024))
        );
        assert!(batch.len() > 64 * 1024 && batch.len() < 66 * 1024);
    }
}
