//! `strata search QUERY`: find events, count them, chart them over time, or follow new ones.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use roaring::RoaringTreemap;
use serde_json::json;
use strata_client::{SearchHit, SearchOrder, SearchQuery, SearchResult};

use super::connect;
use crate::output;
use crate::units::{now_ms, parse_duration};

/// How often `--follow` asks for new matches.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// `--follow` looks this far behind the newest match it printed, for events whose
/// timestamps arrive a little out of order.
const FOLLOW_SLACK_MS: i64 = 10_000;

/// `strata search` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The query: `status:alarm AND site:north`, `temperature:[30 TO *]`, `"disk full"`,
    /// a bare word (searches every text field), AND/OR/NOT, parentheses. `*` matches all.
    pub query: String,
    /// Search this topic (repeatable); default: every indexed topic.
    #[arg(long)]
    pub topic: Vec<String>,
    /// Only events of the last N seconds/minutes/hours (e.g. 15m).
    #[arg(long, value_parser = parse_duration, conflicts_with = "from")]
    pub since: Option<Duration>,
    /// Only events at or after this time (RFC 3339, or ms since the epoch).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<i64>,
    /// Only events before this time (RFC 3339, or ms since the epoch).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<i64>,
    /// Most hits shown.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Order: `time` (newest first), `time-asc` or `score` (best match first).
    #[arg(long, default_value = "time", value_parser = parse_order)]
    pub order: SearchOrder,
    /// Only print how many events match.
    #[arg(long)]
    pub count: bool,
    /// Also print a histogram of the matches over time, in buckets this wide (e.g. 1m).
    #[arg(long, value_parser = parse_duration)]
    pub histogram: Option<Duration>,
    /// Keep printing new matches as they arrive.
    #[arg(long, conflicts_with_all = ["count", "histogram"])]
    pub follow: bool,
}

fn parse_order(text: &str) -> Result<SearchOrder, String> {
    match text {
        "time" | "time-desc" => Ok(SearchOrder::TimeDesc),
        "time-asc" => Ok(SearchOrder::TimeAsc),
        "score" => Ok(SearchOrder::Score),
        other => Err(format!("unknown order `{other}` (time, time-asc or score)")),
    }
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("`{text}` is neither RFC 3339 nor ms since the epoch: {e}"))?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{text}` is before 1970"))?;
    i64::try_from(d.as_millis()).map_err(|_| format!("`{text}` is too far away"))
}

fn time_text(ms: i64) -> String {
    crate::units::time_text(ms, true)
}

fn hit_json(h: &SearchHit) -> serde_json::Value {
    let mut out = output::record_json(
        &h.topic,
        h.partition,
        h.offset,
        h.timestamp_ms,
        h.key.as_deref(),
        h.value.as_deref(),
    );
    if h.score > 0.0 {
        out["score"] = json!(h.score);
    }
    out
}

fn print_hit(h: &SearchHit, json: bool) {
    if json {
        output::json(&hit_json(h));
        return;
    }
    let text = |b: &bytes::Bytes| String::from_utf8_lossy(b).into_owned();
    println!(
        "{}  {}/{}@{}  {}  {}",
        time_text(h.timestamp_ms),
        h.topic,
        h.partition,
        h.offset,
        h.key.as_ref().map_or("-".to_string(), text),
        h.value.as_ref().map_or("(null)".to_string(), text),
    );
}

fn print_result(result: &SearchResult, args: &Args, json: bool) {
    if json {
        if !args.count {
            for h in &result.hits {
                print_hit(h, true);
            }
        }
        let mut summary = json!({"total": result.total, "partitions": result.partitions,
                                 "not_indexed": result.not_indexed});
        if args.histogram.is_some() {
            summary["histogram"] = result
                .histogram
                .iter()
                .map(|b| json!({"start": b.start_ms, "count": b.count}))
                .collect();
        }
        output::json(&summary);
        return;
    }
    if !args.count {
        for h in &result.hits {
            print_hit(h, false);
        }
    }
    if let Some(width) = args.histogram {
        let most = result
            .histogram
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(0)
            .max(1);
        let rows: Vec<Vec<String>> = result
            .histogram
            .iter()
            .map(|b| {
                let bar = "#".repeat(((b.count * 40).div_ceil(most)) as usize);
                vec![time_text(b.start_ms), b.count.to_string(), bar]
            })
            .collect();
        println!("histogram ({} buckets):", humantime::format_duration(width));
        output::table(&["FROM", "EVENTS", ""], &rows);
    }
    let shown = if args.count { 0 } else { result.hits.len() };
    println!(
        "{} matching events in {} partitions{}{}",
        result.total,
        result.partitions,
        if shown > 0 && (shown as u64) < result.total {
            format!(" ({shown} shown)")
        } else {
            String::new()
        },
        if result.not_indexed > 0 {
            format!("; {} newer events not indexed yet", result.not_indexed)
        } else {
            String::new()
        }
    );
}

/// Runs `strata search`.
pub async fn run(args: Args, brokers: &str, json: bool) -> anyhow::Result<()> {
    let client = connect(brokers).await?;
    let search = client.search();
    let from = args
        .since
        .map(|d| now_ms() - d.as_millis() as i64)
        .or(args.from);
    let query = |from: Option<i64>, order: SearchOrder, limit: u32| {
        let mut q = SearchQuery::new(&args.query).limit(limit).order(order);
        for t in &args.topic {
            q = q.topic(t);
        }
        if let Some(from) = from {
            q = q.from_ms(from);
        }
        if let Some(to) = args.to {
            q = q.to_ms(to);
        }
        q
    };
    if !args.follow {
        let mut q = query(from, args.order, args.limit);
        if args.count {
            q = q.count_only();
        }
        if let Some(width) = args.histogram {
            q = q.histogram_ms(width.as_millis().max(1) as u64);
        }
        let result = search.run(q).await?;
        print_result(&result, &args, json);
        return Ok(());
    }
    // Follow: the latest matches first (oldest of them first), then whatever is new.
    let first = search
        .run(query(from, SearchOrder::TimeDesc, args.limit))
        .await?;
    let mut seen: HashMap<(String, u32), RoaringTreemap> = HashMap::new();
    let mut newest = from.unwrap_or(0);
    let mut show = |hits: Vec<SearchHit>, newest: &mut i64| {
        for h in hits {
            let offsets = seen.entry((h.topic.clone(), h.partition)).or_default();
            if offsets.insert(h.offset) {
                *newest = (*newest).max(h.timestamp_ms);
                print_hit(&h, json);
            }
        }
    };
    let mut hits = first.hits;
    hits.reverse();
    show(hits, &mut newest);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let since = (newest - FOLLOW_SLACK_MS).max(from.unwrap_or(i64::MIN));
        let result = search
            .run(query(Some(since), SearchOrder::TimeAsc, 10_000))
            .await?;
        show(result.hits, &mut newest);
    }
}
