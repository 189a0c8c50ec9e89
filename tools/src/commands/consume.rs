//! `strata consume TOPIC`: print records.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use strata_client::{ConsumerRecord, StartAt};

use super::Connection;
use crate::output;
use crate::units::parse_duration;

/// `strata consume` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Topic to read.
    pub topic: String,
    /// Start at the first record still stored (the default without --follow).
    #[arg(long, group = "start")]
    pub from_beginning: bool,
    /// Start at this offset.
    #[arg(long, group = "start")]
    pub offset: Option<u64>,
    /// Start at records of the last N minutes/hours/... (e.g. 5m, 2h).
    #[arg(long, group = "start", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Consume as a member of this group (committed offsets take precedence over the
    /// start options, and are committed as records are printed).
    #[arg(long)]
    pub group: Option<String>,
    /// Keep waiting for new records (starts at the end unless told otherwise).
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
}

fn record_json(r: &ConsumerRecord) -> serde_json::Value {
    output::record_json(
        &r.topic,
        r.partition,
        r.offset,
        r.timestamp,
        r.key.as_deref(),
        r.value.as_deref(),
    )
}

/// Runs `strata consume`.
pub async fn run(args: Args, connection: &Connection, json: bool) -> anyhow::Result<()> {
    let client = connection.connect().await?;
    let admin = client.admin();
    let topic = admin.describe_topic(&args.topic).await?;
    let ends: HashMap<u32, u64> = topic
        .partitions
        .iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect();
    let start = match (args.from_beginning, args.offset, args.since) {
        (_, Some(offset), _) => StartAt::Offset(offset),
        (_, _, Some(since)) => StartAt::Timestamp(strata_now_ms() - since.as_millis() as i64),
        (true, _, _) => StartAt::Earliest,
        (false, None, None) if args.follow => StartAt::Latest,
        (false, None, None) => StartAt::Earliest,
    };
    let mut builder = client.consumer().start_at(start);
    builder = match (&args.group, args.partition) {
        (Some(group), None) => builder.group(group.clone()).topic(args.topic.clone()),
        (group, partition) => {
            let partitions: Vec<u32> = match partition {
                Some(p) => vec![p],
                None => topic.partitions.iter().map(|p| p.partition).collect(),
            };
            let b = builder.assign(args.topic.clone(), partitions);
            match group {
                Some(g) => b.group(g.clone()),
                None => b,
            }
        }
    };
    let mut consumer = builder.build().await?;
    let mut printed = 0u64;
    loop {
        if args.limit.is_some_and(|l| printed >= l) {
            break;
        }
        if !args.follow {
            let assignment = consumer.assignment();
            let caught_up = !assignment.is_empty()
                && assignment.iter().all(|(t, p)| {
                    consumer
                        .position(t, *p)
                        .is_some_and(|pos| pos >= ends.get(p).copied().unwrap_or(0))
                });
            if caught_up {
                break;
            }
        }
        let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
        match next {
            Ok(Some(Ok(record))) => {
                if json {
                    output::json(&record_json(&record));
                } else {
                    println!(
                        "{}",
                        record
                            .value
                            .as_ref()
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default()
                    );
                }
                printed += 1;
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => break,
            Err(_) => {} // nothing new yet
        }
    }
    consumer.close().await?;
    Ok(())
}

fn strata_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
