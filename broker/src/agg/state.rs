//! One aggregation's state in one partition: open and recently closed windows per group,
//! the watermark, and the late and skipped counters. Folding is deterministic (it depends
//! only on the records, in log order), so every replica holds the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::compiled::Compiled;
use super::def::{MeasureKind, TimeSource, Window};
use super::json::{self, Scalar};
use super::measure::{WindowAcc, usable};

/// The largest event time (ms, either side of 1970) an aggregation folds: half the range,
/// so that window starts, ends and gaps never overflow.
pub const MAX_EVENT_TIME: i64 = i64::MAX / 2;
/// Most groups one aggregation keeps on one partition: an event of a new group beyond it is
/// skipped (and counted), so a group-by field of unbounded values (a request id) cannot grow
/// a node's memory without bound. A constant, not a setting: every replica folds the same.
pub const MAX_GROUPS: usize = 100_000;

/// One group's windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupWindows {
    /// The group-by values.
    pub group: Vec<String>,
    /// Windows by start.
    pub windows: BTreeMap<i64, WindowAcc>,
}

/// An aggregation's state in one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AggState {
    /// Largest event time seen.
    pub max_event_time: Option<i64>,
    /// Windows by group (keyed by an unambiguous encoding of the group values, so an event
    /// finds its group without allocating), then start.
    pub groups: BTreeMap<String, GroupWindows>,
    /// Events (or parts of events, for hopping windows) that came after their window closed.
    pub late_events: u64,
    /// Events left out, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Events folded in.
    pub events: u64,
    /// Windows closed so far.
    pub closed_windows: u64,
    /// Windows ending at or before this were written to the output topic: they are closed
    /// here too, even if this partition's own watermark is behind (it had no events), and
    /// an event for one of them is late.
    #[serde(default)]
    pub emitted_upto: Option<i64>,
    /// Reused for each event's group key.
    #[serde(skip)]
    key_buf: KeyBuf,
}

/// A buffer that takes no part in the state (equal to any other).
#[derive(Debug, Clone, Default)]
struct KeyBuf(String);

impl PartialEq for KeyBuf {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A record as the fold sees it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Record timestamp (ms).
    pub timestamp: i64,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
}

impl AggState {
    /// The watermark: largest event time minus the allowed lateness.
    pub fn watermark(&self, lateness_ms: u64) -> Option<i64> {
        self.max_event_time
            .map(|t| t.saturating_sub(lateness_ms as i64))
    }

    /// Where windows close: the watermark, or the output topic's progress if that is ahead.
    pub fn horizon(&self, c: &Compiled) -> Option<i64> {
        match (self.watermark(c.def.lateness_ms), self.emitted_upto) {
            (Some(w), Some(e)) => Some(w.max(e)),
            (w, e) => w.or(e),
        }
    }

    /// Records that the windows ending at or before `upto` were written to the output
    /// topic, and closes them.
    pub fn emitted(&mut self, c: &Compiled, upto: i64) {
        if self.emitted_upto.is_none_or(|e| e < upto) {
            self.emitted_upto = Some(upto);
            self.advance(c);
        }
    }

    fn skip(&mut self, reason: String) {
        *self.skipped.entry(reason).or_insert(0) += 1;
    }

    /// Folds one record in; `scratch` is reused between calls.
    pub fn fold<'a>(
        &mut self,
        c: &Compiled,
        event: &Event<'a>,
        scratch: &mut Vec<Option<Scalar<'a>>>,
    ) {
        let parsed = c.paths.is_empty()
            || event
                .value
                .is_some_and(|v| json::extract(v, &c.paths, scratch));
        if c.paths.is_empty() {
            scratch.clear();
        }
        self.fold_values(c, event, scratch, parsed);
    }

    /// Folds one record whose fields (in [`Compiled::paths`] order) are already extracted;
    /// `parsed` is false when the value was not a JSON object.
    pub fn fold_values(
        &mut self,
        c: &Compiled,
        event: &Event<'_>,
        scratch: &[Option<Scalar<'_>>],
        parsed: bool,
    ) {
        if !c.paths.is_empty() && !parsed {
            self.skip("value is not a JSON object".into());
            return;
        }
        let time = match c.time_slot {
            None => Ok(event.timestamp),
            Some(slot) => match scratch[slot].as_ref().map(json::event_time) {
                Some(Ok(t)) => Ok(t),
                Some(Err(why)) => Err(format!("{why} ({})", field_of(&c.def.time))),
                None => Err(format!("no time field ({})", field_of(&c.def.time))),
            },
        };
        // Window arithmetic needs room on both sides of an event time; no real one (ms since
        // 1970) comes near the ends of the range, and one that does must not pin the
        // watermark.
        let time = time.and_then(|t| {
            if (-MAX_EVENT_TIME..=MAX_EVENT_TIME).contains(&t) {
                Ok(t)
            } else {
                Err("event time out of range".to_string())
            }
        });
        // Every event with a time moves event time on (the watermark), whether or not it
        // passes the filter or has its group fields: a stream of mostly filtered-out events
        // still closes windows.
        if let Ok(t) = time {
            self.max_event_time = Some(self.max_event_time.map_or(t, |m| m.max(t)));
        }
        if let Some(expr) = &c.filter
            && !expr.eval(scratch)
        {
            return;
        }
        let time = match time {
            Ok(t) => t,
            Err(why) => return self.skip(why),
        };
        let mut key = std::mem::take(&mut self.key_buf.0);
        key.clear();
        for (g, slot) in c.def.group_by.iter().zip(&c.group_slots) {
            let text: std::borrow::Cow<'_, str> = match slot {
                None => event
                    .key
                    .map_or(std::borrow::Cow::Borrowed("null"), String::from_utf8_lossy),
                Some(s) => match &scratch[*s] {
                    Some(Scalar::Nested) => {
                        return self.skip(format!("group field {g} is not a scalar"));
                    }
                    Some(Scalar::Str(v)) => std::borrow::Cow::Borrowed(v.as_ref()),
                    Some(v) => std::borrow::Cow::Owned(v.group_text()),
                    None => return self.skip(format!("no group field {g}")),
                },
            };
            // Length-prefixed: no two different groups share a key.
            push_decimal(&mut key, text.len());
            key.push(':');
            key.push_str(&text);
        }
        if self.groups.len() >= MAX_GROUPS && !self.groups.contains_key(key.as_str()) {
            self.key_buf.0 = key;
            return self.skip(format!("more than {MAX_GROUPS} groups"));
        }
        for (m, slot) in c.def.measures.iter().zip(&c.measure_slots) {
            if let Some(slot) = slot {
                let ok = match (m.kind, &scratch[*slot]) {
                    (MeasureKind::CountDistinct, Some(Scalar::Nested) | None) => false,
                    (MeasureKind::CountDistinct, Some(_)) => true,
                    (_, Some(Scalar::Num(n))) => usable(*n),
                    _ => false,
                };
                if !ok {
                    self.skip(format!("{m}: no usable value"));
                }
            }
        }
        let watermark = self.horizon(c).unwrap_or(i64::MIN);
        let values = scratch;
        let mut late = false;
        let mut folded = false;
        match c.def.window {
            Window::Tumbling { size_ms } => {
                let size = size_ms as i64;
                let start = time.div_euclid(size) * size;
                if start.saturating_add(size) <= watermark {
                    late = true;
                } else {
                    self.add_to(c, &key, start, start.saturating_add(size), values);
                    folded = true;
                }
            }
            Window::Hopping {
                size_ms,
                advance_ms,
            } => {
                let (size, advance) = (size_ms as i64, advance_ms as i64);
                // Every window holding `time`, latest start first.
                let mut start = time.div_euclid(advance) * advance;
                while start > time.saturating_sub(size) {
                    let end = start.saturating_add(size);
                    if end <= watermark {
                        late = true;
                    } else {
                        self.add_to(c, &key, start, end, values);
                        folded = true;
                    }
                    match start.checked_sub(advance) {
                        Some(s) => start = s,
                        None => break,
                    }
                }
            }
            Window::Session { gap_ms } => {
                if time < watermark {
                    late = true;
                } else {
                    self.add_to_session(c, &key, time, gap_ms as i64, values);
                    folded = true;
                }
            }
        }
        if late {
            self.late_events += 1;
        }
        if folded {
            self.events += 1;
        }
        self.key_buf.0 = key;
    }

    /// The windows of the group `key` (created, with its values decoded from the key, on
    /// its first event).
    fn group_mut(&mut self, key: &str) -> &mut BTreeMap<i64, WindowAcc> {
        if !self.groups.contains_key(key) {
            self.groups.insert(
                key.to_string(),
                GroupWindows {
                    group: decode_group(key),
                    windows: BTreeMap::new(),
                },
            );
        }
        match self.groups.get_mut(key) {
            Some(g) => &mut g.windows,
            None => unreachable!("inserted above"),
        }
    }

    fn add_to(
        &mut self,
        c: &Compiled,
        key: &str,
        start: i64,
        end: i64,
        fields: &[Option<Scalar<'_>>],
    ) {
        let add = |windows: &mut BTreeMap<i64, WindowAcc>| {
            windows
                .entry(start)
                .or_insert_with(|| WindowAcc::new(c, end))
                .add(c, fields);
        };
        // One lookup for a known group (the usual case).
        if let Some(g) = self.groups.get_mut(key) {
            return add(&mut g.windows);
        }
        add(self.group_mut(key));
    }

    /// Adds an event at `time` to its group's sessions, merging every open session it
    /// touches (a session spans [first event, last event + gap)).
    fn add_to_session(
        &mut self,
        c: &Compiled,
        key: &str,
        time: i64,
        gap: i64,
        fields: &[Option<Scalar<'_>>],
    ) {
        let windows = self.group_mut(key);
        let touching: Vec<i64> = windows
            .range(..time.saturating_add(gap))
            .filter(|(_, w)| !w.closed && w.end > time)
            .map(|(start, _)| *start)
            .collect();
        let mut start = time;
        let mut end = time.saturating_add(gap);
        let mut merged = WindowAcc::new(c, end);
        for s in touching {
            if let Some(w) = windows.remove(&s) {
                start = start.min(s);
                end = end.max(w.end);
                merged.merge(&w);
            }
        }
        merged.end = end;
        merged.add(c, fields);
        windows.insert(start, merged);
    }

    /// Closes the windows the watermark (or the output topic's progress) has passed and
    /// forgets closed ones older than the retention; with an output topic, only those
    /// written to it.
    pub fn advance(&mut self, c: &Compiled) {
        let Some(watermark) = self.horizon(c) else {
            return;
        };
        let mut forget_before = watermark.saturating_sub(c.def.retain_ms as i64);
        if c.def.emit_to.is_some() {
            // Nothing leaves memory before it reached the output topic.
            let written = self.emitted_upto.map_or(i64::MIN, |e| e.saturating_add(1));
            forget_before = forget_before.min(written);
        }
        for g in self.groups.values_mut() {
            for w in g.windows.values_mut() {
                if !w.closed && w.end <= watermark {
                    w.closed = true;
                    self.closed_windows += 1;
                }
            }
            g.windows
                .retain(|_, w| !(w.closed && w.end < forget_before));
        }
        self.groups.retain(|_, g| !g.windows.is_empty());
    }

    /// Every window: (group values, start, window).
    pub fn windows(&self) -> impl Iterator<Item = (&[String], i64, &WindowAcc)> {
        self.groups.values().flat_map(|g| {
            g.windows
                .iter()
                .map(move |(start, w)| (g.group.as_slice(), *start, w))
        })
    }

    /// How many windows are in memory.
    pub fn window_count(&self) -> usize {
        self.groups.values().map(|g| g.windows.len()).sum()
    }
}

/// Appends `n` in decimal (without the formatting machinery: this runs for every event).
fn push_decimal(out: &mut String, n: usize) {
    if n >= 10 {
        push_decimal(out, n / 10);
    }
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// The group values of a key made by [`AggState::fold_values`] (`len:text` per part).
fn decode_group(mut key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    while let Some((len, rest)) = key.split_once(':') {
        let Ok(len) = len.parse::<usize>() else { break };
        let Some(part) = rest.get(..len) else { break };
        parts.push(part.to_string());
        key = &rest[len..];
    }
    parts
}

fn field_of(t: &TimeSource) -> &str {
    match t {
        TimeSource::Timestamp => "timestamp",
        TimeSource::Field(f) => f,
    }
}
