//! Liveness, readiness and metrics: no authentication.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::AppState;
use crate::crypto::READINESS_TIMEOUT;
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

/// Ready when the grants table answers a read and the KMS key is usable, each within
/// [`READINESS_TIMEOUT`], so that the whole probe ends well inside a load balancer's
/// health-check timeout. A table locked by someone else reads as a database that is not
/// ready: requests would wait on it too.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (db, kms) = tokio::join!(
        tokio::time::timeout(READINESS_TIMEOUT, store::probe(state.vault.db())),
        state.vault.envelope().check_ready()
    );
    let db_ok = match db {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness: database unavailable");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: the database did not answer in time");
            false
        }
    };
    if let Err(err) = &kms {
        tracing::warn!(error = format!("{err:#}"), "readiness: KMS unavailable");
    }
    let status = if db_ok && kms.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        axum::Json(json!({ "database": word(db_ok), "kms": word(kms.is_ok()) })),
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
