//! `Groups`: join, heartbeat, leave, commit and fetch offsets, list and describe.

use std::time::{Duration, Instant};

use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::Api;
use crate::error::Error;
use crate::groups::{JoinRequest, assign::Assignment};

fn to_proto(assignment: &Assignment) -> Vec<v1::TopicPartitions> {
    assignment
        .iter()
        .map(|(topic, partitions)| v1::TopicPartitions {
            topic: topic.clone(),
            partitions: partitions.clone(),
        })
        .collect()
}

impl Api {
    /// Groups are coordinated by the controller's leader; other nodes point there.
    fn check_coordinator(&self) -> Result<(), Error> {
        let cluster = &self.node.cluster;
        let leader = cluster.controller_leader();
        if leader == Some(self.node.config.node_id) {
            // A new leader answers only once it has applied every earlier term's entries, so
            // that the offsets it reads are all the committed ones.
            return if cluster.controller_caught_up() {
                Ok(())
            } else {
                Err(Error::Unavailable(
                    "the new group coordinator is catching up".into(),
                ))
            };
        }
        Err(Error::NotLeader {
            what: "consumer groups (the controller)".into(),
            leader,
            address: leader.and_then(|l| cluster.address_of(l)),
        })
    }
}

#[tonic::async_trait]
impl v1::groups_server::Groups for Api {
    async fn join_group(
        &self,
        request: Request<v1::JoinGroupRequest>,
    ) -> Result<Response<v1::JoinGroupResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = self.check_coordinator() {
            return self.finish("groups", started, Err(e));
        }
        let r = request.into_inner();
        let result = async {
            self.check_serving()?;
            let joined = self
                .node
                .groups
                .join(JoinRequest {
                    group: r.group,
                    member_id: r.member_id,
                    topics: r.topics.into_iter().collect(),
                    session_timeout: Duration::from_millis(u64::from(r.session_timeout_ms)),
                    rebalance_timeout: Duration::from_millis(u64::from(r.rebalance_timeout_ms)),
                    client_id: r.client_id,
                })
                .await?;
            Ok(v1::JoinGroupResponse {
                member_id: joined.member_id,
                generation: joined.generation,
                assignment: to_proto(&joined.assignment),
                heartbeat_interval_ms: joined.heartbeat_interval.as_millis() as u32,
            })
        }
        .await;
        self.finish("join_group", started, result)
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = self.check_coordinator() {
            return self.finish("groups", started, Err(e));
        }
        let r = request.into_inner();
        let result = self
            .node
            .groups
            .heartbeat(&r.group, &r.member_id, r.generation)
            .map(|rejoin| v1::HeartbeatResponse { rejoin });
        self.finish("heartbeat", started, result).map(Response::new)
    }

    async fn leave_group(
        &self,
        request: Request<v1::LeaveGroupRequest>,
    ) -> Result<Response<v1::LeaveGroupResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = self.check_coordinator() {
            return self.finish("groups", started, Err(e));
        }
        let r = request.into_inner();
        let result = self
            .node
            .groups
            .leave(&r.group, &r.member_id)
            .map(|()| v1::LeaveGroupResponse {});
        self.finish("leave_group", started, result)
            .map(Response::new)
    }

    async fn commit_offsets(
        &self,
        request: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = self.check_coordinator() {
            return self.finish("groups", started, Err(e));
        }
        let r = request.into_inner();
        let offsets = r
            .offsets
            .into_iter()
            .map(|o| (o.topic, o.partition, o.offset))
            .collect();
        let result = self
            .node
            .groups
            .commit(&r.group, &r.member_id, r.generation, offsets)
            .await
            .map(|()| v1::CommitOffsetsResponse {});
        self.finish("commit_offsets", started, result)
            .map(Response::new)
    }

    async fn fetch_offsets(
        &self,
        request: Request<v1::FetchOffsetsRequest>,
    ) -> Result<Response<v1::FetchOffsetsResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = self.check_coordinator() {
            return self.finish("groups", started, Err(e));
        }
        let r = request.into_inner();
        let wanted: Vec<(String, u32)> = r
            .partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
            .collect();
        let result = self
            .node
            .groups
            .committed(&r.group, &wanted)
            .map(|offsets| v1::FetchOffsetsResponse {
                offsets: offsets
                    .into_iter()
                    .map(|((topic, partition), offset)| v1::OffsetCommit {
                        topic,
                        partition,
                        offset,
                    })
                    .collect(),
            });
        self.finish("fetch_offsets", started, result)
            .map(Response::new)
    }

    async fn list_groups(
        &self,
        _request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = self.check_coordinator() {
            return self.finish("groups", started, Err(e));
        }
        let groups = self
            .node
            .groups
            .list()
            .into_iter()
            .map(|(group, state, members, generation)| v1::GroupSummary {
                group,
                state: state.to_string(),
                members: members as u32,
                generation,
            })
            .collect();
        self.finish(
            "list_groups",
            started,
            Ok::<_, Error>(v1::ListGroupsResponse { groups }),
        )
        .map(Response::new)
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = self.check_coordinator() {
            return self.finish("groups", started, Err(e));
        }
        let group = request.into_inner().group;
        let result = self
            .node
            .groups
            .describe(&group)
            .map(|d| v1::DescribeGroupResponse {
                summary: Some(v1::GroupSummary {
                    group: d.group.clone(),
                    state: d.state.to_string(),
                    members: d.members.len() as u32,
                    generation: d.generation,
                }),
                members: d
                    .members
                    .iter()
                    .map(|(id, (client_id, assignment))| v1::MemberDescription {
                        member_id: id.clone(),
                        client_id: client_id.clone(),
                        assignment: to_proto(assignment),
                    })
                    .collect(),
                partitions: d
                    .partitions
                    .into_iter()
                    .map(|p| v1::PartitionLag {
                        topic: p.topic,
                        partition: p.partition,
                        owner: p.owner.unwrap_or_default(),
                        committed: p.committed,
                        high_watermark: p.high_watermark,
                        lag: p.lag,
                    })
                    .collect(),
            });
        self.finish("describe_group", started, result)
            .map(Response::new)
    }
}
