//! The cluster's topics as this node holds them: the registry the services look them up
//! in, following the controller's state (opening the replicas assigned to this node,
//! stopping and deleting those of deleted topics), and the node-wide housekeeping over every
//! replica (retention, leader balance, reopening failed replicas: `recover`).
//!
//! Layout: `<data_dir>/topics/<id>/<partition>/` (a partition log and its Raft files):
//! paths come from ids, never from the names clients choose (a directory of the older
//! `<name>-<id>` layout is renamed when its topic opens). Directories of deleted topics are
//! renamed `.deleted-*` first, and those left behind by an interrupted deletion, or of
//! topics deleted while the node was away, are removed when the node follows the cluster
//! state; nothing outside the topics directory is ever deleted.

mod recover;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::controller::{Cluster, ClusterState, Command, CommandResult, TopicConfig, TopicMeta};
use crate::error::{Error, Result};
use crate::raft::RaftEnv;
use crate::replica::{Partition, ReplicaOf, ReplicaSettings};

pub use self::recover::FailedReplica;

/// How often leadership is checked against the preferred replicas.
const LEADER_BALANCE: Duration = Duration::from_secs(5);

/// What the cluster may hold, checked before a topic is proposed (each node's replicas cost
/// memory: a log, a Raft group, a search index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Most partition replicas one node holds.
    pub max_partitions_per_node: u32,
    /// Most topics in the cluster.
    pub max_topics: u32,
}

impl TopicLimits {
    /// Whether `state` may take a topic of `config`: its replicas are spread round robin over
    /// the voters, so no node gets more than `ceil(partitions × replication / nodes)` of them.
    fn check(&self, state: &ClusterState, config: &TopicConfig) -> Result<()> {
        if state.topics.len() >= self.max_topics as usize {
            return Err(Error::LimitExceeded(format!(
                "the cluster holds {} topics, the most it may (max_topics)",
                state.topics.len()
            )));
        }
        let voters = state.voters();
        let nodes = voters.len() as u64;
        if nodes == 0 {
            return Ok(()); // the controller answers that
        }
        let replication = match u64::from(config.replication_factor) {
            0 => nodes.min(3),
            r => r.min(nodes),
        };
        let added = (u64::from(config.partitions) * replication).div_ceil(nodes);
        let mut held: BTreeMap<u64, u64> = BTreeMap::new();
        for replicas in state.topics.values().flat_map(|t| &t.replicas) {
            for node in replicas {
                *held.entry(*node).or_default() += 1;
            }
        }
        let limit = u64::from(self.max_partitions_per_node);
        for node in voters {
            let now = held.get(&node).copied().unwrap_or(0);
            if now + added > limit {
                return Err(Error::LimitExceeded(format!(
                    "node {node} holds {now} partition replicas and would get up to {added} more, \
                     beyond its limit of {limit} (max_partitions_per_node)"
                )));
            }
        }
        Ok(())
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
    /// This node.
    node_id: u64,
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
                let leader = self.leader_hint(id);
                Error::NotLeader {
                    what: format!("{}/{id}", self.name),
                    leader,
                    address: leader.and_then(|l| self.cluster.borrow().address_of(l)),
                }
            })
    }

    /// The leader of partition `id` as this node knows it: its replica's view, or, for a
    /// partition it holds no open replica of, the preferred leader — another replica when
    /// that is this node (its replica is out after a failure), which knows the leader.
    pub fn leader_hint(&self, id: u32) -> Option<u64> {
        if let Some(p) = self.partitions.iter().find(|p| p.id() == id) {
            return Some(p.leader());
        }
        let replicas = self.replicas.get(id as usize)?;
        (replicas.iter().find(|r| **r != self.node_id))
            .or(replicas.first())
            .copied()
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
    limits: TopicLimits,
    env: RaftEnv,
    replica: ReplicaSettings,
    cluster: watch::Receiver<Arc<ClusterState>>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// One reconciliation at a time.
    reconciling: tokio::sync::Mutex<()>,
    /// Bumped after every reconciliation.
    version: watch::Sender<u64>,
    /// Replicas taken out after a failure, until they reopen (`recover`).
    failed: Mutex<BTreeMap<(String, u32), FailedReplica>>,
    /// Replicas reopened after a failure.
    recoveries: AtomicU64,
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
        limits: TopicLimits,
        env: RaftEnv,
        replica: ReplicaSettings,
        cluster: watch::Receiver<Arc<ClusterState>>,
    ) -> Result<Topics> {
        let root = data_dir.join("topics");
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let (version, _) = watch::channel(0);
        Ok(Topics {
            root,
            limits,
            env,
            replica,
            cluster,
            topics: RwLock::new(BTreeMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
            version,
            failed: Mutex::new(BTreeMap::new()),
            recoveries: AtomicU64::new(0),
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

    /// Creates a topic through the controller. Answers once this node follows the creation
    /// and every partition it holds knows its leader (so that a produce right after
    /// succeeds), or after `timeout`.
    pub async fn create(
        &self,
        cluster: &Cluster,
        name: String,
        config: TopicConfig,
        timeout: Duration,
    ) -> Result<Arc<Topic>> {
        crate::names::validate(&name)?;
        config.validate().map_err(Error::InvalidArgument)?;
        self.limits.check(&self.cluster.borrow(), &config)?;
        let command = Command::CreateTopic {
            name: name.clone(),
            config,
        };
        let id = match cluster.propose(command, timeout).await? {
            CommandResult::TopicCreated { id } => id,
            CommandResult::TopicExists => return Err(Error::TopicExists(name)),
            CommandResult::Invalid { message } => return Err(Error::InvalidArgument(message)),
            other => {
                return Err(other.unexpected());
            }
        };
        self.wait_until(timeout, |t| t.get(&name).is_ok_and(|t| t.id == id))
            .await;
        let topic = self.get(&name)?;
        let deadline = tokio::time::Instant::now() + timeout;
        for p in &topic.partitions {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            p.wait_for_leader(left).await;
        }
        Ok(topic)
    }

    /// Deletes a topic through the controller. Answers once this node follows the deletion,
    /// or after `timeout`.
    pub async fn delete(&self, cluster: &Cluster, name: String, timeout: Duration) -> Result<()> {
        let command = Command::DeleteTopic { name: name.clone() };
        match cluster.propose(command, timeout).await? {
            CommandResult::Ok => {}
            CommandResult::UnknownTopic => return Err(Error::UnknownTopic(name)),
            CommandResult::Invalid { message } => return Err(Error::InvalidArgument(message)),
            other => {
                return Err(other.unexpected());
            }
        }
        self.wait_until(timeout, |t| t.get(&name).is_err()).await;
        Ok(())
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
        if state.position.applied_any() {
            self.remove_stale_dirs(state)?;
        }
        Ok(())
    }

    /// A topic's directory: named by its id, never by its (client-chosen) name.
    fn dir_of(&self, id: u32) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// Moves a topic's directory of the layout before issue 15 (`<name>-<id>`, the name a
    /// client chose) to its id's.
    fn migrate_dir(&self, name: &str, id: u32) -> Result<()> {
        let (old, new) = (self.root.join(format!("{name}-{id}")), self.dir_of(id));
        if crate::names::validate(name).is_err() || !old.is_dir() || new.exists() {
            return Ok(());
        }
        std::fs::rename(&old, &new).map_err(|e| Error::io(&old, e))?;
        sync_dir(&self.root)?;
        tracing::info!(topic = %name, id, "topic directory renamed to its id");
        Ok(())
    }

    async fn open_topic(&self, name: &str, meta: &TopicMeta) -> Result<Topic> {
        self.migrate_dir(name, meta.id)?;
        let shared: Arc<str> = Arc::from(name);
        let mut partitions = Vec::new();
        for (p, replicas) in meta.replicas.iter().enumerate() {
            if !replicas.contains(&self.env.node_id) {
                continue;
            }
            let of = ReplicaOf {
                topic: shared.clone(),
                topic_id: meta.id,
                partition: p as u32,
                replicas: replicas.clone(),
            };
            partitions.push(self.open_replica(of, &meta.config, None).await?);
        }
        Ok(Topic {
            name: name.to_string(),
            id: meta.id,
            config: meta.config.clone(),
            replicas: meta.replicas.clone(),
            partitions,
            node_id: self.env.node_id,
            cluster: self.cluster.clone(),
        })
    }

    /// Opens this node's replica `of` in its directory (see [`Partition::open`] for
    /// `durable_below`) and starts its indexer.
    async fn open_replica(
        &self,
        of: ReplicaOf,
        config: &TopicConfig,
        durable_below: Option<u64>,
    ) -> Result<Arc<Partition>> {
        let dir = self.dir_of(of.topic_id).join(of.partition.to_string());
        let partition = Partition::open(
            &self.env,
            &dir,
            of,
            &self.replica,
            &config.search,
            self.cluster.clone(),
            durable_below,
        )
        .await?;
        let partition = Arc::new(partition);
        crate::search::feed::start(&partition);
        Ok(partition)
    }

    async fn remove_topic(&self, topic: &Topic) -> Result<()> {
        for p in &topic.partitions {
            self.env.groups.remove(p.group_id());
            if let Err(e) = p.close().await {
                tracing::warn!(topic = %topic.name, partition = p.id(), error = %e, "closing a deleted partition failed");
            }
        }
        let dir = self.dir_of(topic.id);
        self.delete_dir(&dir)?;
        tracing::info!(topic = %topic.name, id = topic.id, "topic deleted");
        Ok(())
    }

    /// Deletes directories of topics the cluster deleted while this node was away.
    fn remove_stale_dirs(&self, state: &ClusterState) -> Result<()> {
        let live: std::collections::BTreeSet<u32> = state.topics.values().map(|t| t.id).collect();
        for entry in std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))? {
            let entry = entry.map_err(|e| Error::io(&self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = if name.starts_with(".deleted-") {
                true
            } else {
                // `<id>` (or the older `<name>-<id>`) with an id the controller handed out
                // and no longer has.
                let id = name
                    .parse::<u32>()
                    .ok()
                    .or_else(|| name.rsplit_once('-').and_then(|(_, id)| id.parse().ok()));
                id.is_some_and(|id| id < state.next_topic_id && !live.contains(&id))
            };
            if stale && entry.path().is_dir() {
                self.delete_dir(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Deletes a topic directory: only ever a direct child of the topics directory.
    fn delete_dir(&self, dir: &Path) -> Result<()> {
        if dir.parent() != Some(self.root.as_path()) {
            tracing::error!(path = %dir.display(), "refusing to delete a directory outside the topics directory");
            return Ok(());
        }
        if !dir.exists() {
            return Ok(());
        }
        let nanos = strata_storage::clock::now_nanos();
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

    /// Opens and closes partition replicas as the controller creates and deletes topics,
    /// until the cluster state stops changing (the node stops).
    pub async fn follow_cluster(&self) {
        let mut state = self.cluster.clone();
        loop {
            if state.changed().await.is_err() {
                return;
            }
            if let Err(e) = self.reconcile().await {
                tracing::error!(error = %e, "following the cluster state failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                state.mark_changed();
            }
        }
    }

    /// Applies every topic's retention to this node's replicas every `every`.
    pub async fn apply_retention(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await; // not at startup
        loop {
            tick.tick().await;
            let now = strata_storage::clock::now_ms();
            for topic in self.all() {
                if !topic.config.has_retention() {
                    continue;
                }
                let policy = topic.config.retention();
                for p in &topic.partitions {
                    match p.apply_retention(&policy, now).await {
                        Ok(Some(index)) => {
                            tracing::info!(topic = %topic.name, partition = p.id(), index, "retention purged old segments")
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(topic = %topic.name, partition = p.id(), error = %e, "retention failed")
                        }
                    }
                }
            }
        }
    }

    /// Hands leadership of each partition this node leads back to its preferred leader
    /// once that replica has caught up, so that leaders stay spread evenly.
    pub async fn balance_leaders(&self) {
        let mut tick = tokio::time::interval(LEADER_BALANCE);
        tick.tick().await;
        loop {
            tick.tick().await;
            for topic in self.all() {
                for p in &topic.partitions {
                    p.restore_preferred_leader().await;
                }
            }
        }
    }

    /// Stops every partition's Raft group, then flushes and closes its log (at shutdown).
    pub async fn close_all(&self) -> Result<()> {
        let topics: Vec<Arc<Topic>> =
            std::mem::take(&mut *self.topics.write().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .collect();
        for topic in topics {
            for p in &topic.partitions {
                self.env.groups.remove(p.group_id());
                p.close().await?;
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    strata_storage::durable::sync_dir(dir).map_err(|e| Error::io(dir, std::io::Error::other(e)))
}
