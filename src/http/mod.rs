//! The HTTP front door: maps requests to core calls and core errors to responses. Each
//! module owns its routes; they are merged here, and the same [`app`] serves production
//! and tests.

mod audit;
mod error;
mod extract;
mod health;
mod tokens;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use error::ApiError;

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::refresh::Refresher;
use crate::vault::Vault;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What handlers need. Cheap to clone; never derives `Debug` (the vault holds a cache).
#[derive(Clone)]
pub struct AppState {
    pub vault: Vault,
    pub refresher: Refresher,
    pub providers: Providers,
    pub auth: Arc<Authenticator>,
    pub metrics: Metrics,
}

pub fn app(state: AppState, body_limit_bytes: usize) -> Router {
    Router::new()
        .merge(tokens::router())
        .merge(health::router())
        .layer(DefaultBodyLimit::max(body_limit_bytes))
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
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
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
        client = tracing::field::Empty,
    )
}

async fn track_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_latency
        .with_label_values(&[route.as_str(), method.as_str()])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .inc();
    response
}
