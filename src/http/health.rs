//! Liveness, readiness and metrics: no authentication.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::crypto::READINESS_TIMEOUT;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// `/metrics`: on the main listener, or on its own (`[server] metrics_listen`).
pub fn metrics_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// `{"status":"ok"}`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    status: HealthStatus,
}

/// Always `ok`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
}

/// Each dependency's readiness.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    database: Dependency,
    kms: Dependency,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dependency {
    Ok,
    Unavailable,
}

impl Dependency {
    fn of(ok: bool) -> Self {
        if ok {
            Self::Ok
        } else {
            Self::Unavailable
        }
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "healthz",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: HealthStatus::Ok,
    })
}

/// Readiness: the grants table answers a read and the KMS key is usable, each within a
/// second, so that the probe ends well inside a load balancer's health-check timeout. A
/// table locked by someone else reads as a database that is not ready: requests would wait
/// on it too. KMS's answer is reused for `readiness_cache_ms`.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "The database or KMS is not ready", body = Readiness),
    ))]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (db, kms) = tokio::join!(
        tokio::time::timeout(READINESS_TIMEOUT, state.vault.probe_database()),
        state.vault.check_kms()
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
    let readiness = Readiness {
        database: Dependency::of(db_ok),
        kms: Dependency::of(kms.is_ok()),
    };
    (status, axum::Json(readiness))
}

/// Prometheus text exposition of the `token_store_*` metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let cached = state.vault.cached_keys().await;
    state
        .metrics
        .unwrap_cache_entries
        .set(i64::try_from(cached).unwrap_or(i64::MAX));
    state
        .metrics
        .row_cache_entries
        .set(i64::try_from(state.vault.cached_rows()).unwrap_or(i64::MAX));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
