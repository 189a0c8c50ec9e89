//! Node configuration: defaults, a TOML file, validation.
//!
//! The binary layers command-line flags and `STRATA_*` environment variables over a TOML
//! file over these defaults; tests and `strata dev` build a [`Config`] directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_storage::FsyncPolicy;

use crate::error::{Error, Result};

/// When the node syncs appended data: `always` (default; an acknowledged append is on disk),
/// `never`, or an interval such as `100ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fsync(pub FsyncPolicy);

impl FromStr for Fsync {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(Fsync(FsyncPolicy::Always)),
            "never" => Ok(Fsync(FsyncPolicy::Never)),
            other => humantime::parse_duration(other)
                .ok()
                .filter(|d| !d.is_zero())
                .map(|d| Fsync(FsyncPolicy::Interval(d)))
                .ok_or_else(|| {
                    format!(
                        "fsync must be `always`, `never` or an interval like `100ms`, not `{other}`"
                    )
                }),
        }
    }
}

impl TryFrom<String> for Fsync {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<Fsync> for String {
    fn from(f: Fsync) -> String {
        f.to_string()
    }
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "{}", humantime::format_duration(d)),
        }
    }
}

/// Whether clients must log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every call needs a token from `Access.Login`; ACLs apply.
    Required,
    /// No login; every caller may do everything.
    Off,
}

impl FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "required" => Ok(AuthMode::Required),
            "off" => Ok(AuthMode::Off),
            other => Err(format!("auth must be `required` or `off`, not `{other}`")),
        }
    }
}

/// The nodes of a cluster: node id → address of its peer listener, written `1=host:port,2=host:port,...`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Peers(pub BTreeMap<u64, String>);

impl std::ops::Deref for Peers {
    type Target = BTreeMap<u64, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl FromStr for Peers {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut peers = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, address) = part
                .split_once('=')
                .ok_or_else(|| format!("peer `{part}` is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("peer `{part}`: `{id}` is not a node id"))?;
            let address = address.trim();
            if address.is_empty() || !address.contains(':') {
                return Err(format!("peer `{part}`: `{address}` is not HOST:PORT"));
            }
            if peers.insert(id, address.to_string()).is_some() {
                return Err(format!("node {id} is listed twice"));
            }
        }
        Ok(Peers(peers))
    }
}

impl TryFrom<String> for Peers {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<Peers> for String {
    fn from(p: Peers) -> String {
        p.to_string()
    }
}

impl std::fmt::Display for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(id, a)| format!("{id}={a}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// Everything a node needs to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id in its cluster.
    pub node_id: u64,
    /// gRPC address to listen on for clients (port 0 picks a free port).
    pub listen: SocketAddr,
    /// TLS certificate (chain, PEM) of the client listener; with `tls_key`, clients must
    /// connect with TLS.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Lets the client listener serve plain text, or without authentication, on a
    /// non-loopback address.
    pub insecure_clients: bool,
    /// Whether clients must log in; none: required unless the client listener is on
    /// loopback.
    pub auth: Option<AuthMode>,
    /// Users no ACL applies to.
    pub superusers: Vec<String>,
    /// A file holding the password of the first superuser, who is created with it if it does
    /// not exist (never changed afterwards).
    pub bootstrap_password_file: Option<PathBuf>,
    /// How long a login token lives (ms).
    pub token_ttl_ms: u64,
    /// Address of the peer listener, where other nodes send Raft and node-to-node calls
    /// (port 0 picks a free port). The client listener serves no peer call.
    pub peer_listen: SocketAddr,
    /// TLS of the peer listener and of connections to peers (mutual: each node presents a
    /// certificate from the cluster CA naming it). None: peer traffic is plain, which a
    /// multi-node cluster allows only on loopback or with `insecure_peers`.
    pub peer_tls: Option<crate::tls::TlsFiles>,
    /// Lets a multi-node cluster on non-loopback addresses run without peer TLS.
    pub insecure_peers: bool,
    /// Operator HTTP address (`/health`, `/metrics`); none to serve no HTTP.
    pub http: Option<SocketAddr>,
    /// Where topics, partitions and group offsets live.
    pub data_dir: PathBuf,
    /// Durability of appends.
    pub fsync: Fsync,
    /// Size of a partition's segment files.
    pub segment_bytes: u64,
    /// Largest record batch accepted.
    pub max_batch_bytes: u32,
    /// Largest gRPC request accepted (a produce request may carry several batches).
    pub max_request_bytes: u32,
    /// Requests a single connection may have in flight; more wait.
    pub max_in_flight_per_connection: usize,
    /// Request bytes all client calls of the node may hold at once; a call past it is refused
    /// (retriable) until others answer.
    pub max_in_flight_request_bytes: u64,
    /// How long a produce waits for durability before answering TIMEOUT, by default.
    pub produce_timeout_ms: u64,
    /// How far (ms) a produced record's timestamp may be ahead of the broker's clock.
    pub max_timestamp_ahead_ms: u64,
    /// How far (ms) a produced record's timestamp may be behind the broker's clock (none:
    /// any past time).
    pub max_timestamp_behind_ms: Option<u64>,
    /// How often retention runs.
    pub retention_check_ms: u64,
    /// Most partition replicas one node holds: a topic whose replicas would take a node
    /// past it is refused before anything is allocated.
    pub max_partitions_per_node: u32,
    /// Most topics in the cluster.
    pub max_topics: u32,
    /// Most aggregations on one topic (each folds every record produced to it).
    pub max_aggregations_per_topic: u32,
    /// How long (ms) an idempotent producer may be idle before a partition forgets it, as
    /// Kafka's `producer.id.expiration.ms`; measured on the partition's record timestamps, so
    /// set it alike on every node.
    pub producer_expiry_ms: u64,
    /// HTTP/2 streams (concurrent calls) one client connection may open.
    pub max_streams_per_connection: u32,
    /// Bounds on consumer-group session time-outs.
    pub group_min_session_timeout_ms: u64,
    /// Bounds on consumer-group session time-outs.
    pub group_max_session_timeout_ms: u64,
    /// The cluster: node id → address of its peer listener. Empty for a single-node
    /// cluster; otherwise it lists this node too (its entry is not used for routing).
    pub peers: Peers,
    /// The client address this node announces (default: the bound gRPC address).
    pub advertise: Option<String>,
    /// Raft heartbeat interval (ms).
    pub raft_heartbeat_ms: u64,
    /// Raft election time-out, lower bound (ms); the upper bound is 1.8× this.
    pub raft_election_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            tls_cert: None,
            tls_key: None,
            insecure_clients: false,
            auth: None,
            superusers: Vec::new(),
            bootstrap_password_file: None,
            token_ttl_ms: 3_600_000,
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 7201)),
            peer_tls: None,
            insecure_peers: false,
            http: Some(SocketAddr::from(([127, 0, 0, 1], 7101))),
            data_dir: PathBuf::from("strata-data"),
            fsync: Fsync(FsyncPolicy::Always),
            segment_bytes: 128 << 20,
            max_batch_bytes: 8 << 20,
            max_request_bytes: 64 << 20,
            max_in_flight_per_connection: 256,
            max_in_flight_request_bytes: 256 << 20,
            produce_timeout_ms: 30_000,
            max_timestamp_ahead_ms: 3_600_000,
            max_timestamp_behind_ms: None,
            retention_check_ms: 60_000,
            max_partitions_per_node: 2_000,
            max_topics: 1_000,
            max_aggregations_per_topic: 32,
            producer_expiry_ms: 86_400_000,
            max_streams_per_connection: 1_024,
            group_min_session_timeout_ms: 1_000,
            group_max_session_timeout_ms: 300_000,
            peers: Peers::default(),
            advertise: None,
            raft_heartbeat_ms: 100,
            raft_election_timeout_ms: 300,
        }
    }
}

impl Config {
    /// Reads a TOML file; keys not in the file keep their defaults.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Checks the values; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.max_batch_bytes < 1024 {
            return fail(format!(
                "max_batch_bytes {} is below 1 KiB",
                self.max_batch_bytes
            ));
        }
        if u64::from(self.max_batch_bytes) + 4096 > self.segment_bytes {
            return fail(format!(
                "max_batch_bytes {} does not fit segment_bytes {}",
                self.max_batch_bytes, self.segment_bytes
            ));
        }
        if self.max_request_bytes < self.max_batch_bytes {
            return fail(format!(
                "max_request_bytes {} is below max_batch_bytes {}",
                self.max_request_bytes, self.max_batch_bytes
            ));
        }
        if self.max_in_flight_request_bytes < u64::from(self.max_request_bytes) {
            return fail(format!(
                "max_in_flight_request_bytes {} is below max_request_bytes {}",
                self.max_in_flight_request_bytes, self.max_request_bytes
            ));
        }
        if self.max_in_flight_per_connection == 0
            || self.max_streams_per_connection == 0
            || self.max_aggregations_per_topic == 0
            || self.producer_expiry_ms == 0
        {
            return fail(
                "max_in_flight_per_connection, max_streams_per_connection, \
                 max_aggregations_per_topic and producer_expiry_ms must be at least 1"
                    .into(),
            );
        }
        if self.group_min_session_timeout_ms > self.group_max_session_timeout_ms {
            return fail(
                "group_min_session_timeout_ms exceeds group_max_session_timeout_ms".into(),
            );
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.node_id) {
            return fail(format!(
                "peers must include this node's id {} (peers: {:?})",
                self.node_id,
                self.peers.keys().collect::<Vec<_>>()
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return fail("tls_cert and tls_key go together".into());
        }
        if self.tls_cert.is_none() && !self.insecure_clients && !self.listen.ip().is_loopback() {
            return fail(format!(
                "the client listener {} is not a loopback address: give it TLS (tls_cert and \
                 tls_key, or --tls-cert/--tls-key), or an explicit insecure_clients \
                 (--insecure-clients)",
                self.listen
            ));
        }
        if !self.auth_required() && !self.insecure_clients && !self.listen.ip().is_loopback() {
            return fail(format!(
                "the client listener {} is not a loopback address: clients must log in there \
                 (auth = required), or give an explicit insecure_clients (--insecure-clients)",
                self.listen
            ));
        }
        for user in &self.superusers {
            crate::names::validate(user).map_err(|e| Error::Config(format!("superuser: {e}")))?;
        }
        if self.bootstrap_password_file.is_some() && self.superusers.is_empty() {
            return fail("bootstrap_password_file needs a superuser to create".into());
        }
        if self.token_ttl_ms < 1_000 {
            return fail("token_ttl_ms must be at least 1000".into());
        }
        if self.peers.len() > 1 && self.peer_tls.is_none() && !self.insecure_peers {
            let exposed = std::iter::once(self.peer_listen.to_string())
                .chain(self.peers.values().cloned())
                .find(|address| !is_loopback(address));
            if let Some(address) = exposed {
                return fail(format!(
                    "peer address {address} is not a loopback address: a multi-node cluster \
                     needs peer TLS there (peer_tls, or --peer-tls-ca/--peer-tls-cert/\
                     --peer-tls-key), or an explicit insecure_peers (--insecure-peers)"
                ));
            }
        }
        if self.raft_heartbeat_ms == 0 || self.raft_election_timeout_ms <= self.raft_heartbeat_ms {
            return fail("raft_election_timeout_ms must exceed raft_heartbeat_ms > 0".into());
        }
        if self.retention_check_ms == 0 || self.produce_timeout_ms == 0 {
            return fail("retention_check_ms and produce_timeout_ms must be positive".into());
        }
        self.log_config(None)
            .validate()
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The storage configuration of this node's partitions.
    pub(crate) fn log_config(
        &self,
        flusher: Option<strata_storage::Flusher>,
    ) -> strata_storage::LogConfig {
        strata_storage::LogConfig {
            segment_bytes: self.segment_bytes,
            max_entry_bytes: u64::from(self.max_batch_bytes) + 64,
            fsync: self.fsync.0,
            flusher,
            ..strata_storage::LogConfig::default()
        }
    }

    /// Whether clients must log in (by default: unless the client listener is on loopback).
    pub fn auth_required(&self) -> bool {
        match self.auth {
            Some(mode) => mode == AuthMode::Required,
            None => !self.listen.ip().is_loopback(),
        }
    }

    /// The nodes a peer certificate may name: every listed peer, or this node alone.
    pub(crate) fn members(&self) -> Vec<u64> {
        if self.peers.is_empty() {
            vec![self.node_id]
        } else {
            self.peers.keys().copied().collect()
        }
    }

    pub(crate) fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.produce_timeout_ms)
    }
}

/// Whether `address` (`host:port`) is on loopback: an IP address that is, or `localhost`.
fn is_loopback(address: &str) -> bool {
    match address.parse::<SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => address
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_parses_and_prints() {
        assert_eq!("always".parse::<Fsync>().unwrap().0, FsyncPolicy::Always);
        assert_eq!("never".parse::<Fsync>().unwrap().0, FsyncPolicy::Never);
        assert_eq!(
            "100ms".parse::<Fsync>().unwrap().0,
            FsyncPolicy::Interval(Duration::from_millis(100))
        );
        assert!("0s".parse::<Fsync>().is_err());
        assert!("sometimes".parse::<Fsync>().is_err());
        assert_eq!("250ms".parse::<Fsync>().unwrap().to_string(), "250ms");
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let config: Config =
            toml::from_str("node_id = 3\nfsync = \"never\"\nlisten = \"127.0.0.1:9000\"").unwrap();
        assert_eq!(config.node_id, 3);
        assert_eq!(config.fsync.0, FsyncPolicy::Never);
        assert_eq!(config.segment_bytes, Config::default().segment_bytes);
        assert!(toml::from_str::<Config>("nodeid = 3").is_err());
        config.validate().unwrap();
        let bad = Config {
            max_batch_bytes: 10,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn exposed_peers_need_tls_or_an_explicit_insecure_flag() {
        let on = |addresses: &str, insecure: bool| Config {
            peers: addresses.parse().unwrap(),
            insecure_peers: insecure,
            ..Config::default()
        };
        let loopback = on("1=127.0.0.1:7201,2=localhost:7202,3=[::1]:7203", false);
        loopback.validate().unwrap();
        let exposed = on("1=127.0.0.1:7201,2=10.0.0.2:7201,3=db3:7201", false);
        let err = exposed.validate().unwrap_err().to_string();
        assert!(
            err.contains("10.0.0.2:7201") && err.contains("insecure"),
            "{err}"
        );
        on("1=127.0.0.1:7201,2=10.0.0.2:7201", true)
            .validate()
            .unwrap();
        let listening_wide = Config {
            peer_listen: "0.0.0.0:7201".parse().unwrap(),
            ..loopback
        };
        assert!(listening_wide.validate().is_err());
        let single = Config {
            peer_listen: "0.0.0.0:7201".parse().unwrap(),
            ..Config::default()
        };
        single.validate().unwrap();
    }

    #[test]
    fn an_exposed_client_listener_needs_tls_or_an_explicit_insecure_flag() {
        let exposed = Config {
            listen: "0.0.0.0:7001".parse().unwrap(),
            ..Config::default()
        };
        let err = exposed.validate().unwrap_err().to_string();
        assert!(
            err.contains("0.0.0.0:7001") && err.contains("tls_cert"),
            "{err}"
        );
        Config {
            insecure_clients: true,
            ..exposed.clone()
        }
        .validate()
        .unwrap();
        let with_tls = Config {
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            ..exposed.clone()
        };
        with_tls.validate().unwrap();
        let half = Config {
            tls_key: None,
            ..with_tls
        };
        assert!(half.validate().is_err());
    }
}
