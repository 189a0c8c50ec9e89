//! The rules a command must pass when it is applied, whoever proposed it, and the rules a
//! whole state must pass when a snapshot brings it. Proposers check the same things first
//! to answer well; these checks are what makes a command sent straight to the controller
//! (or a forged snapshot) unable to put a bad name, a path or an impossible value in the
//! cluster's state.

use super::command::Command;
use super::state::ClusterState;

/// Longest node address (`host:port`).
const MAX_ADDRESS_LEN: usize = 255;
/// Most offsets one commit may carry.
pub const MAX_COMMIT_OFFSETS: usize = 100_000;

/// A name used in the cluster's state (topic, group, aggregation, output topic).
fn name(what: &str, name: &str) -> Result<(), String> {
    crate::names::validate(name).map_err(|e| format!("{what}: {e}"))
}

/// A node's client address: `host:port`, printable, no scheme or path.
fn address(address: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "node address `{}` is not host:port",
            address.escape_default()
        ))
    };
    if address.is_empty() || address.len() > MAX_ADDRESS_LEN {
        return bad();
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return bad();
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        });
    if !host_ok || port.parse::<u16>().is_err() {
        return bad();
    }
    Ok(())
}

impl ClusterState {
    /// Checks `command` against the rules that do not depend on what it changes (those are
    /// answered by `apply` itself: a topic that exists, an unknown aggregation).
    pub(super) fn check(&self, command: &Command) -> Result<(), String> {
        match command {
            Command::RegisterNode { id, address: a } => {
                if !self.voters().contains(id) {
                    return Err(format!("node {id} is not a member of the cluster"));
                }
                address(a)
            }
            Command::CreateTopic { name: n, config } => {
                name("topic name", n)?;
                config.validate()
            }
            Command::AllocateProducerId { owner } => match owner {
                Some(owner) => name("producer owner", owner),
                None => Ok(()),
            },
            Command::DeleteTopic { .. } | Command::DropAggregation { .. } => Ok(()),
            Command::AggregationEmitted { id, partition, .. } => {
                let Some(a) = self.aggregations.values().find(|a| a.id == *id) else {
                    return Ok(()); // answered as unknown
                };
                let out = a.def.emit_to.as_ref().and_then(|t| self.topics.get(t));
                match out {
                    Some(t) if *partition < t.config.partitions => Ok(()),
                    Some(_) => Err(format!(
                        "output topic `{}` has no partition {partition}",
                        a.def.emit_to.as_deref().unwrap_or_default()
                    )),
                    None => Err(format!("aggregation `{}` has no output topic", a.def.name)),
                }
            }
            Command::CommitOffsets { group, offsets, .. } => {
                name("group name", group)?;
                if offsets.len() > MAX_COMMIT_OFFSETS {
                    return Err(format!(
                        "a commit carries at most {MAX_COMMIT_OFFSETS} offsets"
                    ));
                }
                for (topic, partition, _) in offsets {
                    let Some(t) = self.topics.get(topic) else {
                        return Err(format!("unknown topic `{topic}`"));
                    };
                    if *partition >= t.config.partitions {
                        return Err(format!("topic `{topic}` has no partition {partition}"));
                    }
                }
                Ok(())
            }
            Command::DeleteGroupOffsets { group } => name("group name", group),
            Command::CreateAggregation { def } => def.validate(),
            Command::Access(access) => access.check(),
        }
    }

    /// Checks a whole state (a snapshot from a leader): every name, every topic's settings
    /// and replica lists, ids below the next ones handed out, every aggregation.
    pub fn validate(&self) -> Result<(), String> {
        let voters = self.voters();
        for (id, node) in &self.nodes {
            address(&node.address).map_err(|e| format!("node {id}: {e}"))?;
        }
        for (n, t) in &self.topics {
            name("topic name", n)?;
            t.config
                .validate()
                .map_err(|e| format!("topic `{n}`: {e}"))?;
            if t.id == 0 || t.id >= self.next_topic_id {
                return Err(format!(
                    "topic `{n}` has id {} outside the ids handed out",
                    t.id
                ));
            }
            if t.replicas.len() != t.config.partitions as usize {
                return Err(format!(
                    "topic `{n}` lists replicas of {} partitions",
                    t.replicas.len()
                ));
            }
            for replicas in &t.replicas {
                let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
                if replicas.is_empty()
                    || distinct.len() != replicas.len()
                    || replicas.iter().any(|r| !voters.contains(r))
                {
                    return Err(format!(
                        "topic `{n}` has replicas {replicas:?} outside the cluster"
                    ));
                }
            }
        }
        for (group, topics) in &self.offsets {
            name("group name", group)?;
            for t in topics.keys() {
                name("topic name", t)?;
            }
        }
        for (n, a) in &self.aggregations {
            if *n != a.def.name || a.id == 0 || a.id >= self.next_aggregation_id {
                return Err(format!("aggregation `{n}` is inconsistent"));
            }
            a.def
                .validate()
                .map_err(|e| format!("aggregation `{n}`: {e}"))?;
        }
        if self.next_producer_id < 0 {
            return Err("the next producer id is negative".into());
        }
        for (owner, ids) in &self.producers_by_owner {
            name("producer owner", owner)?;
            if ids.len() > super::command::MAX_PRODUCER_IDS_PER_USER
                || ids.iter().any(|id| *id < 1 || *id >= self.next_producer_id)
            {
                return Err(format!("the producer ids of `{owner}` are inconsistent"));
            }
        }
        self.validate_access()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        for ok in ["127.0.0.1:7001", "broker-1.example.com:9092", "[::1]:7001"] {
            assert!(address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            ":7001",
            "host:99999",
            "http://host:1",
            "host/x:1",
            "host :1",
            &format!("{}:1", "h".repeat(300)),
        ] {
            assert!(address(bad).is_err(), "{bad}");
        }
    }
}
