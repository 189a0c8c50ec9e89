//! Fuzz entry points for the Raft wire mapping (see `crate::fuzzing`). Not an API.

use bytes::Bytes;
use prost::Message;
use strata_proto::v1;

use super::peer::{TransferLeaderRequest, VoteRequest, decode};
use super::wire::{SnapshotMessage, decode_append, encode_append};

/// An AppendEntries message as it arrives (protobuf): decoding never panics, and what
/// decodes encodes back to a message that decodes to the same request.
pub fn append(data: &[u8]) {
    let Ok(msg) = v1::RaftAppendRequest::decode(data) else {
        return;
    };
    let Ok((group, request)) = decode_append(msg) else {
        return;
    };
    let again = encode_append(group, request.clone()).expect("a decoded request encodes");
    let (group_again, request_again) = decode_append(again).expect("it decodes again");
    assert_eq!(group, group_again);
    assert_eq!(format!("{request:?}"), format!("{request_again:?}"));
}

/// The JSON body of a vote, pre-vote, leader transfer or snapshot message: decoding never
/// panics, and nothing with a term beyond `MAX_TERM` gets through.
pub fn message(data: &[u8]) {
    let msg = v1::RaftMessage {
        group_id: 1,
        body: Bytes::copy_from_slice(data),
    };
    if let Ok(vote) = decode::<VoteRequest>(&msg) {
        assert!(vote.vote.leader_id.term <= super::MAX_TERM);
    }
    let _ = decode::<TransferLeaderRequest>(&msg);
    let _ = decode::<SnapshotMessage>(&msg);
}
