//! Starting and stopping a node: bind, open storage, serve, run background tasks, shut down.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use strata_proto::v1;

use crate::agg::Control;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::groups::Coordinator;
use crate::node::Node;
use crate::raft::service::{Groups, RaftService};
use crate::raft::{RaftEnv, RaftTuning, Router};
use crate::topics::{Topics, node_log_config};

use crate::{http, service};

/// HTTP/2 flow-control window of one stream (a request or a fetch stream).
pub const HTTP2_STREAM_WINDOW: u32 = 16 << 20;
/// HTTP/2 flow-control window of a connection.
pub const HTTP2_CONNECTION_WINDOW: u32 = 64 << 20;
/// Largest HTTP/2 frame.
pub const HTTP2_MAX_FRAME: u32 = (1 << 24) - 1;

/// Segment size of the controller's log (its entries are small commands).
const CONTROLLER_SEGMENT_BYTES: u64 = 16 << 20;
/// How often leadership is checked against the preferred replicas.
const LEADER_BALANCE: Duration = Duration::from_secs(5);
/// How often partition leaders check which aggregations should run.
const AGG_RECONCILE: Duration = Duration::from_millis(250);

/// How often silent group members are expired.
const GROUP_SWEEP: Duration = Duration::from_millis(250);

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
        );
        let tuning = RaftTuning {
            heartbeat_ms: config.raft_heartbeat_ms,
            election_min_ms: config.raft_election_timeout_ms,
            election_max_ms: config.raft_election_timeout_ms * 9 / 5,
            ..RaftTuning::default()
        };
        let raft_config = tuning
            .config("strata")
            .map_err(|e| Error::Config(format!("raft settings: {e}")))?;
        let env = RaftEnv {
            node_id: config.node_id,
            router,
            groups: Groups::default(),
            config: Arc::new(raft_config),
        };
        let log_config = node_log_config(&config)?;
        let controller_log = strata_storage::LogConfig {
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
        let topics = Arc::new(Topics::new(
            &config.data_dir,
            env.clone(),
            log_config,
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
        let node = Arc::new(Node::new(
            config,
            topics,
            groups,
            cluster.clone(),
            address,
            advertised.clone(),
            http_address,
        ));
        let (stop, _) = watch::channel(false);

        let mut servers = Vec::new();
        // Batches are large: wide HTTP/2 windows and frames save flow-control round trips.
        let grpc_server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_frame_size(HTTP2_MAX_FRAME)
            .concurrency_limit_per_connection(node.config.max_in_flight_per_connection)
            .add_routes(
                service::routes(&node).add_service(
                    v1::raft_server::RaftServer::new(RaftService::new(env.groups.clone()))
                        .max_decoding_message_size(usize::MAX)
                        .max_encoding_message_size(usize::MAX),
                ),
            )
            .serve_with_incoming_shutdown(no_delay(grpc), stopped(stop.subscribe()));
        servers.push(tokio::spawn(async move {
            if let Err(e) = grpc_server.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        }));
        if let Some(listener) = http {
            let app = http::router(node.clone());
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
        let background = vec![
            tokio::spawn(sweep_groups(node.clone())),
            tokio::spawn(apply_retention(node.clone())),
            tokio::spawn(follow_cluster(node.clone())),
            tokio::spawn({
                let cluster = cluster.clone();
                async move { cluster.register(advertised).await }
            }),
            tokio::spawn(balance_leaders(node.clone())),
            tokio::spawn(reconcile_aggregations(node.clone())),
            tokio::spawn(service::emit::emit_aggregations(node.clone())),
        ];
        tracing::info!(node_id = node.config.node_id, %address, http = ?http_address, data_dir = %node.config.data_dir.display(), "node started");
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

async fn sweep_groups(node: Arc<Node>) {
    let mut tick = tokio::time::interval(GROUP_SWEEP);
    loop {
        tick.tick().await;
        node.groups.sweep();
    }
}

async fn apply_retention(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(node.config.retention_check_ms));
    tick.tick().await; // not at startup
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for topic in node.topics.all() {
            let policy = topic.config.retention();
            if policy.max_age.is_none() && policy.max_bytes.is_none() {
                continue;
            }
            for p in &topic.partitions {
                match p.apply_retention(&policy, now).await {
                    Ok(Some(index)) => {
                        tracing::info!(topic = %topic.name, partition = p.id(), index, "retention purged old segments")
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = p.id(), error = %e, "retention failed")
                    }
                }
            }
        }
    }
}

/// Opens and closes partition replicas as the controller creates and deletes topics.
async fn follow_cluster(node: Arc<Node>) {
    let mut state = node.cluster.state();
    loop {
        if state.changed().await.is_err() {
            return;
        }
        if let Err(e) = node.topics.reconcile().await {
            tracing::error!(error = %e, "following the cluster state failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            state.mark_changed();
        }
    }
}

/// Starts and stops aggregations in the partitions this node leads: each start or stop is a
/// control record in the partition's log, so every replica folds from the same offset.
async fn reconcile_aggregations(node: Arc<Node>) {
    let mut tick = tokio::time::interval(AGG_RECONCILE);
    loop {
        tick.tick().await;
        let cluster = node.cluster.state().borrow().clone();
        for topic in node.topics.all() {
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
}

/// Hands leadership of each partition this node leads back to its preferred leader (the
/// first replica) once that replica has caught up, so that leaders stay spread evenly.
async fn balance_leaders(node: Arc<Node>) {
    use openraft::async_runtime::WatchReceiver;
    let mut tick = tokio::time::interval(LEADER_BALANCE);
    tick.tick().await;
    loop {
        tick.tick().await;
        let me = node.config.node_id;
        for topic in node.topics.all() {
            for p in &topic.partitions {
                let Some(&preferred) = p.replicas().first() else {
                    continue;
                };
                if preferred == me || !p.is_leader() {
                    continue;
                }
                let caught_up = {
                    let m = p.raft().metrics();
                    let m = m.borrow_watched();
                    let last = m.last_log_index;
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&preferred).cloned())
                        .flatten()
                        .is_some_and(|matched| Some(matched.index) == last)
                };
                if caught_up {
                    tracing::info!(topic = %topic.name, partition = p.id(), to = preferred, "moving leadership to the preferred replica");
                    let _ = p.raft().trigger().transfer_leader(preferred).await;
                }
            }
        }
    }
}

/// The connections accepted on `listener`, with Nagle's algorithm off. The server builder's
/// `tcp_nodelay` only applies to listeners it binds itself; without this, a response's
/// trailers (a small write after its data) waited for the client's delayed ACK: 40 ms.
fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::debug!(error = %e, "cannot turn off Nagle's algorithm on a connection");
        }
        accepted
    })
}
