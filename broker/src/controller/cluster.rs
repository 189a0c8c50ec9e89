//! The node's view of its cluster: the controller group (every node is a voter), the
//! cluster state it publishes, and proposing controller commands from any node (a node that
//! does not lead the controller forwards the command to the one that does).
//!
//! A controller replica whose log fails a flush (a full or failing disk) or whose Raft core
//! stops is reopened from disk without a restart, as a partition's is
//! (`Topics::recover_failed`): [`Cluster::recover_failed`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
    controller: Arc<RwLock<Group>>,
}

impl ForwardedProposals for Forwarded {
    fn propose(&self, body: Bytes) -> BoxFuture<'static, std::result::Result<Bytes, String>> {
        let controller = read(&self.controller);
        Box::pin(async move {
            let command: Command = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let result = propose_local(&controller, &command).await;
            serde_json::to_vec(&result)
                .map(Bytes::from)
                .map_err(|e| format!("cannot encode the result: {e}"))
        })
    }
}

fn read<T: Clone>(slot: &RwLock<T>) -> T {
    slot.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn replace<T>(slot: &RwLock<T>, value: T) {
    *slot.write().unwrap_or_else(|p| p.into_inner()) = value;
}

/// How often the controller replica is checked for a failure.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The wait before the first reopening, doubled after each failed one up to the most.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MOST_RETRY: Duration = Duration::from_secs(10);

/// What opening the controller replica again takes.
struct Opening {
    dir: PathBuf,
    log_config: LogConfig,
    /// The voters, the preferred leader first.
    members: Vec<u64>,
    published: watch::Sender<Arc<ClusterState>>,
}

/// The cluster as this node takes part in it.
pub struct Cluster {
    env: RaftEnv,
    /// The controller replica; replaced when it is reopened after a failure.
    controller: Arc<RwLock<Group>>,
    state: watch::Receiver<Arc<ClusterState>>,
    log: RwLock<PartitionLog>,
    opening: Opening,
    /// Why the controller replica is out, while it is being reopened.
    failure: Mutex<Option<String>>,
    recoveries: AtomicU64,
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
        let (published, state) = watch::channel(Arc::new(ClusterState::default()));
        // Every node proposes the same membership; openraft accepts identical ones.
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        let preferred = voters.iter().copied().min().unwrap_or(env.node_id);
        let mut members = vec![preferred];
        members.extend(voters.iter().copied().filter(|v| *v != preferred));
        let opening = Opening {
            dir: dir.to_owned(),
            log_config,
            members,
            published,
        };
        let (log, controller) = opening.open(&env, None).await?;
        Ok(Cluster {
            env,
            controller: Arc::new(RwLock::new(controller)),
            state,
            log: RwLock::new(log),
            opening,
            failure: Mutex::new(None),
            recoveries: AtomicU64::new(0),
        })
    }

    /// The controller replica now.
    fn controller(&self) -> Group {
        read(&self.controller)
    }

    /// What the Raft service hands the commands other nodes forward to this one.
    pub fn forwarded_proposals(&self) -> Arc<dyn ForwardedProposals> {
        Arc::new(Forwarded {
            controller: self.controller.clone(),
        })
    }

    /// Why the controller replica is out, while it is being reopened after a failure.
    pub fn controller_failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Times the controller replica was reopened after a failure since the node started.
    pub fn controller_recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    fn set_failure(&self, cause: Option<String>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = cause;
    }

    /// Watches the controller replica for as long as the node runs and, when its log fails
    /// a flush or its Raft core stops, takes it out (another replica leads; commands
    /// proposed here wait for a leader, as at an election) and reopens it from disk, the
    /// entries not known durable cut; a reopening that fails is retried, backing off from
    /// 100 ms to 10 s. `/health` says degraded meanwhile.
    pub async fn recover_failed(&self) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tick.tick().await;
            let log = read(&self.log);
            let controller = self.controller();
            let cause = (log.poisoned().map(|c| format!("log: {c}")))
                .or_else(|| controller.status().stopped.map(|c| format!("raft: {c}")));
            let Some(cause) = cause else { continue };
            tracing::error!(%cause, "controller replica failed; taking it out and reopening it from disk");
            self.set_failure(Some(cause));
            let since = Instant::now();
            let durable_below = log.durable_next();
            self.env.groups.remove(CONTROLLER_GROUP);
            if let Err(e) = controller.shutdown().await {
                tracing::debug!(error = %e, "stopping the failed controller replica");
            }
            if let Err(e) = log.close() {
                tracing::debug!(error = %e, "closing the failed controller log");
            }
            let mut wait = FIRST_RETRY;
            let mut attempts = 1u32;
            loop {
                match self.opening.open(&self.env, durable_below).await {
                    Ok((log, controller)) => {
                        replace(&self.log, log);
                        replace(&self.controller, controller);
                        self.set_failure(None);
                        self.recoveries.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(after = ?since.elapsed(), attempts, "controller replica reopened");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(attempts, retry_in = ?wait, error = %e, "controller replica not reopened yet");
                        self.set_failure(Some(format!("reopening failed: {e}")));
                        tokio::time::sleep(wait).await;
                        wait = wait.saturating_mul(2).min(MOST_RETRY);
                        attempts += 1;
                    }
                }
            }
        }
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
        self.controller().status()
    }

    /// The controller replica's current term (cheap: no status is built).
    pub fn controller_term(&self) -> u64 {
        self.controller().term()
    }

    /// The node leading the controller, if known.
    pub fn controller_leader(&self) -> Option<u64> {
        self.controller().leader()
    }

    /// Whether this node's controller replica has applied an entry of its current term (for
    /// a new leader: everything committed before it was elected).
    pub fn controller_caught_up(&self) -> bool {
        self.controller().applied_own_term()
    }

    /// Confirms that this node still leads the controller and has applied everything
    /// committed (see [`Group::ensure_linearizable`]): reads of [`Cluster::current`] after it
    /// see every command committed before the call.
    pub async fn ensure_linearizable(&self, timeout: Duration) -> Result<()> {
        self.controller()
            .ensure_linearizable(timeout)
            .await
            .map_err(|e| match e {
                WriteError::NotLeader(leader) => Error::NotLeader {
                    what: "the controller".into(),
                    leader,
                    address: leader.and_then(|l| self.address_of(l)),
                },
                e => Error::Unavailable(format!("the controller cannot confirm its lead: {e}")),
            })
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
            let attempt = match propose_local(&self.controller(), &command).await {
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
        if let Err(e) = self.controller().shutdown().await {
            tracing::warn!(error = %e, "controller did not stop cleanly");
        }
        read(&self.log)
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

impl Opening {
    /// Opens the controller's log (cutting it at `durable_below`, see [`open_log`]) and
    /// starts the controller group over it, registered for the Raft service.
    async fn open(
        &self,
        env: &RaftEnv,
        durable_below: Option<u64>,
    ) -> Result<(PartitionLog, Group)> {
        let log = open_log(
            &self.dir,
            self.log_config.clone(),
            "controller",
            0,
            durable_below,
        )
        .await?;
        let machine = ControllerMachine::new(self.published.clone());
        let started = Group::start(
            env,
            CONTROLLER_GROUP,
            "controller",
            log.clone(),
            Box::new(machine),
            None,
            &self.members,
        )
        .await;
        match started {
            Ok(group) => Ok((log, group)),
            Err(e) => {
                let _ = log.close();
                Err(e)
            }
        }
    }
}
