//! Authenticating every client call in one place: [`Authn`] is a tower layer over each
//! client service (inside [`super::observe::Observe`], so refusals are counted) that turns
//! the request's `authorization` header into a [`Principal`] the handlers read, or answers
//! `UNAUTHENTICATED` before the handler runs. `Access/Login` and `Health/Check` need no
//! token.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tower_layer::Layer;

use crate::auth::gate::{Authenticator, Principal};

/// Calls answered without a token.
const OPEN: [&str; 2] = ["/strata.v1.Access/Login", "/strata.v1.Health/Check"];

/// The layer.
#[derive(Debug, Clone)]
pub(crate) struct Authn {
    auth: Arc<Authenticator>,
}

impl Authn {
    /// Authenticating with `auth`.
    pub(crate) fn new(auth: Arc<Authenticator>) -> Authn {
        Authn { auth }
    }
}

impl<S> Layer<S> for Authn {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// A service whose calls carry their [`Principal`].
#[derive(Debug, Clone)]
pub(crate) struct Authenticated<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let principal = if OPEN.contains(&request.uri().path()) {
            Ok(Principal::Anonymous)
        } else {
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            self.auth.authenticate(header)
        };
        match principal {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Box::pin(self.inner.call(request))
            }
            Err(e) => {
                let path = request.uri().path();
                let action = path.strip_prefix("/strata.v1.").unwrap_or(path);
                let message = e.to_string();
                (self.auth.audit()).record(
                    "unauthenticated",
                    action,
                    "",
                    "unauthenticated",
                    &message,
                );
                let response = super::status::status(&e).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
