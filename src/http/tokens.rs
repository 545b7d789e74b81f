//! `/v1/users/{userId}/tokens/...`: store, read and delete grants.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, post, put};
use axum::Router;
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::audit::{audited, Event};
use super::error::ApiError;
use super::extract::{Caller, Json, OptionalJson, TokenPath, UserPath};
use super::AppState;
use crate::auth::Permission;
use crate::domain::{AccessToken, InvalidInput, RefreshToken, Scope, StoredToken, TokenSet};
use crate::refresh::AccessGrant;
use crate::revoke;
use crate::vault::to_millis;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/users/{user_id}/tokens/{provider}",
            put(store_token).get(get_token).delete(delete_token),
        )
        .route(
            "/v1/users/{user_id}/tokens/{provider}/access-token",
            post(access_token),
        )
        .route(
            "/v1/users/{user_id}/tokens/{provider}/refresh",
            post(force_refresh),
        )
        .route("/v1/users/{user_id}/tokens", delete(delete_user_tokens))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoreTokenBody {
    access_token: String,
    refresh_token: Option<String>,
    /// Milliseconds since the Unix epoch.
    expires_at: i64,
    scopes: Vec<String>,
}

impl StoreTokenBody {
    fn parse(self) -> Result<TokenSet, ApiError> {
        let expires_at = DateTime::from_timestamp_millis(self.expires_at)
            .filter(|_| self.expires_at > 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "expiresAt must be a positive time in milliseconds since the epoch",
                )
            })?;
        Ok(TokenSet {
            access_token: AccessToken::parse(self.access_token)?,
            refresh_token: self.refresh_token.map(RefreshToken::parse).transpose()?,
            expires_at,
            scopes: Scope::parse_list(&self.scopes)?,
        })
    }
}

/// The `StoredToken` of the TypeScript callers, plus the row's status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredTokenBody {
    access_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    expires_at: i64,
    scopes: Vec<String>,
    provider: String,
    status: &'static str,
}

impl From<StoredToken> for StoredTokenBody {
    fn from(stored: StoredToken) -> Self {
        let token = stored.token;
        Self {
            access_token: token.access_token.expose().to_owned(),
            refresh_token: token.refresh_token.map(|t| t.expose().to_owned()),
            expires_at: to_millis(token.expires_at),
            scopes: token.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            provider: stored.provider.as_str().to_owned(),
            status: stored.status.as_str(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessTokenBody {
    scopes: Option<Vec<String>>,
    min_validity_seconds: Option<u32>,
}

/// `{accessToken, expiresAt, scopes, tokenType}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AccessTokenResponse {
    access_token: String,
    expires_at: i64,
    scopes: Vec<String>,
    token_type: &'static str,
}

impl From<AccessGrant> for AccessTokenResponse {
    fn from(grant: AccessGrant) -> Self {
        Self {
            access_token: grant.access_token.expose().to_owned(),
            expires_at: to_millis(grant.expires_at),
            scopes: grant.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            token_type: "Bearer",
        }
    }
}

/// Longest validity a caller may ask for: a day.
const MAX_MIN_VALIDITY_SECONDS: u32 = 24 * 3600;

async fn access_token(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<TokenPath, InvalidInput>,
    body: Result<OptionalJson<AccessTokenBody>, ApiError>,
) -> Result<axum::Json<AccessTokenResponse>, ApiError> {
    audited(
        Event::AccessToken,
        &caller,
        Permission::Read,
        &path,
        |path| async move {
            let OptionalJson(body) = body?;
            let body = body.unwrap_or_default();
            let scopes = Scope::parse_list(body.scopes.as_deref().unwrap_or_default())?;
            let min_validity = match body.min_validity_seconds {
                Some(s) if s > MAX_MIN_VALIDITY_SECONDS => {
                    return Err(ApiError::invalid(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "minValiditySeconds must be at most 86400",
                    ))
                }
                s => s.map(|s| Duration::from_secs(s.into())),
            };
            let grant = state
                .refresher
                .access_token(&path.user, &path.provider, &scopes, min_validity)
                .await?;
            Ok(axum::Json(grant.into()))
        },
    )
    .await
}

async fn force_refresh(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<TokenPath, InvalidInput>,
) -> Result<axum::Json<AccessTokenResponse>, ApiError> {
    audited(
        Event::Refresh,
        &caller,
        Permission::Refresh,
        &path,
        |path| async move {
            let grant = state
                .refresher
                .force_refresh(&path.user, &path.provider)
                .await?;
            Ok(axum::Json(grant.into()))
        },
    )
    .await
}

async fn store_token(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<TokenPath, InvalidInput>,
    body: Result<Json<StoreTokenBody>, ApiError>,
) -> Result<StatusCode, ApiError> {
    audited(
        Event::Store,
        &caller,
        Permission::Write,
        &path,
        |path| async move {
            let Json(body) = body?;
            let token = body.parse()?;
            state
                .vault
                .store(&path.user, &path.provider, &token)
                .await?;
            Ok(StatusCode::NO_CONTENT)
        },
    )
    .await
}

async fn get_token(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<TokenPath, InvalidInput>,
) -> Result<axum::Json<StoredTokenBody>, ApiError> {
    let with_refresh = caller.0.has(Permission::ReadRefreshToken);
    audited(
        Event::Read,
        &caller,
        Permission::Read,
        &path,
        |path| async move {
            let stored = state
                .vault
                .get(&path.user, &path.provider, with_refresh)
                .await?;
            Ok(axum::Json(stored.into()))
        },
    )
    .await
}

async fn delete_token(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<TokenPath, InvalidInput>,
) -> Result<StatusCode, ApiError> {
    audited(
        Event::Revoke,
        &caller,
        Permission::Revoke,
        &path,
        |path| async move {
            revoke::revoke_and_delete(
                &state.vault,
                &state.providers,
                &state.metrics,
                &path.user,
                &path.provider,
            )
            .await?;
            Ok(StatusCode::NO_CONTENT)
        },
    )
    .await
}

async fn delete_user_tokens(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<UserPath, InvalidInput>,
) -> Result<StatusCode, ApiError> {
    audited(
        Event::EraseUser,
        &caller,
        Permission::Revoke,
        &path,
        |path| async move {
            let UserPath(user) = path;
            revoke::revoke_and_delete_user(&state.vault, &state.providers, &state.metrics, user)
                .await?;
            Ok(StatusCode::NO_CONTENT)
        },
    )
    .await
}
