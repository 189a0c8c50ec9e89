//! `strata bench produce | consume | e2e`: throughput and latency against a running node.
//!
//! - `produce`: producers send fixed-size records (no key: sticky partitioning) as fast as
//!   they can, or at `--rate`; latency is from `send` to acknowledgement.
//! - `consume`: reads the topic from its start to its current end (catch-up).
//! - `e2e`: a consumer follows the topic while producers send at `--rate`; latency is from
//!   send to receipt (each record carries its send time in a header).
//!
//! Throughput is reported in records/s and MB/s (10^6 bytes of record payload per second);
//! latencies as p50/p99/p99.9/max in milliseconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Subcommand;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use strata_client::{Client, ErrorCode, ProducerRecord, StartAt, TopicSpec};

mod search;

use super::Connection;
use super::produce::AcksArg;
use crate::output;
use crate::units::{parse_duration, parse_size};

/// Benchmark commands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce as fast as possible (or at --rate) and report throughput and ack latency.
    Produce(Args),
    /// Read a topic from its start to its end and report throughput.
    Consume(Args),
    /// Produce at --rate (default 10,000/s) while probe events are searched for; report
    /// time-to-search (acknowledgement to first hit), indexing catch-up and query latency.
    /// With --count 0: only the query latencies over what the topic already holds.
    Search(Args),
    /// Produce at --rate while a consumer follows; report end-to-end latency.
    E2e(Args),
}

/// Benchmark options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Topic (created with --partitions if missing).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of a topic the benchmark creates.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Bytes per record value.
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    pub record_size: u64,
    /// Records to produce (default 1,000,000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Produce for this long instead of a count.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Concurrent producers.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Batch size of each producer.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub batch_bytes: u64,
    /// How long a batch waits to fill.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub linger: Duration,
    /// When the broker answers.
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Records per second in total (default: as fast as possible; e2e: 10,000).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Memory for unacknowledged records, per producer.
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    pub max_in_flight: u64,
    /// Record values: `bytes` (filler) or `json` (sensor readings like the demo's:
    /// device, site, ts, temperature, humidity, status, padded to --record-size).
    #[arg(long, value_enum, default_value = "bytes")]
    pub payload: PayloadArg,
}

/// What record values hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadArg {
    /// Filler bytes.
    Bytes,
    /// Sensor-reading JSON.
    Json,
}

/// 1,000 record values (cycled through).
fn payloads(kind: PayloadArg, size: usize) -> Vec<Bytes> {
    if kind == PayloadArg::Bytes {
        return vec![Bytes::from(vec![b'x'; size])];
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    (0..1000)
        .map(|i| {
            let head = format!(
                r#"{{"device":"sensor-{:04}","site":"{}","ts":{},"temperature":{:.1},"humidity":{:.1},"status":"{}","note":""#,
                i % 50,
                ["lyon", "oslo", "porto", "turin"][i % 4],
                now + i as i64,
                15.0 + (i % 230) as f64 / 10.0,
                40.0 + (i % 37) as f64,
                if i % 40 == 0 { "alarm" } else { "ok" }
            );
            let pad = size.saturating_sub(head.len() + 2);
            Bytes::from(format!("{head}{}\"}}", "x".repeat(pad)))
        })
        .collect()
}

/// Runs a benchmark.
pub async fn run(command: BenchCommand, connection: &Connection, json: bool) -> anyhow::Result<()> {
    let client = connection.connect().await?;
    match command {
        BenchCommand::Produce(args) => {
            ensure_topic(&client, &args).await?;
            warm_up(&client, &args).await?;
            let report = produce(&client, &args, json, None).await?;
            print_report("produce", &args, &report, json);
        }
        BenchCommand::Consume(args) => {
            let report = consume(&client, &args, json).await?;
            print_report("consume", &args, &report, json);
        }
        BenchCommand::Search(mut args) => {
            if args.payload == PayloadArg::Bytes {
                args.payload = PayloadArg::Json;
            }
            if args.count != Some(0) {
                ensure_topic(&client, &args).await?;
                warm_up(&client, &args).await?;
            }
            search::search_bench(&client, &args, json).await?;
        }
        BenchCommand::E2e(args) => {
            ensure_topic(&client, &args).await?;
            warm_up(&client, &args).await?;
            let report = e2e(&client, &args, json).await?;
            print_report("e2e", &args, &report, json);
        }
    }
    Ok(())
}

/// What a benchmark measured.
struct Report {
    records: u64,
    bytes: u64,
    seconds: f64,
    /// Latencies in microseconds, if measured.
    latency: Option<Histogram<u64>>,
    /// The longest time between two acknowledgements (produce).
    max_ack_gap: Option<Duration>,
}

fn print_report(mode: &str, args: &Args, r: &Report, json: bool) {
    let records_per_sec = r.records as f64 / r.seconds.max(1e-9);
    let mb_per_sec = r.bytes as f64 / 1e6 / r.seconds.max(1e-9);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    if json {
        let latency = r.latency.as_ref().map(|h| {
            json!({"p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99), "p999_ms": ms(h, 0.999), "max_ms": h.max() as f64 / 1000.0})
        });
        output::json(
            &json!({"mode": mode, "topic": args.topic, "record_size": args.record_size, "producers": args.producers,
            "records": r.records, "bytes": r.bytes, "seconds": r.seconds, "records_per_sec": records_per_sec,
            "mb_per_sec": mb_per_sec, "latency": latency,
            "max_ack_gap_ms": r.max_ack_gap.map(|g| g.as_secs_f64() * 1000.0)}),
        );
    } else {
        println!(
            "{mode}: {} records of {} bytes in {:.2}s: {:.0} records/s, {:.1} MB/s",
            r.records, args.record_size, r.seconds, records_per_sec, mb_per_sec
        );
        if let Some(h) = &r.latency {
            println!(
                "latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                ms(h, 0.5),
                ms(h, 0.99),
                ms(h, 0.999),
                h.max() as f64 / 1000.0
            );
        }
        if let Some(gap) = r.max_ack_gap {
            println!(
                "longest time without an acknowledgement: {:.1} ms",
                gap.as_secs_f64() * 1000.0
            );
        }
    }
}

async fn ensure_topic(client: &Client, args: &Args) -> anyhow::Result<()> {
    match client
        .admin()
        .create_topic(&args.topic, TopicSpec::partitions(args.partitions))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::TopicExists) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends one record to every partition and waits for it, so connections, metadata and the
/// broker's first appends are in place before anything is measured.
async fn warm_up(client: &Client, args: &Args) -> anyhow::Result<()> {
    let producer = client.producer().linger(Duration::ZERO).build();
    let partitions = client
        .admin()
        .describe_topic(&args.topic)
        .await?
        .partitions
        .len() as u32;
    let mut deliveries = Vec::new();
    for p in 0..partitions {
        let record = ProducerRecord::new(args.topic.as_str(), Bytes::from_static(b"warm-up"))
            .partition(p)
            .header("warmup", Bytes::new());
        deliveries.push(producer.send(record).await?);
    }
    for d in deliveries {
        d.await?;
    }
    producer.close().await?;
    Ok(())
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits: construction cannot fail with these bounds.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

fn progress(total: Option<u64>, quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Produces per `args`; `stamp` adds the send time header (for e2e).
async fn produce(
    client: &Client,
    args: &Args,
    quiet: bool,
    stamp: Option<()>,
) -> anyhow::Result<Report> {
    let count = match (args.count, args.duration) {
        (Some(c), _) => Some(c),
        (None, Some(_)) => None,
        (None, None) => Some(1_000_000),
    };
    let producers = args.producers.max(1);
    let payload = Arc::new(payloads(args.payload, args.record_size as usize));
    let acked = Arc::new(AtomicU64::new(0));
    let bar = progress(count, quiet);
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let mut tasks = Vec::new();
    for i in 0..producers {
        let producer = client
            .producer()
            .batch_bytes(args.batch_bytes as usize)
            .linger(args.linger)
            .acks(args.acks.into())
            .max_in_flight_bytes(args.max_in_flight as usize)
            .build();
        let quota =
            count.map(|c| c / producers as u64 + u64::from((i as u64) < c % producers as u64));
        let per_producer_rate = args.rate.map(|r| (r as f64 / producers as f64).max(1.0));
        let topic: Arc<str> = Arc::from(args.topic.as_str());
        let (payload, acked) = (payload.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<(Instant, strata_client::DeliveryFuture)>(65_536);
            let acker = {
                let acked = acked.clone();
                tokio::spawn(async move {
                    // Latency is taken when each delivery completes, not in send order: a
                    // record acknowledged early must not wait behind a slower partition.
                    let mut h = histogram();
                    let mut failures = 0u64;
                    // The longest stretch without an acknowledgement (a fail-over shows here).
                    let mut last_ack: Option<Instant> = None;
                    let mut max_gap = Duration::ZERO;
                    let mut pending = futures_util::stream::FuturesUnordered::new();
                    let mut open = true;
                    while open || !pending.is_empty() {
                        tokio::select! {
                            next = rx.recv(), if open => match next {
                                Some((sent, delivery)) => pending.push(async move { (sent, delivery.await) }),
                                None => open = false,
                            },
                            Some((sent, result)) = pending.next(), if !pending.is_empty() => match result {
                                Ok(_) => {
                                    h.saturating_record(sent.elapsed().as_micros() as u64);
                                    acked.fetch_add(1, Ordering::Relaxed);
                                    let now = Instant::now();
                                    if let Some(last) = last_ack {
                                        max_gap = max_gap.max(now - last);
                                    }
                                    last_ack = Some(now);
                                }
                                Err(e) => {
                                    failures += 1;
                                    if failures == 1 {
                                        eprintln!("delivery failed: {e}");
                                    }
                                }
                            },
                        }
                    }
                    (h, failures, max_gap)
                })
            };
            let mut n = 0u64;
            loop {
                if quota.is_some_and(|q| n >= q) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if let Some(rate) = per_producer_rate {
                    let due = started + Duration::from_secs_f64(n as f64 / rate);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                let value = payload[n as usize % payload.len()].clone();
                let mut record = ProducerRecord::new(topic.clone(), value);
                if stamp.is_some() {
                    record = record.header("sent_us", Bytes::from(now_us().to_le_bytes().to_vec()));
                }
                let sent = Instant::now();
                let delivery = producer.send(record).await?;
                n += 1;
                if tx.send((sent, delivery)).await.is_err() {
                    break;
                }
            }
            drop(tx);
            producer.close().await?;
            let (h, failures, gap) = acker.await?;
            anyhow::Ok((n, h, failures, gap))
        }));
    }
    let ticker = {
        let (bar, acked) = (bar.clone(), acked.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(acked.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut latency = histogram();
    let (mut sent, mut failures, mut max_gap) = (0, 0, Duration::ZERO);
    for task in tasks {
        let (n, h, f, gap) = task.await??;
        sent += n;
        failures += f;
        max_gap = max_gap.max(gap);
        latency
            .add(&h)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e}"))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    if failures > 0 {
        anyhow::bail!("{failures} of {sent} records were not acknowledged");
    }
    let records = acked.load(Ordering::Relaxed);
    Ok(Report {
        records,
        bytes: records * args.record_size,
        seconds,
        latency: Some(latency),
        max_ack_gap: Some(max_gap),
    })
}

/// Reads the topic from its start to its current end.
async fn consume(client: &Client, args: &Args, quiet: bool) -> anyhow::Result<Report> {
    let topic = client.admin().describe_topic(&args.topic).await?;
    let ends: HashMap<u32, u64> = topic
        .partitions
        .iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect();
    let total: u64 = topic
        .partitions
        .iter()
        .map(|p| p.high_watermark - p.start_offset.min(p.high_watermark))
        .sum();
    let mut consumer = client
        .consumer()
        .assign(
            args.topic.clone(),
            topic.partitions.iter().map(|p| p.partition),
        )
        .start_at(StartAt::Earliest)
        .max_bytes(8 << 20)
        .auto_commit(None)
        .build()
        .await?;
    let bar = progress(Some(total), quiet);
    let started = Instant::now();
    let mut remaining: HashMap<u32, u64> = ends
        .iter()
        .filter(|(_, end)| **end > 0)
        .map(|(p, e)| (*p, *e))
        .collect();
    // One deadline for the whole read: a timer per record would cost more than the record.
    let read_all = async {
        let (mut records, mut bytes) = (0u64, 0u64);
        while !remaining.is_empty() {
            let record = consumer
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("the consumer stopped"))??;
            records += 1;
            bytes += record.value.as_ref().map_or(0, |v| v.len() as u64)
                + record.key.as_ref().map_or(0, |k| k.len() as u64);
            if remaining
                .get(&record.partition)
                .is_some_and(|end| record.offset + 1 >= *end)
            {
                remaining.remove(&record.partition);
            }
            if records % 10_000 == 0 {
                bar.set_position(records);
            }
        }
        anyhow::Ok((records, bytes))
    };
    let (records, bytes) = tokio::time::timeout(Duration::from_secs(600), read_all)
        .await
        .map_err(|_| anyhow::anyhow!("catching up took more than 10 minutes"))??;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    consumer.close().await?;
    Ok(Report {
        records,
        bytes,
        seconds,
        latency: None,
        max_ack_gap: None,
    })
}

/// Produces at a rate while following the topic; measures send-to-receipt latency.
async fn e2e(client: &Client, args: &Args, quiet: bool) -> anyhow::Result<Report> {
    let topic = client.admin().describe_topic(&args.topic).await?;
    let mut consumer = client
        .consumer()
        .assign(
            args.topic.clone(),
            topic.partitions.iter().map(|p| p.partition),
        )
        .start_at(StartAt::Latest)
        .max_wait(Duration::from_millis(100))
        .auto_commit(None)
        .build()
        .await?;
    for p in &topic.partitions {
        // Start producing only once the consumer knows where it starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while consumer.position(&args.topic, p.partition).is_none() {
            anyhow::ensure!(Instant::now() < deadline, "the consumer did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut produce_args = args.clone();
    produce_args.rate = Some(args.rate.unwrap_or(10_000));
    let expected = produce_args.count.unwrap_or(if args.duration.is_some() {
        u64::MAX
    } else {
        100_000
    });
    produce_args.count = (expected != u64::MAX).then_some(expected);
    let reader = tokio::spawn(async move {
        let mut h = histogram();
        let mut received = 0u64;
        let mut bytes = 0u64;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                Ok(Some(Ok(record))) => {
                    let sent = record
                        .headers
                        .iter()
                        .find(|(k, _)| k == "sent_us")
                        .and_then(|(_, v)| <[u8; 8]>::try_from(&v[..]).ok())
                        .map(u64::from_le_bytes);
                    if let Some(sent) = sent {
                        h.saturating_record(now_us().saturating_sub(sent));
                    }
                    received += 1;
                    bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
                    if received >= expected {
                        break;
                    }
                }
                Ok(Some(Err(e))) => return Err(anyhow::Error::from(e)),
                Ok(None) | Err(_) => break, // stream ended, or quiet for 5 s after the producers
            }
        }
        let _ = consumer.close().await;
        Ok((received, bytes, h))
    });
    let started = Instant::now();
    let produced = produce(client, &produce_args, quiet, Some(())).await?;
    let (received, bytes, latency) = reader.await??;
    anyhow::ensure!(
        received >= produced.records,
        "received {received} of {} records",
        produced.records
    );
    Ok(Report {
        records: received,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        latency: Some(latency),
        max_ack_gap: None,
    })
}

fn quantiles_ms(h: &Histogram<u64>) -> (f64, f64, f64) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    (ms(0.5), ms(0.99), h.max() as f64 / 1000.0)
}
