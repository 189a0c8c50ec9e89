//! The client's error type.

use prost::Message;
use strata_proto::v1::{ErrorCode, ErrorDetail};

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error a broker answered with: its code, message and (for `NOT_LEADER`) leader hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError {
    /// What went wrong.
    pub code: ErrorCode,
    /// The broker's explanation.
    pub message: String,
    /// For `NOT_LEADER`, the node that leads the partition, when known.
    pub leader_hint: Option<u64>,
    /// For `NOT_LEADER`, that node's address, when known.
    pub leader_address: Option<String>,
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str_name())
    }
}

impl From<ErrorDetail> for BrokerError {
    fn from(d: ErrorDetail) -> Self {
        BrokerError {
            code: d.code(),
            message: d.message,
            leader_hint: d.leader_hint,
            leader_address: (!d.leader_address.is_empty()).then_some(d.leader_address),
        }
    }
}

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No broker of the bootstrap list could be reached.
    #[error("cannot reach any broker of {bootstrap:?}: {message}")]
    Connect {
        /// The addresses tried.
        bootstrap: Vec<String>,
        /// The last failure.
        message: String,
    },
    /// A broker answered with an error.
    #[error("broker error: {0}")]
    Broker(BrokerError),
    /// A gRPC call failed without a broker error (transport, unavailable, cancelled).
    #[error("request failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// A record or batch could not be built (too large for the format, ...).
    #[error("invalid record: {0}")]
    InvalidRecord(#[source] strata_storage::Error),
    /// A batch received from a broker fails its checksum or format checks.
    #[error("corrupt batch from {topic}/{partition}: {source}")]
    CorruptBatch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What the codec found.
        #[source]
        source: strata_storage::Error,
    },
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// Delivery did not succeed within its retries.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<Error>,
    },
}

impl Error {
    /// The broker's error code, if a broker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker(b) => Some(b.code),
            Error::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// Whether trying again (after refreshing metadata) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Broker(b) => matches!(
                b.code,
                ErrorCode::NotLeader
                    | ErrorCode::Unavailable
                    | ErrorCode::Timeout
                    | ErrorCode::UnknownPartition
            ),
            Error::Rpc(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
                    // A connection closed under the request (the broker died).
                    | tonic::Code::Cancelled
            ),
            Error::Connect { .. } => true,
            _ => false,
        }
    }

    /// A broker error from a per-partition detail.
    pub(crate) fn from_detail(d: ErrorDetail) -> Self {
        Error::Broker(d.into())
    }
}

/// A status becomes a typed broker error when it carries an `ErrorDetail`.
pub(crate) fn from_status(status: tonic::Status) -> Error {
    match ErrorDetail::decode(status.details()) {
        Ok(detail) if detail.code() != ErrorCode::Unspecified => Error::from_detail(detail),
        _ => Error::Rpc(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_with_details_become_broker_errors() {
        let detail = ErrorDetail {
            code: ErrorCode::UnknownTopic as i32,
            message: "unknown topic `x`".into(),
            ..Default::default()
        };
        let status = tonic::Status::with_details(
            tonic::Code::NotFound,
            "unknown topic `x`",
            detail.encode_to_vec().into(),
        );
        let e = from_status(status);
        assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
        assert!(!e.is_retriable());
        let e = from_status(tonic::Status::unavailable("down"));
        assert!(matches!(e, Error::Rpc(_)) && e.is_retriable());
    }
}
