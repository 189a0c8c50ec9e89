//! A partition replica's high watermark: the offset after its last committed record.
//! Consumers read up to it on every replica; fetches, the search indexer and aggregation
//! queries wait on it.

use std::sync::Arc;

use tokio::sync::watch;

/// Publishes a replica's high watermark. Its state machine moves it as entries are applied,
/// and its log store when the log restarts after a snapshot (see `raft::LogRestarted`).
#[derive(Debug, Clone)]
pub struct HighWatermark(Arc<watch::Sender<u64>>);

impl Default for HighWatermark {
    fn default() -> Self {
        HighWatermark(Arc::new(watch::channel(0).0))
    }
}

impl HighWatermark {
    /// Publishes `next_offset` (wakes followers of it only when it moved).
    pub fn publish(&self, next_offset: u64) {
        self.0.send_if_modified(|hw| {
            let moved = next_offset != *hw;
            *hw = next_offset;
            moved
        });
    }

    /// The high watermark now.
    pub fn get(&self) -> u64 {
        *self.0.borrow()
    }

    /// Follows it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
