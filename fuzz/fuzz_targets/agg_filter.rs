#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_broker::fuzzing::agg_filter(data));
