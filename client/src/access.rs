//! Users and ACL rules of a cluster that requires a login (from [`Client::access`]).
//!
//! ```no_run
//! # async fn demo() -> strata_client::Result<()> {
//! use strata_client::{acl_rule, Client, ClientConfig, ClientTls, Credentials};
//! let config = ClientConfig {
//!     tls: Some(ClientTls::from_ca_file("ca.pem".as_ref())?),
//!     credentials: Some(Credentials { user: "admin".into(), password: "secret".into() }),
//!     ..Default::default()
//! };
//! let client = Client::connect_with("broker-1:7001", config).await?;
//! client.access().create_user("ingest", "another secret").await?;
//! client.access().add_acl(acl_rule("ingest", "topic", "sensors*", "write")).await?;
//! # Ok(()) }
//! ```

use strata_proto::v1;

use crate::client::{Client, Transport};
use crate::error::{Result, from_status};

pub use strata_proto::v1::{AclRule, WhoAmIResponse as WhoAmI};

/// A rule: `principal` (a user or `*`) may do `operation` (read, write, create, delete,
/// describe, alter, all) on `resource` (topic, group, aggregation, cluster) named `pattern`
/// (a name, a prefix ending in `*`, or `*`).
pub fn acl_rule(principal: &str, resource: &str, pattern: &str, operation: &str) -> AclRule {
    AclRule {
        principal: principal.into(),
        resource: resource.into(),
        pattern: pattern.into(),
        operation: operation.into(),
    }
}

/// The access API.
#[derive(Clone)]
pub struct Access {
    client: Client,
}

impl Access {
    pub(crate) fn new(client: Client) -> Self {
        Access { client }
    }

    fn rpc(&self) -> Result<v1::access_client::AccessClient<Transport>> {
        Ok(v1::access_client::AccessClient::new(
            self.client.any_channel()?,
        ))
    }

    /// Who this client is, as the cluster sees it.
    pub async fn who_am_i(&self) -> Result<WhoAmI> {
        let r = self.rpc()?.who_am_i(v1::WhoAmIRequest {}).await;
        Ok(r.map_err(from_status)?.into_inner())
    }

    /// Creates a user.
    pub async fn create_user(&self, name: &str, password: &str) -> Result<()> {
        let request = v1::CreateUserRequest {
            name: name.into(),
            password: password.into(),
        };
        self.rpc()?
            .create_user(request)
            .await
            .map_err(from_status)?;
        Ok(())
    }

    /// Deletes a user; its tokens stop working.
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let request = v1::DeleteUserRequest { name: name.into() };
        self.rpc()?
            .delete_user(request)
            .await
            .map_err(from_status)?;
        Ok(())
    }

    /// Sets a user's password (a user may set its own); its older tokens stop working.
    pub async fn change_password(&self, name: &str, password: &str) -> Result<()> {
        let request = v1::ChangePasswordRequest {
            name: name.into(),
            password: password.into(),
        };
        self.rpc()?
            .change_password(request)
            .await
            .map_err(from_status)?;
        Ok(())
    }

    /// The users' names.
    pub async fn list_users(&self) -> Result<Vec<String>> {
        let r = self.rpc()?.list_users(v1::ListUsersRequest {}).await;
        Ok(r.map_err(from_status)?.into_inner().names)
    }

    /// Adds an allow rule.
    pub async fn add_acl(&self, rule: AclRule) -> Result<()> {
        let request = v1::AddAclRequest { rule: Some(rule) };
        self.rpc()?.add_acl(request).await.map_err(from_status)?;
        Ok(())
    }

    /// Removes an allow rule.
    pub async fn remove_acl(&self, rule: AclRule) -> Result<()> {
        let request = v1::RemoveAclRequest { rule: Some(rule) };
        self.rpc()?.remove_acl(request).await.map_err(from_status)?;
        Ok(())
    }

    /// Every allow rule.
    pub async fn list_acls(&self) -> Result<Vec<AclRule>> {
        let r = self.rpc()?.list_acls(v1::ListAclsRequest {}).await;
        Ok(r.map_err(from_status)?.into_inner().rules)
    }
}
