//! Starting and stopping aggregations in the partitions this node leads: each start or stop
//! is a control record in the partition's log, so every replica folds from the same offset.
//! The leaders also pass on how far each aggregation's output topic has been written
//! ([`Control::Emitted`]), so that closed windows leave memory everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Control;
use crate::controller::Cluster;
use crate::topics::Topics;

/// How often partition leaders check which aggregations should run.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);

/// Brings the aggregations running in the partitions this node leads in line with the
/// controller's definitions, every 250 ms and as soon as an aggregation is defined or
/// dropped (a create waits for every partition to run it), for as long as the node runs.
pub async fn run(topics: Arc<Topics>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    let mut state = cluster.state();
    let mut defined = defined_ids(&cluster);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = defined_ids(&cluster);
                if now == defined {
                    continue;
                }
                defined = now;
            }
        }
        reconcile(&topics, &cluster).await;
    }
}

/// The ids of the aggregations defined now.
fn defined_ids(cluster: &Cluster) -> Vec<u64> {
    cluster
        .current()
        .aggregations
        .values()
        .map(|a| a.id)
        .collect()
}

async fn reconcile(topics: &Topics, cluster: &Cluster) {
    let cluster = cluster.current();
    for topic in topics.all() {
        let desired: Vec<_> = cluster
            .aggregations
            .values()
            .filter(|a| a.def.topic == topic.name)
            .collect();
        for p in &topic.partitions {
            if !p.leader_caught_up() {
                continue;
            }
            let running: BTreeMap<u64, Option<i64>> = p.with_aggs(|a| {
                a.running
                    .iter()
                    .map(|(id, r)| (*id, r.state.emitted_upto))
                    .collect()
            });
            let mut controls = Vec::new();
            for a in &desired {
                let Some(emitted_upto) = running.get(&a.id) else {
                    controls.push(Control::StartAggregation {
                        id: a.id,
                        def: Box::new(a.def.clone()),
                        backfill_from: a.def.backfill.then(|| p.start_offset()),
                    });
                    continue;
                };
                // Tell the partition how far the output topic has been written.
                let out_partitions = a
                    .def
                    .emit_to
                    .as_ref()
                    .and_then(|t| cluster.topics.get(t))
                    .map_or(0, |t| t.replicas.len());
                if let Some(upto) = a.emitted_everywhere(out_partitions)
                    && emitted_upto.is_none_or(|e| e < upto)
                {
                    controls.push(Control::Emitted { id: a.id, upto });
                }
            }
            for id in running.keys() {
                if !desired.iter().any(|a| a.id == *id) {
                    controls.push(Control::StopAggregation { id: *id });
                }
            }
            for control in controls {
                if let Err(e) = p.propose_control(&control).await {
                    tracing::debug!(topic = %topic.name, partition = p.id(), error = %e, "aggregation control record not written; retrying");
                    break;
                }
            }
        }
    }
}
