//! Windowed aggregations computed on write.
//!
//! An aggregation is defined through the controller ([`def::AggregationDef`]). Each partition
//! leader then writes a *control batch* into its partition's log that starts it (or stops
//! it), so every replica starts folding at the same offset: the state is a pure function of
//! the log, updated as committed batches are applied, carried in snapshots, and the same on
//! a new leader after a fail-over. A start control record may ask for a backfill: the
//! records already in the log are folded in first, in order.
//!
//! The pure half, which the partition replicas' state machines call as they apply batches:
//! - [`json`]: one-pass extraction of the fields an aggregation reads.
//! - [`filter`]: filter expressions.
//! - [`def`]: definitions and their parsing; [`compiled`]: a definition made ready to fold.
//! - [`measure`]: measures and a window's accumulators (sketches, distinct sets).
//! - [`state`]: windows per group, watermark, late and skipped events.
//! - this module: control records ([`Control`]), a partition's running aggregations
//!   ([`PartitionAggs`], folding a batch), and query rows ([`Row`], [`merge_rows`]).
//!
//! The half that runs on the node, over its replicas (it imports `replica` and `topics`;
//! the pure half never imports it):
//! - [`query`]: [`query::Aggregations`], definitions through the controller and queries gathered
//!   from every partition's replicas;
//! - [`reconcile`]: the task that starts and stops aggregations in the partitions a node
//!   leads;
//! - [`emit`]: the task that writes closed windows to output topics, exactly once.

pub mod compiled;
pub mod def;
pub mod emit;
pub mod filter;
pub mod json;
pub mod measure;
pub mod query;
pub mod reconcile;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strata_storage::RecordBatch;

use self::compiled::Compiled;
use self::def::AggregationDef;
use self::measure::WindowAcc;
use self::state::{AggState, Event};

/// A control record in a partition's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Start aggregation `id` here; fold the records from `backfill_from` up to here first.
    StartAggregation {
        /// Aggregation id (from the controller; never reused).
        id: u64,
        /// Its definition.
        def: Box<AggregationDef>,
        /// First offset to backfill from, if any.
        backfill_from: Option<u64>,
    },
    /// Stop aggregation `id` and drop its state.
    StopAggregation {
        /// Aggregation id.
        id: u64,
    },
    /// Every window of aggregation `id` ending at or before `upto` was written to its output
    /// topic: close such windows here too and let them leave memory.
    Emitted {
        /// Aggregation id.
        id: u64,
        /// Window end (ms).
        upto: i64,
    },
}

impl Control {
    /// As a one-record control batch.
    pub fn to_batch(&self) -> Result<RecordBatch, String> {
        crate::raft::json_batch(self, true)
    }

    /// Reads a control batch's record back.
    pub fn from_batch(batch: &RecordBatch) -> Option<Control> {
        let record = batch.records().next()?;
        serde_json::from_slice(record.value?).ok()
    }
}

/// A running aggregation in a partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Running {
    /// Its definition as started.
    pub def: AggregationDef,
    /// Offset of the control record that started it.
    pub started_at: u64,
    /// Its state.
    pub state: AggState,
    #[serde(skip)]
    compiled: Option<Arc<Compiled>>,
}

impl PartialEq for Running {
    fn eq(&self, other: &Self) -> bool {
        self.def == other.def && self.started_at == other.started_at && self.state == other.state
    }
}

impl Running {
    /// The compiled definition (compiled on first use after a snapshot was loaded).
    pub fn compiled(&mut self) -> Option<Arc<Compiled>> {
        if self.compiled.is_none() {
            match Compiled::new(self.def.clone()) {
                Ok(c) => self.compiled = Some(Arc::new(c)),
                Err(e) => {
                    tracing::error!(aggregation = %self.def.name, error = %e, "aggregation does not compile");
                }
            }
        }
        self.compiled.clone()
    }
}

/// The aggregations running in one partition, by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionAggs {
    /// By aggregation id.
    pub running: BTreeMap<u64, Running>,
}

impl PartitionAggs {
    /// Applies a control batch at `offset`. Returns the backfill to run, if any: (id, from
    /// offset, up to offset).
    pub fn control(&mut self, control: Control, offset: u64) -> Option<(u64, u64, u64)> {
        match control {
            Control::StartAggregation {
                id,
                def,
                backfill_from,
            } => {
                if self.running.contains_key(&id) {
                    return None; // a second leader's duplicate start
                }
                let compiled = match Compiled::new((*def).clone()) {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        tracing::error!(aggregation = %def.name, error = %e, "refusing to start an aggregation that does not compile");
                        return None;
                    }
                };
                self.running.insert(
                    id,
                    Running {
                        def: *def,
                        started_at: offset,
                        state: AggState::default(),
                        compiled: Some(compiled),
                    },
                );
                backfill_from.map(|from| (id, from, offset))
            }
            Control::StopAggregation { id } => {
                self.running.remove(&id);
                None
            }
            Control::Emitted { id, upto } => {
                if let Some(running) = self.running.get_mut(&id)
                    && let Some(compiled) = running.compiled()
                {
                    running.state.emitted(&compiled, upto);
                }
                None
            }
        }
    }

    /// Folds a data batch's records at or after `from_offset` into every running
    /// aggregation (or only `only`). Each record's value is parsed once for all of them.
    pub fn fold_batch(&mut self, batch: &RecordBatch, only: Option<u64>, from_offset: u64) {
        // The union of the fields every aggregation reads, and each one's slots in it.
        let mut paths: Vec<json::Path> = Vec::new();
        let mut plans: Vec<(&mut Running, Arc<Compiled>, Vec<usize>)> = Vec::new();
        for (id, running) in &mut self.running {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            let Some(compiled) = running.compiled() else {
                continue;
            };
            let slots = compiled
                .paths()
                .iter()
                .map(|p| match paths.iter().position(|q| q == p) {
                    Some(i) => i,
                    None => {
                        paths.push(p.clone());
                        paths.len() - 1
                    }
                })
                .collect();
            plans.push((running, compiled, slots));
        }
        if plans.is_empty() {
            return;
        }
        let mut all = Vec::new();
        let mut mine = Vec::new();
        for record in batch.records() {
            if record.offset < from_offset {
                continue;
            }
            let parsed = paths.is_empty()
                || record
                    .value
                    .is_some_and(|v| json::extract(v, &paths, &mut all));
            let event = Event {
                timestamp: record.timestamp,
                key: record.key,
                value: record.value,
            };
            for (running, compiled, slots) in &mut plans {
                mine.clear();
                mine.extend(slots.iter().map(|s| all.get(*s).cloned().flatten()));
                running.state.fold_values(compiled, &event, &mine, parsed);
            }
        }
        for (running, compiled, _) in &mut plans {
            running.state.advance(compiled);
        }
    }

    /// Whether any aggregation runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

/// A window row of a query, partial (one partition) or merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Window start (ms).
    pub start: i64,
    /// Group values.
    pub group: Vec<String>,
    /// The window (merged: closed only if closed in every partition that has it).
    #[serde(flatten)]
    pub window: WindowAcc,
}

impl Row {
    /// The reported measure values.
    pub fn values(&self, def: &AggregationDef) -> Vec<Option<f64>> {
        self.window
            .measures
            .iter()
            .zip(&def.measures)
            .map(|(acc, m)| acc.value(m.kind))
            .collect()
    }
}

/// What a query selects.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Windows ending after this (ms).
    pub from: Option<i64>,
    /// Windows starting before this (ms).
    pub to: Option<i64>,
    /// Group-by part name → required value.
    pub groups: Vec<(String, String)>,
}

impl Selection {
    fn matches(&self, def: &AggregationDef, group: &[String], start: i64, end: i64) -> bool {
        if self.from.is_some_and(|f| end <= f) || self.to.is_some_and(|t| start >= t) {
            return false;
        }
        self.groups.iter().all(|(name, value)| {
            def.group_by
                .iter()
                .position(|g| g.to_string() == *name)
                .is_some_and(|i| group.get(i) == Some(value))
        })
    }
}

/// The selected rows of one partition's state.
pub fn partial_rows(def: &AggregationDef, state: &AggState, sel: &Selection) -> Vec<Row> {
    state
        .windows()
        .filter(|(group, start, w)| sel.matches(def, group, *start, w.end))
        .map(|(group, start, w)| Row {
            start,
            group: group.to_vec(),
            window: w.clone(),
        })
        .collect()
}

/// Merges partial rows of several partitions: the same (group, start, end) window is one row
/// (sums and counts added, sketches and distinct sets merged). Ordered by start, then group.
pub fn merge_rows(parts: impl IntoIterator<Item = Row>) -> Vec<Row> {
    let mut merged: BTreeMap<(i64, Vec<String>, i64), Row> = BTreeMap::new();
    for row in parts {
        match merged.entry((row.start, row.group.clone(), row.window.end)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(row);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let m = &mut o.get_mut().window;
                m.merge(&row.window);
                m.closed &= row.window.closed;
            }
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
mod tests;
