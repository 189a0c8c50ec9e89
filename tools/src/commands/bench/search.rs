//! `strata bench search`: time to search under a load, indexing catch-up, query latency.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use strata_client::{Client, ProducerRecord};

use super::{Args, Report, histogram, now_us, produce, quantiles_ms};
use crate::output;

/// `bench search`: a load at --rate, and one probe event at a time whose time from
/// acknowledgement to first hit is measured; then how long indexing takes to catch up and
/// how long queries over the topic take.
pub(super) async fn search_bench(client: &Client, args: &Args, json: bool) -> anyhow::Result<()> {
    use strata_client::SearchQuery;
    let search = client.search();
    let mut found = histogram();
    // `--count 0`: no load and no probes, only the queries over what the topic holds.
    let report = if args.count == Some(0) {
        None
    } else {
        Some(time_to_search(client, args, &mut found).await?)
    };
    // Indexing catch-up after the load.
    let drained = Instant::now();
    let all = SearchQuery::new("*")
        .topic(args.topic.as_str())
        .count_only();
    let total = loop {
        let r = search.run(all.clone()).await?;
        if r.not_indexed == 0 {
            break r.total;
        }
        anyhow::ensure!(
            drained.elapsed() < Duration::from_secs(600),
            "indexing did not catch up in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let catch_up = drained.elapsed();
    // Query latency over everything indexed.
    let topic = args.topic.as_str();
    let queries: [(&str, SearchQuery); 5] = [
        (
            "count of status:alarm",
            SearchQuery::new("status:alarm").topic(topic).count_only(),
        ),
        (
            "newest 50 of status:alarm AND site:lyon",
            SearchQuery::new("status:alarm AND site:lyon")
                .topic(topic)
                .limit(50),
        ),
        (
            "count of temperature:[30 TO *]",
            SearchQuery::new("temperature:[30 TO *]")
                .topic(topic)
                .count_only(),
        ),
        (
            "best 20 of the bare word sensor-0042",
            SearchQuery::new("sensor-0042")
                .topic(topic)
                .limit(20)
                .order(strata_client::SearchOrder::Score),
        ),
        (
            "1 s histogram of status:alarm",
            SearchQuery::new("status:alarm")
                .topic(topic)
                .count_only()
                .histogram_ms(1000),
        ),
    ];
    let mut measured = Vec::new();
    for (name, query) in queries {
        let mut h = histogram();
        let mut matches = 0;
        for _ in 0..20 {
            let t = Instant::now();
            matches = search.run(query.clone()).await?.total;
            h.saturating_record(t.elapsed().as_micros() as u64);
        }
        let (p50, p99, _) = quantiles_ms(&h);
        measured.push((name, matches, p50, p99));
    }
    let (f50, f99, fmax) = quantiles_ms(&found);
    if json {
        let queries: Vec<_> = measured
            .iter()
            .map(|(name, matches, p50, p99)| {
                json!({"query": name, "matches": matches, "p50_ms": p50, "p99_ms": p99})
            })
            .collect();
        output::json(&json!({"mode": "search", "topic": args.topic,
            "records": report.as_ref().map_or(0, |r| r.records),
            "records_per_sec": report.as_ref().map_or(0.0, |r| r.records as f64 / r.seconds.max(1e-9)),
            "probes": found.len(),
            "time_to_search": {"p50_ms": f50, "p99_ms": f99, "max_ms": fmax},
            "indexed_events": total, "catch_up_ms": catch_up.as_secs_f64() * 1000.0,
            "queries": queries}));
    } else {
        if let Some(report) = &report {
            println!(
                "load: {} records in {:.1}s ({:.0} records/s, {} bytes each)",
                report.records,
                report.seconds,
                report.records as f64 / report.seconds.max(1e-9),
                args.record_size
            );
            println!(
                "time to search (ack to first hit), {} probes: p50 {f50:.1} ms, p99 {f99:.1} ms, max {fmax:.1} ms",
                found.len()
            );
        }
        println!(
            "indexing caught up {:.0} ms after the load ended; {total} events searchable",
            catch_up.as_secs_f64() * 1000.0
        );
        for (name, matches, p50, p99) in measured {
            println!(
                "query over {total} events, {name} ({matches} matches): p50 {p50:.1} ms, p99 {p99:.1} ms"
            );
        }
    }
    Ok(())
}

/// The load and the probes of `bench search`: records the time from each probe's
/// acknowledgement to the first search that finds it.
async fn time_to_search(
    client: &Client,
    args: &Args,
    found: &mut Histogram<u64>,
) -> anyhow::Result<Report> {
    use strata_client::SearchQuery;
    let mut load_args = args.clone();
    load_args.rate = Some(args.rate.unwrap_or(10_000));
    if load_args.count.is_none() && load_args.duration.is_none() {
        load_args.duration = Some(Duration::from_secs(30));
    }
    let load = {
        let client = client.clone();
        tokio::spawn(async move { produce(&client, &load_args, true, None).await })
    };
    let search = client.search();
    let probes = client.producer().linger(Duration::ZERO).build();
    let run = format!("{:x}", now_us());
    let mut probe = 0u64;
    while !load.is_finished() {
        probe += 1;
        let token = format!("probe{run}x{probe}");
        let value = format!(r#"{{"probe":"{token}","site":"bench"}}"#);
        let ack = probes
            .send(ProducerRecord::new(args.topic.as_str(), value))
            .await?;
        ack.await?;
        let acked = Instant::now();
        let query = SearchQuery::new(format!("probe:{token}"))
            .topic(args.topic.as_str())
            .count_only();
        loop {
            if search.run(query.clone()).await?.total >= 1 {
                found.saturating_record(acked.elapsed().as_micros() as u64);
                break;
            }
            anyhow::ensure!(
                acked.elapsed() < Duration::from_secs(30),
                "probe {token} not searchable after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = load.await??;
    probes.close().await?;
    Ok(report)
}
