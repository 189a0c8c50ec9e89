//! Search: indexing throughput of one partition's index (document building, tantivy's
//! indexing thread and commits), per core.

use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use strata_storage::{BatchBuilder, NewRecord, RecordBatch};

/// `n` demo-like sensor events of about `size` bytes in batches of 100.
fn batches(n: usize, size: usize) -> Vec<bytes::Bytes> {
    let base = 1_700_000_000_000i64;
    let mut offset = 0u64;
    (0..n)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| {
            let mut b = BatchBuilder::new();
            for &i in chunk {
                let head = format!(
                    r#"{{"device":"sensor-{:04}","site":"{}","ts":{},"temperature":{:.1},"humidity":{:.1},"status":"{}","msg":"reading {i} from gateway {} ok","note":""#,
                    i % 50,
                    ["lyon", "oslo", "porto", "turin"][i % 4],
                    base + i as i64 * 10,
                    15.0 + (i % 230) as f64 / 10.0,
                    40.0 + (i % 37) as f64,
                    if i % 40 == 0 { "alarm" } else { "ok" },
                    i % 7,
                );
                // Padding of words, as log lines have, rather than one long token.
                let mut json = head;
                while json.len() + 2 < size {
                    json.push_str("lorem ipsum ");
                }
                json.push_str("\"}");
                b.push(NewRecord::value(base + i as i64, json.as_bytes()).with_key(b"k"))
                    .unwrap();
            }
            let batch: RecordBatch = b.finish().unwrap();
            // Patch the base offset as the log would.
            let mut raw = batch.as_bytes().to_vec();
            raw[..8].copy_from_slice(&offset.to_le_bytes());
            offset += chunk.len() as u64;
            bytes::Bytes::from(raw)
        })
        .collect()
}

fn index(c: &mut Criterion) {
    let mut g = c.benchmark_group("search/index");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    for (name, size) in [("200B", 200), ("1KiB", 1024)] {
        let n = 50_000;
        let input = batches(n, size);
        let values: usize = n * size;
        g.throughput(Throughput::Bytes(values as u64));
        g.bench_function(format!("{name} events, commit every 10k (bytes/s)"), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dir| {
                    let docs = strata_broker::search::index_batches(
                        &dir.path().join("search"),
                        &input,
                        &[],
                        10_000,
                    )
                    .unwrap();
                    assert_eq!(docs, n as u64);
                    dir
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, index);
