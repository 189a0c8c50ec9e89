//! Starting and stopping a node: bind, open storage, serve, run background tasks, shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::groups::Coordinator;
use crate::node::Node;
use crate::topics::{Topics, node_log_config};
use crate::{http, service};

/// HTTP/2 flow-control window of one stream (a request or a fetch stream).
pub const HTTP2_STREAM_WINDOW: u32 = 16 << 20;
/// HTTP/2 flow-control window of a connection.
pub const HTTP2_CONNECTION_WINDOW: u32 = 64 << 20;
/// Largest HTTP/2 frame.
pub const HTTP2_MAX_FRAME: u32 = (1 << 24) - 1;

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

        let opened = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || -> Result<(Arc<Topics>, Coordinator)> {
                std::fs::create_dir_all(&config.data_dir)
                    .map_err(|e| Error::io(&config.data_dir, e))?;
                let topics = Arc::new(Topics::open(
                    &config.data_dir,
                    config.node_id,
                    node_log_config(&config)?,
                )?);
                let bounds = (
                    Duration::from_millis(config.group_min_session_timeout_ms),
                    Duration::from_millis(config.group_max_session_timeout_ms),
                );
                let groups = Coordinator::open(&config.data_dir, topics.clone(), bounds)?;
                Ok((topics, groups))
            })
            .await
            .map_err(|e| Error::Unavailable(format!("startup task failed: {e}")))??
        };
        let (topics, groups) = opened;
        let node = Arc::new(Node::new(config, topics, groups, address, http_address));
        let (stop, _) = watch::channel(false);

        let mut servers = Vec::new();
        // Batches are large: wide HTTP/2 windows and frames save flow-control round trips.
        let grpc_server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_frame_size(HTTP2_MAX_FRAME)
            .concurrency_limit_per_connection(node.config.max_in_flight_per_connection)
            .add_routes(service::routes(&node))
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), stopped(stop.subscribe()));
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
        let topics = self.node.topics.clone();
        tokio::task::spawn_blocking(move || topics.close_all())
            .await
            .map_err(|e| Error::Unavailable(format!("shutdown task failed: {e}")))??;
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
        let topics = node.topics.clone();
        let done = tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            for topic in topics.all() {
                let policy = topic.config.retention();
                if policy.max_age.is_none() && policy.max_bytes.is_none() {
                    continue;
                }
                for p in &topic.partitions {
                    match p.apply_retention(&policy, now) {
                        Ok(Some(index)) => tracing::info!(topic = %topic.name, partition = p.id(), index, "retention purged old segments"),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(topic = %topic.name, partition = p.id(), error = %e, "retention failed"),
                    }
                }
            }
        })
        .await;
        if done.is_err() {
            return;
        }
    }
}
