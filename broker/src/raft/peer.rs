//! The server side of node-to-node Raft traffic: [`RaftService`] looks up the group named in
//! each request among the groups this node runs ([`Groups`]) and hands the request to it. A
//! group this node does not run (yet) answers `NOT_FOUND`, a group that is stopping
//! `UNAVAILABLE`; the sender treats both as unreachable and backs off. Controller commands
//! forwarded by other nodes (`Propose`) go to the [`ForwardedProposals`] the node passes in.
//!
//! The service is served on the peer listener only, behind its gate ([`crate::tls`]): a
//! message naming a sender (an append's leader, a vote's candidate, a snapshot's or a leader
//! transfer's leader) is refused unless that is the node whose certificate the connection
//! presented.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::wire::{SnapshotMessage, decode_append};
use super::{CONTROLLER_GROUP, Group, GroupId, MAX_TERM, Snapshot};
use crate::tls::PeerCaller;

pub(super) type VoteRequest = openraft::raft::VoteRequest<super::TypeConfig>;
pub(super) type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<super::TypeConfig>;

/// Takes the controller commands other nodes forward to this one while it leads the
/// controller (`Raft.Propose`). The body is the command as the forwarding node encoded it,
/// and the answer goes back as it is; an error is a body that does not decode.
pub trait ForwardedProposals: Send + Sync + 'static {
    /// Proposes a forwarded command; its encoded result.
    fn propose(&self, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>>;
}

/// The groups this node runs, by id.
#[derive(Clone, Default)]
pub struct Groups {
    inner: Arc<RwLock<HashMap<GroupId, Group>>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups")
            .field("count", &self.read().len())
            .finish()
    }
}

impl Groups {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupId, Group>> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a group so that its peers reach it.
    pub(super) fn insert(&self, id: GroupId, group: Group) {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, group);
    }

    /// Unregisters a group (before it stops).
    pub fn remove(&self, id: GroupId) -> Option<Group> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id)
    }

    /// The groups whose Raft core stopped other than by a shutdown, with why (see
    /// [`super::GroupStatus::stopped`]).
    pub fn stopped(&self) -> Vec<(GroupId, String)> {
        let mut out: Vec<(GroupId, String)> = self
            .read()
            .iter()
            .filter_map(|(id, g)| g.status().stopped.map(|why| (*id, why)))
            .collect();
        out.sort();
        out
    }

    /// A group by id.
    fn get(&self, id: GroupId) -> Option<Group> {
        self.read().get(&id).cloned()
    }

    fn require(&self, id: GroupId) -> Result<Group, Status> {
        self.get(id)
            .ok_or_else(|| Status::not_found(format!("raft group {id:#x} is not on this node")))
    }
}

/// The `strata.v1.Raft` service.
#[derive(Clone)]
pub struct RaftService {
    groups: Groups,
    proposals: Arc<dyn ForwardedProposals>,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService")
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl RaftService {
    /// The service for `groups`, with forwarded controller commands going to `proposals`.
    pub fn new(groups: Groups, proposals: Arc<dyn ForwardedProposals>) -> Self {
        RaftService { groups, proposals }
    }

    /// As a tonic service that refuses, before decoding it, a message over `max_message`
    /// bytes (an AppendEntries is at most 4 MiB of entries plus one batch; a snapshot is
    /// the small state of a machine).
    pub fn into_server(self, max_message: usize) -> v1::raft_server::RaftServer<RaftService> {
        v1::raft_server::RaftServer::new(self)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message)
    }
}

fn reply(body: &impl Serialize) -> Result<Response<v1::RaftReply>, Status> {
    serde_json::to_vec(body)
        .map(|b| {
            Response::new(v1::RaftReply {
                body: Bytes::from(b),
            })
        })
        .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))
}

/// A message's body, refused when undecodable or when any term in it (of a vote or a log
/// id) is beyond [`MAX_TERM`].
pub(super) fn decode<T: DeserializeOwned>(msg: &v1::RaftMessage) -> Result<T, Status> {
    let undecodable =
        |e: serde_json::Error| Status::invalid_argument(format!("undecodable raft message: {e}"));
    let value: serde_json::Value = serde_json::from_slice(&msg.body).map_err(undecodable)?;
    if let Some(term) = excessive_term(&value) {
        return Err(Status::invalid_argument(format!(
            "raft message refused: term {term} is beyond any a cluster reaches"
        )));
    }
    serde_json::from_value(value).map_err(undecodable)
}

/// A `term` anywhere in `value` above [`MAX_TERM`] (or not a number), if any.
fn excessive_term(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Object(fields) => fields.iter().find_map(|(key, v)| {
            if key == "term" && v.as_u64().is_none_or(|t| t > MAX_TERM) {
                Some(v.to_string())
            } else {
                excessive_term(v)
            }
        }),
        serde_json::Value::Array(items) => items.iter().find_map(excessive_term),
        _ => None,
    }
}

/// Who sent `request`, as the peer listener's gate found; refused if it did not come through
/// the gate.
fn caller<T>(request: &Request<T>) -> Result<PeerCaller, Status> {
    PeerCaller::of(request)
        .ok_or_else(|| Status::permission_denied("raft calls are taken from peers only"))
}

fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft group stopped: {e}"))
}

#[tonic::async_trait]
impl v1::raft_server::Raft for RaftService {
    async fn append(
        &self,
        request: Request<v1::RaftAppendRequest>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let caller = caller(&request)?;
        let (group, rpc) = decode_append(request.into_inner()).map_err(Status::invalid_argument)?;
        caller.check_sender(rpc.vote.leader_id.node_id)?;
        let raft = self.groups.require(group)?;
        let resp = raft.raft().append_entries(rpc).await.map_err(stopped)?;
        reply(&resp)
    }

    async fn vote(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let caller = caller(&request)?;
        let msg = request.into_inner();
        let raft = self.groups.require(msg.group_id)?;
        let rpc: VoteRequest = decode(&msg)?;
        caller.check_sender(rpc.vote.leader_id.node_id)?;
        let resp = raft.raft().vote(rpc).await.map_err(stopped)?;
        reply(&resp)
    }

    async fn pre_vote(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let caller = caller(&request)?;
        let msg = request.into_inner();
        let raft = self.groups.require(msg.group_id)?;
        let rpc: VoteRequest = decode(&msg)?;
        caller.check_sender(rpc.vote.leader_id.node_id)?;
        let resp = raft.raft().pre_vote(rpc).await.map_err(stopped)?;
        reply(&resp)
    }

    async fn snapshot(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let caller = caller(&request)?;
        let msg = request.into_inner();
        let raft = self.groups.require(msg.group_id)?;
        let SnapshotMessage { vote, meta, data } = decode(&msg)?;
        caller.check_sender(vote.leader_id.node_id)?;
        let snapshot = Snapshot {
            meta,
            snapshot: Bytes::from(data),
        };
        let resp = raft
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(stopped)?;
        reply(&resp)
    }

    async fn propose(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        caller(&request)?;
        let msg = request.into_inner();
        if self.groups.get(CONTROLLER_GROUP).is_none() {
            return Err(Status::unavailable("the controller is not running here"));
        }
        let body = self
            .proposals
            .propose(msg.body)
            .await
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        Ok(Response::new(v1::RaftReply { body }))
    }

    async fn transfer_leader(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let caller = caller(&request)?;
        let msg = request.into_inner();
        let raft = self.groups.require(msg.group_id)?;
        let rpc: TransferLeaderRequest = decode(&msg)?;
        caller.check_sender(rpc.from_leader().leader_id.node_id)?;
        let resp = raft
            .raft()
            .handle_transfer_leader(rpc)
            .await
            .map_err(stopped)?;
        reply(&resp)
    }
}
