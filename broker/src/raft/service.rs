//! The server side of node-to-node Raft traffic: [`RaftService`] looks up the group named in
//! each request among the groups this node runs ([`Groups`]) and hands the request to it. A
//! group this node does not run (yet) answers `NOT_FOUND`, a group that is stopping
//! `UNAVAILABLE`; the sender treats both as unreachable and backs off.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::wire::{SnapshotMessage, decode_append};
use super::{ControllerSm, GroupId, PartitionSm, Snapshot, TypeConfig};

/// A partition group's Raft handle.
pub type PartitionRaft = openraft::Raft<TypeConfig, PartitionSm>;
/// The controller group's Raft handle.
pub type ControllerRaft = openraft::Raft<TypeConfig, ControllerSm>;

/// A Raft group this node runs.
#[derive(Clone)]
pub enum GroupRaft {
    /// A partition.
    Partition(PartitionRaft),
    /// The controller.
    Controller(ControllerRaft),
}

/// Runs `$body` with `$r` bound to the group's `openraft::Raft`, whatever its state machine.
macro_rules! with_raft {
    ($group:expr, $r:ident => $body:expr) => {
        match $group {
            GroupRaft::Partition($r) => $body,
            GroupRaft::Controller($r) => $body,
        }
    };
}

/// The groups this node runs, by id.
#[derive(Clone, Default)]
pub struct Groups {
    inner: Arc<RwLock<HashMap<GroupId, GroupRaft>>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups")
            .field("count", &self.read().len())
            .finish()
    }
}

impl Groups {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupId, GroupRaft>> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a group so that its peers reach it.
    pub fn insert(&self, id: GroupId, raft: GroupRaft) {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, raft);
    }

    /// Unregisters a group.
    pub fn remove(&self, id: GroupId) -> Option<GroupRaft> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id)
    }

    /// A group by id.
    pub fn get(&self, id: GroupId) -> Option<GroupRaft> {
        self.read().get(&id).cloned()
    }

    fn require(&self, id: GroupId) -> Result<GroupRaft, Status> {
        self.get(id)
            .ok_or_else(|| Status::not_found(format!("raft group {id:#x} is not on this node")))
    }
}

/// The `strata.v1.Raft` service.
#[derive(Debug, Clone)]
pub struct RaftService {
    groups: Groups,
}

impl RaftService {
    /// The service for `groups`.
    pub fn new(groups: Groups) -> Self {
        RaftService { groups }
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

fn decode<T: DeserializeOwned>(msg: &v1::RaftMessage) -> Result<T, Status> {
    serde_json::from_slice(&msg.body)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
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
        let (group, rpc) = decode_append(request.into_inner()).map_err(Status::invalid_argument)?;
        let raft = self.groups.require(group)?;
        let resp = with_raft!(raft, r => r.append_entries(rpc).await).map_err(stopped)?;
        reply(&resp)
    }

    async fn vote(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let msg = request.into_inner();
        let raft = self.groups.require(msg.group_id)?;
        let rpc = decode(&msg)?;
        let resp = with_raft!(raft, r => r.vote(rpc).await).map_err(stopped)?;
        reply(&resp)
    }

    async fn pre_vote(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let msg = request.into_inner();
        let raft = self.groups.require(msg.group_id)?;
        let rpc = decode(&msg)?;
        let resp = with_raft!(raft, r => r.pre_vote(rpc).await).map_err(stopped)?;
        reply(&resp)
    }

    async fn snapshot(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let msg = request.into_inner();
        let raft = self.groups.require(msg.group_id)?;
        let SnapshotMessage { vote, meta, data } = decode(&msg)?;
        let snapshot = Snapshot {
            meta,
            snapshot: Bytes::from(data),
        };
        let resp = with_raft!(raft, r => r.install_full_snapshot(vote, snapshot).await)
            .map_err(stopped)?;
        reply(&resp)
    }

    async fn propose(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let msg = request.into_inner();
        let command: super::Command = decode(&msg)?;
        let Some(GroupRaft::Controller(raft)) = self.groups.get(super::CONTROLLER_GROUP) else {
            return Err(Status::unavailable("the controller is not running here"));
        };
        let result = crate::cluster::propose_local(&raft, &command).await;
        reply(&result)
    }

    async fn transfer_leader(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        let msg = request.into_inner();
        let raft = self.groups.require(msg.group_id)?;
        let rpc = decode(&msg)?;
        let resp = with_raft!(raft, r => r.handle_transfer_leader(rpc).await).map_err(stopped)?;
        reply(&resp)
    }
}
