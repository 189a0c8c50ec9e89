//! The state a running node shares between its front doors and background tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::agg::query::Aggregations;
use crate::auth::audit::AuditLog;
use crate::auth::gate::Authenticator;
use crate::budget::RequestBudget;
use crate::config::Config;
use crate::controller::Cluster;
use crate::groups::Coordinator;
use crate::metrics::Metrics;
use crate::search::scatter::Search;
use crate::topics::Topics;

/// A running node's shared state.
pub struct Node {
    /// Its configuration.
    pub config: Config,
    /// Its topics and the replicas it holds.
    pub topics: Arc<Topics>,
    /// Its consumer groups.
    pub groups: Coordinator,
    /// Its cluster: the controller and the cluster state.
    pub cluster: Arc<Cluster>,
    /// The cluster's aggregations, as this node answers for them.
    pub aggregations: Aggregations,
    /// Searching the cluster from this node.
    pub search: Search,
    /// Who callers are and what they may do.
    pub auth: Arc<Authenticator>,
    /// The client address it announces to the cluster.
    pub advertised: String,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// The request bytes its client calls may hold together.
    pub request_budget: RequestBudget,
    /// The gRPC address it listens on.
    pub address: SocketAddr,
    /// The peer listener's address.
    pub peer_address: SocketAddr,
    /// The HTTP address it listens on, if any.
    pub http_address: Option<SocketAddr>,
    serving: AtomicBool,
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Where a node listens and what it announces.
pub(crate) struct Addresses {
    /// The gRPC address it listens on.
    pub address: SocketAddr,
    /// The client address it announces to the cluster.
    pub advertised: String,
    /// The peer listener's address.
    pub peer_address: SocketAddr,
    /// The HTTP address it listens on, if any.
    pub http_address: Option<SocketAddr>,
}

impl Node {
    pub(crate) fn new(
        config: Config,
        topics: Arc<Topics>,
        groups: Coordinator,
        cluster: Arc<Cluster>,
        addresses: Addresses,
        audit: AuditLog,
    ) -> Self {
        let (stopping, _) = tokio::sync::watch::channel(false);
        let max_answer_bytes = config.max_request_bytes as usize;
        let aggregations = Aggregations::new(
            topics.clone(),
            cluster.clone(),
            config.max_aggregations_per_topic as usize,
        );
        let auth = Arc::new(Authenticator::new(
            cluster.clone(),
            audit,
            config.auth_required(),
            config.superusers.clone(),
            std::time::Duration::from_millis(config.token_ttl_ms),
        ));
        let request_budget = RequestBudget::new(config.max_in_flight_request_bytes);
        Node {
            config,
            aggregations,
            search: Search::new(topics.clone(), cluster.clone(), max_answer_bytes),
            auth,
            topics,
            groups,
            cluster,
            advertised: addresses.advertised,
            metrics: Arc::new(Metrics::new()),
            request_budget,
            address: addresses.address,
            peer_address: addresses.peer_address,
            http_address: addresses.http_address,
            serving: AtomicBool::new(true),
            stopping,
        }
    }

    /// Whether the node accepts requests (false once it is shutting down).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    pub(crate) fn stop_serving(&self) {
        self.serving.store(false, Ordering::Release);
        self.stopping.send_replace(true);
    }

    /// Resolves once the node starts shutting down (streams end then).
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}
