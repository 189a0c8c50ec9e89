//! The node's view of its cluster: the controller group (every node is a voter), the
//! cluster state it publishes, and proposing controller commands from any node (a node that
//! does not lead the controller forwards the command to the one that does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use strata_storage::{LogConfig, PartitionLog};
use tokio::sync::watch;

use super::command::Command;
use super::machine::ControllerMachine;
use super::result::CommandResult;
use super::state::ClusterState;
use crate::error::{Error, Result};
use crate::raft::{
    Applied, CONTROLLER_GROUP, ForwardedProposals, Group, GroupStatus, RaftEnv, WriteError,
    open_log,
};

/// Why a controller command was not applied here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeError {
    /// This node does not lead the controller (the leader, when known).
    NotLeader(Option<u64>),
    /// The controller cannot take commands now.
    Unavailable(String),
}

/// Proposes `command` to the local controller replica, which must lead.
async fn propose_local(
    controller: &Group,
    command: &Command,
) -> std::result::Result<CommandResult, ProposeError> {
    let batch = command.to_batch().map_err(ProposeError::Unavailable)?;
    match controller.write(batch).await {
        Ok(Applied::Answer(json)) => serde_json::from_str(&json)
            .map_err(|e| ProposeError::Unavailable(format!("undecodable result: {e}"))),
        Ok(other) => Err(ProposeError::Unavailable(format!(
            "unexpected apply result {other:?}"
        ))),
        Err(WriteError::LeaseExpired) => Err(ProposeError::NotLeader(None)),
        Err(WriteError::NotLeader(leader) | WriteError::Discarded(leader)) => {
            Err(ProposeError::NotLeader(leader))
        }
        Err(e @ WriteError::Failed(_)) => Err(ProposeError::Unavailable(e.to_string())),
    }
}

/// The controller commands other nodes forward here (see [`Cluster::propose`]).
struct Forwarded {
    controller: Group,
}

impl ForwardedProposals for Forwarded {
    fn propose(&self, body: Bytes) -> BoxFuture<'static, std::result::Result<Bytes, String>> {
        let controller = self.controller.clone();
        Box::pin(async move {
            let command: Command = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let result = propose_local(&controller, &command).await;
            serde_json::to_vec(&result)
                .map(Bytes::from)
                .map_err(|e| format!("cannot encode the result: {e}"))
        })
    }
}

/// The cluster as this node takes part in it.
pub struct Cluster {
    env: RaftEnv,
    controller: Group,
    state: watch::Receiver<Arc<ClusterState>>,
    log: PartitionLog,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.env.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Opens the controller's log in `dir`, starts the controller group over `voters` and
    /// registers it for the Raft service.
    pub async fn start(
        env: RaftEnv,
        dir: &std::path::Path,
        log_config: LogConfig,
        voters: &[u64],
    ) -> Result<Cluster> {
        let log = open_log(dir, log_config, "controller", 0).await?;
        let (published, state) = watch::channel(Arc::new(ClusterState::default()));
        // Every node proposes the same membership; openraft accepts identical ones.
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        let preferred = voters.iter().copied().min().unwrap_or(env.node_id);
        let mut ordered = vec![preferred];
        ordered.extend(voters.iter().copied().filter(|v| *v != preferred));
        let controller = Group::start(
            &env,
            CONTROLLER_GROUP,
            "controller",
            log.clone(),
            Box::new(ControllerMachine::new(published)),
            None,
            &ordered,
        )
        .await?;
        Ok(Cluster {
            env,
            controller,
            state,
            log,
        })
    }

    /// What the Raft service hands the commands other nodes forward to this one.
    pub fn forwarded_proposals(&self) -> Arc<dyn ForwardedProposals> {
        Arc::new(Forwarded {
            controller: self.controller.clone(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.env.node_id
    }

    /// The shared Raft environment.
    pub fn env(&self) -> &RaftEnv {
        &self.env
    }

    /// Follows the cluster state.
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// The cluster state now.
    pub fn current(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    /// The controller replica's Raft status.
    pub fn controller_status(&self) -> GroupStatus {
        self.controller.status()
    }

    /// The node leading the controller, if known.
    pub fn controller_leader(&self) -> Option<u64> {
        self.controller.leader()
    }

    /// Whether this node's controller replica has applied an entry of its current term (for
    /// a new leader: everything committed before it was elected).
    pub fn controller_caught_up(&self) -> bool {
        self.controller.applied_own_term()
    }

    /// A node's client address, if it registered one.
    pub fn address_of(&self, node: u64) -> Option<String> {
        self.state.borrow().address_of(node)
    }

    /// A gRPC channel to `node`'s peer listener: the connection its Raft traffic uses (no
    /// new connection and handshake per call).
    pub fn channel_to(&self, node: u64) -> Result<tonic::transport::Channel> {
        self.env
            .router
            .channel(node)
            .ok_or_else(|| Error::PeerUnavailable {
                node,
                reason: "not a peer of this node".into(),
            })
    }

    /// Forwards `command` to `leader` (see [`ForwardedProposals`]).
    async fn forward(
        &self,
        leader: u64,
        command: &Command,
    ) -> std::result::Result<CommandResult, ProposeError> {
        let body = serde_json::to_vec(command)
            .map_err(|e| ProposeError::Unavailable(format!("node {leader}: {e}")))?;
        let reply = self
            .env
            .router
            .forward_proposal(leader, body.into())
            .await
            .map_err(ProposeError::Unavailable)?;
        serde_json::from_slice::<std::result::Result<CommandResult, ProposeError>>(&reply).map_err(
            |e| ProposeError::Unavailable(format!("node {leader}: undecodable reply: {e}")),
        )?
    }

    /// Applies `command` through the controller, from whichever node leads it; retries
    /// while there is no leader, up to `timeout`.
    pub async fn propose(&self, command: Command, timeout: Duration) -> Result<CommandResult> {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::from("no controller leader");
        loop {
            let attempt = match propose_local(&self.controller, &command).await {
                Err(ProposeError::NotLeader(Some(leader))) if leader != self.env.node_id => {
                    self.forward(leader, &command).await
                }
                other => other,
            };
            match attempt {
                Ok(result) => return Ok(result),
                Err(ProposeError::NotLeader(_)) => {}
                Err(ProposeError::Unavailable(e)) => last_error = e,
            }
            if Instant::now() + Duration::from_millis(50) > deadline {
                return Err(Error::Unavailable(format!(
                    "the controller did not take the command: {last_error}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Announces this node's client address until the controller has it.
    pub async fn register(&self, address: String) {
        loop {
            if self.address_of(self.env.node_id).as_deref() == Some(&address) {
                return;
            }
            let command = Command::RegisterNode {
                id: self.env.node_id,
                address: address.clone(),
            };
            if let Err(e) = self.propose(command, Duration::from_secs(5)).await {
                tracing::debug!(error = %e, "registering with the controller; retrying");
            }
        }
    }

    /// Stops the controller group and closes its log.
    pub async fn shutdown(&self) -> Result<()> {
        self.env.groups.remove(CONTROLLER_GROUP);
        if let Err(e) = self.controller.shutdown().await {
            tracing::warn!(error = %e, "controller did not stop cleanly");
        }
        self.log
            .close()
            .map_err(|e| Error::from_storage("controller", 0, e))
    }

    /// Addresses of every registered node.
    pub fn nodes(&self) -> BTreeMap<u64, String> {
        self.state
            .borrow()
            .nodes
            .iter()
            .map(|(id, n)| (*id, n.address.clone()))
            .collect()
    }
}
