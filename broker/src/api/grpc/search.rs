//! `Search`: a query over the cluster ([`crate::search::scatter::Search`]), or another
//! node's share of one.

use strata_proto::v1;
use tonic::{Request, Response, Status};

use super::Api;

#[tonic::async_trait]
impl v1::search_server::Search for Api {
    async fn search(
        &self,
        request: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        self.check_serving()?;
        Ok(Response::new(
            self.node.search.search(request.into_inner()).await?,
        ))
    }
}
