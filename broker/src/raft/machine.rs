//! openraft's state machine over a domain [`Machine`]: raft keeps the position in the log,
//! answers proposers and handles snapshots; the machine decides what a committed batch does
//! (a controller command, a partition's producer state and aggregations).

use std::io;
use std::path::Path;

use bytes::Bytes;
use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use strata_storage::RecordBatch;

use super::snapshot::{Position, SnapshotEnd, Snapshots, StateSnapshotBuilder};
use super::{Applied, RaftLogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// What a group does with its committed entries: the domain side of a state machine. Calls
/// come one at a time, in log order, from the group's state-machine task.
pub trait Machine: Send + Sync + 'static {
    /// Applies a committed batch; `position` is already past it. The answer goes to the
    /// proposer, if it waits on this replica.
    fn apply(&mut self, position: &Position, batch: &RecordBatch) -> Applied;

    /// After a run of entries, once every answer went out: publish what moved.
    fn applied(&mut self, position: &Position);

    /// The state at `position` as a snapshot: JSON with the position under `"position"`.
    fn snapshot(&self, position: &Position) -> Vec<u8>;

    /// Replaces the state with a snapshot's (`data` as [`Machine::snapshot`] wrote it,
    /// `position` as the snapshot's description records it).
    fn restore(&mut self, position: &Position, data: &[u8]) -> io::Result<()>;
}

/// The openraft state machine of a group: its position, its snapshots and its [`Machine`].
pub(super) struct StateMachine {
    position: Position,
    snapshots: Snapshots,
    machine: Box<dyn Machine>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// The state machine of the group whose snapshot file is in `dir`.
    pub(super) fn open(
        dir: &Path,
        end: SnapshotEnd,
        machine: Box<dyn Machine>,
    ) -> io::Result<StateMachine> {
        Ok(StateMachine {
            position: Position::default(),
            snapshots: Snapshots::open(dir, end)?,
            machine,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Bytes;
    type SnapshotBuilder = StateSnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<RaftLogId>, StoredMembership)> {
        Ok(self.position.applied_state())
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: futures_util::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let answer = match self.position.advance(&entry) {
                None => Applied::None,
                Some(batch) => self.machine.apply(&self.position, batch),
            };
            if let Some(responder) = responder {
                responder.send(answer);
            }
        }
        self.machine.applied(&self.position);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> StateSnapshotBuilder {
        let data = Bytes::from(self.machine.snapshot(&self.position));
        self.snapshots.builder(&self.position, data)
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: Bytes) -> io::Result<()> {
        let machine = &mut self.machine;
        self.position = self
            .snapshots
            .install(meta, data, |position, data| machine.restore(position, data))
            .await?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(self.snapshots.current().await)
    }
}
