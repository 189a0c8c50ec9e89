//! Queries: from what a user types to a tantivy query, and running it on one partition.
//!
//! Users write tantivy query syntax the way they would in Kibana: `level:error`,
//! `temperature:[30 TO *]`, `"disk full"`, `timeout`. The query is parsed into tantivy's
//! syntax tree and rewritten before tantivy interprets it:
//! - a field that is not one of the document's own (`offset`, `timestamp`, `partition`,
//!   `key`, `value`) is a path into the value: `level` becomes `value.level`;
//! - a bare word searches `value` and `_text` (every string of the event);
//! - a range on a value path with two bounds becomes two one-sided ranges: tantivy 0.27
//!   panics on a JSON range whose bounds have different numeric types (`[30.5 TO 31]`).
//!
//! Running a query is also guarded against panics: a query that still trips one is answered
//! as invalid, and the node keeps serving.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;

use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::{AggContextParams, AggregationCollector};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery};
use tantivy::query_grammar::{self, UserInputAst, UserInputBound, UserInputLeaf};
use tantivy::schema::Term;
use tantivy::tokenizer::TokenizerManager;
use tantivy::{DateTime, DocAddress, Order, Searcher};

use super::index::IndexSnapshot;
use super::schema::{SCHEMA, TOP_LEVEL};

/// How hits are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchOrder {
    /// Newest first.
    #[default]
    TimeDesc,
    /// Oldest first.
    TimeAsc,
    /// Best match first.
    Score,
    /// Lowest offset first.
    OffsetAsc,
}

/// A search, as every partition runs it.
pub struct SearchSpec {
    /// The parsed user query.
    pub query: Box<dyn Query>,
    /// Only records at or after this time (ms).
    pub from_ms: Option<i64>,
    /// Only records before this time (ms).
    pub to_ms: Option<i64>,
    /// Most hits returned.
    pub limit: usize,
    /// Their order.
    pub order: SearchOrder,
    /// Only count.
    pub count_only: bool,
    /// Bucket width of a histogram of hits over time, if wanted.
    pub histogram_ms: Option<u64>,
}

impl std::fmt::Debug for SearchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchSpec")
            .field("query", &self.query)
            .field("from_ms", &self.from_ms)
            .field("to_ms", &self.to_ms)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// One hit in a partition, before its record is read from the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalHit {
    /// The record's offset.
    pub offset: u64,
    /// Its timestamp (ms).
    pub timestamp: i64,
    /// Its score (0 unless ordered by score).
    pub score: f32,
}

/// What one partition found.
#[derive(Debug, Default)]
pub struct PartitionHits {
    /// Matching records.
    pub total: u64,
    /// The best `limit` of them in the requested order.
    pub hits: Vec<LocalHit>,
    /// Matching records per bucket start (ms).
    pub histogram: BTreeMap<i64, u64>,
}

/// Longest query accepted.
const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Deepest nesting of parentheses accepted.
const MAX_DEPTH: usize = 32;

fn map_field(field: String) -> String {
    if TOP_LEVEL.contains(&field.as_str()) || field == "_text" || field.starts_with("value.") {
        field
    } else {
        format!("value.{field}")
    }
}

fn is_value_path(field: &str) -> bool {
    field.starts_with("value.")
}

fn rewrite(ast: UserInputAst) -> Result<UserInputAst, String> {
    Ok(match ast {
        UserInputAst::Clause(clauses) => {
            let mut clauses: Vec<_> = clauses
                .into_iter()
                .map(|(occur, ast)| rewrite(ast).map(|ast| (occur, ast)))
                .collect::<Result<_, _>>()?;
            // `NOT x` alone means "everything but x", as in Kibana (tantivy refuses a clause
            // that only excludes).
            if !clauses.is_empty()
                && clauses
                    .iter()
                    .all(|(o, _)| *o == Some(query_grammar::Occur::MustNot))
            {
                clauses.push((
                    Some(query_grammar::Occur::Must),
                    UserInputAst::Leaf(Box::new(UserInputLeaf::All)),
                ));
            }
            UserInputAst::Clause(clauses)
        }
        UserInputAst::Boost(ast, boost) => UserInputAst::Boost(Box::new(rewrite(*ast)?), boost),
        UserInputAst::Leaf(leaf) => rewrite_leaf(*leaf)?,
    })
}

fn rewrite_leaf(leaf: UserInputLeaf) -> Result<UserInputAst, String> {
    let leaf = match leaf {
        UserInputLeaf::Literal(mut literal) => {
            literal.field_name = literal.field_name.map(map_field);
            UserInputLeaf::Literal(literal)
        }
        UserInputLeaf::Range {
            field: None,
            lower,
            upper,
        } => {
            return Err(format!(
                "a range needs a field, as in temperature:[30 TO *] (got {} TO {})",
                lower.term_str(),
                upper.term_str()
            ));
        }
        UserInputLeaf::Range {
            field: Some(field),
            lower,
            upper,
        } => {
            let field = map_field(field);
            let two_bounds =
                lower != UserInputBound::Unbounded && upper != UserInputBound::Unbounded;
            if is_value_path(&field) && two_bounds {
                let one_sided = |lower, upper| {
                    (
                        Some(query_grammar::Occur::Must),
                        UserInputAst::Leaf(Box::new(UserInputLeaf::Range {
                            field: Some(field.clone()),
                            lower,
                            upper,
                        })),
                    )
                };
                return Ok(UserInputAst::Clause(vec![
                    one_sided(lower, UserInputBound::Unbounded),
                    one_sided(UserInputBound::Unbounded, upper),
                ]));
            }
            UserInputLeaf::Range {
                field: Some(field),
                lower,
                upper,
            }
        }
        UserInputLeaf::Set { field, elements } => UserInputLeaf::Set {
            field: field.map(map_field),
            elements,
        },
        UserInputLeaf::Exists { field } => UserInputLeaf::Exists {
            field: map_field(field),
        },
        UserInputLeaf::Regex { field, pattern } => UserInputLeaf::Regex {
            field: field.map(map_field),
            pattern,
        },
        UserInputLeaf::All => UserInputLeaf::All,
    };
    Ok(UserInputAst::Leaf(Box::new(leaf)))
}

/// Parses a user query; an empty query or `*` matches everything. The error says what is
/// wrong and, for syntax errors, where.
pub fn parse(query: &str) -> Result<Box<dyn Query>, String> {
    let trimmed = query.trim();
    if trimmed.is_empty() || trimmed == "*" {
        return Ok(Box::new(AllQuery));
    }
    if trimmed.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "the query is {} bytes long; at most {MAX_QUERY_BYTES} are allowed",
            trimmed.len()
        ));
    }
    // A NUL or another control character in a field name ends tantivy's JSON paths early
    // (found by fuzzing: `status\0:alarm` failed an assertion in tantivy).
    if let Some((at, c)) =
        (trimmed.char_indices()).find(|(_, c)| c.is_control() && !c.is_whitespace())
    {
        return Err(format!(
            "the query holds a control character ({:#04x}) at position {at}",
            u32::from(c)
        ));
    }
    // The parser recurses on parentheses: bound the depth before it sees the query.
    let mut depth = 0usize;
    for (at, c) in trimmed.char_indices() {
        match c {
            '(' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "parentheses nest deeper than {MAX_DEPTH} levels at position {at}"
                    ));
                }
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let ast = match query_grammar::parse_query(trimmed) {
        Ok(ast) => ast,
        Err(_) => {
            let (_, errors) = query_grammar::parse_query_lenient(trimmed);
            let detail = errors
                .iter()
                .map(|e| format!("{} at position {}", e.message, e.pos))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(if detail.is_empty() {
                format!("cannot parse the query `{trimmed}`")
            } else {
                format!("cannot parse the query `{trimmed}`: {detail}")
            });
        }
    };
    let ast = rewrite(ast)?;
    let (schema, f) = &*SCHEMA;
    let parser = QueryParser::new(
        schema.clone(),
        vec![f.value, f.text],
        TokenizerManager::default(),
    );
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        parser.build_query_from_user_input_ast(ast)
    }))
    .map_err(|_| format!("the query `{trimmed}` cannot be interpreted"))?
    .map_err(|e| format!("invalid query `{trimmed}`: {}", describe(&e)))
}

fn describe(e: &tantivy::query::QueryParserError) -> String {
    use tantivy::query::QueryParserError as E;
    match e {
        // Its Display text is wrong in 0.27 ("Only excluding terms given").
        E::ExpectedFloat(e) => format!("expected a number: {e}"),
        E::FieldDoesNotExist(f) => format!("unknown field `{f}`"),
        other => other.to_string(),
    }
}

/// The whole query a partition runs: the user's, within the time range and the records
/// still in the log.
fn bounded(spec: &SearchSpec, start_offset: u64) -> BooleanQuery {
    let f = &SCHEMA.1;
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, spec.query.box_clone())];
    if start_offset > 0 {
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_u64(f.offset, start_offset)),
                Bound::Unbounded,
            )),
        ));
    }
    if spec.from_ms.is_some() || spec.to_ms.is_some() {
        let term =
            |ms: i64| Term::from_field_date(f.timestamp, DateTime::from_timestamp_millis(ms));
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                spec.from_ms
                    .map_or(Bound::Unbounded, |ms| Bound::Included(term(ms))),
                spec.to_ms
                    .map_or(Bound::Unbounded, |ms| Bound::Excluded(term(ms))),
            )),
        ));
    }
    BooleanQuery::new(clauses)
}

/// Runs `spec` on a partition's committed index. Records below `start_offset` (deleted by
/// retention, not yet from the index) are left out.
pub(crate) fn search(
    snapshot: &IndexSnapshot,
    start_offset: u64,
    spec: &SearchSpec,
) -> Result<PartitionHits, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        run(&snapshot.searcher, start_offset, spec)
    }))
    .map_err(|_| {
        "the query could not be run on this data (an internal error); rewrite ranges as >=a AND <=b"
            .to_string()
    })?
    .map_err(|e| e.to_string())
}

fn run(
    searcher: &Searcher,
    start_offset: u64,
    spec: &SearchSpec,
) -> tantivy::Result<PartitionHits> {
    let query = bounded(spec, start_offset);
    let mut out = PartitionHits::default();
    if let Some(ms) = spec.histogram_ms {
        let aggs: Aggregations = serde_json::from_value(serde_json::json!({
            "h": {"date_histogram": {"field": "timestamp", "fixed_interval": format!("{ms}ms")}}
        }))
        .map_err(|e| tantivy::TantivyError::InvalidArgument(e.to_string()))?;
        let collector = AggregationCollector::from_aggs(aggs, AggContextParams::default());
        let result = searcher.search(&query, &collector)?;
        let json = serde_json::to_value(&result)
            .map_err(|e| tantivy::TantivyError::InternalError(e.to_string()))?;
        if let Some(buckets) = json["h"]["buckets"].as_array() {
            for b in buckets {
                let (Some(key), Some(count)) = (b["key"].as_f64(), b["doc_count"].as_u64()) else {
                    continue;
                };
                if count > 0 {
                    *out.histogram.entry(key as i64).or_default() += count;
                }
            }
        }
    }
    if spec.count_only || spec.limit == 0 {
        out.total = searcher.search(&query, &Count)? as u64;
        return Ok(out);
    }
    let top = TopDocs::with_limit(spec.limit);
    let addresses: Vec<(f32, DocAddress)> = match spec.order {
        SearchOrder::Score => {
            let (n, hits) = searcher.search(&query, &(Count, top.order_by_score()))?;
            out.total = n as u64;
            hits
        }
        SearchOrder::TimeDesc | SearchOrder::TimeAsc => {
            let order = if spec.order == SearchOrder::TimeDesc {
                Order::Desc
            } else {
                Order::Asc
            };
            let (n, hits) = searcher.search(
                &query,
                &(
                    Count,
                    top.order_by_fast_field::<DateTime>("timestamp", order),
                ),
            )?;
            out.total = n as u64;
            hits.into_iter().map(|(_, a)| (0.0, a)).collect()
        }
        SearchOrder::OffsetAsc => {
            let (n, hits) = searcher.search(
                &query,
                &(Count, top.order_by_fast_field::<u64>("offset", Order::Asc)),
            )?;
            out.total = n as u64;
            hits.into_iter().map(|(_, a)| (0.0, a)).collect()
        }
    };
    for (score, address) in addresses {
        let fast = searcher.segment_reader(address.segment_ord).fast_fields();
        let offset = fast.u64("offset")?.first(address.doc_id);
        let timestamp = fast.date("timestamp")?.first(address.doc_id);
        if let (Some(offset), Some(timestamp)) = (offset, timestamp) {
            out.hits.push(LocalHit {
                offset,
                timestamp: timestamp.into_timestamp_millis(),
                score,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_value_paths_and_ranges_are_split() {
        let q = parse("level:error AND temperature:[30.5 TO 31]").unwrap();
        let text = format!("{q:?}");
        assert!(text.contains("path=level, type=Str"), "{text}");
        assert!(
            text.contains("type=F64, 30.5)), upper_bound: Unbounded")
                && text.contains("lower_bound: Unbounded, upper_bound: Included(Term(field=4, type=Json, path=temperature"),
            "{text}"
        );
        assert!(parse("offset:[1 TO 5]").is_ok());
        assert!(parse("key:sensor-1").is_ok());
        assert!(parse("timeout").is_ok());
        assert!(parse("").is_ok());
        assert!(parse("NOT status:ok").is_ok());
        assert!(parse("a AND NOT (b OR c)").is_ok());
    }

    #[test]
    fn malformed_queries_are_errors_that_say_where() {
        let e = parse("level:(error").unwrap_err();
        assert!(e.contains("position"), "{e}");
        let e = parse("[1 TO 2]").unwrap_err();
        assert!(e.contains("range needs a field"), "{e}");
        let e = parse("offset:abc").unwrap_err();
        assert!(e.contains("invalid query"), "{e}");
        assert!(parse("((((").is_err());
        let deep = format!("{}a{}", "(".repeat(1_000), ")".repeat(1_000));
        assert!(parse(&deep).unwrap_err().contains("nest deeper"));
        assert!(parse(&"a OR ".repeat(10_000)).is_err());
        // Dangling operators must not panic, whatever tantivy makes of them.
        for q in [
            "a AND",
            "OR",
            "NOT",
            ":",
            "a:",
            "\"",
            "*:*",
            "a:[* TO *]",
            "a:{1 TO",
        ] {
            let _ = parse(q);
        }
        // Found by fuzzing: a NUL in a field name failed an assertion inside tantivy.
        let e = parse("status\0\0\0:alarm AND site:oslo").unwrap_err();
        assert!(e.contains("control character (0x00) at position 6"), "{e}");
        assert!(parse("a:1\tAND\nb:2").is_ok(), "whitespace is not refused");
    }
}
