//! Group membership as a pure state machine: members join, heartbeat, leave or expire; a
//! change starts a rebalance; the rebalance completes when every member has rejoined or
//! the rebalance time-out has passed (laggards are dropped), and then the generation moves
//! on and partitions are assigned. Time is passed in, so this is tested without clocks.
//!
//! Members that have not rejoined yet keep their old assignment and generation until the
//! rebalance completes, so they can commit the offsets of partitions they are about to
//! lose; heartbeats tell them to rejoin.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::assign::{self, Assignment};
use crate::error::{Error, Result};

/// Where a group stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No members.
    Empty,
    /// Waiting for members to rejoin, until the deadline.
    Rebalancing {
        /// When laggards are dropped.
        deadline: Instant,
    },
    /// Every member has its assignment for the current generation.
    Stable,
}

impl State {
    /// A word for people.
    pub fn name(&self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Rebalancing { .. } => "rebalancing",
            State::Stable => "stable",
        }
    }
}

/// One member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Free-form name of the client.
    pub client_id: String,
    /// Topics it consumes.
    pub topics: BTreeSet<String>,
    /// It is dropped if not heard from for this long.
    pub session_timeout: Duration,
    /// Time allowed to rejoin during a rebalance.
    pub rebalance_timeout: Duration,
    /// Last time it was heard from.
    pub last_seen: Instant,
    /// It has joined the rebalance in progress (or the last one).
    pub joined: bool,
}

/// A consumer group's membership.
#[derive(Debug, Clone)]
pub struct Group {
    name: String,
    generation: u64,
    state: State,
    members: BTreeMap<String, Member>,
    assignment: BTreeMap<String, Assignment>,
}

impl Group {
    /// An empty group.
    pub fn new(name: &str) -> Self {
        Group {
            name: name.to_string(),
            generation: 0,
            state: State::Empty,
            members: BTreeMap::new(),
            assignment: BTreeMap::new(),
        }
    }

    /// An empty group whose generations count on from `generation`.
    pub fn with_generation(name: &str, generation: u64) -> Self {
        Group {
            generation,
            ..Group::new(name)
        }
    }

    /// Current generation (moves on at each completed rebalance).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The members.
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// The assignment of the current generation.
    pub fn assignment(&self) -> &BTreeMap<String, Assignment> {
        &self.assignment
    }

    /// Adds a member (with `member_id: None`, under `new_id`) or renews one, and marks it
    /// joined; starts a rebalance unless one is in progress. Returns the member id.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        member_id: Option<&str>,
        new_id: impl FnOnce() -> String,
        client_id: &str,
        topics: BTreeSet<String>,
        session_timeout: Duration,
        rebalance_timeout: Duration,
        now: Instant,
    ) -> Result<String> {
        let id = match member_id {
            Some(id) if !self.members.contains_key(id) => {
                return Err(Error::UnknownMember {
                    group: self.name.clone(),
                    member: id.to_string(),
                });
            }
            Some(id) => id.to_string(),
            None => new_id(),
        };
        let changed = self.members.get(&id).is_none_or(|m| m.topics != topics);
        let member = Member {
            client_id: client_id.to_string(),
            topics,
            session_timeout,
            rebalance_timeout,
            last_seen: now,
            joined: true,
        };
        self.members.insert(id.clone(), member);
        match self.state {
            State::Rebalancing { .. } => {}
            // A stable member rejoining with nothing new needs no rebalance.
            State::Stable if !changed && self.assignment.contains_key(&id) => {}
            _ => self.start_rebalance(now, Some(&id)),
        }
        Ok(id)
    }

    fn start_rebalance(&mut self, now: Instant, joined: Option<&str>) {
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        for (id, member) in &mut self.members {
            member.joined = Some(id.as_str()) == joined;
        }
        self.state = if self.members.is_empty() {
            State::Empty
        } else {
            State::Rebalancing {
                deadline: now + timeout,
            }
        };
    }

    /// Completes the rebalance in progress if every member rejoined or the deadline passed;
    /// `partitions` gives topic sizes. Returns whether it completed.
    pub fn try_complete(&mut self, now: Instant, partitions: impl Fn(&str) -> u32) -> bool {
        let State::Rebalancing { deadline } = self.state else {
            return false;
        };
        let all_joined = self.members.values().all(|m| m.joined);
        if !all_joined && now < deadline {
            return false;
        }
        self.members.retain(|_, m| m.joined);
        self.generation += 1;
        let subscriptions = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        self.assignment = assign::range(&subscriptions, partitions);
        self.state = if self.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
        true
    }

    /// A member waiting in a join counts as rejoined if another rebalance started meanwhile,
    /// and is alive (a join can outlast the session time-out; the rebalance time-out bounds
    /// it instead). Returns false if the member is gone.
    pub fn still_joining(&mut self, member: &str, now: Instant) -> bool {
        match self.members.get_mut(member) {
            Some(m) => {
                m.joined = true;
                m.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// The assignment of `member` if the group is stable and the member is in it.
    pub fn assignment_of(&self, member: &str) -> Option<&Assignment> {
        if self.state != State::Stable {
            return None;
        }
        self.assignment.get(member)
    }

    /// Records a heartbeat; answers whether the member must rejoin.
    pub fn heartbeat(&mut self, member: &str, generation: u64, now: Instant) -> Result<bool> {
        let m = self
            .members
            .get_mut(member)
            .ok_or_else(|| Error::UnknownMember {
                group: self.name.clone(),
                member: member.to_string(),
            })?;
        m.last_seen = now;
        let rebalancing = matches!(self.state, State::Rebalancing { .. });
        Ok(rebalancing || generation != self.generation || !self.assignment.contains_key(member))
    }

    /// Removes a member; the others rebalance.
    pub fn leave(&mut self, member: &str, now: Instant) -> Result<()> {
        if self.members.remove(member).is_none() {
            return Err(Error::UnknownMember {
                group: self.name.clone(),
                member: member.to_string(),
            });
        }
        self.assignment.remove(member);
        self.start_rebalance(now, None);
        Ok(())
    }

    /// Drops members not heard from within their session time-out; the others rebalance.
    /// Returns the ids dropped.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > m.session_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                self.members.remove(id);
                self.assignment.remove(id);
            }
            self.start_rebalance(now, None);
        }
        expired
    }

    /// Checks that a commit comes from a current member of the current generation, or,
    /// with an empty member id, that the group has no members (manual assignment).
    ///
    /// A member commits only partitions its generation's assignment gives it: a commit of
    /// another assignment's positions under this generation (a consumer that joined a new
    /// generation while its application still held records of the old one) would move
    /// the new owner's offsets back (found by the fault suite, seed 1027: 3,518, then 3,284).
    pub fn check_commit<'a>(
        &self,
        member: &str,
        generation: u64,
        partitions: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Result<()> {
        if member.is_empty() {
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(Error::GroupHasMembers(self.name.clone()))
            };
        }
        if !self.members.contains_key(member) {
            return Err(Error::UnknownMember {
                group: self.name.clone(),
                member: member.to_string(),
            });
        }
        if generation != self.generation {
            return Err(Error::IllegalGeneration {
                group: self.name.clone(),
                generation,
                current: self.generation,
            });
        }
        let assigned = self.assignment.get(member);
        for (topic, partition) in partitions {
            let owns = assigned
                .and_then(|a| a.get(topic))
                .is_some_and(|ps| ps.contains(&partition));
            if !owns {
                return Err(Error::NotAssigned {
                    group: self.name.clone(),
                    member: member.to_string(),
                    topic: topic.to_string(),
                    partition,
                    generation,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(10);
    const REBALANCE: Duration = Duration::from_secs(5);

    fn topics() -> BTreeSet<String> {
        ["t".to_string()].into()
    }

    fn join(g: &mut Group, id: Option<&str>, name: &str, now: Instant) -> String {
        g.join(
            id,
            || name.to_string(),
            "client",
            topics(),
            SESSION,
            REBALANCE,
            now,
        )
        .unwrap()
    }

    #[test]
    fn first_member_gets_everything_then_a_second_splits() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let a = join(&mut g, None, "a", now);
        assert!(g.try_complete(now, |_| 4));
        assert_eq!((g.state(), g.generation()), (State::Stable, 1));
        assert_eq!(g.assignment_of(&a).unwrap()["t"], vec![0, 1, 2, 3]);

        let b = join(&mut g, None, "b", now);
        assert!(!g.try_complete(now, |_| 4), "a has not rejoined");
        assert!(g.heartbeat(&a, 1, now).unwrap(), "a is told to rejoin");
        assert!(
            g.check_commit(&a, 1, [("t", 3)]).is_ok(),
            "a may still commit its partitions in generation 1"
        );
        join(&mut g, Some(&a), "", now);
        assert!(g.try_complete(now, |_| 4));
        assert_eq!(g.generation(), 2);
        assert_eq!(g.assignment_of(&a).unwrap()["t"], vec![0, 1]);
        assert_eq!(g.assignment_of(&b).unwrap()["t"], vec![2, 3]);
        assert!(!g.heartbeat(&a, 2, now).unwrap());
        assert!(matches!(
            g.check_commit(&a, 1, [("t", 0)]),
            Err(Error::IllegalGeneration { .. })
        ));
        // In generation 2, a commits 0 and 1 only: partition 3 is b's now, and a's position
        // there is from generation 1.
        assert!(g.check_commit(&a, 2, [("t", 0), ("t", 1)]).is_ok());
        assert!(matches!(
            g.check_commit(&a, 2, [("t", 0), ("t", 3)]),
            Err(Error::NotAssigned { partition: 3, .. })
        ));
        assert!(matches!(
            g.check_commit(&b, 2, [("u", 0)]),
            Err(Error::NotAssigned { .. })
        ));
    }

    #[test]
    fn laggards_are_dropped_at_the_deadline() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let a = join(&mut g, None, "a", now);
        g.try_complete(now, |_| 2);
        let b = join(&mut g, None, "b", now);
        assert!(!g.try_complete(now + REBALANCE / 2, |_| 2));
        assert!(g.try_complete(now + REBALANCE, |_| 2));
        assert!(!g.members().contains_key(&a));
        assert_eq!(g.assignment_of(&b).unwrap()["t"], vec![0, 1]);
        assert!(matches!(
            g.heartbeat(&a, 1, now),
            Err(Error::UnknownMember { .. })
        ));
    }

    #[test]
    fn leave_and_expiry_rebalance_the_rest() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let a = join(&mut g, None, "a", now);
        let b = join(&mut g, None, "b", now);
        let c = join(&mut g, None, "c", now);
        assert!(
            g.try_complete(now, |_| 3),
            "all three joined the same rebalance"
        );
        g.leave(&c, now).unwrap();
        join(&mut g, Some(&a), "", now);
        join(&mut g, Some(&b), "", now);
        assert!(g.try_complete(now, |_| 3));
        assert_eq!(g.assignment_of(&a).unwrap()["t"], vec![0, 1]);
        // b goes silent.
        let later = now + SESSION + Duration::from_millis(1);
        g.heartbeat(&a, g.generation(), later).unwrap();
        assert_eq!(g.expire(later), vec![b.clone()]);
        join(&mut g, Some(&a), "", later);
        assert!(g.try_complete(later, |_| 3));
        assert_eq!(g.assignment_of(&a).unwrap()["t"], vec![0, 1, 2]);
        g.leave(&a, later).unwrap();
        assert_eq!(g.state(), State::Empty);
        assert!(
            g.check_commit("", 0, [("t", 0)]).is_ok(),
            "an empty group takes manual commits"
        );
    }

    #[test]
    fn a_member_waiting_in_join_survives_a_second_rebalance() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let a = join(&mut g, None, "a", now);
        // b joins before a's join returned: a is still waiting, and must count as joined.
        let b = join(&mut g, None, "b", now);
        assert!(g.still_joining(&a, now));
        assert!(g.try_complete(now, |_| 2));
        assert_eq!(g.assignment_of(&a).unwrap()["t"], vec![0]);
        assert_eq!(g.assignment_of(&b).unwrap()["t"], vec![1]);
    }

    #[test]
    fn a_member_waiting_in_join_does_not_expire() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let a = join(&mut g, None, "a", now);
        g.try_complete(now, |_| 2);
        join(&mut g, None, "b", now);
        // a is slow to rejoin but then waits in its join for longer than a session.
        let later = now + SESSION - Duration::from_millis(1);
        join(&mut g, Some(&a), "", later);
        let much_later = later + SESSION - Duration::from_millis(1);
        assert!(g.still_joining(&a, much_later));
        assert!(g.expire(now + SESSION + SESSION / 2).is_empty() || !g.members().contains_key("b"));
        assert!(g.members().contains_key(&a), "a joining member is alive");
    }

    #[test]
    fn unknown_members_and_manual_commits_are_refused() {
        let now = Instant::now();
        let mut g = Group::new("g");
        assert!(matches!(
            g.join(
                Some("ghost"),
                || "x".into(),
                "c",
                topics(),
                SESSION,
                REBALANCE,
                now
            ),
            Err(Error::UnknownMember { .. })
        ));
        let a = join(&mut g, None, "a", now);
        g.try_complete(now, |_| 1);
        assert!(matches!(
            g.check_commit("", 0, [("t", 0)]),
            Err(Error::GroupHasMembers(_))
        ));
        assert!(matches!(
            g.check_commit("ghost", 1, [("t", 0)]),
            Err(Error::UnknownMember { .. })
        ));
        // A stable member that rejoins unchanged does not disturb the group.
        join(&mut g, Some(&a), "", now);
        assert_eq!((g.state(), g.generation()), (State::Stable, 1));
    }
}
