//! `Access`: logging in, users and ACL rules. Passwords are turned into credentials here, on
//! the node that received them, and go no further.

use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::gate::{Authenticator, Principal};
use crate::auth::{AclRule, Operation, ResourceKind};
use crate::controller::AccessCommand;
use crate::error::Error;

impl Api {
    /// The caller of `request`, if it may do `operation` on the cluster.
    fn caller_may<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
    ) -> Result<Principal, Error> {
        self.allow(request, ResourceKind::Cluster, "", operation)
    }

    /// Proposes an access change (the caller was checked) and audits it.
    async fn change(
        &self,
        caller: &Principal,
        action: &str,
        command: AccessCommand,
    ) -> Result<(), Error> {
        let resource = match &command {
            AccessCommand::CreateUser { name, .. }
            | AccessCommand::SetCredential { name, .. }
            | AccessCommand::DeleteUser { name } => format!("user `{name}`"),
            AccessCommand::AddAcl { rule } | AccessCommand::RemoveAcl { rule } => format!(
                "rule {} may {} {} `{}`",
                rule.principal, rule.operation, rule.resource, rule.pattern
            ),
            AccessCommand::SetTokenSecret { .. } => "the token secret".to_string(),
        };
        let result = self.node.auth.propose(command).await;
        self.audited(caller, action, &resource, result)
    }
}

fn rule_from_proto(rule: Option<v1::AclRule>) -> Result<AclRule, Error> {
    let rule = rule.ok_or_else(|| Error::InvalidArgument("no rule given".into()))?;
    let rule = AclRule {
        principal: rule.principal,
        resource: rule.resource.parse().map_err(Error::InvalidArgument)?,
        pattern: rule.pattern,
        operation: rule.operation.parse().map_err(Error::InvalidArgument)?,
    };
    rule.validate().map_err(Error::InvalidArgument)?;
    Ok(rule)
}

fn rule_to_proto(rule: &AclRule) -> v1::AclRule {
    v1::AclRule {
        principal: rule.principal.clone(),
        resource: rule.resource.to_string(),
        pattern: rule.pattern.clone(),
        operation: rule.operation.to_string(),
    }
}

fn user_name(name: &str) -> Result<(), Error> {
    crate::names::validate(name)
}

#[tonic::async_trait]
impl v1::access_server::Access for Api {
    async fn login(
        &self,
        request: Request<v1::LoginRequest>,
    ) -> Result<Response<v1::LoginResponse>, Status> {
        self.check_serving()?;
        let v1::LoginRequest { user, password } = request.into_inner();
        if !self.node.auth.required() {
            return Err(Error::InvalidArgument(
                "this cluster requires no login (authentication is off)".into(),
            )
            .into());
        }
        let (token, expires_ms) = self.node.auth.login(&user, &password).await?;
        Ok(Response::new(v1::LoginResponse { token, expires_ms }))
    }

    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let caller = self.caller(&request)?;
        Ok(Response::new(v1::WhoAmIResponse {
            user: caller.name().to_string(),
            superuser: caller.unrestricted(),
            authentication_required: self.node.auth.required(),
        }))
    }

    async fn create_user(
        &self,
        request: Request<v1::CreateUserRequest>,
    ) -> Result<Response<v1::CreateUserResponse>, Status> {
        let caller = self.caller_may(&request, Operation::Alter)?;
        let v1::CreateUserRequest { name, password } = request.into_inner();
        user_name(&name)?;
        let credential = Authenticator::credential(&password).await?;
        let command = AccessCommand::CreateUser { name, credential };
        self.change(&caller, "Access/CreateUser", command).await?;
        Ok(Response::new(v1::CreateUserResponse {}))
    }

    async fn delete_user(
        &self,
        request: Request<v1::DeleteUserRequest>,
    ) -> Result<Response<v1::DeleteUserResponse>, Status> {
        let caller = self.caller_may(&request, Operation::Alter)?;
        let name = request.into_inner().name;
        user_name(&name)?;
        let command = AccessCommand::DeleteUser { name };
        self.change(&caller, "Access/DeleteUser", command).await?;
        Ok(Response::new(v1::DeleteUserResponse {}))
    }

    async fn change_password(
        &self,
        request: Request<v1::ChangePasswordRequest>,
    ) -> Result<Response<v1::ChangePasswordResponse>, Status> {
        let caller = self.caller(&request)?;
        if caller.name() != request.get_ref().name {
            self.caller_may(&request, Operation::Alter)?;
        }
        let v1::ChangePasswordRequest { name, password } = request.into_inner();
        user_name(&name)?;
        let credential = Authenticator::credential(&password).await?;
        let command = AccessCommand::SetCredential { name, credential };
        self.change(&caller, "Access/ChangePassword", command)
            .await?;
        Ok(Response::new(v1::ChangePasswordResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<v1::ListUsersRequest>,
    ) -> Result<Response<v1::ListUsersResponse>, Status> {
        self.caller_may(&request, Operation::Describe)?;
        let names = self.node.cluster.current().users.keys().cloned().collect();
        Ok(Response::new(v1::ListUsersResponse { names }))
    }

    async fn add_acl(
        &self,
        request: Request<v1::AddAclRequest>,
    ) -> Result<Response<v1::AddAclResponse>, Status> {
        let caller = self.caller_may(&request, Operation::Alter)?;
        let rule = rule_from_proto(request.into_inner().rule)?;
        self.change(&caller, "Access/AddAcl", AccessCommand::AddAcl { rule })
            .await?;
        Ok(Response::new(v1::AddAclResponse {}))
    }

    async fn remove_acl(
        &self,
        request: Request<v1::RemoveAclRequest>,
    ) -> Result<Response<v1::RemoveAclResponse>, Status> {
        let caller = self.caller_may(&request, Operation::Alter)?;
        let rule = rule_from_proto(request.into_inner().rule)?;
        let command = AccessCommand::RemoveAcl { rule };
        self.change(&caller, "Access/RemoveAcl", command).await?;
        Ok(Response::new(v1::RemoveAclResponse {}))
    }

    async fn list_acls(
        &self,
        request: Request<v1::ListAclsRequest>,
    ) -> Result<Response<v1::ListAclsResponse>, Status> {
        self.caller_may(&request, Operation::Describe)?;
        let rules = self
            .node
            .cluster
            .current()
            .acls
            .iter()
            .map(rule_to_proto)
            .collect();
        Ok(Response::new(v1::ListAclsResponse { rules }))
    }
}
