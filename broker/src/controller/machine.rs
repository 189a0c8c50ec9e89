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

    fn publish(&self) {
        self.published.send_replace(Arc::new(self.state.clone()));
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
