//! The HTTP front door: maps requests to core calls and core errors to responses. Each
//! module owns its routes; they are merged here, and the same [`app`] serves production
//! and tests.

pub mod audit;
mod error;
mod extract;
mod grants;
mod health;
pub mod openapi;
mod server;
mod tokens;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use error::ApiError;
pub use server::{bind, serve};

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::refresh::Refresher;
use crate::vault::Vault;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What handlers need, behind one `Arc`: axum clones the state for every request (each
/// `State` extractor and middleware), so a clone must be one reference count, not one per
/// field.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

/// The parts of [`AppState`]. Never derives `Debug` (the vault holds a cache).
pub struct Services {
    pub vault: Vault,
    pub refresher: Refresher,
    pub providers: Providers,
    pub auth: Authenticator,
    pub metrics: Metrics,
    pub failed_auth: audit::FailedAuthentications,
}

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// `request_timeout` bounds each request, reading its body included (503 `request_timeout`).
/// `metrics_here`: `/metrics` is served by this router (else by [`metrics_app`] on its own
/// listener, and this router has no such route: 404).
pub fn app(
    state: AppState,
    body_limit_bytes: usize,
    request_timeout: Duration,
    metrics_here: bool,
) -> Router {
    Router::new()
        .merge(openapi::routes(metrics_here))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            request_timeout,
            server::bound_request,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track_metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(|response: &Response, latency: Duration, _: &Span| {
                    // Debug: at full rate one line per request costs real throughput, and
                    // token operations already leave an audit event each.
                    tracing::debug!(
                        status = response.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1000.0,
                        "request done"
                    );
                }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, RandomRequestId))
        .with_state(state)
}

/// One span per request: method, route template (never the raw path's values beyond the
/// ids it carries), request id. Headers are not recorded: `Authorization` holds a key.
fn request_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        request_id,
    )
}

/// A random (v4) UUID for requests that come without an `x-request-id`, drawn from the
/// thread's CSPRNG: `tower_http`'s `MakeRequestUuid` asks the kernel for every one, a system
/// call per request. A request id is a correlation handle, not a secret.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let value = axum::http::HeaderValue::from_str(&id.to_string()).ok()?;
        Some(RequestId::new(value))
    }
}

/// `/metrics` alone, for its own listener.
pub fn metrics_app(state: AppState) -> Router {
    Router::from(health::metrics_router())
        .fallback(not_found)
        .with_state(state)
}

/// A path no route has: problem+json like every other error.
async fn not_found() -> ApiError {
    ApiError::invalid(StatusCode::NOT_FOUND, "no such route")
}

/// A route that exists without this method (axum adds the `Allow` header).
async fn method_not_allowed() -> ApiError {
    ApiError::invalid(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take this method",
    )
}

/// The method as a metric label: callers choose methods (any token is valid HTTP), and
/// every label value is a series kept forever, so the ones no route takes are `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

async fn track_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // `MatchedPath` is a shared string: cloning it allocates nothing.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_latency
        .with_label_values(&[route, method])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .with_label_values(&[route, method, response.status().as_str()])
        .inc();
    response
}
