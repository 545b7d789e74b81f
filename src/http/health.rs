//! Liveness, readiness and metrics: no authentication.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::AppState;
use crate::store;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and the KMS key is usable.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (db, kms) = tokio::join!(
        store::ping(state.vault.db()),
        state.vault.envelope().check_ready()
    );
    if let Err(err) = &db {
        tracing::warn!(error = %err, "readiness: database unavailable");
    }
    if let Err(err) = &kms {
        tracing::warn!(error = format!("{err:#}"), "readiness: KMS unavailable");
    }
    let status = if db.is_ok() && kms.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        axum::Json(json!({ "database": word(db.is_ok()), "kms": word(kms.is_ok()) })),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let cached = state.vault.envelope().cached_keys().await;
    state
        .metrics
        .unwrap_cache_entries
        .set(i64::try_from(cached).unwrap_or(i64::MAX));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
