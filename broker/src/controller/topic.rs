//! A topic's settings as the cluster stores them (in the controller's state, and so in its
//! snapshots: field names are part of that format).

use serde::{Deserialize, Serialize};
use strata_storage::RetentionPolicy;

/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// A topic's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Number of partitions.
    pub partitions: u32,
    /// Replicas per partition (0 when proposed: min(3, nodes)).
    pub replication_factor: u32,
    /// Delete segments whose records are all older than this (ms).
    pub retention_ms: Option<u64>,
    /// Delete a partition's oldest segments beyond this size.
    pub retention_bytes: Option<u64>,
    /// Whether and what to index for search.
    #[serde(default)]
    pub search: SearchSettings,
}

/// A topic's search settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchSettings {
    /// Whether its events are indexed (the default).
    pub enabled: bool,
    /// JSON paths of the value to index; empty: all of them.
    #[serde(default)]
    pub fields: Vec<String>,
}

impl Default for SearchSettings {
    fn default() -> Self {
        SearchSettings {
            enabled: true,
            fields: Vec::new(),
        }
    }
}

impl TopicConfig {
    /// Checks the settings that do not depend on the cluster: the partition count and the
    /// fields to index. The proposer and the controller's apply both use it.
    pub fn validate(&self) -> Result<(), String> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(format!("partitions must be between 1 and {MAX_PARTITIONS}"));
        }
        crate::search::schema::validate_fields(&self.search.fields)
    }

    /// The retention policy of each partition.
    pub fn retention(&self) -> RetentionPolicy {
        RetentionPolicy {
            max_age: self.retention_ms.map(std::time::Duration::from_millis),
            max_bytes: self.retention_bytes,
        }
    }

    /// Whether a retention limit is set.
    pub fn has_retention(&self) -> bool {
        self.retention_ms.is_some() || self.retention_bytes.is_some()
    }
}
