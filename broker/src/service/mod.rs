//! The gRPC services of a node (`strata.v1`): Produce, Fetch, Metadata, Admin, Groups,
//! Aggregations, Search and Health, all implemented by [`Api`] over the shared [`Node`].

mod admin;
mod aggregations;
pub(crate) mod emit;
mod fetch;
mod groups;
mod health;
mod produce;
mod search;
pub(crate) mod status;

use std::sync::Arc;
use std::time::Instant;

use strata_proto::v1;
use tonic::Status;

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

    /// Counts a request's latency and, if it failed, its error code; maps the error to a status.
    fn finish<T>(
        &self,
        rpc: &'static str,
        started: Instant,
        result: Result<T, Error>,
    ) -> Result<T, Status> {
        self.node.metrics.observe(rpc, started.elapsed());
        result.map_err(|e| {
            let code = status::code(&e);
            self.node.metrics.failed(rpc, code.as_str_name());
            tracing::debug!(rpc, error = %e, "request failed");
            status::status(&e)
        })
    }

    fn check_serving(&self) -> Result<(), Error> {
        if self.node.is_serving() {
            Ok(())
        } else {
            Err(Error::Unavailable("the node is shutting down".into()))
        }
    }
}

/// The record count in a batch header (the batch was validated when it was written).
fn record_count(batch: &[u8]) -> u64 {
    batch.get(19..23).map_or(0, |b| {
        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    })
}

/// Registers every service on a tonic router, with the node's message size limits.
pub(crate) fn routes(node: &Arc<Node>) -> tonic::service::Routes {
    let api = Api::new(node.clone());
    let max_request = node.config.max_request_bytes as usize;
    tonic::service::Routes::new(
        v1::produce_server::ProduceServer::new(api.clone()).max_decoding_message_size(max_request),
    )
    .add_service(
        v1::fetch_server::FetchServer::new(api.clone()).max_encoding_message_size(max_request),
    )
    .add_service(v1::metadata_server::MetadataServer::new(api.clone()))
    .add_service(v1::admin_server::AdminServer::new(api.clone()))
    .add_service(v1::groups_server::GroupsServer::new(api.clone()))
    .add_service(v1::search_server::SearchServer::new(api.clone()))
    .add_service(v1::aggregations_server::AggregationsServer::new(
        api.clone(),
    ))
    .add_service(v1::health_server::HealthServer::new(api))
}
