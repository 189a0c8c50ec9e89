//! `Groups`: join, heartbeat, leave, commit and fetch offsets, list and describe. Groups
//! are coordinated by the controller's leader; other nodes point there.

use std::time::Duration;

use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::{Operation, ResourceKind};
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

#[tonic::async_trait]
impl v1::groups_server::Groups for Api {
    async fn join_group(
        &self,
        request: Request<v1::JoinGroupRequest>,
    ) -> Result<Response<v1::JoinGroupResponse>, Status> {
        let group = &request.get_ref().group;
        let caller = self.allow(&request, ResourceKind::Group, group, Operation::Read)?;
        for topic in &request.get_ref().topics {
            self.require(&caller, ResourceKind::Topic, topic, Operation::Read)?;
        }
        self.node.groups.check_coordinator()?;
        let r = request.into_inner();
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
        Ok(Response::new(v1::JoinGroupResponse {
            member_id: joined.member_id,
            generation: joined.generation,
            assignment: to_proto(&joined.assignment),
            heartbeat_interval_ms: joined.heartbeat_interval.as_millis() as u32,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let group = &request.get_ref().group;
        self.allow(&request, ResourceKind::Group, group, Operation::Read)?;
        self.node.groups.check_coordinator()?;
        let r = request.into_inner();
        let rejoin = self
            .node
            .groups
            .heartbeat(&r.group, &r.member_id, r.generation)?;
        Ok(Response::new(v1::HeartbeatResponse { rejoin }))
    }

    async fn leave_group(
        &self,
        request: Request<v1::LeaveGroupRequest>,
    ) -> Result<Response<v1::LeaveGroupResponse>, Status> {
        let group = &request.get_ref().group;
        self.allow(&request, ResourceKind::Group, group, Operation::Read)?;
        self.node.groups.check_coordinator()?;
        let r = request.into_inner();
        self.node.groups.leave(&r.group, &r.member_id)?;
        Ok(Response::new(v1::LeaveGroupResponse {}))
    }

    async fn commit_offsets(
        &self,
        request: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        let group = &request.get_ref().group;
        let caller = self.allow(&request, ResourceKind::Group, group, Operation::Read)?;
        for o in &request.get_ref().offsets {
            self.require(&caller, ResourceKind::Topic, &o.topic, Operation::Read)?;
        }
        self.node.groups.check_coordinator()?;
        let r = request.into_inner();
        let offsets = r
            .offsets
            .into_iter()
            .map(|o| (o.topic, o.partition, o.offset))
            .collect();
        self.node
            .groups
            .commit(&r.group, &r.member_id, r.generation, offsets)
            .await?;
        Ok(Response::new(v1::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<v1::FetchOffsetsRequest>,
    ) -> Result<Response<v1::FetchOffsetsResponse>, Status> {
        let group = &request.get_ref().group;
        self.allow(&request, ResourceKind::Group, group, Operation::Describe)?;
        self.node.groups.check_coordinator_read().await?;
        let r = request.into_inner();
        let wanted: Vec<(String, u32)> = r
            .partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
            .collect();
        let offsets = self.node.groups.committed(&r.group, &wanted)?;
        Ok(Response::new(v1::FetchOffsetsResponse {
            offsets: offsets
                .into_iter()
                .map(|((topic, partition), offset)| v1::OffsetCommit {
                    topic,
                    partition,
                    offset,
                })
                .collect(),
        }))
    }

    async fn list_groups(
        &self,
        request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let caller = self.caller(&request)?;
        self.node.groups.check_coordinator_read().await?;
        let groups = self
            .node
            .groups
            .list()
            .into_iter()
            .filter(|(group, ..)| {
                self.may(&caller, ResourceKind::Group, group, Operation::Describe)
            })
            .map(|(group, state, members, generation)| v1::GroupSummary {
                group,
                state: state.to_string(),
                members: members as u32,
                generation,
            })
            .collect();
        Ok(Response::new(v1::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let group = &request.get_ref().group;
        self.allow(&request, ResourceKind::Group, group, Operation::Describe)?;
        self.node.groups.check_coordinator_read().await?;
        let group = request.into_inner().group;
        let d = self.node.groups.describe(&group)?;
        Ok(Response::new(v1::DescribeGroupResponse {
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
        }))
    }
}
