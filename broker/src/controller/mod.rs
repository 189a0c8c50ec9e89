//! The controller: a Raft group over every node of the cluster that holds its metadata
//! ([`ClusterState`]), the commands that change it and the rules they are checked against
//! when applied ([`Command`]), and how a node proposes them from wherever it runs
//! ([`Cluster`]).
//!
//! - `state`: the metadata records: nodes, topics and their replica assignments, producer
//!   ids, group offsets, aggregations and their output progress;
//! - `topic`: a topic's settings ([`TopicConfig`], [`SearchSettings`]);
//! - `command`: [`Command`] and `ClusterState::apply`; `result`: [`CommandResult`];
//! - `access`: users, ACL rules and the token secret: their commands and rules;
//! - `validate`: the rules every command is checked against when applied, and a whole
//!   state when a snapshot brings it;
//! - `machine`: the controller's state machine (applies, publishes, snapshots);
//! - `cluster`: [`Cluster`], the node's handle: start, propose (forwarding to the leader),
//!   register, follow the state.
//!
//! It imports `raft` (the group), `agg::def` (aggregation definitions are part of the state),
//! the pure half of `auth` (users and rules are too) and nothing that runs on top of it (replicas, topics, features' tasks, front doors).

mod access;
mod cluster;
mod command;
mod machine;
mod result;
mod state;
mod topic;
mod validate;

pub use access::{AccessCommand, TOKEN_SECRET_BYTES};
pub use cluster::{Cluster, ProposeError};
pub use command::Command;
pub use result::CommandResult;
pub use state::{AggregationMeta, ClusterState, EmitProgress, NodeInfo, TopicMeta};
pub use topic::{MAX_PARTITIONS, SearchSettings, TopicConfig};
