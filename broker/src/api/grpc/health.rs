//! `Health`: whether the node serves requests.

use strata_proto::v1;
use strata_proto::v1::health_check_response::Status as Serving;
use tonic::{Request, Response, Status};

use super::Api;

#[tonic::async_trait]
impl v1::health_server::Health for Api {
    async fn check(
        &self,
        _request: Request<v1::HealthCheckRequest>,
    ) -> Result<Response<v1::HealthCheckResponse>, Status> {
        let status = if self.node.is_serving() {
            Serving::Serving
        } else {
            Serving::NotServing
        };
        Ok(Response::new(v1::HealthCheckResponse {
            status: status as i32,
            node_id: self.node.config.node_id,
        }))
    }
}
