//! The gRPC services of a node (`strata.v1`): Produce, Fetch, Metadata, Admin, Groups,
//! Aggregations, Search and Health, all implemented by [`Api`] over the shared [`Node`].
//! Every service is wrapped in [`observe::Observe`], which times and counts its calls.

mod access;
mod admin;
mod aggregations;
mod authn;
mod budget;
mod fetch;
mod groups;
mod health;
mod observe;
mod produce;
mod search;
pub mod status;

use std::sync::Arc;

use strata_proto::v1;
use tower_layer::Layer;

use self::authn::Authn;
use self::budget::Budget;
use self::observe::Observe;
use crate::auth::gate::Principal;
use crate::auth::{Operation, Permission, ResourceKind};
use crate::error::Error;
use crate::node::Node;

/// The implementation of every service.
#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
}

impl Api {
    /// Services over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Api { node }
    }

    /// Who sent `request` (the [`Authn`] layer put it there; a request that did not pass
    /// through it is refused when authentication is on).
    /// A call from another node (on the peer listener) is trusted: it is a share of a
    /// request the entry node checked.
    fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Principal, Error> {
        if crate::tls::PeerCaller::of(request).is_some() {
            return Ok(Principal::Anonymous);
        }
        match request.extensions().get::<Principal>() {
            Some(p) => Ok(p.clone()),
            None if self.node.auth.required() => Err(Error::Unauthenticated(
                "the request carries no login".into(),
            )),
            None => Ok(Principal::Anonymous),
        }
    }

    /// The caller of `request` if it may do `operation` on `resource` `name`; else
    /// `PERMISSION_DENIED` naming what it lacks.
    fn allow<T>(
        &self,
        request: &tonic::Request<T>,
        resource: ResourceKind,
        name: &str,
        operation: Operation,
    ) -> Result<Principal, Error> {
        let caller = self.caller(request)?;
        self.require(&caller, resource, name, operation)?;
        Ok(caller)
    }

    /// `Ok` if `caller` may do `operation` on `resource` `name`; else `PERMISSION_DENIED`
    /// naming what it lacks (and an audit record).
    fn require(
        &self,
        caller: &Principal,
        resource: ResourceKind,
        name: &str,
        operation: Operation,
    ) -> Result<(), Error> {
        let permission = Permission {
            resource,
            name,
            operation,
        };
        self.node.auth.check(caller, permission)
    }

    /// Whether `caller` may do `operation` on `resource` `name` (for filtering lists).
    fn may(
        &self,
        caller: &Principal,
        resource: ResourceKind,
        name: &str,
        operation: Operation,
    ) -> bool {
        self.node.auth.allows(
            caller,
            &Permission {
                resource,
                name,
                operation,
            },
        )
    }

    /// Records an administrative change and its outcome in the audit log; `result` as it is.
    fn audited<T>(
        &self,
        caller: &Principal,
        action: &str,
        resource: &str,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        let (outcome, message) = match &result {
            Ok(_) => ("ok", String::new()),
            Err(e) => ("failed", e.to_string()),
        };
        let audit = self.node.auth.audit();
        audit.record(caller.name(), action, resource, outcome, &message);
        result
    }

    fn check_serving(&self) -> Result<(), Error> {
        if self.node.is_serving() {
            Ok(())
        } else {
            Err(Error::ShuttingDown)
        }
    }
}

/// The record count in a batch header (the batch was validated when it was written).
fn record_count(batch: &[u8]) -> u64 {
    batch.get(19..23).map_or(0, |b| {
        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    })
}

/// The layers of every client service: authenticated, then held against the node's
/// request budget, all observed.
struct Guard {
    observe: Observe,
    authn: Authn,
    budget: Budget,
}

impl Guard {
    fn wrap<S>(&self, service: S) -> observe::Observed<authn::Authenticated<budget::Budgeted<S>>> {
        self.observe
            .layer(self.authn.layer(self.budget.layer(service)))
    }
}

/// Every client service, each authenticated and observed, with the node's message size
/// limits.
pub(crate) fn routes(node: &Arc<Node>) -> tonic::service::Routes {
    let api = Api::new(node.clone());
    let observe = Observe::new(node.metrics.clone());
    let authn = Authn::new(node.auth.clone());
    let budget = Budget::new(node.request_budget.clone());
    let guard = Guard {
        observe,
        authn,
        budget,
    };
    let max_request = node.config.max_request_bytes as usize;
    tonic::service::Routes::new(guard.wrap(
        v1::produce_server::ProduceServer::new(api.clone()).max_decoding_message_size(max_request),
    ))
    .add_service(guard.wrap(
        v1::fetch_server::FetchServer::new(api.clone()).max_encoding_message_size(max_request),
    ))
    .add_service(guard.wrap(v1::metadata_server::MetadataServer::new(api.clone())))
    .add_service(guard.wrap(v1::admin_server::AdminServer::new(api.clone())))
    .add_service(guard.wrap(v1::groups_server::GroupsServer::new(api.clone())))
    .add_service(guard.wrap(v1::search_server::SearchServer::new(api.clone())))
    .add_service(guard.wrap(v1::aggregations_server::AggregationsServer::new(
        api.clone(),
    )))
    .add_service(guard.wrap(v1::access_server::AccessServer::new(api.clone())))
    .add_service(guard.wrap(v1::health_server::HealthServer::new(api)))
}

/// The services the peer listener adds to Raft: the node-to-node shares of a search and of
/// an aggregation query, and produce (the audit log's writes to the audit topic's leader).
pub(crate) fn peer_routes(node: &Arc<Node>) -> tonic::service::Routes {
    let api = Api::new(node.clone());
    let observe = Observe::new(node.metrics.clone());
    let max_request = node.config.max_request_bytes as usize;
    tonic::service::Routes::new(observe.layer(v1::search_server::SearchServer::new(api.clone())))
        .add_service(
            observe.layer(v1::aggregations_server::AggregationsServer::new(
                api.clone(),
            )),
        )
        .add_service(observe.layer(
            v1::produce_server::ProduceServer::new(api).max_decoding_message_size(max_request),
        ))
}
