//! `strata group list | describe`.

use clap::Subcommand;
use serde_json::json;

use super::Connection;
use crate::output;

/// Group commands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List,
    /// Show a group's members, assignment, committed offsets and lag.
    Describe {
        /// Group name.
        group: String,
    },
}

/// Runs a group command.
pub async fn run(command: GroupCommand, connection: &Connection, json: bool) -> anyhow::Result<()> {
    let admin = connection.connect().await?.admin();
    match command {
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            if json {
                for g in &groups {
                    output::json(
                        &json!({"group": g.group, "state": g.state, "members": g.members, "generation": g.generation}),
                    );
                }
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.group.clone(),
                            g.state.clone(),
                            g.members.to_string(),
                            g.generation.to_string(),
                        ]
                    })
                    .collect();
                output::table(&["GROUP", "STATE", "MEMBERS", "GENERATION"], &rows);
            }
        }
        GroupCommand::Describe { group } => {
            let d = admin.describe_group(&group).await?;
            if json {
                output::json(&json!({
                    "group": d.summary.group, "state": d.summary.state, "generation": d.summary.generation,
                    "members": d.members.iter().map(|m| json!({"member_id": m.member_id, "client_id": m.client_id, "assignment": m.assignment})).collect::<Vec<_>>(),
                    "partitions": d.partitions.iter().map(|p| json!({"topic": p.topic, "partition": p.partition, "owner": p.owner,
                        "committed": p.committed, "high_watermark": p.high_watermark, "lag": p.lag})).collect::<Vec<_>>(),
                }));
            } else {
                println!(
                    "group {}: {}, generation {}, {} member(s)",
                    d.summary.group,
                    d.summary.state,
                    d.summary.generation,
                    d.members.len()
                );
                let members: Vec<Vec<String>> = d
                    .members
                    .iter()
                    .map(|m| {
                        let assignment: Vec<String> = m
                            .assignment
                            .iter()
                            .map(|(t, ps)| format!("{t}{ps:?}"))
                            .collect();
                        vec![
                            m.member_id.clone(),
                            m.client_id.clone(),
                            assignment.join(" "),
                        ]
                    })
                    .collect();
                if !members.is_empty() {
                    output::table(&["MEMBER", "CLIENT", "ASSIGNMENT"], &members);
                    println!();
                }
                let rows: Vec<Vec<String>> = d
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            p.committed.map_or("-".into(), |c| c.to_string()),
                            p.high_watermark.to_string(),
                            p.lag.to_string(),
                            p.owner.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                output::table(
                    &["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "OWNER"],
                    &rows,
                );
            }
        }
    }
    Ok(())
}
