//! The cluster connection: bootstrap, metadata cache, channels to brokers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use strata_proto::v1;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::admin::Admin;
use crate::consumer::ConsumerBuilder;
use crate::error::{Error, Result, from_status};
use crate::producer::ProducerBuilder;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time limit of a request (fetch streams are not limited).
    pub request_timeout: Duration,
    /// Largest gRPC message sent or received.
    pub max_message_bytes: usize,
    /// Name of this client, shown in group descriptions.
    pub client_id: String,
    /// TLS to the brokers' client listeners; none: plain text.
    pub tls: Option<ClientTls>,
    /// A user and password to log in with (send them over TLS); none: no login.
    pub credentials: Option<Credentials>,
}

/// A user and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The transport of every call: a channel whose requests carry the login token, if any.
pub(crate) type Transport = InterceptedService<Channel, TokenHeader>;

/// Puts the current token in each request's `authorization` header.
#[derive(Clone, Default)]
pub(crate) struct TokenHeader {
    token: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

impl Interceptor for TokenHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.token.read().unwrap_or_else(|p| p.into_inner()).clone() {
            request.metadata_mut().insert("authorization", token);
        }
        Ok(request)
    }
}

/// TLS settings of a client.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA certificate(s) that signed the brokers' certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// The name to verify in every broker's certificate; none: the host of the address
    /// connected to.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// TLS trusting the CA in the PEM file at `path`.
    pub fn from_ca_file(path: &std::path::Path) -> Result<ClientTls> {
        let ca_pem = std::fs::read(path).map_err(|e| {
            Error::InvalidConfig(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        Ok(ClientTls {
            ca_pem,
            domain: None,
        })
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_message_bytes: 64 << 20,
            client_id: "strata-client".to_string(),
            tls: None,
            credentials: None,
        }
    }
}

/// What the client knows of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicInfo {
    /// Its name, shared by everything that refers to the topic.
    pub name: Arc<str>,
    /// The leader of each partition.
    pub leaders: Vec<u64>,
}

#[derive(Debug, Default)]
struct Cluster {
    nodes: HashMap<u64, String>,
    topics: HashMap<String, Arc<TopicInfo>>,
    /// The last broker that answered a metadata request: requests any node can answer go
    /// there first.
    last_good: Option<String>,
    /// The node coordinating consumer groups (the controller's leader), when known.
    coordinator: Option<u64>,
}

/// A connection to a Strata cluster. Cheap to clone; clones share connections and metadata.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.bootstrap)
            .finish_non_exhaustive()
    }
}

struct Inner {
    bootstrap: Vec<String>,
    config: ClientConfig,
    token: TokenHeader,
    channels: Mutex<HashMap<String, Channel>>,
    cluster: RwLock<Cluster>,
}

impl Client {
    /// Connects to a cluster through any of the brokers in `bootstrap` (`host:port`, several
    /// separated by commas) and loads its metadata.
    pub async fn connect(bootstrap: &str) -> Result<Client> {
        Self::connect_with(bootstrap, ClientConfig::default()).await
    }

    /// Like [`Self::connect`], with settings.
    pub async fn connect_with(bootstrap: &str, config: ClientConfig) -> Result<Client> {
        let bootstrap: Vec<String> = bootstrap
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if bootstrap.is_empty() {
            return Err(Error::InvalidConfig("no bootstrap address".into()));
        }
        let client = Client {
            inner: Arc::new(Inner {
                bootstrap,
                config,
                token: TokenHeader::default(),
                channels: Mutex::new(HashMap::new()),
                cluster: RwLock::new(Cluster::default()),
            }),
        };
        if client.inner.config.credentials.is_some()
            && let Some(expires_ms) = client.login().await?
        {
            tokio::spawn(renew_login(Arc::downgrade(&client.inner), expires_ms));
        }
        client.refresh(&[]).await?;
        Ok(client)
    }

    /// Logs in with the configured credentials through any broker; the token's expiry, or
    /// `None` when the cluster requires no login (the credentials are then not needed).
    async fn login(&self) -> Result<Option<i64>> {
        let Some(credentials) = &self.inner.config.credentials else {
            return Ok(None);
        };
        let mut last = Error::InvalidConfig("no broker known".into());
        for address in self.candidates() {
            let mut rpc = v1::access_client::AccessClient::new(self.channel(&address)?);
            let mut request = tonic::Request::new(v1::LoginRequest {
                user: credentials.user.clone(),
                password: credentials.password.clone(),
            });
            request.set_timeout(self.inner.config.request_timeout);
            match rpc.login(request).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let header = format!("Bearer {}", answer.token)
                        .parse::<MetadataValue<Ascii>>()
                        .map_err(|e| Error::InvalidConfig(format!("unusable token: {e}")))?;
                    *self
                        .inner
                        .token
                        .token
                        .write()
                        .unwrap_or_else(|p| p.into_inner()) = Some(header);
                    return Ok(Some(answer.expires_ms));
                }
                Err(status) => {
                    let e = from_status(status);
                    if e.code() == Some(crate::ErrorCode::InvalidArgument) {
                        // "this cluster requires no login"
                        return Ok(None);
                    }
                    if !e.is_retriable() {
                        return Err(e);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Starts building a producer.
    pub fn producer(&self) -> ProducerBuilder {
        ProducerBuilder::new(self.clone())
    }

    /// Starts building a consumer.
    pub fn consumer(&self) -> ConsumerBuilder {
        ConsumerBuilder::new(self.clone())
    }

    /// Topic and group administration.
    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// Windowed aggregations: define, query, watch.
    pub fn aggregations(&self) -> crate::Aggregations {
        crate::Aggregations::new(self.clone())
    }

    /// Users and ACL rules.
    pub fn access(&self) -> crate::Access {
        crate::Access::new(self.clone())
    }

    /// The search API.
    pub fn search(&self) -> crate::Search {
        crate::Search::new(self.clone())
    }

    /// A channel to `address` (connected lazily, then kept), carrying the login token.
    pub(crate) fn channel(&self, address: &str) -> Result<Transport> {
        let transport = |c: Channel| InterceptedService::new(c, self.inner.token.clone());
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(transport(channel.clone()));
        }
        let bad = |e: tonic::transport::Error| {
            Error::InvalidConfig(format!("cannot set up a connection to `{address}`: {e}"))
        };
        let scheme = if self.inner.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}")).map_err(bad)?;
        if let Some(tls) = &self.inner.config.tls {
            let mut settings =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some(domain) = &tls.domain {
                settings = settings.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(settings).map_err(bad)?;
        }
        let endpoint = endpoint
            .connect_timeout(self.inner.config.connect_timeout)
            .tcp_nodelay(true)
            // Batches are large: wide HTTP/2 windows and frames save flow-control round trips.
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(64 << 20)
            .max_frame_size((1 << 24) - 1)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_with_connector_lazy(strata_proto::transport::Connector {
            tls: self.inner.config.tls.is_some(),
        });
        channels.insert(address.to_string(), channel.clone());
        Ok(transport(channel))
    }

    /// Addresses to ask for metadata: the last broker that answered, the known nodes, then
    /// the bootstrap list.
    fn candidates(&self) -> Vec<String> {
        let cluster = self.inner.cluster.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = cluster.nodes.values().cloned().collect();
        out.sort();
        if let Some(good) = &cluster.last_good {
            out.retain(|a| a != good);
            out.insert(0, good.clone());
        }
        for b in &self.inner.bootstrap {
            if !out.contains(b) {
                out.push(b.clone());
            }
        }
        out
    }

    /// Any reachable broker's channel (for requests any node can answer).
    pub(crate) fn any_channel(&self) -> Result<Transport> {
        let first = self
            .candidates()
            .into_iter()
            .next()
            .ok_or_else(|| Error::InvalidConfig("no broker known".into()))?;
        self.channel(&first)
    }

    /// Reloads metadata for `topics` (all topics if empty).
    pub(crate) async fn refresh(&self, topics: &[String]) -> Result<()> {
        let mut last = String::new();
        for address in self.candidates() {
            let channel = self.channel(&address)?;
            let mut rpc = v1::metadata_client::MetadataClient::new(channel);
            let mut request = tonic::Request::new(v1::MetadataRequest {
                topics: topics.to_vec(),
            });
            request.set_timeout(self.inner.config.request_timeout);
            match rpc.get_metadata(request).await {
                Ok(response) => {
                    self.apply(response.into_inner(), topics.is_empty());
                    self.inner
                        .cluster
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .last_good = Some(address);
                    return Ok(());
                }
                Err(status) => {
                    let e = from_status(status);
                    if !e.is_retriable() {
                        return Err(e); // e.g. an unknown topic: every broker says the same
                    }
                    last = match &e {
                        Error::Rpc(status) => readable(status),
                        other => other.to_string(),
                    };
                }
            }
        }
        Err(Error::Connect {
            bootstrap: self.inner.bootstrap.clone(),
            message: last,
        })
    }

    fn apply(&self, metadata: v1::MetadataResponse, all: bool) {
        let mut cluster = self
            .inner
            .cluster
            .write()
            .unwrap_or_else(|p| p.into_inner());
        cluster.nodes = metadata
            .nodes
            .into_iter()
            .map(|n| (n.id, n.address))
            .collect();
        cluster.coordinator = (metadata.controller_id != 0).then_some(metadata.controller_id);
        if all {
            cluster.topics.clear();
        }
        for t in metadata.topics {
            let mut leaders = vec![0; t.partitions.len()];
            for p in &t.partitions {
                if let Some(slot) = leaders.get_mut(p.partition as usize) {
                    *slot = p.leader;
                }
            }
            let info = TopicInfo {
                name: Arc::from(t.name.as_str()),
                leaders,
            };
            cluster.topics.insert(t.name, Arc::new(info));
        }
    }

    /// A topic's partitions and leaders, from the cache or the cluster.
    pub(crate) async fn topic(&self, name: &str) -> Result<Arc<TopicInfo>> {
        if let Some(t) = self
            .inner
            .cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .topics
            .get(name)
        {
            return Ok(t.clone());
        }
        self.refresh(&[name.to_string()]).await?;
        self.inner
            .cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| Error::InvalidConfig(format!("no metadata for topic `{name}`")))
    }

    /// Forgets a topic's metadata (after a not-leader answer or a failure), so the next use
    /// reloads it.
    pub(crate) fn invalidate(&self, topic: &str) {
        self.inner
            .cluster
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .topics
            .remove(topic);
    }

    /// The cluster's nodes from fresh metadata: (id, client address), by id.
    pub(crate) async fn nodes(&self) -> Result<Vec<(u64, String)>> {
        self.refresh(&[]).await?;
        let mut nodes: Vec<(u64, String)> = self
            .inner
            .cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        nodes.sort();
        Ok(nodes)
    }

    /// Records a leader hint from a NOT_LEADER answer, so the next request for the partition
    /// goes to that node.
    pub(crate) fn note_leader(
        &self,
        topic: &str,
        partition: u32,
        leader: u64,
        address: Option<&str>,
    ) {
        let mut cluster = self
            .inner
            .cluster
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(address) = address {
            cluster.nodes.insert(leader, address.to_string());
        }
        if let Some(info) = cluster.topics.get(topic)
            && let Some(current) = info.leaders.get(partition as usize)
            && *current != leader
        {
            let mut updated = (**info).clone();
            updated.leaders[partition as usize] = leader;
            cluster.topics.insert(topic.to_string(), Arc::new(updated));
        }
    }

    /// Follows a NOT_LEADER answer's hint, or forgets the topic's metadata so that the next
    /// use reloads it.
    pub(crate) fn on_error(&self, topic: &str, partition: u32, error: &Error) {
        match error {
            Error::Broker(b) if b.leader_hint.is_some() => self.note_leader(
                topic,
                partition,
                b.leader_hint.unwrap_or_default(),
                b.leader_address.as_deref(),
            ),
            _ => self.invalidate(topic),
        }
    }

    /// The channel to the node coordinating consumer groups (the controller's leader),
    /// from metadata; any broker if none is known yet (it answers with a hint).
    pub(crate) async fn coordinator_channel(&self) -> Result<Transport> {
        let known = |c: &Self| {
            let cluster = c.inner.cluster.read().unwrap_or_else(|p| p.into_inner());
            cluster
                .coordinator
                .and_then(|id| cluster.nodes.get(&id).cloned())
        };
        if let Some(address) = known(self) {
            return self.channel(&address);
        }
        self.refresh(&[]).await?;
        match known(self) {
            Some(address) => self.channel(&address),
            None => self.any_channel(),
        }
    }

    /// Takes note of a failed group request: a NOT_LEADER hint names the coordinator;
    /// any other failure makes the next request look it up again.
    pub(crate) fn coordinator_failed(&self, error: Error) -> Error {
        let mut cluster = self
            .inner
            .cluster
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match &error {
            Error::Broker(b) if b.leader_hint.is_some() => {
                let leader = b.leader_hint.unwrap_or_default();
                if let Some(address) = &b.leader_address {
                    cluster.nodes.insert(leader, address.clone());
                }
                cluster.coordinator = Some(leader);
            }
            e if e.is_retriable() => cluster.coordinator = None,
            _ => {}
        }
        error
    }

    /// Allocates an idempotent producer id: (id, epoch).
    pub(crate) async fn init_producer(&self) -> Result<(i64, i16)> {
        let mut last = None;
        for address in self.candidates() {
            let mut rpc = v1::produce_client::ProduceClient::new(self.channel(&address)?);
            let mut request = tonic::Request::new(v1::InitProducerRequest {});
            request.set_timeout(self.inner.config.request_timeout);
            match rpc.init_producer(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok((r.producer_id, r.producer_epoch as i16));
                }
                Err(status) => {
                    let e = from_status(status);
                    if !e.is_retriable() {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidConfig("no broker known".into())))
    }

    /// The channel to the leader of a partition.
    pub(crate) async fn leader(&self, topic: &str, partition: u32) -> Result<Transport> {
        let info = self.topic(topic).await?;
        let leader = *info.leaders.get(partition as usize).ok_or_else(|| {
            Error::Broker(crate::BrokerError {
                code: v1::ErrorCode::UnknownPartition,
                message: format!("topic `{topic}` has no partition {partition}"),
                leader_hint: None,
                leader_address: None,
            })
        })?;
        let address = self
            .inner
            .cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .get(&leader)
            .cloned();
        match address {
            Some(address) => self.channel(&address),
            None => self.any_channel(),
        }
    }
}

/// A status as people read it: its message and the root cause (e.g. "connection refused").
fn readable(status: &tonic::Status) -> String {
    let mut root: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(next) = root.and_then(std::error::Error::source) {
        root = Some(next);
    }
    match root {
        Some(cause) => format!("{} ({cause})", status.message()),
        None => status.message().to_string(),
    }
}

/// Logs in again before each token expires, for as long as the client lives.
async fn renew_login(inner: std::sync::Weak<Inner>, mut expires_ms: i64) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // At four fifths of the remaining lifetime, at least a second from now.
        let wait = ((expires_ms - now) * 4 / 5).max(1_000) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let client = Client { inner };
        match client.login().await {
            Ok(Some(next)) => expires_ms = next,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "renewing the login failed; retrying");
                expires_ms = now + 10_000;
            }
        }
    }
}
