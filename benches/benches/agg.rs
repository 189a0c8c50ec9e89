//! Aggregations: the cost of folding committed batches into running aggregations, per event.

use criterion::{Criterion, Throughput, criterion_group};
use strata_broker::agg::def::{
    AggregationDef, DEFAULT_RETAIN_MS, GroupBy, Measure, TimeSource, Window,
};
use strata_broker::agg::{Control, PartitionAggs};
use strata_storage::{BatchBuilder, NewRecord, RecordBatch};

/// `n` demo-like sensor events (about `pad` bytes of extra payload each) in batches of 100.
fn batches(n: usize, pad: usize) -> Vec<RecordBatch> {
    let base = 1_700_000_000_000i64;
    let filler = "x".repeat(pad);
    (0..n)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| {
            let mut b = BatchBuilder::new();
            for &i in chunk {
                let json = format!(
                    r#"{{"device":"sensor-{:04}","site":"{}","ts":{},"temperature":{:.1},"humidity":{:.1},"status":"{}","note":"{filler}"}}"#,
                    i % 50,
                    ["lyon", "oslo", "porto", "turin"][i % 4],
                    base + i as i64 * 10,
                    15.0 + (i % 230) as f64 / 10.0,
                    40.0 + (i % 37) as f64,
                    if i % 40 == 0 { "alarm" } else { "ok" }
                );
                b.push(NewRecord::value(base, json.as_bytes())).unwrap();
            }
            b.finish().unwrap()
        })
        .collect()
}

fn def(name: &str, group: &str, filter: Option<&str>, measures: &[&str]) -> AggregationDef {
    AggregationDef {
        name: name.into(),
        topic: "sensors".into(),
        window: Window::Tumbling { size_ms: 60_000 },
        time: TimeSource::Field("ts".into()),
        group_by: vec![GroupBy::Field(group.into())],
        filter: filter.map(str::to_string),
        measures: measures
            .iter()
            .map(|m| Measure::parse(m).unwrap())
            .collect(),
        lateness_ms: 5_000,
        retain_ms: DEFAULT_RETAIN_MS,
        emit_to: None,
        backfill: false,
    }
}

/// The three aggregations of the throughput benchmark.
fn three() -> PartitionAggs {
    let mut aggs = PartitionAggs::default();
    let defs = [
        def(
            "t",
            "device",
            None,
            &[
                "count",
                "avg(temperature)",
                "p99(temperature)",
                "max(temperature)",
            ],
        ),
        def(
            "a",
            "site",
            Some(r#"status == "alarm""#),
            &["count", "count_distinct(device)"],
        ),
        def(
            "h",
            "site",
            None,
            &["min(humidity)", "max(humidity)", "sum(humidity)"],
        ),
    ];
    for (id, d) in defs.into_iter().enumerate() {
        aggs.control(
            Control::StartAggregation {
                id: id as u64 + 1,
                def: Box::new(d),
                backfill_from: None,
            },
            0,
        );
    }
    aggs
}

fn fold(c: &mut Criterion) {
    let mut g = c.benchmark_group("agg/fold");
    for (name, pad) in [("200B", 0), ("1KiB", 830)] {
        let input = batches(20_000, pad);
        let bytes: usize = input.iter().map(RecordBatch::len).sum();
        // The same run, reported per event and per byte.
        for (unit, throughput) in [
            ("events/s", Throughput::Elements(20_000)),
            ("bytes/s", Throughput::Bytes(bytes as u64)),
        ] {
            g.throughput(throughput);
            g.bench_function(format!("3 aggregations, {name} events ({unit})"), |b| {
                b.iter_batched(
                    three,
                    |mut aggs| {
                        for batch in &input {
                            aggs.fold_batch(batch, None, 0);
                        }
                        aggs
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, fold);
