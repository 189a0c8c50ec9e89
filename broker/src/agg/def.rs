//! An aggregation's definition: what the controller stores, what `strata agg create` and the
//! gRPC API build, checked once here so a bad definition is refused with a clear message.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::filter::Expr;
use super::json::Path;

/// Longest window, gap, lateness or retention accepted (one year).
const MAX_SPAN_MS: u64 = 366 * 24 * 3_600_000;
/// Most measures and group-by fields in one aggregation.
const MAX_PARTS: usize = 32;

/// A window kind, in milliseconds of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// Fixed, non-overlapping windows of `size`.
    Tumbling {
        /// Window length.
        size_ms: u64,
    },
    /// Windows of `size` starting every `advance`.
    Hopping {
        /// Window length.
        size_ms: u64,
        /// Distance between window starts.
        advance_ms: u64,
    },
    /// Per group, events closer than `gap` form one session.
    Session {
        /// Inactivity that ends a session.
        gap_ms: u64,
    },
}

impl Window {
    /// Parses `tumbling:1m`, `hopping:5m:1m` (size, advance) or `session:30s`.
    pub fn parse(spec: &str) -> Result<Window, String> {
        let parts: Vec<&str> = spec.split(':').map(str::trim).collect();
        let window = match parts.as_slice() {
            ["tumbling", size] => Window::Tumbling {
                size_ms: span(size, "window size")?,
            },
            ["hopping", size, advance] => Window::Hopping {
                size_ms: span(size, "window size")?,
                advance_ms: span(advance, "hop")?,
            },
            ["session", gap] => Window::Session {
                gap_ms: span(gap, "session gap")?,
            },
            _ => {
                return Err(format!(
                    "window `{spec}`: expected tumbling:SIZE, hopping:SIZE:ADVANCE or session:GAP (e.g. tumbling:1m)"
                ));
            }
        };
        window.validate()?;
        Ok(window)
    }

    fn validate(&self) -> Result<(), String> {
        let check = |v: u64, what: &str| {
            if v == 0 {
                Err(format!("{what} must be greater than zero"))
            } else if v > MAX_SPAN_MS {
                Err(format!("{what} of {v} ms is longer than a year"))
            } else {
                Ok(())
            }
        };
        match *self {
            Window::Tumbling { size_ms } => check(size_ms, "window size"),
            Window::Hopping {
                size_ms,
                advance_ms,
            } => {
                check(size_ms, "window size")?;
                check(advance_ms, "hop")?;
                if advance_ms > size_ms {
                    return Err(format!(
                        "hop ({advance_ms} ms) longer than the window ({size_ms} ms) would skip events"
                    ));
                }
                if size_ms / advance_ms > 1000 {
                    return Err("a hopping window may overlap at most 1000 others".into());
                }
                Ok(())
            }
            Window::Session { gap_ms } => check(gap_ms, "session gap"),
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |ms: u64| humantime::format_duration(std::time::Duration::from_millis(ms));
        match *self {
            Window::Tumbling { size_ms } => write!(f, "tumbling:{}", d(size_ms)),
            Window::Hopping {
                size_ms,
                advance_ms,
            } => write!(f, "hopping:{}:{}", d(size_ms), d(advance_ms)),
            Window::Session { gap_ms } => write!(f, "session:{}", d(gap_ms)),
        }
    }
}

fn span(text: &str, what: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{what} `{text}`: {e} (use e.g. 500ms, 10s, 1m, 1h)"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{what} `{text}` is too long"))
}

/// Where an event's time comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    /// The record's timestamp.
    Timestamp,
    /// A JSON field: an RFC 3339 string, or a number of epoch milliseconds (seconds when
    /// below 10^11).
    Field(String),
}

/// One group-by part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The record key (as UTF-8, invalid bytes replaced).
    Key,
    /// A JSON field (dotted path).
    Field(String),
}

impl GroupBy {
    /// `key` is the record key; anything else a JSON path.
    pub fn parse(text: &str) -> Result<GroupBy, String> {
        let text = text.trim();
        if text == "key" {
            return Ok(GroupBy::Key);
        }
        Path::parse(text).map(|_| GroupBy::Field(text.to_string()))
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupBy::Key => f.write_str("key"),
            GroupBy::Field(p) => f.write_str(p),
        }
    }
}

/// What a measure computes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureKind {
    /// Events in the window.
    Count,
    /// Sum of a numeric field.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Mean (from sum and count, so it merges exactly).
    Avg,
    /// The nearest-rank quantile (the ⌈q·n⌉-th smallest value) from a DDSketch (relative
    /// error at most 1%).
    Quantile(f64),
    /// Distinct values: exact (roaring bitmap) for integers in 0..2^32, other values by a
    /// 32-bit hash into the same bitmap.
    CountDistinct,
}

/// One measure: a kind and, except for `count`, a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// What it computes.
    pub kind: MeasureKind,
    /// The JSON field it reads.
    pub field: Option<String>,
}

impl Measure {
    /// Parses `count`, `sum(x)`, `min(x)`, `max(x)`, `avg(x)`, `p50(x)`/`p99.9(x)` or
    /// `count_distinct(x)`.
    pub fn parse(text: &str) -> Result<Measure, String> {
        let text = text.trim();
        if text == "count" || text == "count()" {
            return Ok(Measure {
                kind: MeasureKind::Count,
                field: None,
            });
        }
        let (name, field) = text
            .strip_suffix(')')
            .and_then(|t| t.split_once('('))
            .ok_or_else(|| {
                format!(
                    "measure `{text}`: expected count, sum(F), min(F), max(F), avg(F), pNN(F) or count_distinct(F)"
                )
            })?;
        let field = field.trim();
        Path::parse(field).map_err(|e| format!("measure `{text}`: {e}"))?;
        let kind = match name.trim() {
            "sum" => MeasureKind::Sum,
            "min" => MeasureKind::Min,
            "max" => MeasureKind::Max,
            "avg" => MeasureKind::Avg,
            "count_distinct" => MeasureKind::CountDistinct,
            "count" => {
                return Err(format!(
                    "measure `{text}`: count takes no field (use count_distinct({field}) for distinct values)"
                ));
            }
            p if p.starts_with('p') => {
                let q: f64 = p[1..]
                    .parse()
                    .ok()
                    .filter(|q: &f64| *q > 0.0 && *q < 100.0)
                    .ok_or_else(|| {
                        format!("measure `{text}`: a quantile is p followed by a number between 0 and 100, e.g. p99")
                    })?;
                MeasureKind::Quantile(q / 100.0)
            }
            other => {
                return Err(format!(
                    "measure `{text}`: unknown measure `{other}` (count, sum, min, max, avg, pNN, count_distinct)"
                ));
            }
        };
        Ok(Measure {
            kind,
            field: Some(field.to_string()),
        })
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field.as_deref().unwrap_or("");
        match self.kind {
            MeasureKind::Count => f.write_str("count"),
            MeasureKind::Sum => write!(f, "sum({field})"),
            MeasureKind::Min => write!(f, "min({field})"),
            MeasureKind::Max => write!(f, "max({field})"),
            MeasureKind::Avg => write!(f, "avg({field})"),
            MeasureKind::Quantile(q) => write!(f, "p{}({field})", q * 100.0),
            MeasureKind::CountDistinct => write!(f, "count_distinct({field})"),
        }
    }
}

/// A named aggregation on a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregationDef {
    /// Its name (unique in the cluster).
    pub name: String,
    /// The topic it reads.
    pub topic: String,
    /// The window.
    pub window: Window,
    /// Event time.
    pub time: TimeSource,
    /// Group-by parts, in order.
    pub group_by: Vec<GroupBy>,
    /// Only events matching this expression count.
    pub filter: Option<String>,
    /// What each row reports.
    pub measures: Vec<Measure>,
    /// How far event time may go back before an event is late.
    pub lateness_ms: u64,
    /// Closed windows whose end is this far behind the watermark leave memory (with an
    /// output topic, only once they were written to it).
    pub retain_ms: u64,
    /// Topic that receives each closed window as one JSON event.
    pub emit_to: Option<String>,
    /// Whether records already in the log when it was created are folded in.
    pub backfill: bool,
}

/// Closed windows are kept for queries this long behind the watermark unless told otherwise.
pub const DEFAULT_RETAIN_MS: u64 = 3_600_000;

impl AggregationDef {
    /// Checks everything a node needs to run it; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        crate::names::validate(&self.name).map_err(|e| format!("aggregation name: {e}"))?;
        self.window.validate()?;
        if self.measures.is_empty() {
            return Err("an aggregation needs at least one measure (e.g. count)".into());
        }
        if self.measures.len() > MAX_PARTS || self.group_by.len() > MAX_PARTS {
            return Err(format!(
                "at most {MAX_PARTS} measures and {MAX_PARTS} group-by fields"
            ));
        }
        for m in &self.measures {
            let again = Measure::parse(&m.to_string())?;
            if again.kind != m.kind && !matches!(m.kind, MeasureKind::Quantile(_)) {
                return Err(format!("measure `{m}` is malformed"));
            }
            if let MeasureKind::Quantile(q) = m.kind
                && !(q > 0.0 && q < 1.0)
            {
                return Err(format!("quantile {q} must lie strictly between 0 and 1"));
            }
        }
        for g in &self.group_by {
            GroupBy::parse(&g.to_string())?;
        }
        if let TimeSource::Field(p) = &self.time {
            Path::parse(p).map_err(|e| format!("time field: {e}"))?;
        }
        if let Some(f) = &self.filter {
            Expr::parse(f)?;
        }
        if self.lateness_ms > MAX_SPAN_MS || self.retain_ms > MAX_SPAN_MS {
            return Err("lateness and retention are at most a year".into());
        }
        if let Some(t) = &self.emit_to {
            crate::names::validate(t).map_err(|e| format!("output topic: {e}"))?;
            if *t == self.topic {
                return Err("an aggregation cannot emit into the topic it reads".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid definition: a count over 1 s tumbling windows of record time.
    pub(crate) fn sample(name: &str, topic: &str) -> AggregationDef {
        AggregationDef {
            name: name.into(),
            topic: topic.into(),
            window: Window::Tumbling { size_ms: 1000 },
            time: TimeSource::Timestamp,
            group_by: vec![],
            filter: None,
            measures: vec![Measure::parse("count").unwrap()],
            lateness_ms: 0,
            retain_ms: DEFAULT_RETAIN_MS,
            emit_to: None,
            backfill: false,
        }
    }

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        assert_eq!(
            Window::parse("tumbling:1m"),
            Ok(Window::Tumbling { size_ms: 60_000 })
        );
        assert_eq!(
            Window::parse("hopping:5m:1m"),
            Ok(Window::Hopping {
                size_ms: 300_000,
                advance_ms: 60_000
            })
        );
        assert_eq!(
            Window::parse("session:30s"),
            Ok(Window::Session { gap_ms: 30_000 })
        );
        let zero = Window::parse("tumbling:0s").unwrap_err();
        assert!(zero.contains("greater than zero"), "{zero}");
        assert!(
            Window::parse("sliding:1m")
                .unwrap_err()
                .contains("expected")
        );
        assert!(Window::parse("hopping:1m:5m").unwrap_err().contains("skip"));

        assert_eq!(Measure::parse("count").unwrap().kind, MeasureKind::Count);
        assert_eq!(
            Measure::parse("p99(temperature)").unwrap(),
            Measure {
                kind: MeasureKind::Quantile(0.99),
                field: Some("temperature".into())
            }
        );
        assert_eq!(Measure::parse("p99.9(t)").unwrap().to_string(), "p99.9(t)");
        assert!(
            Measure::parse("median(x)")
                .unwrap_err()
                .contains("unknown measure")
        );
        assert!(
            Measure::parse("p100(x)")
                .unwrap_err()
                .contains("between 0 and 100")
        );
        assert!(Measure::parse("avg(").unwrap_err().contains("expected"));
        assert!(Measure::parse("avg()").is_err());
        assert_eq!(GroupBy::parse("key"), Ok(GroupBy::Key));
        let def = sample("a", "t");
        assert_eq!(def.validate(), Ok(()));
        let emit = AggregationDef {
            emit_to: Some("out".into()),
            ..def.clone()
        };
        assert_eq!(emit.validate(), Ok(()));
        let into_itself = AggregationDef {
            emit_to: Some("t".into()),
            ..def.clone()
        };
        assert!(into_itself.validate().unwrap_err().contains("cannot emit"));
        let no_measures = AggregationDef {
            measures: vec![],
            ..def.clone()
        };
        assert!(
            no_measures
                .validate()
                .unwrap_err()
                .contains("at least one measure")
        );
        let bad_filter = AggregationDef {
            filter: Some("a ==".into()),
            ..def
        };
        assert!(bad_filter.validate().unwrap_err().contains("filter"));
        assert!(GroupBy::parse("a..b").is_err());
    }
}
