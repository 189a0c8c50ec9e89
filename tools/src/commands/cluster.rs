//! `strata cluster status`: every node's health and the Raft state of the controller and of
//! every partition.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use strata_client::{NodeStatus, ReplicaStatus};

use super::Connection;
use crate::output;

/// Cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes (up or down), the leader of the controller and of every partition, commit and
    /// applied indexes, and how far each follower lags its leader.
    Status,
}

/// Runs a cluster command.
pub async fn run(
    command: ClusterCommand,
    connection: &Connection,
    json: bool,
) -> anyhow::Result<()> {
    let ClusterCommand::Status = command;
    let admin = connection.connect().await?.admin();
    let nodes = admin.nodes().await?;
    let mut answers: BTreeMap<u64, NodeStatus> = BTreeMap::new();
    for (id, address) in &nodes {
        match admin.node_status(address, Duration::from_secs(2)).await {
            Ok(status) => {
                answers.insert(*id, status);
            }
            // A node that is down is shown as down; a refusal is the caller's to see.
            Err(e) if e.code() == Some(strata_client::ErrorCode::PermissionDenied) => {
                return Err(e.into());
            }
            Err(_) => {}
        }
    }
    // Each replica as reported by the node that leads it (or by any replica if none leads).
    let mut replicas: BTreeMap<(String, u32), ReplicaStatus> = BTreeMap::new();
    for (id, status) in &answers {
        for r in &status.replicas {
            let key = (r.topic.clone(), r.partition);
            let leads = r.leader == Some(*id);
            if leads || !replicas.contains_key(&key) {
                replicas.insert(key, r.clone());
            }
        }
    }
    let controller = answers.values().find_map(|s| s.controller_leader);
    if json {
        output::json(&json!({
            "nodes": nodes.iter().map(|(id, address)| json!({"id": id, "address": address, "up": answers.contains_key(id)})).collect::<Vec<_>>(),
            "controller_leader": controller,
            "replicas": replicas.values().map(|r| json!({
                "topic": r.topic, "partition": r.partition, "leader": r.leader, "term": r.term,
                "replicas": r.replicas, "last_log_index": r.last_log_index,
                "committed_index": r.committed_index, "applied_index": r.applied_index,
                "high_watermark": r.high_watermark,
                "followers": r.followers.iter().map(|(id, matched, lag)| json!({"node": id, "matched_index": matched, "lag": lag})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|(id, address)| {
            let up = answers.contains_key(id);
            let role = if controller == Some(*id) {
                "controller leader"
            } else {
                ""
            };
            vec![
                id.to_string(),
                address.clone(),
                if up { "up" } else { "DOWN" }.to_string(),
                role.to_string(),
            ]
        })
        .collect();
    output::table(&["NODE", "ADDRESS", "STATE", "ROLE"], &rows);
    println!();
    let show = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let rows: Vec<Vec<String>> = replicas
        .values()
        .map(|r| {
            let lag = if r.followers.is_empty() {
                "-".to_string()
            } else {
                r.followers
                    .iter()
                    .map(|(id, _, lag)| format!("n{id}:{lag}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let name = if r.topic.is_empty() {
                "(controller)".to_string()
            } else {
                format!("{}/{}", r.topic, r.partition)
            };
            vec![
                name,
                show(r.leader),
                r.replicas
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                r.term.to_string(),
                r.committed_index.to_string(),
                r.applied_index.to_string(),
                if r.topic.is_empty() {
                    "-".to_string()
                } else {
                    r.high_watermark.to_string()
                },
                lag,
            ]
        })
        .collect();
    output::table(
        &[
            "GROUP",
            "LEADER",
            "REPLICAS",
            "TERM",
            "COMMIT",
            "APPLIED",
            "HW",
            "FOLLOWER LAG",
        ],
        &rows,
    );
    Ok(())
}
