//! Starting and stopping a node: bind, open storage, serve, start each feature's background
//! tasks, shut down. What the tasks do lives with their feature; this module only wires.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::transport::Buffered;
use strata_storage::{Flusher, LogConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::agg::emit::Emitter;
use crate::api;
use crate::auth::audit::AuditLog;
use crate::config::Config;
use crate::controller::Cluster;
use crate::error::{Error, Result};
use crate::groups::Coordinator;
use crate::node::{Addresses, Node};
use crate::raft::{RaftEnv, RaftService, RaftTuning, Router};
use crate::replica::ReplicaSettings;
use crate::tls::{PeerGate, PeerTls};
use crate::topics::{TopicLimits, Topics};

/// HTTP/2 flow-control window of one stream (a request or a fetch stream).
pub const HTTP2_STREAM_WINDOW: u32 = 16 << 20;
/// HTTP/2 flow-control window of a connection.
pub const HTTP2_CONNECTION_WINDOW: u32 = 64 << 20;
/// Largest HTTP/2 frame.
pub const HTTP2_MAX_FRAME: u32 = (1 << 24) - 1;

/// Segment size of the controller's log (its entries are small commands).
const CONTROLLER_SEGMENT_BYTES: u64 = 16 << 20;

/// A running node. Dropping it without [`Broker::shutdown`] stops serving but does not
/// wait for the logs to close.
pub struct Broker {
    node: Arc<Node>,
    /// The data directory's lock, held while the node runs.
    data_lock: Option<strata_storage::DirLock>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("address", &self.node.address)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl Broker {
    /// Validates the configuration, binds the listeners (port 0 picks a free one), opens
    /// every topic and group, and starts serving.
    pub async fn start(config: Config) -> Result<Broker> {
        config.validate()?;
        let grpc = bind(config.listen).await?;
        let address = grpc.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let http = match config.http {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let http_address = http.as_ref().and_then(|l| l.local_addr().ok());
        let peer = bind(config.peer_listen).await?;
        let peer_address = peer.local_addr().map_err(|source| Error::Bind {
            addr: config.peer_listen,
            source,
        })?;
        crate::tls::prefer_aes128();
        let peer_tls = config
            .peer_tls
            .as_ref()
            .map(|files| PeerTls::load(files, config.node_id))
            .transpose()?;
        let bootstrap_password = match &config.bootstrap_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Error::Config(format!(
                            "cannot read the bootstrap password {}: {e}",
                            path.display()
                        ))
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        let client_tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::client_listener(cert, key)?),
            _ => None,
        };
        let data_lock = lock_data_dir(&config.data_dir)?;
        let advertised = config
            .advertise
            .clone()
            .unwrap_or_else(|| address.to_string());

        // The cluster: every group shares the peers' connections and the Raft service.
        let mut peers = config.peers.0.clone();
        peers
            .entry(config.node_id)
            .or_insert_with(|| advertised.clone());
        let voters: Vec<u64> = peers.keys().copied().collect();
        let router = Router::new(
            peers
                .iter()
                .filter(|(id, _)| **id != config.node_id)
                .map(|(id, a)| (*id, a.clone())),
            peer_tls.clone(),
        );
        let tuning = RaftTuning {
            heartbeat_ms: config.raft_heartbeat_ms,
            election_min_ms: config.raft_election_timeout_ms,
            election_max_ms: config.raft_election_timeout_ms * 9 / 5,
            ..RaftTuning::default()
        };
        let env = RaftEnv::new(config.node_id, router, &tuning)
            .map_err(|e| Error::Config(e.to_string()))?;
        let flusher = Flusher::new()
            .map_err(|e| Error::Unavailable(format!("cannot start the flusher: {e}")))?;
        let log_config = config.log_config(Some(flusher));
        let controller_log = LogConfig {
            segment_bytes: CONTROLLER_SEGMENT_BYTES,
            max_entry_bytes: CONTROLLER_SEGMENT_BYTES / 4,
            ..log_config.clone()
        };
        let cluster = Arc::new(
            Cluster::start(
                env.clone(),
                &config.data_dir.join("controller"),
                controller_log,
                &voters,
            )
            .await?,
        );
        let limits = TopicLimits {
            max_partitions_per_node: config.max_partitions_per_node,
            max_topics: config.max_topics,
        };
        let topics = Arc::new(Topics::new(
            &config.data_dir,
            limits,
            env.clone(),
            ReplicaSettings {
                log: log_config,
                producer_expiry_ms: config.producer_expiry_ms,
            },
            cluster.state(),
        )?);
        topics.reconcile().await?;
        let groups = Coordinator::new(
            topics.clone(),
            cluster.clone(),
            (
                Duration::from_millis(config.group_min_session_timeout_ms),
                Duration::from_millis(config.group_max_session_timeout_ms),
            ),
        );
        let addresses = Addresses {
            address,
            advertised: advertised.clone(),
            peer_address,
            http_address,
        };
        let (audit, audit_queue) = AuditLog::new(config.node_id, config.auth_required());
        let node = Arc::new(Node::new(
            config,
            topics,
            groups,
            cluster.clone(),
            addresses,
            audit.clone(),
        ));
        let (stop, _) = watch::channel(false);

        let mut servers = Vec::new();
        let mut client_builder = grpc_server_builder(&node.config);
        let client_buffering = client_tls.is_some();
        if let Some(tls) = client_tls {
            client_builder = client_builder
                .tls_config(tls)
                .map_err(|e| Error::Config(format!("client TLS: {e}")))?;
        }
        let client_server = client_builder
            .add_routes(api::grpc::routes(&node))
            .serve_with_incoming_shutdown(
                accepted(grpc, client_buffering),
                stopped(stop.subscribe()),
            );
        servers.push(tokio::spawn(async move {
            if let Err(e) = client_server.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        }));
        // The peer listener: Raft, forwarded proposals, and the node-to-node shares of
        // searches and aggregation queries, behind mutual TLS and the gate.
        let mut peer_builder = grpc_server_builder(&node.config);
        if let Some(tls) = &peer_tls {
            peer_builder = peer_builder
                .tls_config(tls.server())
                .map_err(|e| Error::Config(format!("peer TLS: {e}")))?;
        }
        let gate = PeerGate::new(node.config.members(), peer_tls.is_some());
        let raft = RaftService::new(env.groups.clone(), cluster.forwarded_proposals())
            .into_server(node.config.max_request_bytes as usize);
        let peer_server = peer_builder
            .layer(tonic::service::InterceptorLayer::new(gate))
            .add_routes(api::grpc::peer_routes(&node).add_service(raft))
            .serve_with_incoming_shutdown(
                accepted(peer, peer_tls.is_some()),
                stopped(stop.subscribe()),
            );
        servers.push(tokio::spawn(async move {
            if let Err(e) = peer_server.await {
                tracing::error!(error = %e, "peer gRPC server failed");
            }
        }));
        if let Some(listener) = http {
            let app = api::http::router(node.clone());
            let shutdown = stopped(stop.subscribe());
            servers.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }));
        }
        let (topics, retention_every) = (
            node.topics.clone(),
            Duration::from_millis(node.config.retention_check_ms),
        );
        let emitter = Emitter::new(node.aggregations.clone(), topics.clone(), cluster.clone());
        let mut background = vec![
            tokio::spawn({
                let node = node.clone();
                async move { node.groups.sweep_forever().await }
            }),
            tokio::spawn({
                let topics = topics.clone();
                async move { topics.apply_retention(retention_every).await }
            }),
            tokio::spawn({
                let topics = topics.clone();
                async move { topics.follow_cluster().await }
            }),
            tokio::spawn({
                let cluster = cluster.clone();
                async move { cluster.register(advertised).await }
            }),
            tokio::spawn({
                let topics = topics.clone();
                async move { topics.balance_leaders().await }
            }),
            tokio::spawn({
                let topics = topics.clone();
                async move { topics.recover_failed().await }
            }),
            tokio::spawn({
                let cluster = cluster.clone();
                async move { cluster.recover_failed().await }
            }),
            tokio::spawn(crate::agg::reconcile::run(topics.clone(), cluster.clone())),
            tokio::spawn(emitter.run()),
            tokio::spawn(report_stopped_groups(env.groups.clone())),
            tokio::spawn(audit.run(audit_queue, topics.clone(), cluster.clone())),
        ];
        if let (Some(password), Some(user)) =
            (bootstrap_password, node.config.superusers.first().cloned())
        {
            let auth = node.auth.clone();
            background.push(tokio::spawn(
                async move { auth.bootstrap(user, password).await },
            ));
        }
        tracing::info!(node_id = node.config.node_id, %address, %peer_address, peer_tls = peer_tls.is_some(), http = ?http_address, data_dir = %node.config.data_dir.display(), "node started");
        Ok(Broker {
            node,
            data_lock: Some(data_lock),
            stop,
            servers,
            background,
        })
    }

    /// The gRPC address, with the real port when 0 was asked for.
    pub fn address(&self) -> SocketAddr {
        self.node.address
    }

    /// The peer listener's address, with the real port when 0 was asked for.
    pub fn peer_address(&self) -> SocketAddr {
        self.node.peer_address
    }

    /// The HTTP address, if serving one.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.node.http_address
    }

    /// The node's shared state.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Stops accepting requests, ends streams, lets requests in flight finish, then flushes
    /// and closes every partition log.
    pub async fn shutdown(mut self) -> Result<()> {
        tracing::info!(node_id = self.node.config.node_id, "shutting down");
        self.node.stop_serving();
        self.stop.send_replace(true);
        for server in self.servers.drain(..) {
            let _ = server.await;
        }
        for task in self.background.drain(..) {
            task.abort();
        }
        self.node.topics.close_all().await?;
        self.node.cluster.shutdown().await?;
        drop(self.data_lock.take());
        tracing::info!(node_id = self.node.config.node_id, "stopped");
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.node.stop_serving();
        self.stop.send_replace(true);
        for task in &self.background {
            task.abort();
        }
    }
}

/// A gRPC server with the node's connection settings. Batches are large: wide HTTP/2
/// windows and frames save flow-control round trips.
fn grpc_server_builder(config: &Config) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .max_frame_size(HTTP2_MAX_FRAME)
        .concurrency_limit_per_connection(config.max_in_flight_per_connection)
        .max_concurrent_streams(config.max_streams_per_connection)
}

/// Logs, once each, every Raft group whose core stopped on an error; `/health` says so and
/// `strata_raft_groups_stopped` counts them. The group is then reopened by
/// `Topics::recover_failed` (a partition's) or `Cluster::recover_failed` (the controller's).
async fn report_stopped_groups(groups: crate::raft::Groups) {
    let mut reported = std::collections::BTreeSet::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (id, why) in groups.stopped() {
            if reported.insert(id) {
                tracing::error!(group = format!("{id:#x}"), error = %why, "a raft group stopped");
            }
        }
    }
}

/// Locks `<data_dir>/LOCK` so that no second node uses the directory.
fn lock_data_dir(dir: &std::path::Path) -> Result<strata_storage::DirLock> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    strata_storage::DirLock::acquire(dir).map_err(|e| match e {
        strata_storage::Error::Locked { .. } => Error::Unavailable(format!(
            "data directory {} is in use by another node",
            dir.display()
        )),
        e => Error::io(dir, std::io::Error::other(e)),
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs a node until `shutdown` resolves, then shuts it down cleanly.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let broker = Broker::start(config).await?;
    shutdown.await;
    broker.shutdown().await
}

/// The connections accepted on `listener`, with Nagle's algorithm off, and with a read
/// buffer under TLS (see [`Buffered`]). The server builder's `tcp_nodelay` only applies to
/// listeners it binds itself; without this, a response's trailers (a small write after its
/// data) waited for the client's delayed ACK: 40 ms.
fn accepted(
    listener: tokio::net::TcpListener,
    tls: bool,
) -> impl tokio_stream::Stream<Item = std::io::Result<Buffered<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(move |accepted| {
        let stream = accepted?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot turn off Nagle's algorithm on a connection");
        }
        Ok(Buffered::new(stream, tls))
    })
}
