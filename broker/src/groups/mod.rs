//! Consumer groups: the coordinator that runs [`membership`] for every group, on the node
//! that leads the controller (other nodes answer group requests with NOT_LEADER and its
//! address).
//!
//! Membership lives in memory (after a restart or a controller fail-over members rejoin);
//! committed offsets live in the controller's replicated state (`Command::CommitOffsets`),
//! so they survive any single node. A background sweep
//! expires silent members and completes rebalances whose deadline passed; joins wait on a
//! `watch` channel that moves at every change of their group.

pub mod assign;
pub mod membership;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use self::assign::Assignment;
use self::membership::{Group, State};
use crate::controller::{Cluster, Command, CommandResult};
use crate::error::{Error, Result};
use crate::names;
use crate::topics::Topics;

/// Session time-out used when a member asks for none.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often silent members are expired.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Rebalance time-out used when a member asks for none.
pub const DEFAULT_REBALANCE_TIMEOUT: Duration = Duration::from_secs(30);

/// (topic, partition) → next offset to consume.
pub type Offsets = BTreeMap<(String, u32), u64>;

/// What a successful join gives a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Its id (new or as given).
    pub member_id: String,
    /// The generation the assignment belongs to.
    pub generation: u64,
    /// Its partitions.
    pub assignment: Assignment,
    /// How often it should heartbeat.
    pub heartbeat_interval: Duration,
}

/// A join request.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The group.
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    /// Topics to consume.
    pub topics: BTreeSet<String>,
    /// Session time-out (zero: the default).
    pub session_timeout: Duration,
    /// Rebalance time-out (zero: the default).
    pub rebalance_timeout: Duration,
    /// Free-form client name.
    pub client_id: String,
}

/// A partition's committed offset and lag, for `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Member that owns it, if any.
    pub owner: Option<String>,
    /// Committed offset, if any.
    pub committed: Option<u64>,
    /// The partition's high watermark.
    pub high_watermark: u64,
    /// How far the group is behind.
    pub lag: u64,
}

/// A group as `describe` shows it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// Name.
    pub group: String,
    /// State name.
    pub state: &'static str,
    /// Generation.
    pub generation: u64,
    /// Members: id → (client id, assignment).
    pub members: BTreeMap<String, (String, Assignment)>,
    /// Partitions the group consumes or has committed.
    pub partitions: Vec<PartitionLag>,
}

struct GroupHandle {
    state: Mutex<Group>,
    /// Moves at every change of the group; joins wait on it.
    changed: watch::Sender<u64>,
    /// Serializes the group's commits.
    committing: tokio::sync::Mutex<()>,
    /// The controller term of the reign it was created in (its commits carry it).
    term: u64,
}

impl GroupHandle {
    fn lock(&self) -> MutexGuard<'_, Group> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// The consumer groups coordinated by this node (the controller's leader): membership in
/// memory, committed offsets in the controller's replicated state.
pub struct Coordinator {
    topics: Arc<Topics>,
    cluster: Arc<Cluster>,
    groups: Mutex<HashMap<String, Arc<GroupHandle>>>,
    /// The controller term the groups in memory belong to. When this node leads in a new
    /// term, they are forgotten (members rejoin): members of an earlier reign here must
    /// not commit over what the coordinators since have taken.
    reign: Mutex<u64>,
    session_bounds: (Duration, Duration),
}

impl Coordinator {
    /// A coordinator over the cluster's topics; offsets are read from and committed to the
    /// controller.
    pub(crate) fn new(
        topics: Arc<Topics>,
        cluster: Arc<Cluster>,
        session_bounds: (Duration, Duration),
    ) -> Coordinator {
        Coordinator {
            topics,
            cluster,
            groups: Mutex::new(HashMap::new()),
            reign: Mutex::new(0),
            session_bounds,
        }
    }

    /// Whether this node coordinates groups now: it leads the controller and, as a new
    /// leader, has applied every earlier term's entries (so that the offsets it reads are
    /// all the committed ones). Elsewhere: NOT_LEADER with the coordinator's address.
    pub fn check_coordinator(&self) -> Result<()> {
        let leader = self.cluster.controller_leader();
        if leader == Some(self.cluster.node_id()) {
            return if self.cluster.controller_caught_up() {
                self.enter_reign(self.cluster.controller_term());
                Ok(())
            } else {
                Err(Error::Unavailable(
                    "the new group coordinator is catching up".into(),
                ))
            };
        }
        Err(Error::NotLeader {
            what: "consumer groups (the controller)".into(),
            leader,
            address: leader.and_then(|l| self.cluster.address_of(l)),
        })
    }

    /// [`Groups::check_coordinator`], and then a confirmation that this node still leads
    /// the controller with every committed command applied: for reads of committed
    /// offsets, which a leader deposed without knowing it would answer from an old state
    /// (offsets that seem to move backwards; a consumer starting before its last commit).
    pub async fn check_coordinator_read(&self) -> Result<()> {
        self.check_coordinator()?;
        self.cluster.ensure_linearizable(READ_CONFIRM_TIMEOUT).await
    }

    /// Forgets the groups of an earlier term when this node leads in `term`.
    fn enter_reign(&self, term: u64) {
        let mut reign = self.reign.lock().unwrap_or_else(|p| p.into_inner());
        if *reign != term {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            if !groups.is_empty() {
                tracing::info!(
                    term,
                    groups = groups.len(),
                    "coordinating in a new term; members rejoin"
                );
            }
            groups.clear();
            *reign = term;
        }
    }

    fn reign(&self) -> u64 {
        *self.reign.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, group: &str) -> Result<Arc<GroupHandle>> {
        names::validate(group)?;
        let term = self.reign();
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        Ok(groups
            .entry(group.to_string())
            .or_insert_with(|| Arc::new(new_handle(group, term)))
            .clone())
    }

    /// A group with members here or with offsets in the controller.
    fn existing(&self, group: &str) -> Result<Arc<GroupHandle>> {
        if let Some(h) = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
        {
            return Ok(h.clone());
        }
        if self.cluster.current().offsets.contains_key(group) {
            return self.handle(group);
        }
        Err(Error::UnknownGroup(group.to_string()))
    }

    /// The group's committed offsets, from the controller's state.
    fn stored(&self, group: &str) -> Offsets {
        self.cluster
            .current()
            .offsets
            .get(group)
            .map(|topics| {
                topics
                    .iter()
                    .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| ((t.clone(), *p), *o)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn partitions(&self) -> impl Fn(&str) -> u32 + '_ {
        |topic| self.topics.partition_count(topic)
    }

    /// Joins a member and waits for the rebalance to complete.
    pub async fn join(&self, request: JoinRequest) -> Result<Joined> {
        if request.topics.is_empty() {
            return Err(Error::InvalidArgument(
                "a member must subscribe to at least one topic".into(),
            ));
        }
        for topic in &request.topics {
            names::validate(topic)?;
        }
        let session_timeout = if request.session_timeout.is_zero() {
            DEFAULT_SESSION_TIMEOUT
        } else {
            request.session_timeout
        };
        let (min, max) = self.session_bounds;
        if session_timeout < min || session_timeout > max {
            return Err(Error::InvalidArgument(format!(
                "session time-out must be between {min:?} and {max:?}"
            )));
        }
        let rebalance_timeout = if request.rebalance_timeout.is_zero() {
            DEFAULT_REBALANCE_TIMEOUT
        } else {
            request.rebalance_timeout
        };
        let handle = self.handle(&request.group)?;
        let mut changes = handle.changed.subscribe();
        let member_id = {
            let mut g = handle.lock();
            let client = sanitize(&request.client_id);
            let given = (!request.member_id.is_empty()).then_some(request.member_id.as_str());
            let id = g.join(
                given,
                || new_member_id(&client),
                &request.client_id,
                request.topics.clone(),
                session_timeout,
                rebalance_timeout,
                Instant::now(),
            )?;
            g.try_complete(Instant::now(), self.partitions());
            id
        };
        handle.bump();
        let give_up = Instant::now() + rebalance_timeout + Duration::from_secs(5);
        loop {
            let wait = {
                let mut g = handle.lock();
                if !g.still_joining(&member_id, Instant::now()) {
                    return Err(Error::UnknownMember {
                        group: request.group.clone(),
                        member: member_id,
                    });
                }
                if g.try_complete(Instant::now(), self.partitions()) {
                    drop(g);
                    handle.bump();
                    continue;
                }
                if let Some(assignment) = g.assignment_of(&member_id) {
                    Step::Joined(Joined {
                        member_id: member_id.clone(),
                        generation: g.generation(),
                        assignment: assignment.clone(),
                        heartbeat_interval: session_timeout / 3,
                    })
                } else {
                    Step::Wait(match g.state() {
                        State::Rebalancing { deadline } => {
                            deadline.saturating_duration_since(Instant::now())
                        }
                        _ => Duration::from_millis(100),
                    })
                }
            };
            let wait = match wait {
                Step::Wait(wait) => wait,
                Step::Joined(joined) => {
                    // A commit of the previous generation that passed its check before the
                    // rebalance may still be on its way through the controller: let it
                    // apply first, or the member would read the offsets from before it and
                    // later commit them over it (offsets moving backwards; found by the
                    // fault suite). Commits check the generation under the same lock.
                    drop(handle.committing.lock().await);
                    return Ok(joined);
                }
            };
            if Instant::now() > give_up {
                return Err(Error::Timeout(format!("joining group `{}`", request.group)));
            }
            let _ =
                tokio::time::timeout(wait.max(Duration::from_millis(1)), changes.changed()).await;
        }
    }

    /// Records a heartbeat; answers whether the member must rejoin.
    pub fn heartbeat(&self, group: &str, member: &str, generation: u64) -> Result<bool> {
        let handle = self.existing(group).map_err(|_| Error::UnknownMember {
            group: group.to_string(),
            member: member.to_string(),
        })?;
        let rejoin = handle
            .lock()
            .heartbeat(member, generation, Instant::now())?;
        Ok(rejoin)
    }

    /// Removes a member; the rest of the group rebalances.
    pub fn leave(&self, group: &str, member: &str) -> Result<()> {
        let handle = self.existing(group)?;
        handle.lock().leave(member, Instant::now())?;
        handle.bump();
        Ok(())
    }

    /// Sweeps every 250 ms, for as long as the node runs.
    pub async fn sweep_forever(&self) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    /// Expires silent members and completes rebalances whose deadline passed.
    pub fn sweep(&self) {
        let groups: Vec<Arc<GroupHandle>> = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for handle in groups {
            let changed = {
                let mut g = handle.lock();
                let now = Instant::now();
                let expired = g.expire(now);
                for member in &expired {
                    tracing::info!(member, "group member expired");
                }
                g.try_complete(now, self.partitions()) || !expired.is_empty()
            };
            if changed {
                handle.bump();
            }
        }
    }

    /// Stores offsets durably, after checking the committer may commit for the group.
    pub async fn commit(
        &self,
        group: &str,
        member: &str,
        generation: u64,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<()> {
        let handle = self.handle(group)?;
        // The generation is checked under the commit lock, which a rebalance's members wait
        // for (see `join`): no commit of an older generation applies after one of them
        // reads its offsets.
        let _one = handle.committing.lock().await;
        handle.lock().check_commit(
            member,
            generation,
            offsets.iter().map(|(t, p, _)| (t.as_str(), *p)),
        )?;
        for (topic, partition, _) in &offsets {
            if *partition >= self.topics.get(topic)?.partition_count() {
                return Err(Error::UnknownPartition {
                    topic: topic.clone(),
                    partition: *partition,
                });
            }
        }
        let offsets_debug =
            tracing::enabled!(tracing::Level::DEBUG).then(|| format!("{offsets:?}"));
        let command = Command::CommitOffsets {
            group: group.to_string(),
            offsets,
            term: Some(handle.term),
        };
        match self.cluster.propose(command, COMMIT_TIMEOUT).await? {
            CommandResult::Ok => {
                if let Some(offsets) = offsets_debug {
                    tracing::debug!(group, member, generation, term = handle.term, %offsets, "offsets committed");
                }
                Ok(())
            }
            CommandResult::Invalid { message } => Err(Error::InvalidArgument(message)),
            other => Err(other.unexpected()),
        }
    }

    /// Committed offsets of a group, for the given partitions (all if none are given).
    pub fn committed(&self, group: &str, partitions: &[(String, u32)]) -> Result<Offsets> {
        names::validate(group)?;
        let all = self.stored(group);
        tracing::debug!(group, ?partitions, offsets = ?all, "committed offsets read");
        if partitions.is_empty() {
            return Ok(all);
        }
        Ok(partitions
            .iter()
            .filter_map(|k| all.get(k).map(|o| (k.clone(), *o)))
            .collect())
    }

    /// Name, state, members and generation of every group.
    pub fn list(&self) -> Vec<(String, &'static str, usize, u64)> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<String, (&'static str, usize, u64)> = groups
            .iter()
            .map(|(name, h)| {
                let g = h.lock();
                (
                    name.clone(),
                    (g.state().name(), g.members().len(), g.generation()),
                )
            })
            .collect();
        // Groups with committed offsets and no members here (e.g. after a fail-over).
        for name in self.cluster.current().offsets.keys() {
            out.entry(name.clone())
                .or_insert_with(|| (Group::new(name).state().name(), 0, 0));
        }
        out.into_iter()
            .map(|(name, (state, members, generation))| (name, state, members, generation))
            .collect()
    }

    /// Members, assignment, committed offsets and lag of a group.
    pub fn describe(&self, group: &str) -> Result<GroupDescription> {
        let handle = self.existing(group)?;
        let (state, generation, members, owners, subscribed) = {
            let g = handle.lock();
            let members: BTreeMap<String, (String, Assignment)> = g
                .members()
                .iter()
                .map(|(id, m)| {
                    (
                        id.clone(),
                        (
                            m.client_id.clone(),
                            g.assignment().get(id).cloned().unwrap_or_default(),
                        ),
                    )
                })
                .collect();
            let mut owners = BTreeMap::new();
            for (id, assignment) in g.assignment() {
                for (topic, partitions) in assignment {
                    for p in partitions {
                        owners.insert((topic.clone(), *p), id.clone());
                    }
                }
            }
            let subscribed: BTreeSet<String> = g
                .members()
                .values()
                .flat_map(|m| m.topics.iter().cloned())
                .collect();
            (
                g.state().name(),
                g.generation(),
                members,
                owners,
                subscribed,
            )
        };
        let committed = self.stored(group);
        let mut keys: BTreeSet<(String, u32)> = committed.keys().cloned().collect();
        for topic in &subscribed {
            for p in 0..self.topics.partition_count(topic) {
                keys.insert((topic.clone(), p));
            }
        }
        let partitions = keys
            .into_iter()
            .filter_map(|(topic, partition)| {
                let hw = self
                    .topics
                    .get(&topic)
                    .ok()?
                    .partition(partition)
                    .ok()?
                    .high_watermark();
                let committed = committed.get(&(topic.clone(), partition)).copied();
                let lag = hw.saturating_sub(committed.unwrap_or(0));
                let owner = owners.get(&(topic.clone(), partition)).cloned();
                Some(PartitionLag {
                    topic,
                    partition,
                    owner,
                    committed,
                    high_watermark: hw,
                    lag,
                })
            })
            .collect();
        Ok(GroupDescription {
            group: group.to_string(),
            state,
            generation,
            members,
            partitions,
        })
    }
}

/// A group's handle in the reign of `term`: its generations carry the term in their high 32
/// bits, so no generation of one coordinator's reign is ever taken for another's.
fn new_handle(name: &str, term: u64) -> GroupHandle {
    let (changed, _) = watch::channel(0);
    GroupHandle {
        state: Mutex::new(Group::with_generation(name, term << 32)),
        changed,
        committing: tokio::sync::Mutex::new(()),
        term,
    }
}

/// What a joining member does next.
enum Step {
    /// Waits for the rebalance (at most this long before looking again).
    Wait(Duration),
    /// Has its assignment.
    Joined(Joined),
}

/// How long a read of committed offsets waits for a quorum to confirm the coordinator.
const READ_CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an offset commit waits for the controller.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A member id unique on this node: the client's name, the time and a counter.
fn new_member_id(client: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = strata_storage::clock::now_nanos() as u64;
    format!("{client}-{nanos:x}-{n}")
}

/// A client id reduced to a safe member-id prefix.
fn sanitize(client_id: &str) -> String {
    let s: String = client_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if s.is_empty() {
        "member".to_string()
    } else {
        s
    }
}
