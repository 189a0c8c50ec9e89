//! `strata search QUERY`: find events, count them, chart them over time, or follow new ones.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use roaring::RoaringTreemap;
use serde_json::json;
use strata_client::{Client, ErrorCode, SearchHit, SearchOrder, SearchQuery, SearchResult};

use super::Connection;
use crate::output;
use crate::units::{now_ms, parse_duration};

/// How often `--follow` asks for new matches.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// Matches a `--follow` query asks for at once; a full page is followed by the next at once.
const FOLLOW_PAGE: u32 = 1_000;

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
    /// Order: `time` (newest first), `time-asc`, `score` (best match first) or `offset`
    /// (lowest offset first, in each partition the order they were written).
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
        "offset" => Ok(SearchOrder::OffsetAsc),
        other => Err(format!(
            "unknown order `{other}` (time, time-asc, score or offset)"
        )),
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
pub async fn run(args: Args, connection: &Connection, json: bool) -> anyhow::Result<()> {
    let client = connection.connect().await?;
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
    follow(
        &client,
        &args,
        query(from, SearchOrder::TimeDesc, args.limit),
        json,
    )
    .await
}

/// The topics `--follow` follows: the ones named, or every indexed topic.
async fn followed_topics(client: &Client, named: &[String]) -> anyhow::Result<Vec<String>> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    Ok(client
        .admin()
        .list_topics()
        .await?
        .into_iter()
        .filter(|t| !t.spec.search_disabled)
        .map(|t| t.name)
        .collect())
}

/// Where `--follow` starts in each partition of `topic`: its high watermark, or its start
/// (offset 0) for a topic that appeared after the command started.
async fn start_offsets(
    client: &Client,
    topic: &str,
    at_end: bool,
) -> strata_client::Result<BTreeMap<u32, u64>> {
    let described = client.admin().describe_topic(topic).await?;
    Ok(described
        .partitions
        .iter()
        .map(|p| (p.partition, if at_end { p.high_watermark } else { 0 }))
        .collect())
}

/// The follow query of one topic: the user's, at or after each partition's next offset.
fn follow_query(user: &str, next: &BTreeMap<u32, u64>) -> String {
    let bounds = next
        .iter()
        .map(|(p, n)| format!("(partition:{p} AND offset:>={n})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    match user.trim() {
        "" | "*" => bounds,
        user => format!("({user}) AND ({bounds})"),
    }
}

/// `--follow`: the newest matches (printed oldest first), then every new match once, in the
/// order each partition wrote them. Each partition is followed from its high watermark when
/// the command started (a topic that appears later: from its start). A query per topic asks
/// for the matches at or after each partition's next offset, lowest offset first: a page
/// that the limit cuts short still holds a prefix of every partition's new matches, so the
/// next offsets move past exactly what was printed and nothing is skipped or repeated.
async fn follow(
    client: &Client,
    args: &Args,
    newest: SearchQuery,
    json: bool,
) -> anyhow::Result<()> {
    let search = client.search();
    let mut next: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    for topic in followed_topics(client, &args.topic).await? {
        let offsets = start_offsets(client, &topic, true).await?;
        next.insert(topic, offsets);
    }
    // The newest matches; those at or after a start offset are remembered so that the
    // follow queries do not print them again.
    let first = search.run(newest).await?;
    let mut printed: HashMap<(String, u32), RoaringTreemap> = HashMap::new();
    for h in first.hits.iter().rev() {
        print_hit(h, json);
        let start = next.get(&h.topic).and_then(|p| p.get(&h.partition));
        if start.is_some_and(|n| h.offset >= *n) {
            printed
                .entry((h.topic.clone(), h.partition))
                .or_default()
                .insert(h.offset);
        }
    }
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        if args.topic.is_empty() {
            for topic in followed_topics(client, &[]).await.unwrap_or_default() {
                if !next.contains_key(&topic)
                    && let Ok(offsets) = start_offsets(client, &topic, false).await
                {
                    next.insert(topic, offsets);
                }
            }
        }
        let mut gone = Vec::new();
        for (topic, offsets) in next.iter_mut() {
            loop {
                let mut q = SearchQuery::new(follow_query(&args.query, offsets))
                    .topic(topic.as_str())
                    .order(SearchOrder::OffsetAsc)
                    .limit(FOLLOW_PAGE);
                if let Some(to) = args.to {
                    q = q.to_ms(to);
                }
                let result = match search.run(q).await {
                    Ok(r) => r,
                    Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
                        gone.push(topic.clone());
                        break;
                    }
                    Err(e) if e.is_retriable() || matches!(e, strata_client::Error::Rpc(_)) => {
                        if !warned {
                            eprintln!("warning: {e}; retrying");
                            warned = true;
                        }
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                warned = false;
                let full = result.hits.len() >= FOLLOW_PAGE as usize;
                for h in result.hits {
                    let n = offsets.entry(h.partition).or_insert(0);
                    *n = (*n).max(h.offset + 1);
                    let seen = printed
                        .get_mut(&(h.topic.clone(), h.partition))
                        .is_some_and(|s| s.remove(h.offset));
                    if !seen {
                        print_hit(&h, json);
                    }
                }
                if !full {
                    break;
                }
            }
        }
        for topic in gone {
            eprintln!("topic `{topic}` was deleted; no longer following it");
            next.remove(&topic);
        }
    }
}
