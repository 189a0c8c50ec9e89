//! `strata-broker`: runs one Strata node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use strata_broker::config::Peers;
use strata_broker::{Config, Fsync, process};

/// Runs one Strata node until SIGINT or SIGTERM, then shuts it down cleanly (requests in
/// flight finish, every log is flushed and closed).
#[derive(Debug, Parser)]
#[command(
    name = "strata-broker",
    version,
    long_about = "Runs one Strata node until SIGINT or SIGTERM, then shuts it down cleanly.\n\n\
Settings come from, in increasing precedence: built-in defaults, the TOML file given with \
--config (keys named like the long flags, with underscores: node_id, listen, peer_listen, http, data_dir, \
fsync, segment_bytes, max_batch_bytes, max_request_bytes, max_in_flight_per_connection, \
max_in_flight_request_bytes, \
produce_timeout_ms, max_timestamp_ahead_ms, max_timestamp_behind_ms, retention_check_ms, \
max_partitions_per_node, max_topics, max_aggregations_per_topic, producer_expiry_ms, max_streams_per_connection, \
group_min_session_timeout_ms, \
group_max_session_timeout_ms, peers, advertise, raft_heartbeat_ms, \
raft_election_timeout_ms, tls_cert, tls_key, insecure_clients, auth, superusers, \
bootstrap_password_file, token_ttl_ms, insecure_peers, and a [peer_tls] table with ca, cert and key), STRATA_* \
environment variables, and flags.\n\n\
Clients use --listen; other nodes use --peer-listen (Raft and node-to-node calls), which --peers \
lists for every node. With --peer-tls-* the peer listener takes only connections presenting a \
certificate from that CA naming a member (DNS name node-<id>.strata); a multi-node cluster on \
non-loopback addresses refuses to start without peer TLS unless --insecure-peers is given. \
Likewise a non-loopback --listen needs --tls-cert/--tls-key and --auth required, or \
--insecure-clients. With --auth required, clients log in (Access.Login) with a user's \
password and send the token; --superusers and --bootstrap-password-file create the first \
user; `strata user` and `strata acl` manage the rest.\n\n\
Logging follows STRATA_LOG (or RUST_LOG), e.g. STRATA_LOG=debug."
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Node id.
    #[arg(long = "id", env = "STRATA_NODE_ID")]
    node_id: Option<u64>,
    /// gRPC listen address for clients.
    #[arg(long, env = "STRATA_LISTEN")]
    listen: Option<SocketAddr>,
    /// TLS certificate (PEM) of the client listener; clients then connect with TLS.
    #[arg(long, env = "STRATA_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "STRATA_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve clients in plain text on a non-loopback --listen address.
    #[arg(long, env = "STRATA_INSECURE_CLIENTS")]
    insecure_clients: bool,
    /// Whether clients must log in: required or off (default: required unless --listen is
    /// on loopback).
    #[arg(long, env = "STRATA_AUTH")]
    auth: Option<strata_broker::config::AuthMode>,
    /// Users no ACL applies to (comma-separated).
    #[arg(long, env = "STRATA_SUPERUSERS", value_delimiter = ',')]
    superusers: Vec<String>,
    /// A file with the password of the first superuser, created with it if it does not exist.
    #[arg(long, env = "STRATA_BOOTSTRAP_PASSWORD_FILE")]
    bootstrap_password_file: Option<PathBuf>,
    /// Listen address for other nodes (Raft, node-to-node calls).
    #[arg(long, env = "STRATA_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// The cluster CA's certificate (PEM), for mutual TLS between nodes.
    #[arg(long, env = "STRATA_PEER_TLS_CA", requires_all = ["peer_tls_cert", "peer_tls_key"])]
    peer_tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), naming it as node-<id>.strata.
    #[arg(long, env = "STRATA_PEER_TLS_CERT", requires_all = ["peer_tls_ca", "peer_tls_key"])]
    peer_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "STRATA_PEER_TLS_KEY", requires_all = ["peer_tls_ca", "peer_tls_cert"])]
    peer_tls_key: Option<PathBuf>,
    /// Run a multi-node cluster on non-loopback addresses without peer TLS.
    #[arg(long, env = "STRATA_INSECURE_PEERS")]
    insecure_peers: bool,
    /// Operator HTTP address (/health, /metrics); `off` to serve none.
    #[arg(long, env = "STRATA_HTTP")]
    http: Option<String>,
    /// Data directory.
    #[arg(long, env = "STRATA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Durability: always, never, or an interval such as 100ms.
    #[arg(long, env = "STRATA_FSYNC")]
    fsync: Option<Fsync>,
    /// Segment file size in bytes.
    #[arg(long, env = "STRATA_SEGMENT_BYTES")]
    segment_bytes: Option<u64>,
    /// Largest record batch accepted, in bytes.
    #[arg(long, env = "STRATA_MAX_BATCH_BYTES")]
    max_batch_bytes: Option<u32>,
    /// Every node of the cluster, this one included, by its peer listener:
    /// `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`. Omitted: a single-node cluster.
    #[arg(long, env = "STRATA_PEERS")]
    peers: Option<Peers>,
    /// The address clients should use for this node (default: the listen address).
    #[arg(long, env = "STRATA_ADVERTISE")]
    advertise: Option<String>,
}

/// mimalloc keeps freed memory for reuse: glibc returns large request buffers to the kernel
/// and takes fresh zeroed pages back for the next request, which cost the broker about 40%
/// of its CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    process::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    process::init_logging("info");
    let mut config = match &args.config {
        Some(path) => Config::from_toml_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
    }
    if args.insecure_clients {
        config.insecure_clients = true;
    }
    if let Some(v) = args.auth {
        config.auth = Some(v);
    }
    if !args.superusers.is_empty() {
        config.superusers = args.superusers;
    }
    if let Some(v) = args.bootstrap_password_file {
        config.bootstrap_password_file = Some(v);
    }
    if let Some(v) = args.peer_listen {
        config.peer_listen = v;
    }
    if let (Some(ca), Some(cert), Some(key)) =
        (args.peer_tls_ca, args.peer_tls_cert, args.peer_tls_key)
    {
        config.peer_tls = Some(strata_broker::tls::TlsFiles { ca, cert, key });
    }
    if args.insecure_peers {
        config.insecure_peers = true;
    }
    if let Some(v) = &args.http {
        config.http = if v == "off" {
            None
        } else {
            Some(v.parse().with_context(|| format!("--http {v}"))?)
        };
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.fsync {
        config.fsync = v;
    }
    if let Some(v) = args.segment_bytes {
        config.segment_bytes = v;
    }
    if let Some(v) = args.max_batch_bytes {
        config.max_batch_bytes = v;
    }
    if let Some(v) = args.peers {
        config.peers = v;
    }
    if let Some(v) = args.advertise {
        config.advertise = Some(v);
    }
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(strata_broker::run(config, process::shutdown_signal()))?;
    Ok(())
}
