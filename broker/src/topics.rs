//! Topics on this node: their configuration, persisted beside their partitions, and the
//! registry the services look them up in.
//!
//! Layout: `<data_dir>/topics/<name>/topic.json` and `<data_dir>/topics/<name>/<partition>/`
//! (a partition log). `topic.json` is written last, atomically: a topic directory without
//! it is an interrupted creation and is removed at startup, as are directories renamed
//! `.deleted-*` by a deletion that did not finish.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use strata_proto::v1;
use strata_storage::{Flusher, LogConfig, RetentionPolicy};

use crate::error::{Error, Result};
use crate::names;
use crate::partition::Partition;

/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;
const TOPIC_FILE: &str = "topic.json";

/// A topic's settings, as stored in `topic.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Number of partitions.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Delete segments whose records are all older than this (ms).
    pub retention_ms: Option<u64>,
    /// Delete a partition's oldest segments beyond this size.
    pub retention_bytes: Option<u64>,
}

impl TopicConfig {
    /// Reads the API form: zero means "default" for partitions and replication, "none" for
    /// the retention limits.
    pub fn from_proto(c: &v1::TopicConfig) -> Self {
        TopicConfig {
            partitions: c.partitions,
            replication_factor: c.replication_factor,
            retention_ms: (c.retention_ms > 0).then_some(c.retention_ms),
            retention_bytes: (c.retention_bytes > 0).then_some(c.retention_bytes),
        }
    }

    /// The API form.
    pub fn to_proto(&self) -> v1::TopicConfig {
        v1::TopicConfig {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            retention_ms: self.retention_ms.unwrap_or(0),
            retention_bytes: self.retention_bytes.unwrap_or(0),
        }
    }

    /// The retention policy of each partition.
    pub fn retention(&self) -> RetentionPolicy {
        RetentionPolicy {
            max_age: self.retention_ms.map(std::time::Duration::from_millis),
            max_bytes: self.retention_bytes,
        }
    }
}

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: TopicConfig,
    /// Its partitions, by id.
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    /// A partition by id.
    pub fn partition(&self, id: u32) -> Result<&Arc<Partition>> {
        self.partitions
            .get(id as usize)
            .ok_or_else(|| Error::UnknownPartition {
                topic: self.name.clone(),
                partition: id,
            })
    }
}

/// The topics of this node.
pub struct Topics {
    root: PathBuf,
    node_id: u64,
    cluster_size: u32,
    log_config: LogConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes creations and deletions.
    changes: std::sync::Mutex<()>,
}

impl Topics {
    /// Opens every topic under `<data_dir>/topics`, cleaning up interrupted creations and
    /// deletions.
    pub(crate) fn open(data_dir: &Path, node_id: u64, log_config: LogConfig) -> Result<Topics> {
        let root = data_dir.join("topics");
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let mut topics = BTreeMap::new();
        for entry in std::fs::read_dir(&root).map_err(|e| Error::io(&root, e))? {
            let entry = entry.map_err(|e| Error::io(&root, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() {
                continue;
            }
            if name.starts_with('.') || !path.join(TOPIC_FILE).exists() {
                tracing::info!(path = %path.display(), "removing an interrupted topic creation or deletion");
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                continue;
            }
            let text = std::fs::read_to_string(path.join(TOPIC_FILE))
                .map_err(|e| Error::io(path.join(TOPIC_FILE), e))?;
            let config: TopicConfig = serde_json::from_str(&text).map_err(|e| {
                Error::io(
                    path.join(TOPIC_FILE),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })?;
            let topic = open_topic(&path, &name, config, node_id, &log_config)?;
            topics.insert(name, Arc::new(topic));
        }
        tracing::info!(topics = topics.len(), "topics opened");
        Ok(Topics {
            root,
            node_id,
            cluster_size: 1,
            log_config,
            topics: RwLock::new(topics),
            changes: std::sync::Mutex::new(()),
        })
    }

    /// A topic by name.
    pub fn get(&self, name: &str) -> Result<Arc<Topic>> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(name.to_string()))
    }

    /// Every topic, by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        self.read().values().cloned().collect()
    }

    /// Partitions of a topic (0 if there is no such topic).
    pub fn partition_count(&self, name: &str) -> u32 {
        self.read()
            .get(name)
            .map_or(0, |t| t.partitions.len() as u32)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a topic (blocking: it creates files). A replication factor of 0 means the
    /// default, min(3, nodes).
    pub fn create(&self, name: &str, mut config: TopicConfig) -> Result<Arc<Topic>> {
        names::validate(name)?;
        if config.partitions == 0 || config.partitions > MAX_PARTITIONS {
            return Err(Error::InvalidArgument(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}"
            )));
        }
        if config.replication_factor == 0 {
            config.replication_factor = self.cluster_size.min(3);
        }
        if config.replication_factor > self.cluster_size {
            return Err(Error::InvalidArgument(format!(
                "replication factor {} exceeds the cluster's {} node(s)",
                config.replication_factor, self.cluster_size
            )));
        }
        let _changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if self.read().contains_key(name) {
            return Err(Error::TopicExists(name.to_string()));
        }
        let dir = self.root.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let topic = open_topic(&dir, name, config.clone(), self.node_id, &self.log_config)?;
        // The topic exists once its file does.
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::io(&dir, std::io::Error::other(e)))?;
        write_atomically(&dir, &dir.join(TOPIC_FILE), &json)?;
        sync_dir(&self.root)?;
        let topic = Arc::new(topic);
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), topic.clone());
        tracing::info!(
            topic = name,
            partitions = config.partitions,
            "topic created"
        );
        Ok(topic)
    }

    /// Flushes and closes every partition log (at shutdown; blocking).
    pub fn close_all(&self) -> Result<()> {
        for topic in self.all() {
            for p in &topic.partitions {
                p.close()?;
            }
        }
        Ok(())
    }

    /// Deletes a topic and its data (blocking). Requests already holding a partition finish
    /// against the deleted files.
    pub fn delete(&self, name: &str) -> Result<()> {
        let _changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| Error::UnknownTopic(name.to_string()))?;
        drop(topic);
        let dir = self.root.join(name);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let doomed = self.root.join(format!(".deleted-{name}-{nanos}"));
        std::fs::rename(&dir, &doomed).map_err(|e| Error::io(&dir, e))?;
        sync_dir(&self.root)?;
        if let Err(e) = std::fs::remove_dir_all(&doomed) {
            tracing::warn!(path = %doomed.display(), error = %e, "topic data not removed yet; it goes at the next start");
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }
}

fn open_topic(
    dir: &Path,
    name: &str,
    config: TopicConfig,
    node_id: u64,
    log_config: &LogConfig,
) -> Result<Topic> {
    let shared: Arc<str> = Arc::from(name);
    let partitions = (0..config.partitions)
        .map(|p| {
            Partition::open(
                &dir.join(p.to_string()),
                shared.clone(),
                p,
                log_config.clone(),
                node_id,
            )
            .map(Arc::new)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Topic {
        name: name.to_string(),
        config,
        partitions,
    })
}

/// Writes `path` atomically (see [`crate::fsutil::write_atomically`]).
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsutil::write_atomically(dir, path, bytes).map_err(|e| Error::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    crate::fsutil::sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// The flusher and storage settings shared by every partition of a node.
pub(crate) fn node_log_config(config: &crate::Config) -> Result<LogConfig> {
    let flusher =
        Flusher::new().map_err(|e| Error::Unavailable(format!("cannot start the flusher: {e}")))?;
    Ok(config.log_config(Some(flusher)))
}
