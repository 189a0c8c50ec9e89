//! Measures and a window's accumulators: counts, sums, min/max, averages, quantile
//! sketches (DDSketch, mergeable, 1% relative error) and distinct sets (roaring bitmaps of
//! value ids); a window holds one accumulator per measure and merges with another of the
//! same window from another partition.

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use super::compiled::Compiled;
use super::def::MeasureKind;
use super::json::Scalar;

/// One measure's running value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureAcc {
    /// Events counted.
    Count(u64),
    /// Sum and how many values went in (sum, avg).
    Sum {
        /// Sum.
        sum: f64,
        /// Values.
        n: u64,
    },
    /// Smallest value.
    Min(Option<f64>),
    /// Largest value.
    Max(Option<f64>),
    /// Quantile sketch (absent until the first value).
    Sketch(Option<Box<Sketch>>),
    /// Distinct values.
    Distinct(RoaringBitmap),
}

impl PartialEq for MeasureAcc {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (MeasureAcc::Count(a), MeasureAcc::Count(b)) => a == b,
            (MeasureAcc::Sum { sum, n }, MeasureAcc::Sum { sum: s2, n: n2 }) => {
                sum == s2 && n == n2
            }
            (MeasureAcc::Min(a), MeasureAcc::Min(b)) | (MeasureAcc::Max(a), MeasureAcc::Max(b)) => {
                a == b
            }
            // Sketches compare by what they summarise.
            (MeasureAcc::Sketch(a), MeasureAcc::Sketch(b)) => {
                let key = |s: &Option<Box<Sketch>>| {
                    s.as_ref().map(|s| {
                        let s = &s.0;
                        (s.count(), s.sum(), s.min(), s.max(), s.quantile(0.5).ok())
                    })
                };
                key(a) == key(b)
            }
            (MeasureAcc::Distinct(a), MeasureAcc::Distinct(b)) => a == b,
            _ => false,
        }
    }
}

/// A DDSketch (relative accuracy 1%, at most 2048 bins per sign).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sketch(DDSketch);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("count", &self.0.count())
            .field("min", &self.0.min())
            .field("max", &self.0.max())
            .finish()
    }
}

fn sketch_config() -> SketchConfig {
    SketchConfig::new(0.01, 2048, 1.0e-9)
}

impl MeasureAcc {
    pub(super) fn new(kind: MeasureKind) -> MeasureAcc {
        match kind {
            MeasureKind::Count => MeasureAcc::Count(0),
            MeasureKind::Sum | MeasureKind::Avg => MeasureAcc::Sum { sum: 0.0, n: 0 },
            MeasureKind::Min => MeasureAcc::Min(None),
            MeasureKind::Max => MeasureAcc::Max(None),
            MeasureKind::Quantile(_) => MeasureAcc::Sketch(None),
            MeasureKind::CountDistinct => MeasureAcc::Distinct(RoaringBitmap::new()),
        }
    }

    pub(super) fn add(&mut self, value: Option<&Scalar<'_>>) {
        let num = match value {
            Some(Scalar::Num(n)) if usable(*n) => Some(*n),
            _ => None,
        };
        match self {
            MeasureAcc::Count(c) => *c += 1,
            MeasureAcc::Sum { sum, n } => {
                if let Some(v) = num {
                    *sum += v;
                    *n += 1;
                }
            }
            MeasureAcc::Min(m) => {
                if let Some(v) = num {
                    *m = Some(m.map_or(v, |m| m.min(v)));
                }
            }
            MeasureAcc::Max(m) => {
                if let Some(v) = num {
                    *m = Some(m.map_or(v, |m| m.max(v)));
                }
            }
            MeasureAcc::Sketch(s) => {
                if let Some(v) = num {
                    s.get_or_insert_with(|| Box::new(Sketch(DDSketch::new(sketch_config()))))
                        .0
                        .add(v);
                }
            }
            MeasureAcc::Distinct(set) => {
                if let Some(v) = value {
                    set.insert(distinct_id(v));
                }
            }
        }
    }

    /// Adds one number (tests).
    #[cfg(test)]
    pub fn add_for_test(&mut self, v: f64) {
        self.add(Some(&Scalar::Num(v)));
    }

    /// Folds another partial value of the same measure in.
    pub fn merge(&mut self, other: &MeasureAcc) {
        match (self, other) {
            (MeasureAcc::Count(a), MeasureAcc::Count(b)) => *a += b,
            (MeasureAcc::Sum { sum, n }, MeasureAcc::Sum { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (MeasureAcc::Min(a), MeasureAcc::Min(b)) => {
                *a = match (*a, *b) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                }
            }
            (MeasureAcc::Max(a), MeasureAcc::Max(b)) => {
                *a = match (*a, *b) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (x, y) => x.or(y),
                }
            }
            (MeasureAcc::Sketch(a), MeasureAcc::Sketch(Some(b))) => match a {
                Some(a) => {
                    // Same configuration everywhere, so merging cannot fail.
                    let _ = a.0.merge(&b.0);
                }
                None => *a = Some(b.clone()),
            },
            (MeasureAcc::Sketch(_), MeasureAcc::Sketch(None)) => {}
            (MeasureAcc::Distinct(a), MeasureAcc::Distinct(b)) => *a |= b,
            _ => {}
        }
    }

    /// The reported value.
    pub fn value(&self, kind: MeasureKind) -> Option<f64> {
        match (self, kind) {
            (MeasureAcc::Count(c), _) => Some(*c as f64),
            (MeasureAcc::Sum { sum, .. }, MeasureKind::Sum) => Some(*sum),
            (MeasureAcc::Sum { sum, n }, _) => (*n > 0).then(|| sum / *n as f64),
            (MeasureAcc::Min(m) | MeasureAcc::Max(m), _) => *m,
            (MeasureAcc::Sketch(s), MeasureKind::Quantile(q)) => s.as_ref().and_then(|s| {
                // The nearest-rank quantile (the ⌈q·n⌉-th smallest value, as most monitoring
                // tools report it): DDSketch answers rank ⌊q'·(n−1)⌋, so ask for the q' that
                // lands on that rank. Within the sketch's 1%, never outside the values seen.
                let n = s.0.count() as f64;
                let rank = ((q * n).ceil() - 1.0).clamp(0.0, (n - 1.0).max(0.0));
                let q = if n > 1.0 {
                    ((rank + 0.5) / (n - 1.0)).min(1.0)
                } else {
                    q
                };
                let v = s.0.quantile(q).ok().flatten()?;
                Some(v.clamp(s.0.min()?, s.0.max()?))
            }),
            (MeasureAcc::Sketch(_), _) => None,
            (MeasureAcc::Distinct(set), _) => Some(set.len() as f64),
        }
    }
}

/// Largest magnitude a numeric measure takes: sums of such values stay finite (so the state
/// always serializes), whatever a producer sends. Larger values count as unusable.
const MAX_MEASURED: f64 = 1e150;

pub(super) fn usable(n: f64) -> bool {
    n.is_finite() && n.abs() <= MAX_MEASURED
}

/// The id a distinct value counts as: an integer in 0..2^32 is itself; anything else a CRC32
/// of its text (so strings and larger numbers may collide, about n/2^33 relative error).
fn distinct_id(v: &Scalar<'_>) -> u32 {
    match v {
        Scalar::Num(n) if n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX) => *n as u32,
        other => crc32fast::hash(other.group_text().as_bytes()),
    }
}

/// A window's partial result for one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAcc {
    /// Window end (exclusive), in event-time ms.
    pub end: i64,
    /// One value per measure.
    pub measures: Vec<MeasureAcc>,
    /// Whether the watermark has passed the end.
    pub closed: bool,
    /// Events that went in.
    pub events: u64,
}

impl WindowAcc {
    /// An empty open window ending at `end`.
    pub(super) fn new(c: &Compiled, end: i64) -> WindowAcc {
        WindowAcc {
            end,
            measures: c
                .def
                .measures
                .iter()
                .map(|m| MeasureAcc::new(m.kind))
                .collect(),
            closed: false,
            events: 0,
        }
    }

    /// Adds one event's measure values (from its extracted fields).
    pub(super) fn add(&mut self, c: &Compiled, fields: &[Option<Scalar<'_>>]) {
        self.events += 1;
        for (acc, slot) in self.measures.iter_mut().zip(&c.measure_slots) {
            acc.add(slot.and_then(|s| fields[s].as_ref()));
        }
    }

    /// Folds another partial window's events and measures in (not its end or state).
    pub fn merge(&mut self, other: &WindowAcc) {
        self.events += other.events;
        for (a, b) in self.measures.iter_mut().zip(&other.measures) {
            a.merge(b);
        }
    }
}
