//! Criterion benchmarks of Strata's hot paths, one suite module per subsystem.
//!
//! `cargo bench -p strata-benches` runs them all; `cargo bench -p strata-benches -- storage/append`
//! runs one group. Set `STRATA_BENCH_DIR` to put the logs on a particular disk (default: the
//! system temporary directory).

// Benchmarks, like tests, fail loudly.
#![allow(clippy::unwrap_used, missing_docs)]

mod agg;
mod machine;
mod search;
mod storage;

criterion::criterion_main!(
    machine::benches,
    storage::benches,
    agg::benches,
    search::benches
);
