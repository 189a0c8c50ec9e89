//! The state a running node shares between its services and background tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::groups::Coordinator;
use crate::metrics::Metrics;
use crate::topics::Topics;

/// A running node's shared state.
pub struct Node {
    /// Its configuration.
    pub config: Config,
    /// Its topics.
    pub topics: Arc<Topics>,
    /// Its consumer groups.
    pub groups: Coordinator,
    /// Its cluster: the controller and the cluster state.
    pub cluster: Arc<Cluster>,
    /// The client address it announces to the cluster.
    pub advertised: String,
    /// Its metrics.
    pub metrics: Metrics,
    /// The gRPC address it listens on.
    pub address: SocketAddr,
    /// The HTTP address it listens on, if any.
    pub http_address: Option<SocketAddr>,
    serving: AtomicBool,
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Node {
    pub(crate) fn new(
        config: Config,
        topics: Arc<Topics>,
        groups: Coordinator,
        cluster: Arc<Cluster>,
        address: SocketAddr,
        advertised: String,
        http_address: Option<SocketAddr>,
    ) -> Self {
        let (stopping, _) = tokio::sync::watch::channel(false);
        Node {
            config,
            topics,
            groups,
            advertised,
            cluster,
            metrics: Metrics::new(),
            address,
            http_address,
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
