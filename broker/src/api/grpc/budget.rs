//! Holding every client call's request bytes against the node's [`RequestBudget`]:
//! [`Budget`] is a tower layer over each client service. A request body's data frames take
//! their bytes from the budget as they arrive, and the call gives them back once it has
//! answered (for a unary call after its handler ran, so the decoded request is covered too).
//! A frame that does not fit ends the call with `UNAVAILABLE` (the `ErrorDetail` says
//! why), which clients retry after a back-off, as they do a busy Kafka broker's throttling.
//! No client method streams its requests, so a call holds exactly its one request's bytes.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Buf;
use futures_util::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tower_layer::Layer;

use crate::budget::RequestBudget;
use crate::lock::lock;

/// The layer: wraps a service in [`Budgeted`].
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    budget: RequestBudget,
}

impl Budget {
    /// Holding calls' bytes against `budget`.
    pub(crate) fn new(budget: RequestBudget) -> Budget {
        Budget { budget }
    }
}

impl<S> Layer<S> for Budget {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Budgeted<S> {
        Budgeted {
            inner,
            budget: self.budget.clone(),
        }
    }
}

/// A service whose calls hold their request bytes against the budget.
#[derive(Debug, Clone)]
pub(crate) struct Budgeted<S> {
    inner: S,
    budget: RequestBudget,
}

impl<S: NamedService> NamedService for Budgeted<S> {
    const NAME: &'static str = S::NAME;
}

/// The bytes one call holds, given back when the call and its request body are both done.
type Held = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

impl<S, B, R> Service<http::Request<B>> for Budgeted<S>
where
    S: Service<http::Request<Metered<B>>, Response = http::Response<R>>,
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
        let held = Held::default();
        let request = request.map(|body| Metered {
            body,
            budget: self.budget.clone(),
            held: held.clone(),
        });
        let call = self.inner.call(request);
        Box::pin(async move {
            let answer = call.await;
            drop(held);
            answer
        })
    }
}

/// A request body whose data takes bytes from the budget as it arrives.
pub(crate) struct Metered<B> {
    body: B,
    budget: RequestBudget,
    held: Held,
}

impl<B> Body for Metered<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, tonic::Status>>> {
        let this = &mut *self;
        let frame = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(tonic::Status::from_error(e.into())))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            match this.budget.take(data.remaining()) {
                Ok(Some(permit)) => {
                    let mut held = lock(&this.held);
                    match held.as_mut() {
                        Some(p) => p.merge(permit),
                        None => *held = Some(permit),
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "request refused: in-flight bytes at the bound");
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
