//! What applying a controller command answers to its proposer ([`CommandResult`]), shared
//! by the commands of `command` and of `access`.

use serde::{Deserialize, Serialize};

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResult {
    /// Done.
    Ok,
    /// The topic was created with this id.
    TopicCreated {
        /// Its id.
        id: u32,
    },
    /// An allocated producer id.
    ProducerId {
        /// The id.
        id: i64,
    },
    /// A topic of that name exists.
    TopicExists,
    /// The aggregation was defined with this id.
    AggregationCreated {
        /// Its id.
        id: u64,
    },
    /// An aggregation of that name exists.
    AggregationExists,
    /// No aggregation of that name.
    UnknownAggregation,
    /// No topic of that name.
    UnknownTopic,
    /// A user of that name exists.
    UserExists,
    /// No user of that name.
    UnknownUser,
    /// No such ACL rule.
    UnknownAcl,
    /// The command breaks a rule.
    Invalid {
        /// Which.
        message: String,
    },
}

impl CommandResult {
    /// The error for an answer the command cannot give (a bug, or nodes of different
    /// versions).
    pub fn unexpected(self) -> crate::error::Error {
        crate::error::Error::UnexpectedAnswer(format!("{self:?}"))
    }
}

pub(super) fn invalid(message: impl Into<String>) -> CommandResult {
    CommandResult::Invalid {
        message: message.into(),
    }
}
