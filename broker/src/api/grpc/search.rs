//! `Search`: a query over the cluster ([`crate::search::scatter::Search`]), or another
//! node's share of one (explicit partitions: taken on the peer listener only). A caller
//! searches only topics it may read.

use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::{Operation, ResourceKind};
use crate::error::Error;
use crate::tls::PeerCaller;

#[tonic::async_trait]
impl v1::search_server::Search for Api {
    async fn search(
        &self,
        request: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        self.check_serving()?;
        if !request.get_ref().partitions.is_empty() && PeerCaller::of(&request).is_none() {
            return Err(Error::PermissionDenied(
                "only another node may name partitions in a search; name topics".into(),
            )
            .into());
        }
        let caller = self.caller(&request)?;
        for topic in &request.get_ref().topics {
            self.allow(&request, ResourceKind::Topic, topic, Operation::Read)?;
        }
        let mut request = request.into_inner();
        if request.topics.is_empty() && !caller.unrestricted() {
            // Every topic means every topic the caller may read (never Strata's own).
            let state = self.node.cluster.current();
            let readable = |t: &str| self.may(&caller, ResourceKind::Topic, t, Operation::Read);
            request.topics = state
                .topics
                .keys()
                .filter(|t| readable(t))
                .cloned()
                .collect();
            if request.topics.is_empty() {
                return Ok(Response::new(v1::SearchResponse::default()));
            }
        }
        Ok(Response::new(self.node.search.search(request).await?))
    }
}
