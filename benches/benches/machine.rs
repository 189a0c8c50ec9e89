//! The machine's own limits, measured in the same run as everything else: the memory copy
//! bandwidth that bounds any read path. (Disk bandwidth comes from `dd`, see the README.)

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};

fn memcpy(c: &mut Criterion) {
    const LEN: usize = 64 << 20;
    let source = vec![0xa5u8; LEN];
    let mut target = vec![0u8; LEN];
    let mut group = c.benchmark_group("machine");
    group
        .throughput(Throughput::Bytes(LEN as u64))
        .sample_size(20);
    group.bench_function("memcpy-64MiB", |b| {
        b.iter(|| {
            target.copy_from_slice(black_box(&source));
            black_box(&mut target);
        })
    });
    group.finish();
}

criterion_group!(benches, memcpy);
