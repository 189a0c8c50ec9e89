//! Who a client is and what it may do. The pure half: `scram` (password credentials as
//! SCRAM-SHA-256 stores them), `token` (signed bearer tokens), `acl` (allow rules and how they
//! match), and [`UserRecord`] (a user as the controller's state keeps it). `gate` (above the
//! controller) authenticates requests against the cluster's state and checks permissions;
//! `audit` writes what it refused, and every administrative change, to the `_audit` topic.
//!
//! Why this scheme: a password is checked once, over TLS, by `Access.Login`, which answers a
//! bearer token that every later request carries; any node verifies a token with one HMAC
//! and a look at the user's generation, so requests cost nothing like a password hash. The
//! stored credential is SCRAM-SHA-256's (salted PBKDF2), so the Kafka listener can offer
//! SASL/SCRAM-SHA-256 (and SASL/PLAIN over TLS) over the same users, and the HTTP API can
//! take the same bearer tokens (or Basic credentials, checked like a login).

pub mod acl;
pub mod audit;
pub mod gate;
pub mod scram;
pub mod token;

use serde::{Deserialize, Serialize};

pub use acl::{AclRule, Operation, Permission, ResourceKind};
pub use scram::ScramCredential;

/// A user as the cluster's state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The password's credential.
    pub credential: ScramCredential,
    /// Tokens name this; a new password gets a new one (from a cluster-wide counter, so a
    /// user deleted and created again does not revive old tokens).
    pub generation: u64,
}
