//! The consumer's background task: membership, start positions, fetchers, heartbeats,
//! auto-commit, and recovery from failures.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use strata_proto::v1;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::fetcher::{self, FetchEnd};
use super::{Chunk, Shared, StartAt, lock};
use crate::ErrorCode;
use crate::error::{Error, Result, from_status};

/// Wait before retrying after a failure.
const BACKOFF: Duration = Duration::from_millis(200);

enum Next {
    /// Rejoin the group (keeping the member id, or as a new member).
    Rejoin,
    Stop,
}

pub(crate) async fn run(shared: Arc<Shared>, tx: mpsc::Sender<Chunk>) {
    let mut member_id = String::new();
    while !shared.closing.load(Ordering::Acquire) {
        let assignment = match assignment(&shared, &mut member_id).await {
            Ok(a) => a,
            Err(e) => {
                if !e.is_retriable()
                    && e.code() != Some(ErrorCode::UnknownMember)
                    && tx.send(Chunk::Error(e)).await.is_err()
                {
                    break;
                }
                if wait_or_close(&shared, BACKOFF).await {
                    break;
                }
                continue;
            }
        };
        let joined_as = lock(&shared.membership).clone();
        let mut positions = match start_positions(&shared, &assignment).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot resolve start positions; retrying");
                if wait_or_close(&shared, BACKOFF).await {
                    break;
                }
                continue;
            }
        };
        let epoch = {
            let mut state = lock(&shared.state);
            // A partition this consumer keeps goes on after what it already delivered.
            for (key, position) in &mut positions {
                if let Some(delivered) = state.consumed.get(key) {
                    *position = (*position).max(*delivered);
                }
            }
            state.epoch += 1;
            state.assignment = assignment;
            state.member = joined_as;
            state.consumed = positions.clone();
            state.epoch
        };
        match consume(&shared, epoch, positions, &tx).await {
            Next::Rejoin => {}
            Next::Stop => break,
        }
    }
    if shared.settings.auto_commit.is_some()
        && shared.settings.group.is_some()
        && let Err(e) = shared.commit().await
    {
        tracing::warn!(error = %e, "final commit failed");
    }
    leave(&shared, &member_id).await;
}

/// Joins the group (or takes the manual assignment).
async fn assignment(shared: &Shared, member_id: &mut String) -> Result<Vec<(Arc<str>, u32)>> {
    let settings = &shared.settings;
    if !settings.assigned.is_empty() {
        return Ok(settings
            .assigned
            .iter()
            .map(|(t, p)| (Arc::from(t.as_str()), *p))
            .collect());
    }
    let Some(group) = &settings.group else {
        return Err(Error::InvalidConfig("no group".into()));
    };
    let mut rpc =
        v1::groups_client::GroupsClient::new(settings.client.coordinator_channel().await?);
    let request = v1::JoinGroupRequest {
        group: group.clone(),
        member_id: member_id.clone(),
        topics: settings.topics.clone(),
        session_timeout_ms: settings.session_timeout.as_millis() as u32,
        rebalance_timeout_ms: settings.rebalance_timeout.as_millis() as u32,
        client_id: settings.client.config().client_id.clone(),
    };
    let joined = match rpc.join_group(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let e = settings.client.coordinator_failed(from_status(status));
            if e.code() == Some(ErrorCode::UnknownMember) {
                member_id.clear(); // expired: join as a new member
            }
            return Err(e);
        }
    };
    *member_id = joined.member_id.clone();
    *lock(&shared.membership) = Some((joined.member_id, joined.generation));
    tracing::debug!(group, generation = joined.generation, "joined group");
    Ok(joined
        .assignment
        .into_iter()
        .flat_map(|tp| {
            let topic: Arc<str> = Arc::from(tp.topic.as_str());
            tp.partitions.into_iter().map(move |p| (topic.clone(), p))
        })
        .collect())
}

/// Where each assigned partition starts: its committed offset, else the start setting.
async fn start_positions(
    shared: &Shared,
    assignment: &[(Arc<str>, u32)],
) -> Result<HashMap<(Arc<str>, u32), u64>> {
    let settings = &shared.settings;
    let mut positions = HashMap::new();
    if let Some(group) = &settings.group {
        let mut rpc =
            v1::groups_client::GroupsClient::new(settings.client.coordinator_channel().await?);
        let mut wanted: BTreeMap<Arc<str>, Vec<u32>> = BTreeMap::new();
        for (t, p) in assignment {
            wanted.entry(t.clone()).or_default().push(*p);
        }
        let request = v1::FetchOffsetsRequest {
            group: group.clone(),
            partitions: wanted
                .into_iter()
                .map(|(t, ps)| v1::TopicPartitions {
                    topic: t.to_string(),
                    partitions: ps,
                })
                .collect(),
        };
        for o in rpc
            .fetch_offsets(request)
            .await
            .map_err(|s| settings.client.coordinator_failed(from_status(s)))?
            .into_inner()
            .offsets
        {
            if let Some(key) = assignment
                .iter()
                .find(|(t, p)| **t == o.topic && *p == o.partition)
            {
                positions.insert(key.clone(), o.offset);
            }
        }
    }
    let missing: Vec<(Arc<str>, u32)> = assignment
        .iter()
        .filter(|k| !positions.contains_key(*k))
        .cloned()
        .collect();
    for (key, offset) in resolve(shared, &missing, settings.start).await? {
        positions.insert(key, offset);
    }
    Ok(positions)
}

/// Resolves a start setting to offsets, asking each partition's leader (only a leader
/// answers: a follower's bounds may be old). A refusal notes the leader it names, so the
/// caller's retry goes there.
async fn resolve(
    shared: &Shared,
    partitions: &[(Arc<str>, u32)],
    start: StartAt,
) -> Result<Vec<((Arc<str>, u32), u64)>> {
    if let StartAt::Offset(offset) = start {
        return Ok(partitions.iter().map(|k| (k.clone(), offset)).collect());
    }
    let client = &shared.settings.client;
    let position = match start {
        StartAt::Earliest => v1::offset_query::Position::Earliest(true),
        StartAt::Latest | StartAt::Offset(_) => v1::offset_query::Position::Latest(true),
        StartAt::Timestamp(ts) => v1::offset_query::Position::TimestampMs(ts),
    };
    let mut by_topic: BTreeMap<Arc<str>, Vec<(u32, ())>> = BTreeMap::new();
    for (t, p) in partitions {
        by_topic.entry(t.clone()).or_default().push((*p, ()));
    }
    let mut asks = Vec::new();
    for (topic, ps) in by_topic {
        let leaders = client.topic(&topic).await?.leaders.clone();
        for ps in by_leader(&leaders, ps).into_values() {
            asks.push((topic.clone(), ps));
        }
    }
    let mut out = Vec::new();
    for (topic, ps) in asks {
        let request = v1::ListOffsetsRequest {
            topic: topic.to_string(),
            partitions: ps
                .iter()
                .map(|(p, ())| v1::OffsetQuery {
                    partition: *p,
                    position: Some(position),
                })
                .collect(),
        };
        let mut rpc = v1::fetch_client::FetchClient::new(client.leader(&topic, ps[0].0).await?);
        let answer = rpc.list_offsets(request).await.map_err(|s| {
            let e = from_status(s);
            client.invalidate(&topic);
            e
        })?;
        for o in answer.into_inner().offsets {
            if let Some(detail) = o.error {
                let e = Error::from_detail(detail);
                client.on_error(&topic, o.partition, &e);
                return Err(e);
            }
            out.push(((topic.clone(), o.partition), o.offset));
        }
    }
    Ok(out)
}

/// Runs fetchers for one assignment until a rebalance, an unrecoverable error or close.
async fn consume(
    shared: &Arc<Shared>,
    epoch: u64,
    positions: HashMap<(Arc<str>, u32), u64>,
    tx: &mpsc::Sender<Chunk>,
) -> Next {
    let settings = &shared.settings;
    let mut fetchers = JoinSet::new();
    let mut by_topic: BTreeMap<Arc<str>, Vec<(u32, u64)>> = BTreeMap::new();
    for ((t, p), o) in positions {
        by_topic.entry(t).or_default().push((p, o));
    }
    for (topic, positions) in by_topic {
        spawn_fetchers(shared, &mut fetchers, epoch, topic, positions, tx).await;
    }
    let in_group = settings.assigned.is_empty();
    let heartbeat_every = settings.session_timeout / 3;
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let mut commit =
        tokio::time::interval(settings.auto_commit.unwrap_or(Duration::from_secs(3600)));
    heartbeat.tick().await;
    commit.tick().await;
    loop {
        tokio::select! {
            () = shared.close.notified() => return Next::Stop,
            _ = heartbeat.tick(), if in_group => {
                match send_heartbeat(shared).await {
                    Ok(false) => {}
                    Ok(true) => {
                        if settings.auto_commit.is_some() && let Err(e) = shared.commit().await {
                            tracing::warn!(error = %e, "commit before rebalance failed");
                        }
                        return Next::Rejoin;
                    }
                    Err(e) if matches!(e.code(), Some(ErrorCode::UnknownMember | ErrorCode::IllegalGeneration)) => {
                        *lock(&shared.membership) = None;
                        return Next::Rejoin;
                    }
                    Err(e) => tracing::debug!(error = %e, "heartbeat failed; retrying"),
                }
            }
            _ = commit.tick(), if settings.auto_commit.is_some() => {
                if let Err(e) = shared.commit().await {
                    tracing::debug!(error = %e, "auto-commit failed");
                }
            }
            Some(ended) = fetchers.join_next() => {
                let Ok(end) = ended else { continue };
                if matches!(end.error, Error::Closed) || shared.closing.load(Ordering::Acquire) {
                    return Next::Stop;
                }
                match recover(shared, end).await {
                    Ok((topic, positions)) => spawn_fetchers(shared, &mut fetchers, epoch, topic, positions, tx).await,
                    Err(e) => {
                        if tx.send(Chunk::Error(e)).await.is_err() {
                            return Next::Stop;
                        }
                        return Next::Rejoin;
                    }
                }
            }
        }
    }
}

/// Starts one fetcher per leader for a topic's partitions.
async fn spawn_fetchers(
    shared: &Arc<Shared>,
    set: &mut JoinSet<FetchEnd>,
    epoch: u64,
    topic: Arc<str>,
    positions: Vec<(u32, u64)>,
    tx: &mpsc::Sender<Chunk>,
) {
    let leaders = shared
        .settings
        .client
        .topic(&topic)
        .await
        .map(|t| t.leaders.clone())
        .unwrap_or_default();
    for positions in by_leader(&leaders, positions).into_values() {
        set.spawn(fetcher::run(
            shared.clone(),
            epoch,
            topic.clone(),
            positions,
            tx.clone(),
        ));
    }
}

/// Groups a topic's `(partition, item)` pairs by the node leading the partition in
/// `leaders` (0 when not known): one request or fetcher per leader.
fn by_leader<T>(leaders: &[u64], items: Vec<(u32, T)>) -> BTreeMap<u64, Vec<(u32, T)>> {
    let mut out: BTreeMap<u64, Vec<(u32, T)>> = BTreeMap::new();
    for (p, item) in items {
        let leader = leaders.get(p as usize).copied().unwrap_or(0);
        out.entry(leader).or_default().push((p, item));
    }
    out
}

/// Decides how to go on after a fetcher ended; returns the positions to restart from.
async fn recover(shared: &Shared, mut end: FetchEnd) -> Result<(Arc<str>, Vec<(u32, u64)>)> {
    match (end.error.code(), end.failed) {
        (Some(ErrorCode::OffsetOutOfRange), Some(partition)) => {
            // Retention deleted what we were about to read: go on from the earliest record.
            let key = (end.topic.clone(), partition);
            let reset = resolve(shared, std::slice::from_ref(&key), StartAt::Earliest).await?;
            let offset = reset.first().map_or(0, |(_, o)| *o);
            tracing::warn!(topic = %end.topic, partition, offset, "position out of range; resuming at the earliest offset");
            for slot in end.positions.iter_mut().filter(|(p, _)| *p == partition) {
                slot.1 = offset;
            }
        }
        _ if end.error.is_retriable() => {
            tracing::debug!(topic = %end.topic, error = %end.error, "fetch interrupted; resuming");
            match end.failed {
                Some(partition) => shared
                    .settings
                    .client
                    .on_error(&end.topic, partition, &end.error),
                None => shared.settings.client.invalidate(&end.topic),
            }
            tokio::time::sleep(BACKOFF).await;
        }
        _ => return Err(end.error),
    }
    Ok((end.topic, end.positions))
}

async fn send_heartbeat(shared: &Shared) -> Result<bool> {
    let Some(group) = &shared.settings.group else {
        return Ok(false);
    };
    let Some((member_id, generation)) = lock(&shared.membership).clone() else {
        return Ok(true);
    };
    let client = &shared.settings.client;
    let mut rpc = v1::groups_client::GroupsClient::new(client.coordinator_channel().await?);
    let request = v1::HeartbeatRequest {
        group: group.clone(),
        member_id,
        generation,
    };
    Ok(rpc
        .heartbeat(request)
        .await
        .map_err(|s| client.coordinator_failed(from_status(s)))?
        .into_inner()
        .rejoin)
}

async fn leave(shared: &Shared, member_id: &str) {
    let Some(group) = &shared.settings.group else {
        return;
    };
    if member_id.is_empty() || !shared.settings.assigned.is_empty() {
        return;
    }
    if let Ok(channel) = shared.settings.client.coordinator_channel().await {
        let mut rpc = v1::groups_client::GroupsClient::new(channel);
        let _ = rpc
            .leave_group(v1::LeaveGroupRequest {
                group: group.clone(),
                member_id: member_id.to_string(),
            })
            .await;
    }
}

/// Sleeps, or returns true early if the consumer is closing.
async fn wait_or_close(shared: &Shared, wait: Duration) -> bool {
    tokio::select! {
        () = shared.close.notified() => true,
        () = tokio::time::sleep(wait) => shared.closing.load(Ordering::Acquire),
    }
}
