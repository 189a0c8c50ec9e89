//! `Search`: a query over the cluster ([`crate::search::scatter::Search`]), or another
//! node's share of one (explicit partitions: taken on the peer listener only).

use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::Api;
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
        Ok(Response::new(
            self.node.search.search(request.into_inner()).await?,
        ))
    }
}
