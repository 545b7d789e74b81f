//! `/v1/users/{userId}/tokens/...`: store, read and delete grants.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{audited, Event};
use super::error::{ApiError, Problem};
use super::extract::{Caller, GrantParams, Json, OptionalJson, TokenPath, UserParams, UserPath};
use super::AppState;
use crate::auth::Permission;
use crate::domain::{
    AccessGrant, AccessToken, InvalidInput, ProviderName, RefreshToken, Scope, StoredToken,
    TokenSet, TokenStatus,
};
use crate::revoke;
use crate::vault::{to_millis, Reveal};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(store_token, get_token, delete_token))
        .routes(routes!(access_token))
        .routes(routes!(force_refresh))
        .routes(routes!(super::grants::list_user_grants, delete_user_tokens))
}

/// A grant to store: what the provider's token endpoint answered at consent.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "accessToken": "ya29.a0AfB_example-access",
    "refreshToken": "1//0g_example-refresh",
    "expiresAt": 1764003600000_i64,
    "scopes": ["openid", "https://www.googleapis.com/auth/gmail.readonly"]
}))]
pub struct StoreTokenBody {
    /// 1 to 16384 characters of printable ASCII.
    #[schema(min_length = 1, max_length = 16384, pattern = r"^[\x20-\x7E]+$")]
    access_token: String,
    /// As `accessToken`. Without one, the grant cannot be refreshed.
    #[schema(min_length = 1, max_length = 16384, pattern = r"^[\x20-\x7E]+$")]
    refresh_token: Option<String>,
    /// When the access token expires, in milliseconds since the Unix epoch (at most the
    /// end of year 262142, the latest time the service represents).
    #[schema(minimum = 1, maximum = 8_210_266_876_799_999_i64)]
    #[serde(deserialize_with = "whole_number")]
    expires_at: i64,
    /// The granted scopes (RFC 6749 scope tokens); duplicates are dropped.
    #[schema(max_items = 100)]
    scopes: Vec<ScopeString>,
}

/// [`whole_number`], or `null`.
fn optional_whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] i64);
    Ok(Option::<Whole>::deserialize(deserializer)?.map(|Whole(n)| n))
}

/// An integer, also when written with a zero fraction (`3600.0`): JSON Schema, and so the
/// contract, counts that as an integer, and JavaScript callers may send one.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_i64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })
        .ok_or_else(|| serde::de::Error::custom("expected a whole number"))
}

/// One RFC 6749 scope token, as sent (parsed into a `Scope` by the handler).
#[derive(Deserialize)]
#[serde(transparent)]
pub struct ScopeString(String);

impl PartialSchema for ScopeString {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "An RFC 6749 scope token: 1 to 512 of %x21 / %x23-5B / %x5D-7E",
            ))
            .min_length(Some(1))
            .max_length(Some(Scope::MAX_LEN))
            .pattern(Some(r"^[\x21\x23-\x5B\x5D-\x7E]+$"))
            .examples([serde_json::json!("openid")])
            .into()
    }
}

impl ToSchema for ScopeString {}

impl AsRef<str> for ScopeString {
    fn as_ref(&self) -> &str {
        &self.0
    }
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

/// A stored grant, decrypted: the `StoredToken` of the TypeScript callers, plus its status.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "accessToken": "ya29.a0AfB_example-access",
    "refreshToken": "1//0g_example-refresh",
    "expiresAt": 1764003600000_i64,
    "scopes": ["openid"],
    "provider": "google",
    "status": "active"
}))]
pub struct StoredTokenBody {
    access_token: String,
    /// Present only for clients with the `read_refresh_token` permission, and only if the
    /// grant has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// Milliseconds since the Unix epoch.
    expires_at: i64,
    scopes: Vec<String>,
    provider: String,
    status: GrantStatus,
}

/// A grant's status: a dead grant is kept (not served) until a new consent replaces it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    Active,
    ReauthorizationRequired,
}

impl From<TokenStatus> for GrantStatus {
    fn from(status: TokenStatus) -> Self {
        match status {
            TokenStatus::Active => Self::Active,
            TokenStatus::ReauthorizationRequired => Self::ReauthorizationRequired,
        }
    }
}

impl StoredTokenBody {
    fn new(stored: StoredToken, provider: &ProviderName) -> Self {
        let token = stored.token;
        Self {
            access_token: token.access_token.expose().to_owned(),
            refresh_token: token.refresh_token.map(|t| t.expose().to_owned()),
            expires_at: to_millis(token.expires_at),
            scopes: token.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            provider: provider.as_str().to_owned(),
            status: stored.status.into(),
        }
    }
}

/// What an access token must satisfy. The whole body is optional.
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"scopes": ["openid"], "minValiditySeconds": 600}))]
pub struct AccessTokenBody {
    /// Scopes the grant must carry (else 403 `scope_expansion_required`).
    #[schema(max_items = 100)]
    scopes: Option<Vec<ScopeString>>,
    /// The token must stay valid at least this long (refreshed first if not); the
    /// service's refresh buffer applies if it is longer.
    #[schema(minimum = 0, maximum = 86400)]
    #[serde(default, deserialize_with = "optional_whole_number")]
    min_validity_seconds: Option<i64>,
}

/// An access token valid now.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "accessToken": "ya29.a0AfB_example-access",
    "expiresAt": 1764003600000_i64,
    "scopes": ["openid"],
    "tokenType": "Bearer"
}))]
pub struct AccessTokenResponse {
    access_token: String,
    /// Milliseconds since the Unix epoch.
    expires_at: i64,
    scopes: Vec<String>,
    token_type: TokenType,
}

/// Always `Bearer`.
#[derive(Serialize, ToSchema)]
pub enum TokenType {
    Bearer,
}

impl From<AccessGrant> for AccessTokenResponse {
    fn from(grant: AccessGrant) -> Self {
        Self {
            access_token: grant.access_token.expose().to_owned(),
            expires_at: to_millis(grant.expires_at),
            scopes: grant.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            token_type: TokenType::Bearer,
        }
    }
}

/// Longest validity a caller may ask for: a day.
const MAX_MIN_VALIDITY_SECONDS: i64 = 24 * 3600;

/// An access token valid now, refreshed first (exactly once across replicas) if it
/// expires within the refresh buffer or `minValiditySeconds`. While the provider fails
/// transiently or the refresh lock is busy, the current token is served as long as it has
/// not actually expired.
#[utoipa::path(
    post,
    path = "/v1/users/{userId}/tokens/{provider}/access-token",
    operation_id = "getAccessToken",
    tag = "grants",
    params(GrantParams),
    request_body(content = Option<AccessTokenBody>, content_type = "application/json",
        description = "Optional; an empty body asks for no scopes and the default validity"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A token valid now", body = AccessTokenResponse),
        (status = 403, description = "`forbidden`: the key lacks `read`; or `scope_expansion_required`: the grant lacks requested scopes (`missingScopes`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`token_not_found`: nothing is stored", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`reauthorization_required`: the grant is dead", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`invalid_request`: the body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_request`: a bad path or body value; or `provider_not_configured`: a refresh is needed and the provider has no OAuth client", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`provider_unavailable`, `provider_misconfigured`, `kms_unavailable`, `database_unavailable` or `request_timeout`", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
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
                Some(s) if !(0..=MAX_MIN_VALIDITY_SECONDS).contains(&s) => {
                    return Err(ApiError::invalid(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "minValiditySeconds must be 0 to 86400",
                    ))
                }
                s => s.map(|s| Duration::from_secs(s.unsigned_abs())),
            };
            let grant = state
                .refresher
                .access_token(&path.0, &scopes, min_validity)
                .await?;
            Ok(axum::Json(grant.into()))
        },
    )
    .await
}

/// Refreshes the grant at its provider now, whatever its expiry.
#[utoipa::path(
    post,
    path = "/v1/users/{userId}/tokens/{provider}/refresh",
    operation_id = "refreshToken",
    tag = "grants",
    params(GrantParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The refreshed token", body = AccessTokenResponse),
        (status = 404, description = "`token_not_found`: nothing is stored", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`reauthorization_required`: the grant is dead", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_request`: a bad path value; or `provider_not_configured`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`provider_unavailable`, `provider_misconfigured`, `kms_unavailable`, `database_unavailable` or `request_timeout`", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
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
            let grant = state.refresher.force_refresh(&path.0).await?;
            Ok(axum::Json(grant.into()))
        },
    )
    .await
}

/// Stores a grant, or replaces the pair's grant: a new data key, status `active`.
#[utoipa::path(
    put,
    path = "/v1/users/{userId}/tokens/{provider}",
    operation_id = "putToken",
    tag = "grants",
    params(GrantParams),
    request_body(content = StoreTokenBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Stored"),
        (status = 413, description = "`invalid_request`: the body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`invalid_request`: the body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_request`: a bad path or body value, a missing or unknown field", body = Problem, content_type = "application/problem+json"),
    )
)]
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
            let grant = path.0.clone();
            let superseded = state.providers.revokes_superseded(&grant.provider);
            if let Some(old) = state.vault.store(&grant, &token, superseded).await? {
                // After the commit and off the request: the caller does not wait on it.
                let state = state.clone();
                tokio::spawn(async move {
                    revoke::revoke_superseded(&state.providers, &state.metrics, &grant, &old).await;
                });
            }
            Ok(StatusCode::NO_CONTENT)
        },
    )
    .await
}

/// The stored grant, decrypted.
#[utoipa::path(
    get,
    path = "/v1/users/{userId}/tokens/{provider}",
    operation_id = "getToken",
    tag = "grants",
    params(GrantParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stored grant", body = StoredTokenBody),
        (status = 404, description = "`token_not_found`: nothing is stored", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_token(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<TokenPath, InvalidInput>,
) -> Result<axum::Json<StoredTokenBody>, ApiError> {
    let reveal = if caller.0.has(Permission::ReadRefreshToken) {
        Reveal::AccessAndRefreshToken
    } else {
        Reveal::AccessToken
    };
    audited(
        Event::Read,
        &caller,
        Permission::Read,
        &path,
        |path| async move {
            let stored = state.vault.get(&path.0, reveal).await?;
            Ok(axum::Json(StoredTokenBody::new(stored, &path.0.provider)))
        },
    )
    .await
}

/// Revokes the grant at its provider (best effort), then deletes it; also 204 if there was
/// nothing.
#[utoipa::path(
    delete,
    path = "/v1/users/{userId}/tokens/{provider}",
    operation_id = "deleteToken",
    tag = "grants",
    params(GrantParams),
    security(("bearer" = [])),
    responses((status = 204, description = "Deleted (or there was nothing)"))
)]
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
            revoke::revoke_and_delete(&state.vault, &state.providers, &state.metrics, &path.0)
                .await?;
            Ok(StatusCode::NO_CONTENT)
        },
    )
    .await
}

/// Revokes and deletes every grant of a user (account erasure).
#[utoipa::path(
    delete,
    path = "/v1/users/{userId}/tokens",
    operation_id = "deleteUserTokens",
    tag = "grants",
    params(UserParams),
    security(("bearer" = [])),
    responses((status = 204, description = "Deleted (or there was nothing)"))
)]
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
