//! Replication: every partition, and the cluster's controller, is an openraft group whose
//! Raft log *is* a storage log (see DESIGN.md, "Replication"). This module is openraft's
//! glue and nothing else: it knows record batches and logs, never topics, commands or
//! aggregations. What a group does with its committed entries is a [`Machine`] the domain
//! passes in; no other module of the crate names an openraft type.
//!
//! - [`TypeConfig`]: one openraft type configuration for every group. A normal entry carries
//!   a record batch ([`Batch`]); the controller's commands travel as one-record batches too,
//!   so one log store implementation serves every group.
//! - `store`: `LogStore`, the `RaftLogStorage` over a `PartitionLog`, plus the small
//!   checksummed vote and commit files.
//! - `machine`: openraft's state machine over a domain [`Machine`]: the log position, the
//!   answers to proposers, snapshots.
//! - `snapshot`: where a machine stands ([`Position`]) and its snapshot file.
//! - `group`: [`Group`], a running group as the domain uses it: start, write, status,
//!   waits, purge, shutdown.
//! - `network`: the client side of node-to-node traffic (one gRPC channel per peer, shared by
//!   all groups); `peer`: the server side (the `strata.v1.Raft` service), dispatching by group
//!   id; `wire`: the hand-mapped AppendEntries message.

#[doc(hidden)]
pub mod fuzz;
mod group;
mod machine;
mod network;
mod peer;
mod snapshot;
mod store;
#[cfg(test)]
pub(crate) mod tests;
mod wire;

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_storage::RecordBatch;

pub use group::{Group, GroupStatus, WriteError, open_log};
pub use machine::Machine;
pub use network::Router;
pub use peer::{ForwardedProposals, Groups, RaftService};
pub use snapshot::Position;
pub use store::LogRestarted;

/// The highest term a peer's message may carry. Elections raise a term by one, so a real
/// cluster never gets near it; openraft computes `term + 1` and panics on overflow, so a
/// message beyond this (a forged one) is refused before it reaches a group.
pub const MAX_TERM: u64 = 1 << 48;

/// Identifies a Raft group: [`CONTROLLER_GROUP`] or a partition's [`partition_group`].
pub type GroupId = u64;

/// The controller group's id.
pub const CONTROLLER_GROUP: GroupId = 0;

/// The group of partition `partition` of the topic with id `topic_id` (topic ids start at 1).
pub fn partition_group(topic_id: u32, partition: u32) -> GroupId {
    (u64::from(topic_id) << 32) | u64::from(partition)
}

/// A validated record batch as openraft application data. On the wire and on disk it is the
/// batch's bytes, never re-encoded; serde (used only by openraft's own test suite and debug
/// output) sees a byte string.
#[derive(Clone, PartialEq, Eq)]
pub struct Batch(pub RecordBatch);

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch({} records, {} bytes)",
            self.0.record_count(),
            self.0.len()
        )
    }
}

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::Deserialize::deserialize(d)?;
        RecordBatch::from_bytes(Bytes::from(bytes))
            .map(Batch)
            .map_err(serde::de::Error::custom)
    }
}

/// What applying an entry answers to the proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to say (blank and membership entries).
    #[default]
    None,
    /// A batch was appended with this base offset.
    Appended {
        /// Offset of its first record.
        base_offset: u64,
    },
    /// The machine's answer as JSON (a controller command's result).
    Answer(String),
}

openraft::declare_raft_types!(
    /// The openraft types of every Strata group.
    pub TypeConfig:
        D = Batch,
        R = Applied,
        NodeId = u64,
        Node = openraft::EmptyNode,
);

/// An openraft log id.
type RaftLogId = openraft::alias::LogIdOf<TypeConfig>;
/// An openraft vote.
type Vote = openraft::alias::VoteOf<TypeConfig>;
/// An openraft log entry.
type RaftEntry = openraft::alias::EntryOf<TypeConfig>;
/// A membership with the log id that set it.
type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A snapshot's description.
type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot: its description and the serialized state (JSON, a few hundred bytes).
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Bytes>;
/// openraft's handle of a group.
type Raft = openraft::Raft<TypeConfig, machine::StateMachine>;

/// The openraft log id of a storage log id.
fn to_raft_log_id(id: strata_storage::LogId) -> RaftLogId {
    openraft::LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: id.term,
            node_id: id.leader,
        },
        id.index,
    )
}

/// The storage log id of an openraft log id.
fn to_storage_log_id(id: &RaftLogId) -> strata_storage::LogId {
    strata_storage::LogId::new(id.leader_id.term, id.leader_id.node_id, id.index)
}

/// A one-record batch holding `value` as JSON, stamped now: a controller command, or (as a
/// `control` batch) a partition's control record.
pub fn json_batch(value: &impl Serialize, control: bool) -> Result<RecordBatch, String> {
    let json = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let now = strata_storage::clock::now_ms();
    let mut b = strata_storage::BatchBuilder::with_capacity(json.len() + 128);
    if control {
        b = b.control();
    }
    b.push(strata_storage::NewRecord::value(now, &json))
        .map_err(|e| e.to_string())?;
    b.finish().map_err(|e| e.to_string())
}

/// Timing and batching of every group, tuned for a few nodes on a LAN (see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTuning {
    /// Heartbeat interval (ms).
    pub heartbeat_ms: u64,
    /// Election time-out range (ms); a leader's lease is the upper bound.
    pub election_min_ms: u64,
    /// See `election_min_ms`.
    pub election_max_ms: u64,
    /// A snapshot of the (tiny) state machine after this many entries.
    pub snapshot_every: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 720,
            snapshot_every: 4096,
        }
    }
}

/// Raft settings that do not hold together.
#[derive(Debug, thiserror::Error)]
#[error("raft settings: {0}")]
pub struct TuningError(#[from] openraft::ConfigError);

impl RaftTuning {
    /// The openraft configuration.
    fn config(&self, cluster: &str) -> Result<openraft::Config, TuningError> {
        Ok(openraft::Config {
            cluster_name: cluster.to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            enable_pre_vote: Some(true),
            // A restarted leader comes back as a follower and is re-elected in a new term with
            // a blank entry of its own. Restored as leader of its old term, it could hold
            // uncommitted entries of that very term that it has not applied: "an entry of the
            // current term is applied" would no longer mean "every earlier entry is", and the
            // producer-state and coordinator checks that rely on it would miss a retried batch
            // (t37: the retry was stored a second time).
            enable_leader_restore: Some(false),
            max_payload_entries: 256,
            // The log is the data: only retention purges it (after a snapshot covers it).
            max_in_snapshot_log_to_keep: u64::MAX,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            replication_lag_threshold: self.snapshot_every * 4,
            purge_batch_size: 1024,
            ..Default::default()
        }
        .validate()?)
    }
}

/// What every group of a node shares: its id, the peers' router, the registry the Raft
/// service dispatches to, and the openraft configuration.
#[derive(Debug, Clone)]
pub struct RaftEnv {
    /// This node.
    pub node_id: u64,
    /// Connections to the peers.
    pub router: Router,
    /// The groups this node runs.
    pub groups: Groups,
    config: std::sync::Arc<openraft::Config>,
}

impl RaftEnv {
    /// The environment of node `node_id`'s groups, reaching its peers through `router`.
    pub fn new(node_id: u64, router: Router, tuning: &RaftTuning) -> Result<RaftEnv, TuningError> {
        Ok(RaftEnv {
            node_id,
            router,
            groups: Groups::default(),
            config: std::sync::Arc::new(tuning.config("strata")?),
        })
    }
}
