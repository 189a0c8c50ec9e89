//! Errors at the gRPC edge: every [`Error`] becomes a status with a machine-readable
//! `ErrorDetail` in its details (or, inside a response, a per-partition `ErrorDetail`).

use prost::Message;
use strata_proto::v1::{ErrorCode, ErrorDetail};
use tonic::{Code, Status};

use crate::error::Error;

/// The API error code of an error.
pub fn code(e: &Error) -> ErrorCode {
    match e {
        Error::UnknownTopic(_) => ErrorCode::UnknownTopic,
        Error::TopicExists(_) => ErrorCode::TopicExists,
        Error::UnknownAggregation(_) => ErrorCode::UnknownAggregation,
        Error::AggregationExists(_) => ErrorCode::AggregationExists,
        Error::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        Error::InvalidName { .. }
        | Error::InvalidArgument(_)
        | Error::GroupHasMembers(_)
        | Error::Config(_) => ErrorCode::InvalidArgument,
        Error::InvalidBatch { .. } => ErrorCode::InvalidBatch,
        Error::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
        Error::LimitExceeded(_) => ErrorCode::LimitExceeded,
        Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
        Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
        Error::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        Error::Storage { .. } | Error::Io { .. } => ErrorCode::StorageError,
        Error::UnknownMember { .. } => ErrorCode::UnknownMember,
        Error::IllegalGeneration { .. } | Error::NotAssigned { .. } => ErrorCode::IllegalGeneration,
        Error::UnknownGroup(_) => ErrorCode::UnknownGroup,
        Error::Timeout(_) => ErrorCode::Timeout,
        Error::NotLeader { .. } => ErrorCode::NotLeader,
        Error::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
        Error::ProducerFenced { .. } => ErrorCode::ProducerFenced,
        Error::Unavailable(_)
        | Error::ShuttingDown
        | Error::TaskFailed { .. }
        | Error::PeerUnavailable { .. }
        | Error::UnexpectedAnswer(_)
        | Error::Bind { .. } => ErrorCode::Unavailable,
    }
}

/// The per-partition form of an error.
pub fn detail(e: &Error) -> ErrorDetail {
    let (leader_hint, leader_address) = match e {
        Error::NotLeader {
            leader, address, ..
        } => (*leader, address.clone().unwrap_or_default()),
        _ => (None, String::new()),
    };
    ErrorDetail {
        code: code(e) as i32,
        message: e.to_string(),
        leader_hint,
        leader_address,
    }
}

/// The gRPC status of an error, with its `ErrorDetail` attached.
pub fn status(e: &Error) -> Status {
    let detail = detail(e);
    let grpc = match code(e) {
        ErrorCode::UnknownTopic
        | ErrorCode::UnknownPartition
        | ErrorCode::UnknownGroup
        | ErrorCode::UnknownAggregation => Code::NotFound,
        ErrorCode::TopicExists | ErrorCode::AggregationExists => Code::AlreadyExists,
        ErrorCode::InvalidArgument | ErrorCode::InvalidBatch => Code::InvalidArgument,
        ErrorCode::BatchTooLarge | ErrorCode::LimitExceeded => Code::ResourceExhausted,
        ErrorCode::OffsetOutOfRange => Code::OutOfRange,
        ErrorCode::NotLeader
        | ErrorCode::UnknownMember
        | ErrorCode::IllegalGeneration
        | ErrorCode::RebalanceInProgress
        | ErrorCode::OutOfOrderSequence
        | ErrorCode::ProducerFenced => Code::FailedPrecondition,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::StorageError => Code::Internal,
        ErrorCode::Timeout => Code::DeadlineExceeded,
        ErrorCode::Unavailable | ErrorCode::Unspecified => Code::Unavailable,
    };
    Status::with_details(grpc, detail.message.clone(), detail.encode_to_vec().into())
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_their_detail() {
        let s = status(&Error::UnknownTopic("orders".into()));
        assert_eq!(s.code(), Code::NotFound);
        let d = ErrorDetail::decode(s.details()).unwrap();
        assert_eq!(d.code(), ErrorCode::UnknownTopic);
        assert!(d.message.contains("orders"));
        let s = status(&Error::BatchTooLarge { size: 10, limit: 5 });
        assert_eq!(
            (s.code(), ErrorDetail::decode(s.details()).unwrap().code()),
            (Code::ResourceExhausted, ErrorCode::BatchTooLarge)
        );
    }
}
