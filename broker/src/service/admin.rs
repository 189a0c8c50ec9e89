//! `Admin` (create, delete, list, describe topics) and `Metadata` (nodes, topics, leaders).

use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::Api;
use crate::error::Error;
use crate::names;
use crate::raft::{Command, CommandResult};
use crate::topics::{MAX_PARTITIONS, Topic, TopicConfig};

/// One replica's Raft state for `cluster status`.
fn replica_status(
    topic: &str,
    partition: u32,
    replicas: &[u64],
    m: &openraft::RaftMetrics<crate::raft::TypeConfig>,
    high_watermark: u64,
) -> v1::ReplicaStatus {
    let last = m.last_log_index.unwrap_or(0);
    let followers = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, matched)| {
                    let matched = matched.as_ref().map(|l| l.index);
                    v1::FollowerLag {
                        node_id: *id,
                        matched_index: matched,
                        lag: matched.map_or(last + 1, |i| last.saturating_sub(i)),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    v1::ReplicaStatus {
        topic: topic.to_string(),
        partition,
        leader: m.current_leader.unwrap_or(0),
        term: m.current_term,
        replicas: replicas.to_vec(),
        last_log_index: last,
        committed_index: m.local_committed.map_or(0, |l| l.index),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        high_watermark,
        followers,
    }
}

/// Waits (bounded) until every local replica of `topic` knows its leader.
async fn wait_for_leaders(topic: &Topic, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    for p in &topic.partitions {
        let mut metrics = p.raft().metrics();
        let _ = tokio::time::timeout_at(
            deadline,
            openraft::async_runtime::WatchReceiver::wait_until(
                &mut metrics,
                |m: &openraft::RaftMetrics<crate::raft::TypeConfig>| m.current_leader.is_some(),
            ),
        )
        .await;
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
            name: topic.name.clone(),
            config: Some(topic.config.to_proto()),
            partitions: topic
                .replicas
                .iter()
                .enumerate()
                .map(|(p, replicas)| {
                    let p = p as u32;
                    // This node's replica knows the current leader; for a partition it does
                    // not hold, the preferred leader is the hint.
                    let leader = topic
                        .partitions
                        .iter()
                        .find(|r| r.id() == p)
                        .map_or_else(|| replicas.first().copied().unwrap_or(0), |r| r.leader());
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

/// How long a topic creation or deletion waits for the controller and for this node to
/// follow it.
const TOPIC_CHANGE_TIMEOUT: Duration = Duration::from_secs(15);

#[tonic::async_trait]
impl v1::admin_server::Admin for Api {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = async {
            self.check_serving()?;
            let config = TopicConfig::from_proto(&request.config.unwrap_or_default());
            let name = request.name;
            names::validate(&name)?;
            crate::search::validate_fields(&config.search.fields)
                .map_err(Error::InvalidArgument)?;
            if config.partitions == 0 || config.partitions > MAX_PARTITIONS {
                return Err(Error::InvalidArgument(format!(
                    "partitions must be between 1 and {MAX_PARTITIONS}"
                )));
            }
            let command = Command::CreateTopic {
                name: name.clone(),
                config,
            };
            let id = match self
                .node
                .cluster
                .propose(command, TOPIC_CHANGE_TIMEOUT)
                .await?
            {
                CommandResult::TopicCreated { id } => id,
                CommandResult::TopicExists => return Err(Error::TopicExists(name)),
                CommandResult::Invalid { message } => return Err(Error::InvalidArgument(message)),
                other => {
                    return Err(Error::Unavailable(format!(
                        "unexpected controller answer {other:?}"
                    )));
                }
            };
            // Answer once this node follows the creation and every partition it holds has
            // a leader, so that a produce right after succeeds.
            let topics = &self.node.topics;
            topics
                .wait_until(TOPIC_CHANGE_TIMEOUT, |t| {
                    t.get(&name).is_ok_and(|t| t.id == id)
                })
                .await;
            let topic = topics.get(&name)?;
            wait_for_leaders(&topic, TOPIC_CHANGE_TIMEOUT).await;
            Ok(v1::CreateTopicResponse {
                topic: Some(self.topic_metadata(&topic)),
            })
        }
        .await;
        self.finish("create_topic", started, result)
            .map(Response::new)
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().name;
        let result = async {
            self.check_serving()?;
            let command = Command::DeleteTopic { name: name.clone() };
            match self
                .node
                .cluster
                .propose(command, TOPIC_CHANGE_TIMEOUT)
                .await?
            {
                CommandResult::Ok => {}
                CommandResult::UnknownTopic => return Err(Error::UnknownTopic(name)),
                CommandResult::Invalid { message } => return Err(Error::InvalidArgument(message)),
                other => {
                    return Err(Error::Unavailable(format!(
                        "unexpected controller answer {other:?}"
                    )));
                }
            }
            self.node
                .topics
                .wait_until(TOPIC_CHANGE_TIMEOUT, |t| t.get(&name).is_err())
                .await;
            Ok(v1::DeleteTopicResponse {})
        }
        .await;
        self.finish("delete_topic", started, result)
            .map(Response::new)
    }

    async fn cluster_status(
        &self,
        _request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let started = Instant::now();
        let cluster = &self.node.cluster;
        let mut replicas = vec![replica_status(
            "",
            0,
            &cluster.current().voters(),
            &cluster.controller().metrics().borrow_watched(),
            0,
        )];
        for topic in self.node.topics.all() {
            for p in &topic.partitions {
                replicas.push(replica_status(
                    &topic.name,
                    p.id(),
                    p.replicas(),
                    &p.raft().metrics().borrow_watched(),
                    p.high_watermark(),
                ));
            }
        }
        let response = v1::ClusterStatusResponse {
            node_id: self.node.config.node_id,
            controller_leader: cluster.controller_leader().unwrap_or(0),
            nodes: self.registered_nodes(),
            replicas,
        };
        self.finish("cluster_status", started, Ok(response))
            .map(Response::new)
    }

    async fn list_topics(
        &self,
        _request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let started = Instant::now();
        let topics = self
            .node
            .topics
            .all()
            .iter()
            .map(|t| self.topic_metadata(t))
            .collect();
        self.finish(
            "list_topics",
            started,
            Ok(v1::ListTopicsResponse { topics }),
        )
        .map(Response::new)
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().name;
        let result = async {
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
            .map_err(|e| Error::Unavailable(format!("describe task failed: {e}")))??;
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
            Ok(v1::DescribeTopicResponse {
                topic: Some(self.topic_metadata(&topic)),
                partitions,
            })
        }
        .await;
        self.finish("describe_topic", started, result)
            .map(Response::new)
    }
}

#[tonic::async_trait]
impl v1::metadata_server::Metadata for Api {
    async fn get_metadata(
        &self,
        request: Request<v1::MetadataRequest>,
    ) -> Result<Response<v1::MetadataResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = (|| {
            let topics = if request.topics.is_empty() {
                self.node.topics.all()
            } else {
                request
                    .topics
                    .iter()
                    .map(|t| self.node.topics.get(t))
                    .collect::<Result<Vec<_>, Error>>()?
            };
            let mut nodes = self.registered_nodes();
            let me = self.node.config.node_id;
            match nodes.iter_mut().find(|n| n.id == me) {
                Some(n) => {
                    n.http_address = self
                        .node
                        .http_address
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                }
                None => nodes.push(v1::NodeInfo {
                    id: me,
                    address: self.node.advertised.clone(),
                    http_address: self
                        .node
                        .http_address
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                }),
            }
            Ok(v1::MetadataResponse {
                nodes,
                topics: topics.iter().map(|t| self.topic_metadata(t)).collect(),
                controller_id: self.node.cluster.controller_leader().unwrap_or(0),
            })
        })();
        self.finish("metadata", started, result).map(Response::new)
    }
}
