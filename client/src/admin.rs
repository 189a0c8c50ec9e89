//! Topic and group administration.

use crate::client::Transport;
use strata_proto::v1;

use crate::client::Client;
use crate::error::{Result, from_status};

/// Settings of a new topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicSpec {
    /// Partitions (at least 1).
    pub partitions: u32,
    /// Replicas per partition; 0 for the cluster's default, min(3, nodes).
    pub replication_factor: u32,
    /// Delete segments older than this (ms); `None` keeps data forever.
    pub retention_ms: Option<u64>,
    /// Delete a partition's oldest segments beyond this size; `None` for no limit.
    pub retention_bytes: Option<u64>,
    /// Leave its events out of search (they are indexed by default).
    pub search_disabled: bool,
    /// Index only these JSON paths of the values for search; empty indexes every field.
    pub search_fields: Vec<String>,
}

impl TopicSpec {
    /// `n` partitions, default replication, no retention limit.
    pub fn partitions(n: u32) -> Self {
        TopicSpec {
            partitions: n,
            ..Default::default()
        }
    }

    fn into_proto(self) -> v1::TopicConfig {
        v1::TopicConfig {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            retention_ms: self.retention_ms.unwrap_or(0),
            retention_bytes: self.retention_bytes.unwrap_or(0),
            search_disabled: self.search_disabled,
            search_fields: self.search_fields,
        }
    }
}

/// A partition as `describe_topic` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// Partition id.
    pub partition: u32,
    /// Leading node.
    pub leader: u64,
    /// First offset still stored.
    pub start_offset: u64,
    /// Offset after the last readable record.
    pub high_watermark: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Segment files.
    pub segments: u32,
}

/// A topic as `describe_topic` and `list_topics` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Id in the cluster (never reused; a topic deleted and created again gets a new one).
    pub id: u32,
    /// Settings.
    pub spec: TopicSpec,
    /// Partitions (with offsets and sizes from `describe_topic`; only ids and leaders from
    /// `list_topics`).
    pub partitions: Vec<PartitionDescription>,
}

/// A group in `list_groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// Name.
    pub group: String,
    /// `empty`, `rebalancing` or `stable`.
    pub state: String,
    /// Members.
    pub members: u32,
    /// Generation.
    pub generation: u64,
}

/// A member in `describe_group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// Client name.
    pub client_id: String,
    /// Assigned (topic, partitions).
    pub assignment: Vec<(String, Vec<u32>)>,
}

/// A partition's position in `describe_group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Owning member, if any.
    pub owner: Option<String>,
    /// Committed offset, if any.
    pub committed: Option<u64>,
    /// The partition's high watermark.
    pub high_watermark: u64,
    /// Records not yet committed.
    pub lag: u64,
}

/// A group in `describe_group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Summary.
    pub summary: GroupSummary,
    /// Members.
    pub members: Vec<MemberInfo>,
    /// Partitions with committed offsets and lag.
    pub partitions: Vec<PartitionLag>,
}

/// Administration of topics and groups.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

fn spec_of(config: Option<v1::TopicConfig>) -> TopicSpec {
    let c = config.unwrap_or_default();
    TopicSpec {
        partitions: c.partitions,
        replication_factor: c.replication_factor,
        retention_ms: (c.retention_ms > 0).then_some(c.retention_ms),
        retention_bytes: (c.retention_bytes > 0).then_some(c.retention_bytes),
        search_disabled: c.search_disabled,
        search_fields: c.search_fields,
    }
}

fn brief(t: v1::TopicMetadata) -> TopicDescription {
    TopicDescription {
        id: t.id,
        partitions: t
            .partitions
            .iter()
            .map(|p| PartitionDescription {
                partition: p.partition,
                leader: p.leader,
                start_offset: 0,
                high_watermark: 0,
                bytes: 0,
                segments: 0,
            })
            .collect(),
        spec: spec_of(t.config),
        name: t.name,
    }
}

/// One node's view of the cluster, from [`Admin::node_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node that answered.
    pub node_id: u64,
    /// Who leads the controller, as it knows.
    pub controller_leader: Option<u64>,
    /// Registered nodes: (id, client address).
    pub nodes: Vec<(u64, String)>,
    /// Its replicas: the controller first (topic ""), then partitions.
    pub replicas: Vec<ReplicaStatus>,
}

/// The Raft state of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Topic ("" for the controller).
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The leader, as this replica knows.
    pub leader: Option<u64>,
    /// Raft term.
    pub term: u64,
    /// Replica nodes; the first is the preferred leader.
    pub replicas: Vec<u64>,
    /// Index of its last log entry.
    pub last_log_index: u64,
    /// Index it knows committed.
    pub committed_index: u64,
    /// Index it applied.
    pub applied_index: u64,
    /// Offset after the last committed record.
    pub high_watermark: u64,
    /// Where it leads: (follower, matched index, lag in entries).
    pub followers: Vec<(u64, Option<u64>, u64)>,
}

impl Admin {
    /// The nodes of the cluster: (id, client address).
    pub async fn nodes(&self) -> Result<Vec<(u64, String)>> {
        self.client.nodes().await
    }

    /// Asks one node (by address) for its view of the cluster, within `timeout`.
    pub async fn node_status(
        &self,
        address: &str,
        timeout: std::time::Duration,
    ) -> Result<NodeStatus> {
        let mut rpc = v1::admin_client::AdminClient::new(self.client.channel(address)?);
        let mut request = tonic::Request::new(v1::ClusterStatusRequest {});
        request.set_timeout(timeout);
        let r = tokio::time::timeout(timeout, rpc.cluster_status(request))
            .await
            .map_err(|_| {
                crate::Error::Rpc(tonic::Status::deadline_exceeded(format!(
                    "{address} did not answer"
                )))
            })?
            .map_err(from_status)?
            .into_inner();
        Ok(NodeStatus {
            node_id: r.node_id,
            controller_leader: (r.controller_leader != 0).then_some(r.controller_leader),
            nodes: r.nodes.into_iter().map(|n| (n.id, n.address)).collect(),
            replicas: r
                .replicas
                .into_iter()
                .map(|p| ReplicaStatus {
                    topic: p.topic,
                    partition: p.partition,
                    leader: (p.leader != 0).then_some(p.leader),
                    term: p.term,
                    replicas: p.replicas,
                    last_log_index: p.last_log_index,
                    committed_index: p.committed_index,
                    applied_index: p.applied_index,
                    high_watermark: p.high_watermark,
                    followers: p
                        .followers
                        .into_iter()
                        .map(|f| (f.node_id, f.matched_index, f.lag))
                        .collect(),
                })
                .collect(),
        })
    }

    pub(crate) fn new(client: Client) -> Self {
        Admin { client }
    }

    fn admin(&self) -> Result<v1::admin_client::AdminClient<Transport>> {
        Ok(v1::admin_client::AdminClient::new(
            self.client.any_channel()?,
        ))
    }

    /// Runs a group request against the group coordinator (the controller's leader),
    /// following its NOT_LEADER hint and retrying a few times while it moves.
    async fn with_coordinator<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(v1::groups_client::GroupsClient<Transport>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let rpc =
                v1::groups_client::GroupsClient::new(self.client.coordinator_channel().await?);
            match call(rpc).await {
                Ok(value) => return Ok(value),
                Err(status) => {
                    let e = self.client.coordinator_failed(from_status(status));
                    if !e.is_retriable() || attempt >= 10 {
                        return Err(e);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Creates a topic.
    pub async fn create_topic(&self, name: &str, spec: TopicSpec) -> Result<TopicDescription> {
        let response = self
            .admin()?
            .create_topic(v1::CreateTopicRequest {
                name: name.to_string(),
                config: Some(spec.into_proto()),
            })
            .await
            .map_err(from_status)?;
        self.client.invalidate(name);
        Ok(brief(response.into_inner().topic.unwrap_or_default()))
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.admin()?
            .delete_topic(v1::DeleteTopicRequest {
                name: name.to_string(),
            })
            .await
            .map_err(from_status)?;
        self.client.invalidate(name);
        Ok(())
    }

    /// All topics.
    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>> {
        let response = self
            .admin()?
            .list_topics(v1::ListTopicsRequest {})
            .await
            .map_err(from_status)?;
        Ok(response
            .into_inner()
            .topics
            .into_iter()
            .map(brief)
            .collect())
    }

    /// A topic with its partitions' offsets and sizes.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let response = self
            .admin()?
            .describe_topic(v1::DescribeTopicRequest {
                name: name.to_string(),
            })
            .await
            .map_err(from_status)?;
        let r = response.into_inner();
        let topic = r.topic.unwrap_or_default();
        Ok(TopicDescription {
            id: topic.id,
            name: topic.name,
            spec: spec_of(topic.config),
            partitions: r
                .partitions
                .into_iter()
                .map(|p| PartitionDescription {
                    partition: p.partition,
                    leader: p.leader,
                    start_offset: p.start_offset,
                    high_watermark: p.high_watermark,
                    bytes: p.bytes,
                    segments: p.segments,
                })
                .collect(),
        })
    }

    /// All groups.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        let response = self
            .with_coordinator(
                |mut rpc| async move { rpc.list_groups(v1::ListGroupsRequest {}).await },
            )
            .await?;
        Ok(response
            .into_inner()
            .groups
            .into_iter()
            .map(|g| GroupSummary {
                group: g.group,
                state: g.state,
                members: g.members,
                generation: g.generation,
            })
            .collect())
    }

    /// A group's members, assignment, committed offsets and lag.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let response = self
            .with_coordinator(|mut rpc| async move {
                rpc.describe_group(v1::DescribeGroupRequest {
                    group: group.to_string(),
                })
                .await
            })
            .await?;
        let r = response.into_inner();
        let s = r.summary.unwrap_or_default();
        Ok(GroupDescription {
            summary: GroupSummary {
                group: s.group,
                state: s.state,
                members: s.members,
                generation: s.generation,
            },
            members: r
                .members
                .into_iter()
                .map(|m| MemberInfo {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    assignment: m
                        .assignment
                        .into_iter()
                        .map(|tp| (tp.topic, tp.partitions))
                        .collect(),
                })
                .collect(),
            partitions: r
                .partitions
                .into_iter()
                .map(|p| PartitionLag {
                    topic: p.topic,
                    partition: p.partition,
                    owner: (!p.owner.is_empty()).then_some(p.owner),
                    committed: p.committed,
                    high_watermark: p.high_watermark,
                    lag: p.lag,
                })
                .collect(),
        })
    }

    /// A group's committed offsets: (topic, partition, offset).
    pub async fn committed_offsets(&self, group: &str) -> Result<Vec<(String, u32, u64)>> {
        let response = self
            .with_coordinator(|mut rpc| async move {
                rpc.fetch_offsets(v1::FetchOffsetsRequest {
                    group: group.to_string(),
                    partitions: Vec::new(),
                })
                .await
            })
            .await?;
        Ok(response
            .into_inner()
            .offsets
            .into_iter()
            .map(|o| (o.topic, o.partition, o.offset))
            .collect())
    }
}
