//! `Admin` (create, delete, list, describe topics) and `Metadata` (nodes, topics, leaders).

use std::sync::Arc;
use std::time::Instant;

use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::Api;
use crate::error::Error;
use crate::topics::{Topic, TopicConfig};

impl Api {
    fn topic_metadata(&self, topic: &Topic) -> v1::TopicMetadata {
        v1::TopicMetadata {
            name: topic.name.clone(),
            config: Some(topic.config.to_proto()),
            partitions: topic
                .partitions
                .iter()
                .map(|p| v1::PartitionMetadata {
                    partition: p.id(),
                    leader: p.leader(),
                    replicas: vec![p.leader()],
                })
                .collect(),
        }
    }

    /// Runs blocking topic work (it creates or removes files) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Arc<crate::topics::Topics>) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let topics = self.node.topics.clone();
        tokio::task::spawn_blocking(move || work(topics))
            .await
            .map_err(|e| Error::Unavailable(format!("topic task failed: {e}")))?
    }
}

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
            let topic = self
                .blocking(move |topics| topics.create(&name, config))
                .await?;
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
            self.blocking(move |topics| topics.delete(&name)).await?;
            Ok(v1::DeleteTopicResponse {})
        }
        .await;
        self.finish("delete_topic", started, result)
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
            let node = v1::NodeInfo {
                id: self.node.config.node_id,
                address: self.node.address.to_string(),
                http_address: self
                    .node
                    .http_address
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            };
            Ok(v1::MetadataResponse {
                nodes: vec![node],
                topics: topics.iter().map(|t| self.topic_metadata(t)).collect(),
                controller_id: self.node.config.node_id,
            })
        })();
        self.finish("metadata", started, result).map(Response::new)
    }
}
