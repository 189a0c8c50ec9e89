//! Timing and counting every RPC in one place: [`Observe`] is a tower layer over each
//! client service. A call is labelled `Service/Method` (`Produce/Produce`,
//! `Admin/CreateTopic`); its latency is the time until its response (for a stream, until
//! the stream starts), and a call answered with an error status is counted under the
//! error's code: the `ErrorDetail` code the status carries (`NOT_LEADER`), or the gRPC
//! code for a status without one (`RESOURCE_EXHAUSTED` for an oversized message).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use prost::Message;
use strata_proto::v1::ErrorDetail;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tower_layer::Layer;

use crate::metrics::Metrics;

/// The layer: wraps a service in [`Observed`].
#[derive(Debug, Clone)]
pub(crate) struct Observe {
    metrics: Arc<Metrics>,
}

impl Observe {
    /// Observing into `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Observe {
        Observe { metrics }
    }
}

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose calls are timed and counted.
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S: NamedService> NamedService for Observed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for Observed<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + NamedService,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path()).to_string();
        let started = Instant::now();
        let call = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let result = call.await;
            let status = result
                .as_ref()
                .ok()
                .and_then(|r| tonic::Status::from_header_map(r.headers()))
                .filter(|s| s.code() != tonic::Code::Ok);
            // Unknown methods share one label, so hostile paths cannot grow the metrics.
            let rpc = match &status {
                Some(s) if s.code() == tonic::Code::Unimplemented => {
                    format!("{}/unknown", service_of::<S>())
                }
                _ => format!("{}/{method}", service_of::<S>()),
            };
            metrics.observe(&rpc, started.elapsed());
            if let Some(status) = status {
                let code = error_code(&status);
                tracing::debug!(%rpc, %code, message = status.message(), "request failed");
                metrics.failed(&rpc, &code);
            }
            result
        })
    }
}

/// The service's name without its package: `Produce` for `strata.v1.Produce`.
fn service_of<S: NamedService>() -> &'static str {
    S::NAME.rsplit('.').next().unwrap_or(S::NAME)
}

/// The method of a request path (`/strata.v1.Produce/Produce` → `Produce`).
fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The error code of a status: its `ErrorDetail`'s, else the gRPC code's name.
fn error_code(status: &tonic::Status) -> String {
    if let Ok(detail) = ErrorDetail::decode(status.details())
        && detail.code != 0
    {
        return detail.code().as_str_name().to_string();
    }
    // `InvalidArgument` → `INVALID_ARGUMENT`, like the detail codes.
    let mut name = String::new();
    for (i, c) in format!("{:?}", status.code()).chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::grpc::status;
    use crate::error::Error;

    /// A service that knows one method and answers every other as gRPC does.
    #[derive(Clone)]
    struct OneMethod;

    impl NamedService for OneMethod {
        const NAME: &'static str = "strata.v1.Produce";
    }

    impl Service<http::Request<()>> for OneMethod {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<http::Response<()>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let status = match request.uri().path() {
                "/strata.v1.Produce/Produce" => status::status(&Error::UnknownTopic("t".into())),
                _ => tonic::Status::unimplemented("no such method"),
            };
            let mut response = http::Response::new(());
            status
                .add_header(response.headers_mut())
                .expect("a status fits in headers");
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn calls_are_labelled_by_method_and_unknown_methods_share_one_label() {
        let metrics = Arc::new(Metrics::new());
        let mut service = Observe::new(metrics.clone()).layer(OneMethod);
        let call = |path: String| http::Request::builder().uri(path).body(()).unwrap();
        service
            .call(call("/strata.v1.Produce/Produce".into()))
            .await
            .unwrap();
        for i in 0..100 {
            service
                .call(call(format!("/strata.v1.Produce/Made-up-{i}")))
                .await
                .unwrap();
        }
        let text = metrics.render_requests();
        assert!(
            text.contains(
                r#"strata_request_errors_total{rpc="Produce/Produce",code="UNKNOWN_TOPIC"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"strata_request_errors_total{rpc="Produce/unknown",code="UNIMPLEMENTED"} 100"#
            ),
            "{text}"
        );
        assert!(!text.contains("Made-up"), "{text}");
    }

    #[test]
    fn error_codes_come_from_the_detail_or_the_status() {
        let s = status::status(&Error::NotLeader {
            what: "t/0".into(),
            leader: Some(2),
            address: None,
        });
        assert_eq!(error_code(&s), "NOT_LEADER");
        let s = tonic::Status::resource_exhausted("message too large");
        assert_eq!(error_code(&s), "RESOURCE_EXHAUSTED");
        assert_eq!(
            error_code(&tonic::Status::unimplemented("")),
            "UNIMPLEMENTED"
        );
    }
}
