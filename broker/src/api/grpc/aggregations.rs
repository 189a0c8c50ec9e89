//! `Aggregations`: define, drop, list, describe, query and watch windowed aggregations
//! (the feature is [`crate::agg::query::Aggregations`]; this converts to and from the API's
//! messages).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use strata_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Api;
use crate::agg::Selection;
use crate::agg::def::{AggregationDef, DEFAULT_RETAIN_MS, GroupBy, Measure, TimeSource, Window};
use crate::auth::{Operation, ResourceKind};
use crate::error::Error;
use crate::tls::PeerCaller;

/// How often a watch looks for changed windows.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// A definition from its API form; the error says what is wrong.
pub fn spec_to_def(spec: v1::AggregationSpec) -> Result<AggregationDef, Error> {
    let bad = Error::InvalidArgument;
    let window = Window::parse(&spec.window).map_err(bad)?;
    let time = if spec.time_field.trim().is_empty() {
        TimeSource::Timestamp
    } else {
        TimeSource::Field(spec.time_field.trim().to_string())
    };
    let group_by = spec
        .group_by
        .iter()
        .map(|g| GroupBy::parse(g))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let measures = spec
        .measures
        .iter()
        .map(|m| Measure::parse(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let def = AggregationDef {
        name: spec.name,
        topic: spec.topic,
        window,
        time,
        group_by,
        filter: Some(spec.filter.trim().to_string()).filter(|f| !f.is_empty()),
        measures,
        lateness_ms: spec.lateness_ms,
        retain_ms: if spec.retain_ms == 0 {
            DEFAULT_RETAIN_MS
        } else {
            spec.retain_ms
        },
        emit_to: Some(spec.emit_to.trim().to_string()).filter(|t| !t.is_empty()),
        backfill: spec.backfill,
    };
    def.validate().map_err(Error::InvalidArgument)?;
    Ok(def)
}

/// The API form of a definition.
pub fn def_to_spec(def: &AggregationDef, id: u64) -> v1::AggregationSpec {
    v1::AggregationSpec {
        name: def.name.clone(),
        topic: def.topic.clone(),
        window: def.window.to_string(),
        time_field: match &def.time {
            TimeSource::Timestamp => String::new(),
            TimeSource::Field(f) => f.clone(),
        },
        group_by: def.group_by.iter().map(ToString::to_string).collect(),
        filter: def.filter.clone().unwrap_or_default(),
        measures: def.measures.iter().map(ToString::to_string).collect(),
        lateness_ms: def.lateness_ms,
        retain_ms: def.retain_ms,
        emit_to: def.emit_to.clone().unwrap_or_default(),
        backfill: def.backfill,
        id,
    }
}

/// A stream of watch answers.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<v1::WatchAggregationResponse, Status>> + Send>>;

/// The rows a watch sent last, by window and group.
type Seen = HashMap<(i64, Vec<String>, i64), v1::AggregationRow>;

/// The rows of a new answer that differ from what the watch sent; what it remembers becomes
/// this answer, so windows that left it (retention) are forgotten and a long watch holds no
/// more than one answer's rows.
fn changed_rows(seen: &mut Seen, rows: Vec<v1::AggregationRow>) -> Vec<v1::AggregationRow> {
    let mut latest = HashMap::with_capacity(rows.len());
    let mut changed = Vec::new();
    for r in rows {
        let key = (r.start_ms, r.group.clone(), r.end_ms);
        if seen.get(&key) != Some(&r) {
            changed.push(r.clone());
        }
        latest.insert(key, r);
    }
    *seen = latest;
    changed
}

impl Api {
    /// A query or watch of an aggregation needs read on its source topic.
    fn may_read_source<T>(&self, request: &Request<T>, aggregation: &str) -> Result<(), Error> {
        let topic = self.node.aggregations.get(aggregation)?.def.topic.clone();
        self.allow(request, ResourceKind::Topic, &topic, Operation::Read)?;
        Ok(())
    }
}

#[tonic::async_trait]
impl v1::aggregations_server::Aggregations for Api {
    async fn create(
        &self,
        request: Request<v1::CreateAggregationRequest>,
    ) -> Result<Response<v1::CreateAggregationResponse>, Status> {
        self.check_serving()?;
        let caller = self.caller(&request)?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Error::InvalidArgument("no aggregation spec".into()))?;
        self.require(
            &caller,
            ResourceKind::Aggregation,
            &spec.name,
            Operation::Create,
        )?;
        self.require(&caller, ResourceKind::Topic, &spec.topic, Operation::Read)?;
        if !spec.emit_to.is_empty() {
            self.require(
                &caller,
                ResourceKind::Topic,
                &spec.emit_to,
                Operation::Write,
            )?;
        }
        let resource = format!("aggregation `{}`", spec.name);
        let created = match spec_to_def(spec) {
            Ok(def) => self.node.aggregations.create(def).await,
            Err(e) => Err(e),
        };
        let id = self.audited(&caller, "Aggregations/Create", &resource, created)?;
        Ok(Response::new(v1::CreateAggregationResponse { id }))
    }

    async fn drop(
        &self,
        request: Request<v1::DropAggregationRequest>,
    ) -> Result<Response<v1::DropAggregationResponse>, Status> {
        self.check_serving()?;
        let name = &request.get_ref().name;
        let caller = self.allow(&request, ResourceKind::Aggregation, name, Operation::Delete)?;
        let name = request.into_inner().name;
        let dropped = self.node.aggregations.drop(&name).await;
        self.audited(
            &caller,
            "Aggregations/Drop",
            &format!("aggregation `{name}`"),
            dropped,
        )?;
        Ok(Response::new(v1::DropAggregationResponse {}))
    }

    async fn list(
        &self,
        request: Request<v1::ListAggregationsRequest>,
    ) -> Result<Response<v1::ListAggregationsResponse>, Status> {
        let caller = self.caller(&request)?;
        let aggregations = self
            .node
            .aggregations
            .list()
            .iter()
            .filter(|a| {
                self.may(
                    &caller,
                    ResourceKind::Aggregation,
                    &a.def.name,
                    Operation::Describe,
                )
            })
            .map(|a| def_to_spec(&a.def, a.id))
            .collect();
        Ok(Response::new(v1::ListAggregationsResponse { aggregations }))
    }

    async fn describe(
        &self,
        request: Request<v1::DescribeAggregationRequest>,
    ) -> Result<Response<v1::DescribeAggregationResponse>, Status> {
        self.check_serving()?;
        let name = &request.get_ref().name;
        self.allow(
            &request,
            ResourceKind::Aggregation,
            name,
            Operation::Describe,
        )?;
        let name = request.into_inner().name;
        let aggregations = &self.node.aggregations;
        let meta = aggregations.get(&name)?;
        let query = v1::QueryAggregationRequest {
            name,
            stats_only: true,
            ..Default::default()
        };
        let (_, partitions) = aggregations
            .gather(&meta, &Selection::default(), &query)
            .await?;
        let out_partitions = meta
            .def
            .emit_to
            .as_ref()
            .map_or(0, |t| self.node.topics.partition_count(t));
        let output = (0..out_partitions)
            .map(|p| {
                let progress = meta.emitted.get(&p);
                v1::OutputProgress {
                    partition: p,
                    upto_ms: progress.map(|e| e.upto),
                    records: progress.map_or(0, |e| e.next_seq.max(0) as u64),
                }
            })
            .collect();
        Ok(Response::new(v1::DescribeAggregationResponse {
            spec: Some(def_to_spec(&meta.def, meta.id)),
            partitions,
            output,
        }))
    }

    async fn query(
        &self,
        request: Request<v1::QueryAggregationRequest>,
    ) -> Result<Response<v1::QueryAggregationResponse>, Status> {
        self.check_serving()?;
        if request.get_ref().partial && PeerCaller::of(&request).is_none() {
            return Err(Error::PermissionDenied(
                "only another node may ask for partial windows".into(),
            )
            .into());
        }
        self.may_read_source(&request, &request.get_ref().name)?;
        Ok(Response::new(
            self.node.aggregations.query(request.into_inner()).await?,
        ))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<v1::WatchAggregationRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.may_read_source(&request, &request.get_ref().name)?;
        let request = request.into_inner();
        let query = v1::QueryAggregationRequest {
            name: request.name,
            from_ms: request.from_ms,
            r#where: request.r#where,
            ..Default::default()
        };
        // The first answer checks the request (unknown aggregation, bad selection).
        self.check_serving()?;
        let initial = self.node.aggregations.query(query.clone()).await?;
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        tokio::spawn(async move {
            let mut seen = Seen::new();
            let mut answer = Ok(initial);
            let mut first = true;
            loop {
                let rows = match answer {
                    Ok(a) => {
                        let changed = changed_rows(&mut seen, a.rows);
                        Ok(v1::WatchAggregationResponse {
                            measures: a.measures,
                            group_by: a.group_by,
                            rows: changed,
                        })
                    }
                    Err(e) => Err(super::status::status(&e)),
                };
                let failed = rows.is_err();
                // The first answer always goes out (it names the measures); later ones only
                // when a window changed.
                let quiet = matches!(&rows, Ok(r) if r.rows.is_empty()) && !first;
                first = false;
                if !quiet && tx.send(rows).await.is_err() || failed {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(WATCH_EVERY) => {}
                    () = tx.closed() => return,
                }
                answer = match api.check_serving() {
                    Ok(()) => api.node.aggregations.query(query.clone()).await,
                    Err(e) => Err(e),
                };
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as WatchStream
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start_ms: i64, events: u64) -> v1::AggregationRow {
        v1::AggregationRow {
            start_ms,
            end_ms: start_ms + 60_000,
            group: vec!["d".into()],
            events,
            ..Default::default()
        }
    }

    #[test]
    fn a_watch_sends_changes_and_remembers_only_the_last_answer() {
        let mut seen = Seen::new();
        assert_eq!(
            changed_rows(&mut seen, vec![row(0, 1), row(60_000, 1)]).len(),
            2
        );
        assert_eq!(
            changed_rows(&mut seen, vec![row(0, 1), row(60_000, 2)]),
            vec![row(60_000, 2)]
        );
        // The first window left the answer (retention): it is forgotten.
        assert!(changed_rows(&mut seen, vec![row(60_000, 2)]).is_empty());
        assert_eq!(seen.len(), 1);
    }
}
