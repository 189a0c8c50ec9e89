//! The client side of node-to-node Raft traffic: one lazily connected gRPC channel (one
//! HTTP/2 connection) per peer's peer listener, shared by every group, over mutual TLS when
//! the node has peer certificates. [`Router`] is openraft-multi's `GroupRouter`; each group
//! gets a `GroupNetworkFactory` over it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use openraft::EmptyNode;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft_multi::{GroupNetworkAdapter, GroupNetworkFactory, GroupRouter};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_proto::transport::Connector;
use strata_proto::v1;
use strata_proto::v1::raft_client::RaftClient;
use tonic::transport::{Channel, Endpoint};

use super::wire::{SnapshotMessage, encode_append};
use super::{GroupId, Snapshot, TypeConfig, Vote};
use crate::tls::PeerTls;

/// How long connecting to a peer may take before the attempt counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest reply a peer may send.
const MAX_REPLY_BYTES: usize = 4 << 20;
/// How long a forwarded controller command may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Routes every group's Raft RPCs to peers over one channel per peer.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    peers: RwLock<HashMap<u64, Peer>>,
    tls: Option<PeerTls>,
}

#[derive(Clone)]
struct Peer {
    address: String,
    channel: Channel,
    client: RaftClient<Channel>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: HashMap<u64, String> = self
            .inner
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(id, p)| (*id, p.address.clone()))
            .collect();
        f.debug_struct("Router").field("peers", &peers).finish()
    }
}

type RaftError = RPCError<TypeConfig>;

fn unreachable(msg: impl ToString) -> RaftError {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

impl Router {
    /// A router to the given peers (node id → `host:port` of their peer listeners), over
    /// mutual TLS with `tls`; connections open on first use.
    pub fn new(peers: impl IntoIterator<Item = (u64, String)>, tls: Option<PeerTls>) -> Router {
        let router = Router {
            inner: Arc::new(RouterInner {
                peers: RwLock::new(HashMap::new()),
                tls,
            }),
        };
        for (id, address) in peers {
            router.set_peer(id, address);
        }
        router
    }

    /// Adds a peer or changes its address.
    pub fn set_peer(&self, id: u64, address: String) {
        let mut peers = self
            .inner
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if peers.get(&id).is_some_and(|p| p.address == address) {
            return;
        }
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{address}")).and_then(|e| {
            match &self.inner.tls {
                Some(tls) => e.tls_config(tls.client(id)),
                None => Ok(e),
            }
        });
        match endpoint {
            Ok(endpoint) => {
                let channel = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .initial_stream_window_size(16 << 20)
                    .initial_connection_window_size(64 << 20)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true)
                    .connect_with_connector_lazy(Connector {
                        tls: self.inner.tls.is_some(),
                    });
                // Replies are small JSON (a vote, an append's answer, a command's result).
                let client = RaftClient::new(channel.clone())
                    .max_decoding_message_size(MAX_REPLY_BYTES)
                    .max_encoding_message_size(usize::MAX);
                peers.insert(
                    id,
                    Peer {
                        address,
                        channel,
                        client,
                    },
                );
            }
            Err(e) => tracing::error!(peer = id, %address, error = %e, "invalid peer address"),
        }
    }

    /// The shared connection to `target`, for other node-to-node calls (search and
    /// aggregation queries) to reuse.
    pub fn channel(&self, target: u64) -> Option<Channel> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&target)
            .map(|p| p.channel.clone())
    }

    fn client(&self, target: u64) -> Result<RaftClient<Channel>, RaftError> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&target)
            .map(|p| p.client.clone())
            .ok_or_else(|| unreachable(format!("no address for node {target}")))
    }

    /// Forwards an encoded controller command to `target`, which should lead the
    /// controller (see [`super::ForwardedProposals`]); its encoded answer. The error says
    /// why `target` did not answer.
    pub async fn forward_proposal(&self, target: u64, body: Bytes) -> Result<Bytes, String> {
        let mut client = self
            .client(target)
            .map_err(|e| format!("node {target}: {e}"))?;
        let request = v1::RaftMessage {
            group_id: super::CONTROLLER_GROUP,
            body,
        };
        let reply = tokio::time::timeout(FORWARD_TIMEOUT, client.propose(request))
            .await
            .map_err(|_| format!("node {target}: no answer"))?
            .map_err(|s| format!("node {target}: {}", s.message()))?;
        Ok(reply.into_inner().body)
    }

    /// A network factory for one group.
    pub(super) fn factory(&self, group: GroupId) -> GroupNetworkFactory<Router, GroupId> {
        GroupNetworkFactory::new(self.clone(), group)
    }
}

/// Maps a transport failure or a remote status to an openraft error: a peer that is down,
/// cut off or does not (yet) run the group is unreachable (openraft backs off).
fn from_status(target: u64, status: &tonic::Status) -> RaftError {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::NotFound | Code::Unknown | Code::Cancelled => {
            unreachable(format!("node {target}: {}", status.message()))
        }
        _ => RPCError::Network(NetworkError::from_string(format!(
            "node {target}: {:?}: {}",
            status.code(),
            status.message()
        ))),
    }
}

async fn call<T, F>(target: u64, option: &RPCOption, fut: F) -> Result<T, RaftError>
where
    T: DeserializeOwned,
    F: Future<Output = Result<tonic::Response<v1::RaftReply>, tonic::Status>>,
{
    match tokio::time::timeout(option.hard_ttl(), fut).await {
        Err(_) => Err(unreachable(format!(
            "node {target}: no answer within {:?}",
            option.hard_ttl()
        ))),
        Ok(Err(status)) => Err(from_status(target, &status)),
        Ok(Ok(reply)) => serde_json::from_slice(&reply.into_inner().body).map_err(|e| {
            RPCError::Network(NetworkError::from_string(format!(
                "node {target}: undecodable reply: {e}"
            )))
        }),
    }
}

fn message(group: GroupId, body: &impl Serialize) -> Result<v1::RaftMessage, RaftError> {
    Ok(v1::RaftMessage {
        group_id: group,
        body: serde_json::to_vec(body)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .into(),
    })
}

impl GroupRouter<TypeConfig, GroupId> for Router {
    type SnapshotData = bytes::Bytes;

    async fn append_entries(
        &self,
        target: u64,
        group: GroupId,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RaftError> {
        let mut client = self.client(target)?;
        let req = encode_append(group, rpc)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        call(target, &option, client.append(req)).await
    }

    async fn vote(
        &self,
        target: u64,
        group: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RaftError> {
        let mut client = self.client(target)?;
        let req = message(group, &rpc)?;
        call(target, &option, client.vote(req)).await
    }

    async fn pre_vote(
        &self,
        target: u64,
        group: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RaftError> {
        let mut client = self.client(target)?;
        let req = message(group, &rpc)?;
        call(target, &option, client.pre_vote(req)).await
    }

    async fn full_snapshot(
        &self,
        target: u64,
        group: GroupId,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client(target).map_err(streaming)?;
        let data = String::from_utf8(snapshot.snapshot.to_vec())
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let req = message(
            group,
            &SnapshotMessage {
                vote,
                meta: snapshot.meta,
                data,
            },
        )
        .map_err(streaming)?;
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = call(target, &option, client.snapshot(req)) => result.map_err(streaming),
        }
    }

    async fn transfer_leader(
        &self,
        target: u64,
        group: GroupId,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RaftError> {
        let mut client = self.client(target)?;
        let req = message(group, &req)?;
        call(target, &option, client.transfer_leader(req)).await
    }
}

fn streaming(e: RaftError) -> StreamingError<TypeConfig> {
    match e {
        RPCError::Timeout(t) => StreamingError::Timeout(t),
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        RPCError::Network(n) => StreamingError::Network(n),
        RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory<Router, GroupId> {
    type Network = GroupNetworkAdapter<TypeConfig, GroupId, Router>;

    async fn new_client(&mut self, target: u64, _node: &EmptyNode) -> Self::Network {
        GroupNetworkAdapter::new(self.factory.clone(), target, self.group_id)
    }
}
