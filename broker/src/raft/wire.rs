//! Hand-mapped AppendEntries messages: batches travel as `bytes` fields that share the
//! segment map on the sender and the socket buffer on the receiver.

use bytes::Bytes;
use openraft::EntryPayload;
use openraft::raft::AppendEntriesRequest;
use strata_proto::v1;
use strata_storage::{EntryKind, RecordBatch};

use super::{
    Batch, GroupId, RaftEntry, RaftLogId, TypeConfig, Vote, to_raft_log_id, to_storage_log_id,
};

fn log_id_to_wire(id: &RaftLogId) -> v1::RaftLogId {
    let id = to_storage_log_id(id);
    v1::RaftLogId {
        term: id.term,
        leader: id.leader,
        index: id.index,
    }
}

fn log_id_from_wire(id: &v1::RaftLogId) -> RaftLogId {
    to_raft_log_id(strata_storage::LogId::new(id.term, id.leader, id.index))
}

/// The request for `group`.
pub(crate) fn encode_append(
    group: GroupId,
    req: AppendEntriesRequest<TypeConfig>,
) -> Result<v1::RaftAppendRequest, String> {
    let entries = req
        .entries
        .into_iter()
        .map(|e| {
            let (kind, body) = match e.payload {
                EntryPayload::Normal(batch) => (EntryKind::Data, batch.0.into_bytes()),
                EntryPayload::Blank => (EntryKind::Blank, Bytes::new()),
                EntryPayload::Membership(m) => (
                    EntryKind::Membership,
                    Bytes::from(serde_json::to_vec(&m).map_err(|e| e.to_string())?),
                ),
            };
            Ok(v1::RaftEntry {
                log_id: Some(log_id_to_wire(&e.log_id)),
                kind: u32::from(kind as u8),
                body,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(v1::RaftAppendRequest {
        group_id: group,
        vote_term: req.vote.leader_id.term,
        vote_node: req.vote.leader_id.node_id,
        vote_committed: req.vote.committed,
        prev_log_id: req.prev_log_id.as_ref().map(log_id_to_wire),
        leader_commit: req.leader_commit.as_ref().map(log_id_to_wire),
        entries,
    })
}

/// The group and request of a received message; an invalid entry (a batch that fails its
/// CRC, an unknown kind) is an error for the whole request.
pub(crate) fn decode_append(
    msg: v1::RaftAppendRequest,
) -> Result<(GroupId, AppendEntriesRequest<TypeConfig>), String> {
    let terms = std::iter::once(msg.vote_term)
        .chain(msg.prev_log_id.iter().map(|l| l.term))
        .chain(msg.leader_commit.iter().map(|l| l.term))
        .chain(
            msg.entries
                .iter()
                .filter_map(|e| e.log_id.as_ref())
                .map(|l| l.term),
        );
    if let Some(term) = terms.into_iter().find(|t| *t > super::MAX_TERM) {
        return Err(format!("term {term} is beyond any a cluster reaches"));
    }
    let vote = if msg.vote_committed {
        Vote::new_committed(msg.vote_term, msg.vote_node)
    } else {
        Vote::new(msg.vote_term, msg.vote_node)
    };
    let entries = msg
        .entries
        .into_iter()
        .map(|e| {
            let log_id = log_id_from_wire(e.log_id.as_ref().ok_or("entry without a log id")?);
            let kind = u8::try_from(e.kind)
                .ok()
                .and_then(EntryKind::from_u8)
                .ok_or_else(|| format!("entry {log_id}: unknown kind {}", e.kind))?;
            let payload = match kind {
                EntryKind::Data => EntryPayload::Normal(Batch(
                    RecordBatch::from_bytes(e.body)
                        .map_err(|err| format!("entry {log_id}: {err}"))?,
                )),
                EntryKind::Blank => EntryPayload::Blank,
                EntryKind::Membership => EntryPayload::Membership(
                    serde_json::from_slice(&e.body)
                        .map_err(|err| format!("entry {log_id}: membership: {err}"))?,
                ),
            };
            Ok(RaftEntry { log_id, payload })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((
        msg.group_id,
        AppendEntriesRequest {
            vote,
            prev_log_id: msg.prev_log_id.as_ref().map(log_id_from_wire),
            leader_commit: msg.leader_commit.as_ref().map(log_id_from_wire),
            entries,
        },
    ))
}

/// A snapshot on the wire: openraft's JSON for the vote and the description, the state's
/// JSON as a string.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotMessage {
    pub vote: Vote,
    pub meta: super::SnapshotMeta,
    pub data: String,
}

#[cfg(test)]
mod tests {
    use strata_storage::{BatchBuilder, NewRecord};

    use super::*;

    #[test]
    fn append_round_trips_and_rejects_a_damaged_batch() {
        let mut b = BatchBuilder::new();
        b.push(NewRecord::value(1, b"hello")).unwrap();
        let batch = b.finish().unwrap();
        let id = |i| to_raft_log_id(strata_storage::LogId::new(3, 2, i));
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            prev_log_id: Some(id(4)),
            leader_commit: Some(id(3)),
            entries: vec![
                RaftEntry {
                    log_id: id(5),
                    payload: EntryPayload::Blank,
                },
                RaftEntry {
                    log_id: id(6),
                    payload: EntryPayload::Normal(Batch(batch.clone())),
                },
            ],
        };
        let wire = encode_append(9, req.clone()).unwrap();
        let (group, back) = decode_append(wire.clone()).unwrap();
        assert_eq!(group, 9);
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.prev_log_id, req.prev_log_id);
        assert_eq!(back.leader_commit, req.leader_commit);
        assert_eq!(back.entries, req.entries);

        let mut bad = wire;
        let mut body = bad.entries[1].body.to_vec();
        let last = body.len() - 1;
        body[last] ^= 1;
        bad.entries[1].body = Bytes::from(body);
        let err = decode_append(bad).unwrap_err();
        assert!(err.contains("entry") && err.contains("CRC"), "{err}");
    }
}
