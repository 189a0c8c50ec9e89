//! Entry points for the fuzz targets under `fuzz/` (and the replay of their corpora in
//! `cargo test`): each takes arbitrary bytes, must not panic on any of them, and asserts
//! what holds for every input. Not an API.

use std::path::Path;

use bytes::Bytes;

use crate::batch::{BATCH_CRC_START, BATCH_HEADER_LEN, BATCH_LENGTH_FIELD_END, layout};
use crate::{
    BatchBuilder, EntryBody, FsyncPolicy, LogConfig, NewRecord, PartitionLog, RecordBatch,
};

/// The batch decoder. The input is taken as a batch twice: as it is (so the frame and CRC
/// checks are exercised), and with its length field and CRC made right (so the fuzzer gets
/// past the CRC into the header and record checks). Whatever decodes yields every record
/// and header without panicking, and its record count and offsets agree with its header.
pub fn batch(data: &[u8]) {
    check_batch(Bytes::copy_from_slice(data));
    if data.len() >= BATCH_HEADER_LEN {
        let mut fixed = data.to_vec();
        let length = (fixed.len() - BATCH_LENGTH_FIELD_END) as u32;
        fixed[layout::LENGTH..layout::LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        let crc = crc32fast::hash(&fixed[BATCH_CRC_START..]);
        fixed[layout::CRC..layout::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        check_batch(Bytes::from(fixed));
    }
}

fn check_batch(bytes: Bytes) {
    let Ok(batch) = RecordBatch::from_bytes(bytes) else {
        return;
    };
    let mut count = 0u64;
    for (i, r) in batch.records().enumerate() {
        // Dense offsets (a client's base offset near u64::MAX wraps; the log patches the
        // base offset at append, so a stored batch never does).
        let expected = batch.base_offset().wrapping_add(i as u64);
        assert_eq!(r.offset, expected, "offsets are dense");
        for (key, value) in r.headers.iter() {
            std::hint::black_box((key, value));
        }
        count += 1;
    }
    assert_eq!(count, u64::from(batch.record_count()));
    assert_eq!(
        batch.last_offset(),
        batch.base_offset().saturating_add(count - 1)
    );
}

/// The recovery scan, with the input as the tail of a segment after a crash: a log of
/// eight acknowledged entries in `dir` (which must be empty), dropped as a crash would,
/// gets the input written after its last entry. Reopening must succeed with the eight
/// entries intact (anything after them decodes as entries, or was cut), and the log must
/// take an append afterwards and reopen cleanly again.
///
/// An input whose first byte is odd is taken as entries whose body lengths and CRCs are
/// made right (see [`with_entry_crcs`]), so that the scan's checks past the CRC are reached.
pub fn segment_tail(dir: &Path, data: &[u8]) {
    let tail = match data.first() {
        Some(b) if b % 2 == 1 => with_entry_crcs(&data[1..]),
        _ => data.to_vec(),
    };
    write_tail_and_reopen(dir, &tail);
}

/// `data` cut into 40-byte entry headers and bodies, each header's body length bounded by
/// what is left and its CRC computed; what is left after the last whole header follows.
fn with_entry_crcs(mut data: &[u8]) -> Vec<u8> {
    use crate::entry::ENTRY_HEADER_LEN as H;
    let mut out = Vec::with_capacity(data.len());
    while data.len() >= H {
        let declared = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
        let body = declared % (data.len() - H + 1);
        let mut entry = data[..H + body].to_vec();
        entry[4..8].copy_from_slice(&(body as u32).to_le_bytes());
        let crc = crc32fast::hash(&entry[4..]);
        entry[..4].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&entry);
        data = &data[H + body..];
    }
    out.extend_from_slice(data);
    out
}

fn write_tail_and_reopen(dir: &Path, data: &[u8]) {
    let config = || LogConfig {
        segment_bytes: 256 * 1024,
        max_entry_bytes: 64 * 1024,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    const ENTRIES: u64 = 8;
    let log = PartitionLog::open(dir, config()).expect("a fresh log opens");
    for i in 0..ENTRIES {
        let mut b = BatchBuilder::new();
        let value = format!("entry {i}");
        b.push(NewRecord::value(i as i64, value.as_bytes()))
            .expect("record");
        let batch = b.finish().expect("batch");
        log.append(1, 1, EntryBody::Data(batch))
            .expect("append")
            .wait()
            .expect("durable");
    }
    let segment = log.segments().expect("segments").pop().expect("a segment");
    log.simulate_crash();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment.path)
            .expect("segment opens");
        file.write_all_at(data, segment.bytes)
            .expect("tail written");
    }
    let log = PartitionLog::open(dir, config()).expect("a log with any tail reopens");
    let state = log.state();
    assert!(state.next_index >= ENTRIES, "acknowledged entries lost");
    let entries = log
        .entries(0..state.next_index, usize::MAX)
        .expect("every entry the scan kept reads");
    assert_eq!(entries.len() as u64, state.next_index);
    for (i, e) in entries.iter().take(ENTRIES as usize).enumerate() {
        let batch = RecordBatch::from_bytes(e.body.clone()).expect("an acknowledged batch");
        let first = batch.records().next().expect("a record");
        assert_eq!(first.value, Some(format!("entry {i}").as_bytes()));
    }
    // The next entry in the last one's term (a recovered entry may have a later term).
    let term = state.last_log_id.map_or(1, |l| l.term);
    log.append(term, 1, EntryBody::Blank)
        .expect("appends after recovery")
        .wait()
        .expect("durable");
    log.close().expect("closes");
    let log = PartitionLog::open(dir, config()).expect("reopens after the append");
    assert_eq!(log.state().next_index, state.next_index + 1);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every committed input of the storage targets (seeds, and what fuzzing found) runs
    /// through its target without a failure: the short form of the fuzzing in `cargo test`.
    #[test]
    fn the_fuzz_corpora_replay_without_a_failure() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for target in ["batch", "segment_tail"] {
            let mut inputs = 0;
            for entry in std::fs::read_dir(root.join(target)).unwrap() {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                match target {
                    "batch" => super::batch(&data),
                    _ => super::segment_tail(tempfile::tempdir().unwrap().path(), &data),
                }
                inputs += 1;
            }
            assert!(inputs > 0, "{target} has no corpus");
        }
    }
}
