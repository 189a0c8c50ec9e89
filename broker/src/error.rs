//! The broker's error type.
//!
//! Request errors (unknown topic, bad batch, stale group member, ...) are answered with a
//! typed gRPC status and the node keeps serving; see `api::grpc::status` for the mapping.
//! Storage errors are reported with the partition they hit.

use std::path::PathBuf;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The topic does not exist.
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    /// A topic of that name exists already.
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    /// The aggregation does not exist.
    #[error("unknown aggregation `{0}`")]
    UnknownAggregation(String),
    /// An aggregation of that name exists already.
    #[error("aggregation `{0}` already exists")]
    AggregationExists(String),
    /// The topic has no such partition.
    #[error("topic `{topic}` has no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
    },
    /// A topic or group name breaks the naming rules.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A request field is out of range or missing.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A record batch failed validation.
    #[error("invalid record batch for {topic}/{partition}: {source}")]
    InvalidBatch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What the codec found.
        #[source]
        source: strata_storage::Error,
    },
    /// A record batch exceeds `max_batch_bytes`.
    #[error("record batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A fetch asked for an offset the partition does not have.
    #[error(
        "offset {offset} is out of range for {topic}/{partition}: the log holds [{start}, {end})"
    )]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// First offset still in the log.
        start: u64,
        /// Offset after the last readable record.
        end: u64,
    },
    /// The storage layer failed for a partition.
    #[error("storage error on {topic}/{partition}: {source}")]
    Storage {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The storage error.
        #[source]
        source: strata_storage::Error,
    },
    /// A file of the node's own (topic metadata, group offsets) could not be used.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The group does not know the member (expired, left, or never joined).
    #[error("group `{group}` has no member `{member}`; join again")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member id given.
        member: String,
    },
    /// The member's generation is stale.
    #[error("group `{group}` is at generation {current}, not {generation}")]
    IllegalGeneration {
        /// The group.
        group: String,
        /// The generation given.
        generation: u64,
        /// The group's generation.
        current: u64,
    },
    /// A member committed a partition its generation's assignment does not give it (its
    /// positions are from another assignment).
    #[error(
        "member `{member}` of group `{group}` is not assigned {topic}/{partition} in generation {generation}; rejoin the group"
    )]
    NotAssigned {
        /// The group.
        group: String,
        /// The member id given.
        member: String,
        /// The topic committed.
        topic: String,
        /// The partition committed.
        partition: u32,
        /// The generation given.
        generation: u64,
    },
    /// A manual (member-less) commit to a group that has members.
    #[error("group `{0}` has active members; commit as one of them")]
    GroupHasMembers(String),
    /// The group does not exist.
    #[error("unknown group `{0}`")]
    UnknownGroup(String),
    /// This node does not lead what the request is for (a partition, the controller).
    #[error("node does not lead {what}{}", leader.map(|l| format!("; node {l} does")).unwrap_or_default())]
    NotLeader {
        /// What was asked for, e.g. `orders/3` or `the controller`.
        what: String,
        /// The leader, when known.
        leader: Option<u64>,
        /// Its client address, when known.
        address: Option<String>,
    },
    /// An idempotent batch does not follow the producer's last one (a gap, or a retry older
    /// than the partition remembers).
    #[error(
        "out-of-order sequence for producer {producer_id} on {topic}/{partition}: expected {expected}, got {got}"
    )]
    OutOfOrderSequence {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The producer.
        producer_id: i64,
        /// The sequence the partition expects.
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
    /// A batch from an older epoch of a producer.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}")]
    ProducerFenced {
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The partition's epoch for it.
        current: i16,
    },
    /// The node is shutting down and takes no more requests.
    #[error("unavailable: the node is shutting down")]
    ShuttingDown,
    /// Work moved to another task (a blocking file or index operation) panicked or was
    /// cancelled.
    #[error("unavailable: {what} task failed: {source}")]
    TaskFailed {
        /// What the task did.
        what: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// Another node of the cluster did not answer a request this node made for a client.
    #[error("unavailable: node {node}: {reason}")]
    PeerUnavailable {
        /// The node.
        node: u64,
        /// What went wrong.
        reason: String,
    },
    /// The controller answered a command with something the command cannot answer (a bug
    /// or a version mismatch between nodes).
    #[error("unavailable: unexpected controller answer {0}")]
    UnexpectedAnswer(String),
    /// A configured resource limit would be exceeded; nothing was allocated.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The caller is not authenticated (no token, a bad or expired one, a wrong password).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not do this; the message says what it lacks.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// An operation did not finish in time; it may still take effect.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The node cannot serve the request now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A failed blocking task.
    pub(crate) fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Error {
        move |source| Error::TaskFailed { what, source }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A storage error of a partition, sorted into what the caller did wrong and what the
    /// disk did.
    pub(crate) fn from_storage(topic: &str, partition: u32, source: strata_storage::Error) -> Self {
        use strata_storage::Error as S;
        match source {
            S::OffsetOutOfRange {
                requested,
                start,
                end,
            } => Error::OffsetOutOfRange {
                topic: topic.to_string(),
                partition,
                offset: requested,
                start,
                end,
            },
            S::EntryTooLarge { size, limit } => Error::BatchTooLarge {
                size: size as usize,
                limit: limit as usize,
            },
            e if e.is_invalid_input() => Error::InvalidBatch {
                topic: topic.to_string(),
                partition,
                source: e,
            },
            e => Error::Storage {
                topic: topic.to_string(),
                partition,
                source: e,
            },
        }
    }
}
