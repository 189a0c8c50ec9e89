//! Users, ACLs and the token secret in the cluster's state: the commands that change them,
//! how they apply, and the rules they (and a snapshot's copy of them) are checked against.
//! Passwords never get here: a proposer derives the credential ([`ScramCredential`]).

use serde::{Deserialize, Serialize};

use super::result::{CommandResult, invalid};
use super::state::ClusterState;
use crate::auth::{AclRule, ScramCredential, UserRecord};

/// Bytes of the token secret.
pub const TOKEN_SECRET_BYTES: usize = 32;
/// Most users in a cluster.
pub const MAX_USERS: usize = 10_000;
/// Most ACL rules in a cluster.
pub const MAX_ACLS: usize = 100_000;

/// A change to users, ACLs or the token secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "access", rename_all = "snake_case")]
pub enum AccessCommand {
    /// Creates a user.
    CreateUser {
        /// Its name.
        name: String,
        /// Its password's credential.
        credential: ScramCredential,
    },
    /// Gives a user a new password (revoking its tokens).
    SetCredential {
        /// The user.
        name: String,
        /// The new password's credential.
        credential: ScramCredential,
    },
    /// Deletes a user (its tokens stop working; its ACL rules stay, as in Kafka).
    DeleteUser {
        /// The user.
        name: String,
    },
    /// Adds an allow rule (adding one that exists changes nothing).
    AddAcl {
        /// The rule.
        rule: AclRule,
    },
    /// Removes an allow rule.
    RemoveAcl {
        /// The rule.
        rule: AclRule,
    },
    /// Sets the secret tokens are signed with, unless one is set already (the first
    /// proposal wins; every node then signs and verifies with it).
    SetTokenSecret {
        /// The secret (hex).
        secret: String,
    },
}

fn user_name(name: &str) -> Result<(), String> {
    crate::names::validate(name).map_err(|e| format!("user name: {e}"))
}

fn secret(hex: &str) -> Result<(), String> {
    match crate::auth::scram::unhex(hex) {
        Some(bytes) if bytes.len() == TOKEN_SECRET_BYTES => Ok(()),
        _ => Err(format!(
            "the token secret is not {TOKEN_SECRET_BYTES} bytes of hex"
        )),
    }
}

impl AccessCommand {
    /// The rules that do not depend on the state.
    pub(super) fn check(&self) -> Result<(), String> {
        match self {
            AccessCommand::CreateUser { name, credential }
            | AccessCommand::SetCredential { name, credential } => {
                user_name(name)?;
                credential.validate()
            }
            AccessCommand::DeleteUser { name } => user_name(name),
            AccessCommand::AddAcl { rule } | AccessCommand::RemoveAcl { rule } => rule.validate(),
            AccessCommand::SetTokenSecret { secret: s } => secret(s),
        }
    }
}

impl ClusterState {
    /// Applies an access command (checked already).
    pub(super) fn apply_access(&mut self, command: AccessCommand) -> CommandResult {
        match command {
            AccessCommand::CreateUser { name, credential } => {
                if self.users.contains_key(&name) {
                    return CommandResult::UserExists;
                }
                if self.users.len() >= MAX_USERS {
                    return invalid(format!(
                        "the cluster has {MAX_USERS} users, the most it takes"
                    ));
                }
                let generation = self.next_user_generation();
                self.users.insert(
                    name,
                    UserRecord {
                        credential,
                        generation,
                    },
                );
                CommandResult::Ok
            }
            AccessCommand::SetCredential { name, credential } => {
                let generation = self.next_user_generation();
                let Some(user) = self.users.get_mut(&name) else {
                    return CommandResult::UnknownUser;
                };
                *user = UserRecord {
                    credential,
                    generation,
                };
                CommandResult::Ok
            }
            AccessCommand::DeleteUser { name } => match self.users.remove(&name) {
                Some(_) => CommandResult::Ok,
                None => CommandResult::UnknownUser,
            },
            AccessCommand::AddAcl { rule } => {
                if self.acls.len() >= MAX_ACLS && !self.acls.contains(&rule) {
                    return invalid(format!(
                        "the cluster has {MAX_ACLS} ACL rules, the most it takes"
                    ));
                }
                self.acls.insert(rule);
                CommandResult::Ok
            }
            AccessCommand::RemoveAcl { rule } => {
                if self.acls.remove(&rule) {
                    CommandResult::Ok
                } else {
                    CommandResult::UnknownAcl
                }
            }
            AccessCommand::SetTokenSecret { secret } => {
                if self.token_secret.is_none() {
                    self.token_secret = Some(secret);
                }
                CommandResult::Ok
            }
        }
    }

    fn next_user_generation(&mut self) -> u64 {
        self.user_generation += 1;
        self.user_generation
    }

    /// Checks the access part of a whole state (a snapshot).
    pub(super) fn validate_access(&self) -> Result<(), String> {
        if self.users.len() > MAX_USERS || self.acls.len() > MAX_ACLS {
            return Err("more users or ACL rules than a cluster takes".into());
        }
        for (name, user) in &self.users {
            user_name(name)?;
            user.credential
                .validate()
                .map_err(|e| format!("user `{name}`: {e}"))?;
            if user.generation == 0 || user.generation > self.user_generation {
                return Err(format!("user `{name}` has a generation never handed out"));
            }
        }
        for rule in &self.acls {
            rule.validate()?;
        }
        if let Some(s) = &self.token_secret {
            secret(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Operation, ResourceKind};
    use crate::controller::Command;

    fn credential() -> ScramCredential {
        ScramCredential::new("pw").unwrap()
    }

    #[test]
    fn users_acls_and_the_secret_apply_and_survive_a_snapshot() {
        let mut s = ClusterState::default();
        let create = |name: &str| {
            Command::Access(AccessCommand::CreateUser {
                name: name.into(),
                credential: credential(),
            })
        };
        assert_eq!(s.apply(create("ada")), CommandResult::Ok);
        assert_eq!(s.apply(create("ada")), CommandResult::UserExists);
        let first = s.users["ada"].generation;
        let passwd = Command::Access(AccessCommand::SetCredential {
            name: "ada".into(),
            credential: credential(),
        });
        assert_eq!(s.apply(passwd), CommandResult::Ok);
        assert!(
            s.users["ada"].generation > first,
            "a new password, a new generation"
        );
        let delete = Command::Access(AccessCommand::DeleteUser { name: "ada".into() });
        assert_eq!(s.apply(delete.clone()), CommandResult::Ok);
        assert_eq!(s.apply(delete), CommandResult::UnknownUser);
        assert_eq!(s.apply(create("ada")), CommandResult::Ok);
        assert!(
            s.users["ada"].generation > first + 1,
            "no generation is reused"
        );

        let rule = AclRule {
            principal: "ada".into(),
            resource: ResourceKind::Topic,
            pattern: "orders".into(),
            operation: Operation::Read,
        };
        let add = Command::Access(AccessCommand::AddAcl { rule: rule.clone() });
        assert_eq!(s.apply(add.clone()), CommandResult::Ok);
        assert_eq!(s.apply(add), CommandResult::Ok);
        assert_eq!(s.acls.len(), 1);
        let first_secret = "11".repeat(TOKEN_SECRET_BYTES);
        for hex in [first_secret.clone(), "22".repeat(TOKEN_SECRET_BYTES)] {
            let set = Command::Access(AccessCommand::SetTokenSecret { secret: hex });
            assert_eq!(s.apply(set), CommandResult::Ok);
        }
        assert_eq!(s.token_secret.as_deref(), Some(first_secret.as_str()));
        let back: ClusterState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.validate(), Ok(()));
        let remove = Command::Access(AccessCommand::RemoveAcl { rule });
        assert_eq!(s.apply(remove.clone()), CommandResult::Ok);
        assert_eq!(s.apply(remove), CommandResult::UnknownAcl);
    }

    #[test]
    fn bad_access_commands_change_nothing() {
        let mut s = ClusterState::default();
        let before = s.clone();
        for bad in [
            AccessCommand::CreateUser {
                name: "../root".into(),
                credential: credential(),
            },
            AccessCommand::CreateUser {
                name: "ada".into(),
                credential: ScramCredential {
                    iterations: 1,
                    ..credential()
                },
            },
            AccessCommand::SetTokenSecret {
                secret: "00".into(),
            },
            AccessCommand::AddAcl {
                rule: AclRule {
                    principal: "ada".into(),
                    resource: ResourceKind::Cluster,
                    pattern: "x".into(),
                    operation: Operation::All,
                },
            },
        ] {
            assert!(matches!(
                s.apply(Command::Access(bad)),
                CommandResult::Invalid { .. }
            ));
        }
        assert_eq!(s, before);
        let mut forged = ClusterState::default();
        forged.users.insert(
            "ada".into(),
            UserRecord {
                credential: credential(),
                generation: 5,
            },
        );
        assert!(
            forged.validate().is_err(),
            "a generation beyond the counter"
        );
    }
}
