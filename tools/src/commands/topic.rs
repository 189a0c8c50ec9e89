//! `strata topic create | list | describe | delete`.

use clap::Subcommand;
use serde_json::json;
use strata_client::{TopicDescription, TopicSpec};

use super::Connection;
use crate::output;
use crate::units::{human_bytes, parse_duration, parse_size};

/// Topic commands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name (letters, digits, `.`, `_`, `-`).
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition (default: min(3, nodes)).
        #[arg(long)]
        replication: Option<u32>,
        /// Delete data older than this (e.g. 7d, 12h).
        #[arg(long, value_parser = parse_duration)]
        retention: Option<std::time::Duration>,
        /// Keep at most this much data per partition (e.g. 10GiB).
        #[arg(long, value_parser = parse_size)]
        retention_bytes: Option<u64>,
        /// Do not index its events for search.
        #[arg(long)]
        no_search: bool,
        /// Index only these JSON fields for search (comma-separated paths, e.g.
        /// level,http.status); default: every field.
        #[arg(long, value_delimiter = ',')]
        search_fields: Vec<String>,
    },
    /// List topics.
    List,
    /// Show a topic's settings and partitions.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

fn topic_json(t: &TopicDescription) -> serde_json::Value {
    json!({
        "name": t.name,
        "id": t.id,
        "partitions": t.spec.partitions,
        "replication_factor": t.spec.replication_factor,
        "retention_ms": t.spec.retention_ms,
        "retention_bytes": t.spec.retention_bytes,
        "search": !t.spec.search_disabled,
        "search_fields": t.spec.search_fields,
    })
}

/// Runs a topic command.
pub async fn run(command: TopicCommand, connection: &Connection, json: bool) -> anyhow::Result<()> {
    let admin = connection.connect().await?.admin();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication,
            retention,
            retention_bytes,
            no_search,
            search_fields,
        } => {
            let spec = TopicSpec {
                partitions,
                replication_factor: replication.unwrap_or(0),
                retention_ms: retention.map(|d| d.as_millis() as u64),
                retention_bytes,
                search_disabled: no_search,
                search_fields,
            };
            let topic = admin.create_topic(&name, spec).await?;
            if json {
                output::json(&topic_json(&topic));
            } else {
                println!(
                    "created topic {} ({} partitions, replication {})",
                    topic.name, topic.spec.partitions, topic.spec.replication_factor
                );
            }
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await?;
            if json {
                for t in &topics {
                    output::json(&topic_json(t));
                }
            } else {
                let rows: Vec<Vec<String>> = topics
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.spec.partitions.to_string(),
                            t.spec.replication_factor.to_string(),
                            t.spec.retention_ms.map_or("forever".into(), |ms| {
                                humantime::format_duration(std::time::Duration::from_millis(ms))
                                    .to_string()
                            }),
                        ]
                    })
                    .collect();
                output::table(&["TOPIC", "PARTITIONS", "REPLICATION", "RETENTION"], &rows);
            }
        }
        TopicCommand::Describe { name } => {
            let topic = admin.describe_topic(&name).await?;
            if json {
                let mut value = topic_json(&topic);
                value["partition_status"] = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        json!({"partition": p.partition, "leader": p.leader, "start_offset": p.start_offset,
                               "high_watermark": p.high_watermark, "bytes": p.bytes, "segments": p.segments})
                    })
                    .collect();
                output::json(&value);
            } else {
                println!(
                    "topic {} (id {}): {} partitions, replication {}, retention {}, retention bytes {}, search {}",
                    topic.name,
                    topic.id,
                    topic.spec.partitions,
                    topic.spec.replication_factor,
                    topic.spec.retention_ms.map_or("forever".into(), |ms| {
                        humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
                    }),
                    topic
                        .spec
                        .retention_bytes
                        .map_or("unlimited".into(), |b| human_bytes(b as f64)),
                    if topic.spec.search_disabled {
                        "off".to_string()
                    } else if topic.spec.search_fields.is_empty() {
                        "on (every field)".to_string()
                    } else {
                        format!("on ({})", topic.spec.search_fields.join(", "))
                    },
                );
                let rows: Vec<Vec<String>> = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition.to_string(),
                            p.leader.to_string(),
                            p.start_offset.to_string(),
                            p.high_watermark.to_string(),
                            (p.high_watermark - p.start_offset.min(p.high_watermark)).to_string(),
                            human_bytes(p.bytes as f64),
                            p.segments.to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "PARTITION",
                        "LEADER",
                        "START",
                        "END",
                        "RECORDS",
                        "SIZE",
                        "SEGMENTS",
                    ],
                    &rows,
                );
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            if json {
                output::json(&json!({"deleted": name}));
            } else {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(())
}
