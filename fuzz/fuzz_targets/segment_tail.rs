#![no_main]

// A fresh directory per input: the log written there is the one whose tail is the input.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    strata_storage::fuzz::segment_tail(dir.path(), data);
});
