//! The cluster's metadata, as every node's controller replica holds it: nodes and their
//! client addresses, topics with their ids, settings and replica assignments, producer-id
//! allocation, consumer-group offsets, aggregations, users, ACLs and the token secret. It is the controller's snapshot as
//! it is (JSON), so field names are a format.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::topic::TopicConfig;
use crate::agg::def::AggregationDef;
use crate::auth::{AclRule, UserRecord};
use crate::raft::Position;

/// A node of the cluster as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its client (gRPC) address.
    pub address: String,
}

/// A topic in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Its id (never reused; names a partition's Raft group and directory).
    pub id: u32,
    /// Its settings (replication factor resolved).
    pub config: TopicConfig,
    /// Replicas of each partition; the first is the preferred leader.
    pub replicas: Vec<Vec<u64>>,
}

/// The cluster's metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Where it stands in the controller's log (the membership is the cluster's nodes).
    pub position: Position,
    /// Nodes that registered, by id.
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// The id the next topic gets.
    pub next_topic_id: u32,
    /// The id the next idempotent producer gets.
    pub next_producer_id: i64,
    /// Committed consumer-group offsets: group → topic → partition → offset.
    pub offsets: BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>,
    /// Aggregations by name.
    #[serde(default)]
    pub aggregations: BTreeMap<String, AggregationMeta>,
    /// The id the next aggregation gets.
    #[serde(default)]
    pub next_aggregation_id: u64,
    /// Users by name.
    #[serde(default)]
    pub users: BTreeMap<String, UserRecord>,
    /// The last user generation handed out.
    #[serde(default)]
    pub user_generation: u64,
    /// ACL allow rules.
    #[serde(default)]
    pub acls: BTreeSet<AclRule>,
    /// The producer ids issued to each user (when the cluster requires a login).
    #[serde(default)]
    pub producers_by_owner: BTreeMap<String, BTreeSet<i64>>,
    /// The secret tokens are signed with (hex), once a node has proposed one.
    #[serde(default)]
    pub token_secret: Option<String>,
}

/// An aggregation in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregationMeta {
    /// Its id (never reused; partitions' control records name it).
    pub id: u64,
    /// Its definition.
    pub def: AggregationDef,
    /// How far each output-topic partition has been written (with an output topic).
    #[serde(default)]
    pub emitted: BTreeMap<u32, EmitProgress>,
}

/// How far an aggregation's closed windows have been written to one output partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmitProgress {
    /// Every window ending at or before this (ms) was written.
    pub upto: i64,
    /// The sequence number of the next record written there.
    pub next_seq: i32,
}

impl AggregationMeta {
    /// Where every one of the output topic's `partitions` partitions has been written up to.
    pub fn emitted_everywhere(&self, partitions: usize) -> Option<i64> {
        (0..partitions as u32)
            .map(|p| self.emitted.get(&p).map(|e| e.upto))
            .min()
            .flatten()
    }
}

impl ClusterState {
    /// A node's client address, if it registered one.
    pub fn address_of(&self, node: u64) -> Option<String> {
        self.nodes.get(&node).map(|n| n.address.clone())
    }

    /// The voters of the controller: every node of the cluster.
    pub fn voters(&self) -> Vec<u64> {
        self.position.voters()
    }
}
