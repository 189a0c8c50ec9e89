//! Changes to the cluster's metadata and how they apply. A command travels as the JSON
//! value of a one-record batch in the controller's log; applying it is deterministic (replica
//! assignment is computed from the state alone: round robin over the voters, starting at a
//! different node for every partition, so preferred leaders spread evenly), and a command
//! that breaks a rule is rejected the same way on every node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_storage::RecordBatch;

use super::access::AccessCommand;
use super::result::{CommandResult, invalid};
use super::state::{AggregationMeta, ClusterState, EmitProgress, NodeInfo, TopicMeta};
use super::topic::TopicConfig;

/// Most producer ids a user holds at once; allocating more forgets its oldest.
pub const MAX_PRODUCER_IDS_PER_USER: usize = 1_000;
use crate::agg::def::AggregationDef;

/// A change to the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// A node announces its client address.
    RegisterNode {
        /// The node.
        id: u64,
        /// Its client address.
        address: String,
    },
    /// Creates a topic; replicas are assigned on apply.
    CreateTopic {
        /// Its name (validated by the proposer).
        name: String,
        /// Its settings; a replication factor of 0 means min(3, nodes).
        config: TopicConfig,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// Its name.
        name: String,
    },
    /// Allocates an idempotent producer id, to `owner` when the cluster requires a login.
    AllocateProducerId {
        /// The user the id is issued to (only it may produce with it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Stores a consumer group's offsets.
    CommitOffsets {
        /// The group.
        group: String,
        /// (topic, partition, offset) triples.
        offsets: Vec<(String, u32, u64)>,
        /// The controller term in which the coordinator checked the committer's generation:
        /// the commit applies only if it was appended in that term, so a coordinator
        /// deposed between its check and the append (its proposal forwarded to, or taken
        /// over by, a newer leader) stores nothing. Absent in commits logged before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<u64>,
    },
    /// Forgets a consumer group's offsets.
    DeleteGroupOffsets {
        /// The group.
        group: String,
    },
    /// Defines an aggregation (validated again on apply).
    CreateAggregation {
        /// Its definition.
        def: Box<AggregationDef>,
    },
    /// Drops an aggregation.
    DropAggregation {
        /// Its name.
        name: String,
    },
    /// Changes users, ACLs or the token secret.
    Access(AccessCommand),
    /// Records how far an aggregation's output partition has been written (only forward).
    AggregationEmitted {
        /// The aggregation's id.
        id: u64,
        /// The output partition.
        partition: u32,
        /// Where it stands now.
        progress: EmitProgress,
    },
}

impl Command {
    /// The command as a one-record batch.
    pub fn to_batch(&self) -> Result<RecordBatch, String> {
        crate::raft::json_batch(self, false)
    }

    pub(super) fn from_batch(batch: &RecordBatch) -> Result<Command, String> {
        let record = batch.records().next().ok_or("empty command batch")?;
        serde_json::from_slice(record.value.unwrap_or_default()).map_err(|e| e.to_string())
    }
}

impl ClusterState {
    /// Applies a command (deterministically: every node gets the same state and answer).
    /// A command that breaks a rule is answered [`CommandResult::Invalid`] and changes
    /// nothing, whoever proposed it.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        if let Err(message) = self.check(&command) {
            return invalid(message);
        }
        match command {
            Command::RegisterNode { id, address } => {
                self.nodes.insert(id, NodeInfo { address });
                CommandResult::Ok
            }
            Command::CreateTopic { name, mut config } => {
                if self.topics.contains_key(&name) {
                    return CommandResult::TopicExists;
                }
                let voters = self.voters();
                let nodes = voters.len() as u32;
                if nodes == 0 {
                    return invalid("the cluster has no nodes");
                }
                if config.replication_factor == 0 {
                    config.replication_factor = nodes.min(3);
                }
                if config.replication_factor > nodes {
                    return invalid(format!(
                        "replication factor {} exceeds the cluster's {nodes} node(s)",
                        config.replication_factor
                    ));
                }
                let id = self.next_topic_id.max(1);
                let Some(next) = id.checked_add(1) else {
                    return invalid("topic ids ran out");
                };
                self.next_topic_id = next;
                let replicas = (0..config.partitions)
                    .map(|p| {
                        let start = (id as usize + p as usize) % voters.len();
                        (0..config.replication_factor as usize)
                            .map(|k| voters[(start + k) % voters.len()])
                            .collect()
                    })
                    .collect();
                self.topics.insert(
                    name,
                    TopicMeta {
                        id,
                        config,
                        replicas,
                    },
                );
                CommandResult::TopicCreated { id }
            }
            Command::DeleteTopic { name } => {
                if !self.topics.contains_key(&name) {
                    return CommandResult::UnknownTopic;
                }
                if let Some(a) = self
                    .aggregations
                    .values()
                    .find(|a| a.def.emit_to.as_ref() == Some(&name) && a.def.topic != name)
                {
                    return invalid(format!(
                        "aggregation `{}` writes its windows to `{name}`; drop it first",
                        a.def.name
                    ));
                }
                self.topics.remove(&name);
                self.aggregations.retain(|_, a| a.def.topic != name);
                for topics in self.offsets.values_mut() {
                    topics.remove(&name);
                }
                CommandResult::Ok
            }
            Command::AllocateProducerId { owner } => {
                let id = self.next_producer_id.max(1);
                let Some(next) = id.checked_add(1) else {
                    return invalid("producer ids ran out");
                };
                self.next_producer_id = next;
                if let Some(owner) = owner {
                    let ids = self.producers_by_owner.entry(owner).or_default();
                    ids.insert(id);
                    // A user's oldest ids go first: a producer lives on its newest.
                    while ids.len() > MAX_PRODUCER_IDS_PER_USER {
                        ids.pop_first();
                    }
                }
                CommandResult::ProducerId { id }
            }
            Command::CommitOffsets {
                group,
                offsets,
                term,
            } => {
                let appended_in = self.position.applied_term();
                if let Some(term) = term
                    && appended_in.is_some_and(|t| t != term)
                {
                    return CommandResult::Invalid {
                        message: format!(
                            "the group coordinator of term {term} was deposed before this commit was stored; rejoin the group"
                        ),
                    };
                }
                let g = self.offsets.entry(group).or_default();
                for (topic, partition, offset) in offsets {
                    g.entry(topic).or_default().insert(partition, offset);
                }
                CommandResult::Ok
            }
            Command::DeleteGroupOffsets { group } => {
                self.offsets.remove(&group);
                CommandResult::Ok
            }
            Command::CreateAggregation { def } => {
                if self.aggregations.contains_key(&def.name) {
                    return CommandResult::AggregationExists;
                }
                if !self.topics.contains_key(&def.topic) {
                    return CommandResult::UnknownTopic;
                }
                if let Some(out) = &def.emit_to
                    && !self.topics.contains_key(out)
                {
                    return invalid(format!(
                        "output topic `{out}` does not exist: create it first"
                    ));
                }
                let id = self.next_aggregation_id.max(1);
                let Some(next) = id.checked_add(1) else {
                    return invalid("aggregation ids ran out");
                };
                self.next_aggregation_id = next;
                self.aggregations.insert(
                    def.name.clone(),
                    AggregationMeta {
                        id,
                        def: *def,
                        emitted: BTreeMap::new(),
                    },
                );
                CommandResult::AggregationCreated { id }
            }
            Command::DropAggregation { name } => {
                if self.aggregations.remove(&name).is_none() {
                    return CommandResult::UnknownAggregation;
                }
                CommandResult::Ok
            }
            Command::Access(access) => self.apply_access(access),
            Command::AggregationEmitted {
                id,
                partition,
                progress,
            } => {
                let Some(a) = self.aggregations.values_mut().find(|a| a.id == id) else {
                    return CommandResult::UnknownAggregation;
                };
                let stored = a.emitted.entry(partition).or_insert(progress);
                if progress.upto > stored.upto {
                    *stored = progress;
                }
                CommandResult::Ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::controller::MAX_PARTITIONS;
    use crate::raft::Position;

    fn state_with(voters: &[u64]) -> ClusterState {
        ClusterState {
            position: Position::with_voters(voters),
            ..Default::default()
        }
    }

    fn topic(partitions: u32, rf: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            replication_factor: rf,
            retention_ms: None,
            retention_bytes: None,
            search: Default::default(),
        }
    }

    #[test]
    fn assignments_spread_preferred_leaders_and_rules_hold() {
        let mut s = state_with(&[1, 2, 3]);
        let r = s.apply(Command::CreateTopic {
            name: "t".into(),
            config: topic(6, 0),
        });
        assert_eq!(r, CommandResult::TopicCreated { id: 1 });
        let t = &s.topics["t"];
        assert_eq!(t.config.replication_factor, 3);
        let mut leaders = BTreeMap::<u64, u32>::new();
        for replicas in &t.replicas {
            let distinct: BTreeSet<_> = replicas.iter().collect();
            assert_eq!(distinct.len(), 3);
            *leaders.entry(replicas[0]).or_default() += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        assert_eq!(
            s.apply(Command::CreateTopic {
                name: "t".into(),
                config: topic(1, 1)
            }),
            CommandResult::TopicExists
        );
        assert!(matches!(
            s.apply(Command::CreateTopic {
                name: "u".into(),
                config: topic(1, 4)
            }),
            CommandResult::Invalid { .. }
        ));
        assert_eq!(
            s.apply(Command::AllocateProducerId { owner: None }),
            CommandResult::ProducerId { id: 1 }
        );
        assert_eq!(
            s.apply(Command::AllocateProducerId { owner: None }),
            CommandResult::ProducerId { id: 2 }
        );
        assert_eq!(
            s.apply(Command::DeleteTopic { name: "t".into() }),
            CommandResult::Ok
        );
        assert_eq!(
            s.apply(Command::DeleteTopic { name: "t".into() }),
            CommandResult::UnknownTopic
        );
        // The state (integer-keyed maps inside) survives its snapshot JSON.
        s.apply(Command::RegisterNode {
            id: 2,
            address: "127.0.0.1:7002".into(),
        });
        s.apply(Command::CreateTopic {
            name: "v".into(),
            config: topic(2, 0),
        });
        assert_eq!(
            s.apply(Command::CommitOffsets {
                group: "g".into(),
                offsets: vec![("v".into(), 1, 5)],
                term: None,
            }),
            CommandResult::Ok
        );
        let back: ClusterState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.validate(), Ok(()));
    }

    /// Whoever proposes it (a proposer that skipped its checks, a command sent straight to
    /// the controller), a command with a path for a name, a bad address, offsets of nothing
    /// or a definition that does not hold is answered Invalid and changes nothing.
    #[test]
    fn commands_that_break_a_rule_change_nothing() {
        let mut s = state_with(&[1, 2, 3]);
        s.apply(Command::CreateTopic {
            name: "t".into(),
            config: topic(2, 0),
        });
        let before = s.clone();
        let refused = [
            Command::CreateTopic {
                name: "../../x".into(),
                config: topic(1, 0),
            },
            Command::CreateTopic {
                name: "x/y".into(),
                config: topic(1, 0),
            },
            Command::CreateTopic {
                name: "ok".into(),
                config: topic(MAX_PARTITIONS + 1, 0),
            },
            Command::CreateTopic {
                name: "ok".into(),
                config: TopicConfig {
                    search: crate::controller::SearchSettings {
                        enabled: true,
                        fields: vec!["a..b".into()],
                    },
                    ..topic(1, 0)
                },
            },
            Command::RegisterNode {
                id: 9,
                address: "127.0.0.1:7009".into(),
            },
            Command::RegisterNode {
                id: 2,
                address: "http://evil/x".into(),
            },
            Command::CommitOffsets {
                group: "../g".into(),
                offsets: vec![("t".into(), 0, 1)],
                term: None,
            },
            Command::CommitOffsets {
                group: "g".into(),
                offsets: vec![("nope".into(), 0, 1)],
                term: None,
            },
            Command::CommitOffsets {
                group: "g".into(),
                offsets: vec![("t".into(), 2, 1)],
                term: None,
            },
            Command::DeleteGroupOffsets {
                group: String::new(),
            },
            Command::CreateAggregation {
                def: Box::new(crate::agg::def::AggregationDef {
                    name: "../a".into(),
                    ..crate::agg::def::tests::sample("a", "t")
                }),
            },
        ];
        for command in refused {
            let answer = s.apply(command.clone());
            assert!(
                matches!(answer, CommandResult::Invalid { .. }),
                "{command:?} answered {answer:?}"
            );
            assert_eq!(s, before, "{command:?} changed the state");
        }
    }

    #[test]
    fn a_snapshot_with_a_bad_name_or_id_is_refused() {
        let mut s = state_with(&[1, 2, 3]);
        s.apply(Command::CreateTopic {
            name: "t".into(),
            config: topic(2, 0),
        });
        assert_eq!(s.validate(), Ok(()));
        let mut forged = s.clone();
        let meta = forged.topics.remove("t").unwrap();
        forged.topics.insert("../t".into(), meta);
        assert!(forged.validate().is_err());
        let mut forged = s.clone();
        forged.topics.get_mut("t").unwrap().id = 7;
        assert!(forged.validate().is_err());
        let mut forged = s.clone();
        forged.topics.get_mut("t").unwrap().replicas[0] = vec![4];
        assert!(forged.validate().is_err());
    }

    #[test]
    fn output_progress_only_moves_forward_and_output_topics_stay_while_used() {
        let mut s = state_with(&[1, 2, 3]);
        for name in ["in", "out"] {
            s.apply(Command::CreateTopic {
                name: name.into(),
                config: topic(2, 0),
            });
        }
        let def = crate::agg::def::AggregationDef {
            emit_to: Some("out".into()),
            ..crate::agg::def::tests::sample("a", "in")
        };
        assert_eq!(
            s.apply(Command::CreateAggregation {
                def: Box::new(def.clone())
            }),
            CommandResult::AggregationCreated { id: 1 }
        );
        let emitted = |s: &mut ClusterState, partition, upto, next_seq| {
            s.apply(Command::AggregationEmitted {
                id: 1,
                partition,
                progress: EmitProgress { upto, next_seq },
            })
        };
        assert_eq!(emitted(&mut s, 0, 5_000, 3), CommandResult::Ok);
        assert_eq!(s.aggregations["a"].emitted_everywhere(2), None);
        emitted(&mut s, 1, 4_000, 1);
        emitted(&mut s, 1, 3_000, 9); // an old leader's late report
        assert_eq!(s.aggregations["a"].emitted_everywhere(2), Some(4_000));
        assert_eq!(s.aggregations["a"].emitted[&1].next_seq, 1);
        assert!(matches!(
            s.apply(Command::DeleteTopic { name: "out".into() }),
            CommandResult::Invalid { message } if message.contains("drop it first")
        ));
        // Deleting the source drops the aggregation, and then the output can go.
        assert_eq!(
            s.apply(Command::DeleteTopic { name: "in".into() }),
            CommandResult::Ok
        );
        assert_eq!(
            s.apply(Command::DeleteTopic { name: "out".into() }),
            CommandResult::Ok
        );
        assert_eq!(
            s.apply(Command::AggregationEmitted {
                id: 1,
                partition: 0,
                progress: EmitProgress {
                    upto: 9_000,
                    next_seq: 4
                },
            }),
            CommandResult::UnknownAggregation
        );
    }

    #[test]
    fn commands_round_trip_through_a_batch() {
        let c = Command::CommitOffsets {
            group: "g".into(),
            offsets: vec![("t".into(), 3, 42)],
            term: None,
        };
        let batch = c.to_batch().unwrap();
        assert_eq!(Command::from_batch(&batch).unwrap(), c);
    }

    /// A commit checked by the coordinator of one term and appended in another (its
    /// coordinator was deposed in between, found by the fault suite) stores nothing.
    #[test]
    fn a_commit_appended_in_another_term_than_its_check_is_refused() {
        let mut s = state_with(&[1, 2, 3]);
        s.apply(Command::CreateTopic {
            name: "t".into(),
            config: topic(1, 1),
        });
        s.position = Position::with_voters(&[1, 2, 3]).applied_at(7); // appended in term 1
        let commit = |term| Command::CommitOffsets {
            group: "g".into(),
            offsets: vec![("t".into(), 0, 40)],
            term,
        };
        assert!(matches!(
            s.apply(commit(Some(2))),
            CommandResult::Invalid { .. }
        ));
        assert!(!s.offsets.contains_key("g"));
        assert_eq!(s.apply(commit(Some(1))), CommandResult::Ok);
        assert_eq!(
            s.apply(commit(None)),
            CommandResult::Ok,
            "logged before the field"
        );
        assert_eq!(s.offsets["g"]["t"][&0], 40);
    }
}
