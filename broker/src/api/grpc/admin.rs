//! `Admin` (create, delete, list, describe topics; cluster status) and `Metadata` (nodes,
//! topics, leaders).

use std::time::Duration;

use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::{Operation, ResourceKind};
use crate::controller::{SearchSettings, TopicConfig};
use crate::error::Error;
use crate::raft::GroupStatus;
use crate::topics::Topic;

/// How long a topic creation or deletion waits for the controller and for this node to
/// follow it.
const TOPIC_CHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// A topic's settings from the API form: zero means "default" for partitions and
/// replication, "none" for the retention limits.
fn config_from_proto(c: &v1::TopicConfig) -> TopicConfig {
    TopicConfig {
        partitions: c.partitions,
        replication_factor: c.replication_factor,
        retention_ms: (c.retention_ms > 0).then_some(c.retention_ms),
        retention_bytes: (c.retention_bytes > 0).then_some(c.retention_bytes),
        search: SearchSettings {
            enabled: !c.search_disabled,
            fields: c.search_fields.clone(),
        },
    }
}

/// The API form of a topic's settings.
fn config_to_proto(c: &TopicConfig) -> v1::TopicConfig {
    v1::TopicConfig {
        partitions: c.partitions,
        replication_factor: c.replication_factor,
        retention_ms: c.retention_ms.unwrap_or(0),
        retention_bytes: c.retention_bytes.unwrap_or(0),
        search_disabled: !c.search.enabled,
        search_fields: c.search.fields.clone(),
    }
}

/// One replica's Raft state for `cluster status`.
fn replica_status(
    topic: &str,
    partition: u32,
    replicas: &[u64],
    s: &GroupStatus,
    high_watermark: u64,
) -> v1::ReplicaStatus {
    let last = s.last_log_index.unwrap_or(0);
    let followers = s
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != s.node_id)
                .map(|(id, matched)| v1::FollowerLag {
                    node_id: *id,
                    matched_index: *matched,
                    lag: matched.map_or(last + 1, |i| last.saturating_sub(i)),
                })
                .collect()
        })
        .unwrap_or_default();
    v1::ReplicaStatus {
        topic: topic.to_string(),
        partition,
        leader: s.leader.unwrap_or(0),
        term: s.term,
        replicas: replicas.to_vec(),
        last_log_index: last,
        committed_index: s.committed_index.unwrap_or(0),
        applied_index: s.applied.map_or(0, |l| l.index),
        high_watermark,
        followers,
    }
}

impl Api {
    /// The nodes registered with the controller, with their client addresses.
    fn registered_nodes(&self) -> Vec<v1::NodeInfo> {
        self.node
            .cluster
            .nodes()
            .into_iter()
            .map(|(id, address)| v1::NodeInfo {
                id,
                address,
                http_address: String::new(),
            })
            .collect()
    }

    fn topic_metadata(&self, topic: &Topic) -> v1::TopicMetadata {
        v1::TopicMetadata {
            id: topic.id,
            name: topic.name.clone(),
            config: Some(config_to_proto(&topic.config)),
            partitions: topic
                .replicas
                .iter()
                .enumerate()
                .map(|(p, replicas)| {
                    let p = p as u32;
                    let leader = topic.leader_hint(p).unwrap_or(0);
                    v1::PartitionMetadata {
                        partition: p,
                        leader,
                        replicas: replicas.clone(),
                    }
                })
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for Api {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let caller = self.caller(&request)?;
        let name = &request.get_ref().name;
        if !self.may(&caller, ResourceKind::Cluster, "", Operation::Create) {
            self.allow(&request, ResourceKind::Topic, name, Operation::Create)?;
        }
        self.check_serving()?;
        let request = request.into_inner();
        if request.name.starts_with('_') {
            return Err(Error::InvalidName {
                name: request.name,
                reason: "names starting with `_` are Strata's own topics",
            }
            .into());
        }
        let resource = format!("topic `{}`", request.name);
        let config = config_from_proto(&request.config.unwrap_or_default());
        let created = self
            .node
            .topics
            .create(
                &self.node.cluster,
                request.name,
                config,
                TOPIC_CHANGE_TIMEOUT,
            )
            .await;
        let topic = self.audited(&caller, "Admin/CreateTopic", &resource, created)?;
        Ok(Response::new(v1::CreateTopicResponse {
            topic: Some(self.topic_metadata(&topic)),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let name = &request.get_ref().name;
        let caller = self.allow(&request, ResourceKind::Topic, name, Operation::Delete)?;
        self.check_serving()?;
        let name = request.into_inner().name;
        let resource = format!("topic `{name}`");
        let deleted = self
            .node
            .topics
            .delete(&self.node.cluster, name, TOPIC_CHANGE_TIMEOUT)
            .await;
        self.audited(&caller, "Admin/DeleteTopic", &resource, deleted)?;
        Ok(Response::new(v1::DeleteTopicResponse {}))
    }

    async fn cluster_status(
        &self,
        request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        self.allow(&request, ResourceKind::Cluster, "", Operation::Describe)?;
        let cluster = &self.node.cluster;
        let mut replicas = vec![replica_status(
            "",
            0,
            &cluster.current().voters(),
            &cluster.controller_status(),
            0,
        )];
        for topic in self.node.topics.all() {
            for p in &topic.partitions {
                replicas.push(replica_status(
                    &topic.name,
                    p.id(),
                    p.replicas(),
                    &p.raft_status(),
                    p.high_watermark(),
                ));
            }
        }
        Ok(Response::new(v1::ClusterStatusResponse {
            node_id: self.node.config.node_id,
            controller_leader: cluster.controller_leader().unwrap_or(0),
            nodes: self.registered_nodes(),
            replicas,
        }))
    }

    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let caller = self.caller(&request)?;
        let topics = self
            .node
            .topics
            .all()
            .iter()
            .filter(|t| self.may(&caller, ResourceKind::Topic, &t.name, Operation::Describe))
            .map(|t| self.topic_metadata(t))
            .collect();
        Ok(Response::new(v1::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let name = &request.get_ref().name;
        self.allow(&request, ResourceKind::Topic, name, Operation::Describe)?;
        let name = request.into_inner().name;
        let topic = self.node.topics.get(&name)?;
        let partitions = tokio::task::spawn_blocking({
            let topic = topic.clone();
            move || {
                topic
                    .partitions
                    .iter()
                    .map(|p| p.status())
                    .collect::<Result<Vec<_>, Error>>()
            }
        })
        .await
        .map_err(Error::task("describe"))??;
        let partitions = partitions
            .into_iter()
            .map(|s| v1::PartitionStatus {
                partition: s.id,
                leader: s.leader,
                start_offset: s.start_offset,
                high_watermark: s.high_watermark,
                next_offset: s.next_offset,
                bytes: s.bytes,
                segments: s.segments,
            })
            .collect();
        Ok(Response::new(v1::DescribeTopicResponse {
            topic: Some(self.topic_metadata(&topic)),
            partitions,
        }))
    }
}

#[tonic::async_trait]
impl v1::metadata_server::Metadata for Api {
    async fn get_metadata(
        &self,
        request: Request<v1::MetadataRequest>,
    ) -> Result<Response<v1::MetadataResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let describable =
            |name: &str| self.may(&caller, ResourceKind::Topic, name, Operation::Describe);
        let topics = if request.topics.is_empty() {
            let mut all = self.node.topics.all();
            all.retain(|t| describable(&t.name));
            all
        } else {
            let mut named = Vec::new();
            for t in &request.topics {
                self.require(&caller, ResourceKind::Topic, t, Operation::Describe)?;
                named.push(self.node.topics.get(t)?);
            }
            named
        };
        let mut nodes = self.registered_nodes();
        let me = self.node.config.node_id;
        let http_address = self
            .node
            .http_address
            .map(|a| a.to_string())
            .unwrap_or_default();
        match nodes.iter_mut().find(|n| n.id == me) {
            Some(n) => n.http_address = http_address,
            None => nodes.push(v1::NodeInfo {
                id: me,
                address: self.node.advertised.clone(),
                http_address,
            }),
        }
        Ok(Response::new(v1::MetadataResponse {
            nodes,
            topics: topics.iter().map(|t| self.topic_metadata(t)).collect(),
            controller_id: self.node.cluster.controller_leader().unwrap_or(0),
        }))
    }
}
