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

use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_proto::v1;
use strata_storage::{Flusher, LogConfig, PartitionLog, RetentionPolicy};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::partition::{Partition, PartitionParts};
use crate::raft::controller::TopicMeta;
use crate::raft::service::GroupRaft;
use crate::raft::store::SnapshotHint;
use crate::raft::{ClusterState, LogStore, PartitionSm, RaftEnv, TypeConfig, partition_group};
use crate::search::PartitionIndex;

/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

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
    /// Reads the API form: zero means "default" for partitions and replication, "none" for
    /// the retention limits.
    pub fn from_proto(c: &v1::TopicConfig) -> Self {
        TopicConfig {
            partitions: c.partitions,
            replication_factor: c.replication_factor,
            retention_ms: (c.retention_ms > 0).then_some(c.retention_ms),
            retention_bytes: (c.retention_bytes > 0).then_some(c.retention_bytes),
            search: SearchSettings {
                enabled: !c.search_disabled,
                fields: c.search_fields.clone(),
            },
        }
    }

    /// The API form.
    pub fn to_proto(&self) -> v1::TopicConfig {
        v1::TopicConfig {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            retention_ms: self.retention_ms.unwrap_or(0),
            retention_bytes: self.retention_bytes.unwrap_or(0),
            search_disabled: !self.search.enabled,
            search_fields: self.search.fields.clone(),
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

/// A topic of the cluster and its replicas on this node.
#[derive(Debug)]
pub struct Topic {
    /// Its name.
    pub name: String,
    /// Its id in the cluster.
    pub id: u32,
    /// Its settings.
    pub config: TopicConfig,
    /// Replicas of each partition; the first is the preferred leader.
    pub replicas: Vec<Vec<u64>>,
    /// The partitions this node holds a replica of, by id.
    pub partitions: Vec<Arc<Partition>>,
    cluster: watch::Receiver<Arc<ClusterState>>,
}

impl Topic {
    /// This node's replica of a partition. A partition this node holds no replica of is
    /// answered with NOT_LEADER and its preferred leader.
    pub fn partition(&self, id: u32) -> Result<&Arc<Partition>> {
        if id >= self.config.partitions {
            return Err(Error::UnknownPartition {
                topic: self.name.clone(),
                partition: id,
            });
        }
        self.partitions
            .iter()
            .find(|p| p.id() == id)
            .ok_or_else(|| {
                let leader = self
                    .replicas
                    .get(id as usize)
                    .and_then(|r| r.first().copied());
                Error::NotLeader {
                    what: format!("{}/{id}", self.name),
                    leader,
                    address: leader.and_then(|l| self.cluster.borrow().address_of(l)),
                }
            })
    }

    /// Number of partitions in the cluster.
    pub fn partition_count(&self) -> u32 {
        self.config.partitions
    }
}

/// The cluster's topics as this node follows them from the controller, with the partition
/// replicas it holds. Directories: `<data_dir>/topics/<name>-<id>/<partition>/`.
pub struct Topics {
    root: PathBuf,
    env: RaftEnv,
    log_config: LogConfig,
    cluster: watch::Receiver<Arc<ClusterState>>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// One reconciliation at a time.
    reconciling: tokio::sync::Mutex<()>,
    /// Bumped after every reconciliation.
    version: watch::Sender<u64>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Topics {
    /// The topics of the cluster whose state `cluster` follows; nothing is opened until
    /// [`Topics::reconcile`].
    pub(crate) fn new(
        data_dir: &Path,
        env: RaftEnv,
        log_config: LogConfig,
        cluster: watch::Receiver<Arc<ClusterState>>,
    ) -> Result<Topics> {
        let root = data_dir.join("topics");
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let (version, _) = watch::channel(0);
        Ok(Topics {
            root,
            env,
            log_config,
            cluster,
            topics: RwLock::new(BTreeMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
            version,
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
        self.read().get(name).map_or(0, |t| t.partition_count())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done` holds for the topics (checked after every reconciliation).
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&Topics) -> bool) -> bool {
        let mut rx = self.version.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if done(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && done(self)
    }

    /// Brings this node's replicas in line with the cluster state: opens the partitions
    /// assigned to it (starting their Raft groups), stops and deletes those of deleted
    /// topics.
    pub async fn reconcile(&self) -> Result<()> {
        let _one = self.reconciling.lock().await;
        let state = self.cluster.borrow().clone();
        let result = self.reconcile_with(&state).await;
        self.version.send_modify(|v| *v += 1);
        result
    }

    async fn reconcile_with(&self, state: &ClusterState) -> Result<()> {
        let current = self.all();
        for topic in &current {
            let keep = state
                .topics
                .get(&topic.name)
                .is_some_and(|t| t.id == topic.id);
            if !keep {
                self.topics
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&topic.name);
                self.remove_topic(topic).await?;
            }
        }
        for (name, meta) in &state.topics {
            if self.read().get(name).is_some_and(|t| t.id == meta.id) {
                continue;
            }
            let topic = self.open_topic(name, meta).await?;
            self.topics
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), Arc::new(topic));
            tracing::info!(topic = %name, id = meta.id, "topic opened");
        }
        if state.position.last_applied.is_some() {
            self.remove_stale_dirs(state)?;
        }
        Ok(())
    }

    fn dir_of(&self, name: &str, id: u32) -> PathBuf {
        self.root.join(format!("{name}-{id}"))
    }

    async fn open_topic(&self, name: &str, meta: &TopicMeta) -> Result<Topic> {
        let dir = self.dir_of(name, meta.id);
        let shared: Arc<str> = Arc::from(name);
        let mut partitions = Vec::new();
        for (p, replicas) in meta.replicas.iter().enumerate() {
            if !replicas.contains(&self.env.node_id) {
                continue;
            }
            let p = p as u32;
            let partition = self
                .open_partition(
                    &dir.join(p.to_string()),
                    shared.clone(),
                    meta.id,
                    p,
                    replicas,
                    &meta.config.search,
                )
                .await?;
            let partition = Arc::new(partition);
            crate::search::index::start(&partition);
            partitions.push(partition);
        }
        Ok(Topic {
            name: name.to_string(),
            id: meta.id,
            config: meta.config.clone(),
            replicas: meta.replicas.clone(),
            partitions,
            cluster: self.cluster.clone(),
        })
    }

    async fn open_partition(
        &self,
        dir: &Path,
        topic: Arc<str>,
        topic_id: u32,
        id: u32,
        replicas: &[u64],
        search: &SearchSettings,
    ) -> Result<Partition> {
        let group = partition_group(topic_id, id);
        let storage = |e| Error::from_storage(&topic, id, e);
        let io = |e: std::io::Error| Error::io(dir, e);
        let log = {
            let (dir, config) = (dir.to_owned(), self.log_config.clone());
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            tokio::task::spawn_blocking(move || PartitionLog::open(&dir, config))
                .await
                .map_err(|e| Error::Unavailable(format!("open task failed: {e}")))?
                .map_err(storage)?
        };
        let (high_watermark, _) = watch::channel(0);
        let high_watermark = Arc::new(high_watermark);
        let hint = SnapshotHint::publishing(high_watermark.clone());
        let sm = PartitionSm::open(dir, hint.clone(), log.clone()).map_err(io)?;
        let state = sm.state();
        let aggs = sm.aggs();
        let store = LogStore::open(log.clone(), hint).map_err(io)?;
        let raft = openraft::Raft::new(
            self.env.node_id,
            self.env.config.clone(),
            self.env.router.factory(group),
            store,
            sm,
        )
        .await
        .map_err(|e| Error::Unavailable(format!("{topic}/{id}: raft did not start: {e}")))?;
        self.env
            .groups
            .insert(group, GroupRaft::Partition(raft.clone()));
        start_group(&raft, self.env.node_id, replicas).await;
        Ok(Partition::new(PartitionParts {
            topic,
            id,
            group,
            node_id: self.env.node_id,
            replicas: replicas.to_vec(),
            log,
            raft,
            state,
            aggs,
            high_watermark,
            cluster: self.cluster.clone(),
            search: search
                .enabled
                .then(|| Arc::new(PartitionIndex::new(dir, &search.fields))),
        }))
    }

    async fn remove_topic(&self, topic: &Topic) -> Result<()> {
        for p in &topic.partitions {
            self.env.groups.remove(p.group());
            if let Err(e) = p.close().await {
                tracing::warn!(topic = %topic.name, partition = p.id(), error = %e, "closing a deleted partition failed");
            }
        }
        let dir = self.dir_of(&topic.name, topic.id);
        self.delete_dir(&dir)?;
        tracing::info!(topic = %topic.name, id = topic.id, "topic deleted");
        Ok(())
    }

    /// Deletes directories of topics the cluster deleted while this node was away.
    fn remove_stale_dirs(&self, state: &ClusterState) -> Result<()> {
        let live: std::collections::BTreeSet<String> = state
            .topics
            .iter()
            .map(|(name, t)| format!("{name}-{}", t.id))
            .collect();
        for entry in std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))? {
            let entry = entry.map_err(|e| Error::io(&self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = if name.starts_with(".deleted-") {
                true
            } else {
                // `<name>-<id>` with an id the controller handed out and no longer has.
                name.rsplit_once('-')
                    .and_then(|(_, id)| id.parse::<u32>().ok())
                    .is_some_and(|id| id < state.next_topic_id && !live.contains(&name))
            };
            if stale && entry.path().is_dir() {
                self.delete_dir(&entry.path())?;
            }
        }
        Ok(())
    }

    fn delete_dir(&self, dir: &Path) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let doomed = if name.starts_with(".deleted-") {
            dir.to_owned()
        } else {
            let doomed = self.root.join(format!(".deleted-{name}-{nanos}"));
            std::fs::rename(dir, &doomed).map_err(|e| Error::io(dir, e))?;
            sync_dir(&self.root)?;
            doomed
        };
        if let Err(e) = std::fs::remove_dir_all(&doomed) {
            tracing::warn!(path = %doomed.display(), error = %e, "topic data not removed yet; it goes at the next start");
        }
        Ok(())
    }

    /// Stops every partition's Raft group, then flushes and closes its log (at shutdown).
    pub async fn close_all(&self) -> Result<()> {
        let topics: Vec<Arc<Topic>> =
            std::mem::take(&mut *self.topics.write().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .collect();
        for topic in topics {
            for p in &topic.partitions {
                self.env.groups.remove(p.group());
                p.close().await?;
            }
        }
        Ok(())
    }
}

/// Initializes a fresh group with its replicas (every replica does, with the same
/// membership, which openraft allows) and lets the preferred leader stand for election
/// at once.
pub(crate) async fn start_group<SM>(
    raft: &openraft::Raft<TypeConfig, SM>,
    node_id: u64,
    replicas: &[u64],
) where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    match raft.is_initialized().await {
        Ok(true) | Err(_) => return,
        Ok(false) => {}
    }
    let members: std::collections::BTreeSet<u64> = replicas.iter().copied().collect();
    if let Err(e) = raft.initialize(members).await {
        tracing::debug!(error = %e, "group initialized elsewhere first");
    }
    if replicas.first() == Some(&node_id) && replicas.len() > 1 {
        let _ = raft.trigger().elect(false).await;
    }
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
