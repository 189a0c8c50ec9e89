//! `strata produce TOPIC`: one record per line of standard input.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use strata_client::{Acks, ProducerRecord};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::Connection;
use crate::output;
use crate::units::parse_duration;

/// Acknowledgement level on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AcksArg {
    /// Once durable on the broker.
    All,
    /// Once the leader appended it.
    Leader,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Acks {
        match a {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
        }
    }
}

/// `strata produce` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Topic to write to.
    pub topic: String,
    /// The key of every record.
    #[arg(long, conflicts_with = "key_field")]
    pub key: Option<String>,
    /// Take each record's key from this field of its JSON line (a dotted path like
    /// `device` or `meta.site`); lines without it get no key.
    #[arg(long)]
    pub key_field: Option<String>,
    /// Write every record to this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// When the broker answers.
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// How long a batch waits for more lines.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub linger: Duration,
}

/// The value at a dotted path of a JSON document, as key text.
pub fn key_from_field(line: &str, path: &str) -> Option<String> {
    let document: serde_json::Value = serde_json::from_str(line).ok()?;
    let mut value = &document;
    for part in path.split('.') {
        value = value.get(part)?;
    }
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Runs `strata produce`.
pub async fn run(args: Args, connection: &Connection, json: bool) -> anyhow::Result<()> {
    let client = connection.connect().await?;
    let producer = client
        .producer()
        .acks(args.acks.into())
        .linger(args.linger)
        .build();
    // Deliveries are awaited in order by a second task, so reading stdin never waits for acks.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<strata_client::DeliveryFuture>(10_000);
    let acker = tokio::spawn(async move {
        let (mut ok, mut partitions, mut first_error) = (0u64, BTreeSet::new(), None);
        while let Some(delivery) = rx.recv().await {
            match delivery.await {
                Ok(meta) => {
                    ok += 1;
                    partitions.insert(meta.partition);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        (ok, partitions, first_error)
    });
    let started = Instant::now();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let (mut records, mut bytes) = (0u64, 0u64);
    while let Some(line) = lines.next_line().await.context("reading standard input")? {
        if line.is_empty() {
            continue;
        }
        let key = match (&args.key, &args.key_field) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(path)) => key_from_field(&line, path),
            (None, None) => None,
        };
        bytes += line.len() as u64;
        let mut record = ProducerRecord::new(args.topic.clone(), line);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        let delivery = producer.send(record).await?;
        records += 1;
        if tx.send(delivery).await.is_err() {
            break;
        }
    }
    drop(tx);
    producer.flush().await?;
    let (ok, partitions, first_error) = acker.await?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        output::json(
            &json!({"topic": args.topic, "records": records, "acknowledged": ok, "bytes": bytes,
            "partitions": partitions, "seconds": seconds, "error": first_error.as_ref().map(|e| e.to_string())}),
        );
    } else {
        println!(
            "produced {ok} of {records} records ({bytes} bytes) to {} in {seconds:.2}s, partitions {partitions:?}",
            args.topic
        );
    }
    match first_error {
        Some(e) => Err(anyhow::anyhow!(
            "{} records were not stored: {e}",
            records - ok
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::key_from_field;

    #[test]
    fn keys_come_from_json_paths() {
        let line = r#"{"device":"d1","meta":{"site":7,"zone":null}}"#;
        assert_eq!(key_from_field(line, "device").as_deref(), Some("d1"));
        assert_eq!(key_from_field(line, "meta.site").as_deref(), Some("7"));
        assert_eq!(key_from_field(line, "meta.zone"), None);
        assert_eq!(key_from_field(line, "missing"), None);
        assert_eq!(key_from_field("not json", "device"), None);
    }
}
