//! The operator HTTP endpoint: `GET /health` and `GET /metrics` (Prometheus).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::node::Node;

/// The HTTP routes of a node.
pub(crate) fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// Ready when the node serves, no Raft group of it has stopped on an error and neither a
/// replica of it nor its controller replica is out after a failure (being reopened).
async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let stopped: Vec<serde_json::Value> = node
        .cluster
        .env()
        .groups
        .stopped()
        .into_iter()
        .map(|(id, why)| serde_json::json!({"group": format!("{id:#x}"), "error": why}))
        .collect();
    let failed: Vec<serde_json::Value> = (node.topics.failed_replicas().into_iter())
        .map(|((topic, partition), f)| {
            serde_json::json!({
                "topic": topic,
                "partition": partition,
                "error": f.cause,
                "for_ms": f.since.elapsed().as_millis() as u64,
                "reopen_attempts": f.attempts,
            })
        })
        .collect();
    let controller = node.cluster.controller_failure();
    let whole = stopped.is_empty() && failed.is_empty() && controller.is_none();
    let serving = node.is_serving() && whole;
    let status = match (node.is_serving(), whole) {
        (true, true) => "serving",
        (true, false) => "degraded",
        (false, _) => "not_serving",
    };
    let body = serde_json::json!({
        "status": status,
        "node_id": node.config.node_id,
        "topics": node.topics.all().len(),
        "stopped_groups": stopped,
        "failed_replicas": failed,
        "controller_failure": controller,
    });
    let code = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || {
        let counts = crate::metrics::NodeCounts {
            stopped_groups: node.cluster.env().groups.stopped().len(),
            audit_dropped: node.auth.audit().dropped(),
            in_flight_request_bytes: node.request_budget.in_use(),
            controller_recoveries: node.cluster.controller_recoveries(),
        };
        node.metrics.render(&node.topics, &node.groups, counts)
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
