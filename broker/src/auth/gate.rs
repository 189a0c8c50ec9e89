//! Authenticating requests and checking their permissions against the cluster's state: the
//! [`Authenticator`] every front door shares. With authentication off (a loopback listener by
//! default) every caller is [`Principal::Anonymous`], which may do everything, as before
//! there were users.

use std::sync::Arc;
use std::time::Duration;

use super::acl::{self, Permission, ResourceKind};
use super::audit::AuditLog;
use super::scram::{self, ScramCredential};
use super::token::{self, Claims};
use crate::controller::{AccessCommand, Cluster, ClusterState, Command, CommandResult};
use crate::error::{Error, Result};

/// How long a proposal of the access commands may take.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off: every caller may do everything.
    Anonymous,
    /// An authenticated user.
    User {
        /// Its name.
        name: String,
        /// Whether the configuration lists it as a superuser (no ACL applies to it).
        superuser: bool,
    },
}

impl Principal {
    /// The user's name, or `anonymous`.
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::User { name, .. } => name,
        }
    }

    /// Whether no ACL applies (no login required, or a superuser).
    pub fn unrestricted(&self) -> bool {
        matches!(
            self,
            Principal::Anonymous
                | Principal::User {
                    superuser: true,
                    ..
                }
        )
    }
}

/// Authenticates and authorizes against the cluster's users and ACLs.
#[derive(Debug)]
pub struct Authenticator {
    cluster: Arc<Cluster>,
    audit: AuditLog,
    required: bool,
    superusers: Vec<String>,
    token_ttl: Duration,
}

fn now_ms() -> i64 {
    strata_storage::clock::now_ms()
}

impl Authenticator {
    /// Checks callers against `cluster`'s state when `required`; tokens live `token_ttl`.
    pub fn new(
        cluster: Arc<Cluster>,
        audit: AuditLog,
        required: bool,
        superusers: Vec<String>,
        token_ttl: Duration,
    ) -> Authenticator {
        Authenticator {
            cluster,
            audit,
            required,
            superusers,
            token_ttl,
        }
    }

    /// The audit log refusals and changes go to.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Whether callers must authenticate.
    pub fn required(&self) -> bool {
        self.required
    }

    fn principal_of(&self, user: &str) -> Principal {
        Principal::User {
            name: user.to_string(),
            superuser: self.superusers.iter().any(|s| s == user),
        }
    }

    /// The caller a request's `authorization` header value names. Without authentication
    /// every caller is anonymous; with it, a missing, malformed, forged or expired token, or
    /// one of a deleted user or an older password, is refused.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        if !self.required {
            return Ok(Principal::Anonymous);
        }
        let refused = |why: &str| Err(Error::Unauthenticated(why.to_string()));
        let Some(header) = authorization else {
            return refused("this cluster requires a login (user and password)");
        };
        let Some(token) = header.strip_prefix("Bearer ") else {
            return refused("the authorization is not a bearer token");
        };
        let state = self.cluster.current();
        let Some(secret) = secret_of(&state) else {
            return refused("no token was ever issued by this cluster");
        };
        let Claims {
            user, generation, ..
        } = token::verify(&secret, token.trim(), now_ms())
            .map_err(|e| Error::Unauthenticated(e.to_string()))?;
        match state.users.get(&user) {
            Some(record) if record.generation == generation => Ok(self.principal_of(&user)),
            Some(_) => refused("the password changed since this token was issued; log in again"),
            None => refused("the token's user no longer exists"),
        }
    }

    /// Checks `user`'s password and issues a token: its text and expiry (ms since the epoch).
    /// A wrong password and an unknown user get the same answer.
    pub async fn login(&self, user: &str, password: &str) -> Result<(String, i64)> {
        let record = self.cluster.current().users.get(user).cloned();
        let credential = record.as_ref().map(|r| r.credential.clone());
        let password = password.to_string();
        // PBKDF2 is deliberately slow: off the async threads.
        let verified =
            tokio::task::spawn_blocking(move || credential.is_some_and(|c| c.verify(&password)))
                .await
                .map_err(Error::task("password check"))?;
        let Some(record) = record.filter(|_| verified) else {
            let refused = "unknown user or wrong password";
            self.audit
                .record(user, "Access/Login", user, "unauthenticated", refused);
            return Err(Error::Unauthenticated(refused.into()));
        };
        let secret = self.token_secret().await?;
        let expires_ms = now_ms().saturating_add(self.token_ttl.as_millis() as i64);
        let claims = Claims {
            user: user.to_string(),
            generation: record.generation,
            expires_ms,
        };
        Ok((token::issue(&secret, &claims), expires_ms))
    }

    /// The cluster's token secret, proposing one first if there is none yet.
    async fn token_secret(&self) -> Result<Vec<u8>> {
        if let Some(secret) = secret_of(&self.cluster.current()) {
            return Ok(secret);
        }
        let fresh = scram::random_bytes(crate::controller::TOKEN_SECRET_BYTES)
            .map_err(Error::Unavailable)?;
        self.propose(AccessCommand::SetTokenSecret {
            secret: scram::hex(&fresh),
        })
        .await?;
        // The first proposal wins; wait until this node's state has it.
        let mut state = self.cluster.state();
        let waited = tokio::time::timeout(PROPOSE_TIMEOUT, async {
            loop {
                if let Some(secret) = secret_of(&state.borrow_and_update()) {
                    return Ok(secret);
                }
                if state.changed().await.is_err() {
                    return Err(Error::ShuttingDown);
                }
            }
        })
        .await;
        waited.map_err(|_| Error::Timeout("the token secret did not arrive".into()))?
    }

    /// Proposes an access command; an answer other than `Ok` becomes its error.
    pub async fn propose(&self, command: AccessCommand) -> Result<()> {
        match self
            .cluster
            .propose(Command::Access(command), PROPOSE_TIMEOUT)
            .await?
        {
            CommandResult::Ok => Ok(()),
            CommandResult::UserExists => Err(Error::InvalidArgument("the user exists".into())),
            CommandResult::UnknownUser => Err(Error::InvalidArgument("no such user".into())),
            CommandResult::UnknownAcl => Err(Error::InvalidArgument("no such ACL rule".into())),
            CommandResult::Invalid { message } => Err(Error::InvalidArgument(message)),
            other => Err(other.unexpected()),
        }
    }

    /// Creates `user` with `password` unless it exists (the first superuser of a new
    /// cluster); retries until the controller has answered.
    pub async fn bootstrap(&self, user: String, password: String) {
        let Ok(credential) = Authenticator::credential(&password).await else {
            tracing::error!(%user, "the bootstrap password is not a valid password");
            return;
        };
        loop {
            if self.cluster.current().users.contains_key(&user) {
                return;
            }
            let command = AccessCommand::CreateUser {
                name: user.clone(),
                credential: credential.clone(),
            };
            match self.propose(command).await {
                Ok(()) => {
                    tracing::info!(%user, "created the bootstrap superuser");
                    return;
                }
                Err(Error::InvalidArgument(m)) if m == "the user exists" => return,
                Err(e) => {
                    tracing::debug!(error = %e, "creating the bootstrap superuser; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// A credential for a new password (derived off the async threads).
    pub async fn credential(password: &str) -> Result<ScramCredential> {
        scram::check_password(password).map_err(Error::InvalidArgument)?;
        let password = password.to_string();
        tokio::task::spawn_blocking(move || ScramCredential::new(&password))
            .await
            .map_err(Error::task("password hashing"))?
            .map_err(Error::Unavailable)
    }

    /// `Ok` if `principal` may produce as idempotent producer `producer_id`: with a login,
    /// only the user the cluster issued it to may.
    pub fn check_producer(&self, principal: &Principal, producer_id: i64) -> Result<()> {
        let Principal::User { name, .. } = principal else {
            return Ok(());
        };
        let state = self.cluster.current();
        if state
            .producers_by_owner
            .get(name)
            .is_some_and(|ids| ids.contains(&producer_id))
        {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "producer id {producer_id} was not issued to user `{name}` (InitProducer)"
            )))
        }
    }

    /// Whether `principal` has `permission`.
    pub fn allows(&self, principal: &Principal, permission: &Permission<'_>) -> bool {
        if principal.unrestricted() {
            return true;
        }
        // Strata's own topics (the audit log) are for superusers only, whatever the rules.
        if permission.resource == ResourceKind::Topic && permission.name.starts_with('_') {
            return false;
        }
        acl::allowed(&self.cluster.current().acls, principal.name(), permission)
    }

    /// `Ok` if `principal` has `permission`, else `PERMISSION_DENIED` naming it.
    pub fn check(&self, principal: &Principal, permission: Permission<'_>) -> Result<()> {
        if self.allows(principal, &permission) {
            Ok(())
        } else {
            let message = format!("user `{}` lacks {permission}", principal.name());
            self.audit.record(
                principal.name(),
                &permission.to_string(),
                permission.name,
                "denied",
                &message,
            );
            Err(Error::PermissionDenied(message))
        }
    }
}

fn secret_of(state: &ClusterState) -> Option<Vec<u8>> {
    state.token_secret.as_deref().and_then(scram::unhex)
}
