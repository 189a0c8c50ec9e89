//! The controller's state machine: applies commands to the [`ClusterState`] and publishes
//! every applied state on a watch channel (topics appear and disappear on each node by
//! following it). Its snapshot is the state itself.

use std::io;
use std::sync::Arc;

use strata_storage::RecordBatch;
use tokio::sync::watch;

use super::command::Command;
use super::result::invalid;
use super::state::ClusterState;
use crate::raft::{Applied, Machine, Position};

/// The controller's [`Machine`].
pub(super) struct ControllerMachine {
    state: ClusterState,
    published: watch::Sender<Arc<ClusterState>>,
}

impl ControllerMachine {
    /// A machine publishing on `published`.
    pub(super) fn new(published: watch::Sender<Arc<ClusterState>>) -> ControllerMachine {
        ControllerMachine {
            state: ClusterState::default(),
            published,
        }
    }

    /// Publishes the state, unless this node has already published a later one: a replica
    /// reopened after a failed disk starts over from its snapshot and replays its log, and
    /// the node must not see those older states again (a topic created after the snapshot
    /// would look deleted, and its replica here would be closed and its data removed).
    fn publish(&self) {
        let at = self.state.position.applied_index();
        self.published.send_if_modified(|current| {
            if at < current.position.applied_index() {
                return false;
            }
            *current = Arc::new(self.state.clone());
            true
        });
    }
}

impl Machine for ControllerMachine {
    fn apply(&mut self, position: &Position, batch: &RecordBatch) -> Applied {
        // Assignments read the voters, so the membership must be the one applied so far.
        self.state.position = position.clone();
        let result = match Command::from_batch(batch) {
            Ok(command) => self.state.apply(command),
            Err(e) => invalid(format!("undecodable command: {e}")),
        };
        Applied::Answer(serde_json::to_string(&result).unwrap_or_default())
    }

    fn applied(&mut self, position: &Position) {
        self.state.position = position.clone();
        self.publish();
    }

    fn snapshot(&self, position: &Position) -> Vec<u8> {
        let mut state = self.state.clone();
        state.position = position.clone();
        // Strings, integers and maps with string or integer keys always serialize.
        serde_json::to_vec(&state).unwrap_or_else(|e| {
            tracing::error!(error = %e, "controller state does not serialize; empty snapshot");
            Vec::new()
        })
    }

    fn restore(&mut self, position: &Position, data: &[u8]) -> io::Result<()> {
        let mut state: ClusterState = serde_json::from_slice(data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("controller snapshot undecodable: {e}"),
            )
        })?;
        state.position = position.clone();
        state.validate().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("controller snapshot refused: {e}"),
            )
        })?;
        self.state = state;
        self.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::TopicConfig;
    use crate::controller::command::Command;
    use crate::raft::Position;

    fn create(name: &str) -> RecordBatch {
        Command::CreateTopic {
            name: name.into(),
            config: TopicConfig {
                partitions: 1,
                replication_factor: 1,
                retention_ms: None,
                retention_bytes: None,
                search: Default::default(),
            },
        }
        .to_batch()
        .unwrap()
    }

    /// A controller replica reopened after a failed disk replays its log from the start (or
    /// its snapshot): the node must not see the topics it created since go away meanwhile.
    #[test]
    fn a_replica_replaying_its_log_publishes_no_older_state() {
        let (published, seen) = watch::channel(Arc::new(ClusterState::default()));
        let voters = Position::with_voters(&[1]);
        let mut first = ControllerMachine::new(published.clone());
        for (index, name) in [(1, "a"), (2, "b")] {
            let at = voters.clone().applied_at(index);
            first.apply(&at, &create(name));
            first.applied(&at);
        }
        assert_eq!(seen.borrow().topics.len(), 2);

        let mut reopened = ControllerMachine::new(published);
        let at = voters.clone().applied_at(1);
        reopened.apply(&at, &create("a"));
        reopened.applied(&at);
        assert_eq!(
            seen.borrow().topics.len(),
            2,
            "an older state was published"
        );
        let snapshot = first.snapshot(&voters.clone().applied_at(1));
        reopened
            .restore(&voters.clone().applied_at(1), &snapshot)
            .unwrap();
        assert_eq!(
            seen.borrow().topics.len(),
            2,
            "an older snapshot was published"
        );

        // Past what was published, it publishes again.
        for (index, name) in [(2, "b"), (3, "c")] {
            let at = voters.clone().applied_at(index);
            reopened.apply(&at, &create(name));
            reopened.applied(&at);
        }
        let names: Vec<_> = seen.borrow().topics.keys().cloned().collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
