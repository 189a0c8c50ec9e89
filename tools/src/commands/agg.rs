//! `strata agg create | list | describe | drop | query | watch`.

use std::time::Duration;

use clap::{Args as ClapArgs, Subcommand};
use futures_util::StreamExt;
use serde_json::json;
use strata_client::{AggregationRow, AggregationSpec};

use super::Connection;
use crate::output;
use crate::units::{now_ms, parse_duration};

/// Aggregation commands.
#[derive(Debug, Subcommand)]
pub enum AggCommand {
    /// Define an aggregation on a topic.
    Create(CreateArgs),
    /// List aggregations.
    List,
    /// Show an aggregation's definition and, per partition, its watermark and counters
    /// (events, late events, skipped events by reason, windows).
    Describe {
        /// Aggregation name.
        name: String,
    },
    /// Drop an aggregation.
    Drop {
        /// Aggregation name.
        name: String,
    },
    /// Print an aggregation's windows, merged over the partitions.
    Query(QueryArgs),
    /// Print windows as they change (first all selected ones, then each update or close).
    Watch(QueryArgs),
}

/// `strata agg create`.
#[derive(Debug, ClapArgs)]
pub struct CreateArgs {
    /// Aggregation name.
    pub name: String,
    /// Topic to aggregate.
    #[arg(long)]
    pub topic: String,
    /// tumbling:SIZE, hopping:SIZE:ADVANCE or session:GAP (e.g. tumbling:1m).
    #[arg(long)]
    pub window: String,
    /// JSON field with the event time (RFC 3339 or epoch ms/s); default: record timestamp.
    #[arg(long)]
    pub time_field: Option<String>,
    /// Group by a JSON field, or `key` for the record key (repeatable).
    #[arg(long = "group-by")]
    pub group_by: Vec<String>,
    /// count, sum(F), min(F), max(F), avg(F), pNN(F), count_distinct(F) (repeatable).
    #[arg(long = "measure", required = true)]
    pub measures: Vec<String>,
    /// Only events matching, e.g. 'status == "alarm" and temperature > 30'.
    #[arg(long)]
    pub filter: Option<String>,
    /// Allowed lateness of event time (e.g. 10s).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub lateness: Duration,
    /// How long closed windows stay queryable behind the watermark.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub retain: Duration,
    /// An existing topic that receives every closed window, merged over the partitions, as
    /// one JSON record (exactly once; key: the group values joined with `|`).
    #[arg(long)]
    pub emit_to: Option<String>,
    /// Also fold in the records already in the log.
    #[arg(long)]
    pub backfill: bool,
}

/// `strata agg query` and `watch`.
#[derive(Debug, ClapArgs)]
pub struct QueryArgs {
    /// Aggregation name.
    pub name: String,
    /// Windows ending within this long before now (e.g. 1h).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only this group: PART=VALUE (repeatable), e.g. --where device=d1.
    #[arg(long = "where")]
    pub r#where: Vec<String>,
}

fn time_text(ms: i64) -> String {
    crate::units::time_text(ms, false)
}

fn value_text(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        Some(v) => format!("{v:.3}"),
    }
}

impl QueryArgs {
    /// Where `--since` starts, in epoch ms.
    fn since_ms(&self) -> Option<i64> {
        self.since.map(|s| now_ms() - s.as_millis() as i64)
    }

    /// The `--where` pairs.
    fn filters(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.r#where
            .iter()
            .map(|w| {
                w.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| anyhow::anyhow!("--where {w}: expected PART=VALUE"))
            })
            .collect()
    }
}

fn row_json(measures: &[String], group_by: &[String], row: &AggregationRow) -> serde_json::Value {
    let group: serde_json::Map<String, serde_json::Value> = group_by
        .iter()
        .zip(&row.group)
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let values: serde_json::Map<String, serde_json::Value> = measures
        .iter()
        .zip(&row.values)
        .map(|(k, v)| (k.clone(), json!(v.value)))
        .collect();
    json!({"start": time_text(row.start_ms), "end": time_text(row.end_ms), "start_ms": row.start_ms,
        "end_ms": row.end_ms, "group": group, "measures": values, "events": row.events, "closed": row.closed})
}

fn print_rows(measures: &[String], group_by: &[String], rows: &[AggregationRow], json: bool) {
    if json {
        for row in rows {
            output::json(&row_json(measures, group_by, row));
        }
        return;
    }
    let mut header: Vec<String> = vec!["WINDOW START".into(), "END".into()];
    header.extend(group_by.iter().map(|g| g.to_uppercase()));
    header.extend(measures.iter().cloned());
    header.push("STATE".into());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![time_text(r.start_ms), time_text(r.end_ms)];
            cells.extend(r.group.iter().cloned());
            cells.extend(r.values.iter().map(|v| value_text(v.value)));
            cells.push(if r.closed { "closed" } else { "open" }.into());
            cells
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    output::table(&header, &table);
}

/// Runs an aggregation command.
pub async fn run(command: AggCommand, connection: &Connection, json: bool) -> anyhow::Result<()> {
    let aggs = connection.connect().await?.aggregations();
    match command {
        AggCommand::Create(a) => {
            let spec = AggregationSpec {
                name: a.name.clone(),
                topic: a.topic,
                window: a.window,
                time_field: a.time_field.unwrap_or_default(),
                group_by: a.group_by,
                filter: a.filter.unwrap_or_default(),
                measures: a.measures,
                lateness_ms: a.lateness.as_millis() as u64,
                retain_ms: a.retain.as_millis() as u64,
                emit_to: a.emit_to.unwrap_or_default(),
                backfill: a.backfill,
                id: 0,
            };
            let id = aggs.create(spec).await?;
            if json {
                output::json(&json!({"name": a.name, "id": id}));
            } else {
                println!("created aggregation {} (id {id})", a.name);
            }
        }
        AggCommand::List => {
            let list = aggs.list().await?;
            if json {
                for s in &list {
                    output::json(&spec_json(s));
                }
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.topic.clone(),
                            s.window.clone(),
                            s.group_by.join(","),
                            s.measures.join(" "),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "TOPIC", "WINDOW", "GROUP BY", "MEASURES"], &rows);
            }
        }
        AggCommand::Describe { name } => {
            let d = aggs.describe(&name).await?;
            let spec = d.spec.unwrap_or_default();
            if json {
                output::json(
                    &json!({"spec": spec_json(&spec), "partitions": d.partitions.iter().map(|p| json!({
                    "partition": p.partition, "running": p.running, "started_at": p.started_at,
                    "watermark_ms": p.watermark_ms, "events": p.events, "late_events": p.late_events,
                    "skipped": p.skipped, "windows": p.windows, "closed_windows": p.closed_windows})).collect::<Vec<_>>(),
                    "output": d.output.iter().map(|o| json!({"partition": o.partition, "upto_ms": o.upto_ms, "records": o.records})).collect::<Vec<_>>()}),
                );
                return Ok(());
            }
            println!(
                "aggregation {} (id {}) on {}: {} by [{}], time {}, lateness {} ms",
                spec.name,
                spec.id,
                spec.topic,
                spec.window,
                spec.group_by.join(", "),
                if spec.time_field.is_empty() {
                    "record timestamp"
                } else {
                    &spec.time_field
                },
                spec.lateness_ms
            );
            println!("measures: {}", spec.measures.join(", "));
            if !spec.filter.is_empty() {
                println!("filter: {}", spec.filter);
            }
            if !spec.emit_to.is_empty() {
                let records: u64 = d.output.iter().map(|o| o.records).sum();
                let upto = d.output.iter().map(|o| o.upto_ms).min().flatten();
                println!(
                    "emits closed windows to: {} ({records} records; every window ending by {} written)",
                    spec.emit_to,
                    upto.map_or("-".into(), time_text)
                );
            }
            let rows: Vec<Vec<String>> = d
                .partitions
                .iter()
                .map(|p| {
                    let skipped: u64 = p.skipped.values().sum();
                    vec![
                        p.partition.to_string(),
                        if p.running { "running" } else { "starting" }.into(),
                        p.watermark_ms.map_or("-".into(), time_text),
                        p.events.to_string(),
                        p.late_events.to_string(),
                        skipped.to_string(),
                        p.windows.to_string(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "PARTITION",
                    "STATE",
                    "WATERMARK",
                    "EVENTS",
                    "LATE",
                    "SKIPPED",
                    "WINDOWS",
                ],
                &rows,
            );
            let mut reasons: std::collections::BTreeMap<&str, u64> = Default::default();
            for p in &d.partitions {
                for (k, v) in &p.skipped {
                    *reasons.entry(k).or_default() += v;
                }
            }
            for (reason, n) in reasons {
                println!("skipped {n}: {reason}");
            }
        }
        AggCommand::Drop { name } => {
            aggs.drop(&name).await?;
            if !json {
                println!("dropped aggregation {name}");
            }
        }
        AggCommand::Query(q) => {
            let (from, filters) = (q.since_ms(), q.filters()?);
            let filters: Vec<(&str, &str)> = filters
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let result = aggs.query(&q.name, from, None, &filters).await?;
            print_rows(&result.measures, &result.group_by, &result.rows, json);
        }
        AggCommand::Watch(q) => {
            let (from, filters) = (q.since_ms(), q.filters()?);
            let filters: Vec<(&str, &str)> = filters
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut updates = Box::pin(aggs.watch(&q.name, from, &filters).await?);
            while let Some(update) = updates.next().await {
                let update = update?;
                if !update.rows.is_empty() {
                    print_rows(&update.measures, &update.group_by, &update.rows, json);
                }
            }
        }
    }
    Ok(())
}

fn spec_json(s: &AggregationSpec) -> serde_json::Value {
    json!({"name": s.name, "id": s.id, "topic": s.topic, "window": s.window, "time_field": s.time_field,
        "group_by": s.group_by, "filter": s.filter, "measures": s.measures, "lateness_ms": s.lateness_ms,
        "retain_ms": s.retain_ms, "emit_to": s.emit_to, "backfill": s.backfill})
}
