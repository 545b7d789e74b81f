//! Grant health: a user's grants (`GET /v1/users/{userId}/tokens`), every grant page by
//! page for operators (`GET /v1/grants`), and the webhook deliveries of grant events
//! (`GET /v1/webhook-deliveries`). Never a token.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::{audited, Event};
use super::error::{ApiError, Problem};
use super::extract::{Caller, UserParams, UserPath};
use super::AppState;
use crate::auth::Permission;
use crate::domain::{GrantHealth, GrantSummary, InvalidInput, ProviderName};
use crate::events::timestamp;
use crate::store::DeliveryRow;
use crate::vault::to_millis;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_grants))
        .routes(routes!(list_deliveries))
}

/// Most items a page holds; the default is 100.
const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

/// A grant's health, scopes and schedule: never a token.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantHealthBody {
    user_id: String,
    provider: String,
    /// `active`; `degraded` (refreshes failing transiently: see `consecutiveFailures`,
    /// `lastErrorCode`, `nextRetryAt`); `reauthorization_required` (see `reason`).
    state: HealthState,
    /// Why the grant is dead: the provider's error (`invalid_grant`), or
    /// `missing_refresh_token` for an expired grant without one. Only when dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Failed refreshes since the last one that worked. Only when degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    consecutive_failures: Option<u32>,
    /// The last failure's code (`http_503`, `timeout`, ...). Only when degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error_code: Option<String>,
    /// No refresh before this (milliseconds since the Unix epoch). Only when degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_retry_at: Option<i64>,
    scopes: Vec<String>,
    /// When the access token expires (milliseconds since the Unix epoch).
    expires_at: i64,
    /// The last refresh that worked, if any (milliseconds since the Unix epoch).
    last_refreshed_at: Option<i64>,
    /// When the service refreshes it next on its own, if it will (milliseconds since the
    /// Unix epoch).
    next_refresh_at: Option<i64>,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Active,
    Degraded,
    ReauthorizationRequired,
}

impl HealthState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Degraded => "degraded",
            Self::ReauthorizationRequired => "reauthorization_required",
        }
    }
}

impl From<GrantSummary> for GrantHealthBody {
    fn from(grant: GrantSummary) -> Self {
        let mut body = Self {
            user_id: grant.grant.user.as_str().to_owned(),
            provider: grant.grant.provider.as_str().to_owned(),
            state: HealthState::Active,
            reason: None,
            consecutive_failures: None,
            last_error_code: None,
            next_retry_at: None,
            scopes: grant.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            expires_at: to_millis(grant.expires_at),
            last_refreshed_at: grant.last_refreshed_at.map(to_millis),
            next_refresh_at: grant.next_refresh_at.map(to_millis),
        };
        match grant.health {
            GrantHealth::Active => {}
            GrantHealth::Degraded {
                consecutive_failures,
                last_error,
                next_retry_at,
            } => {
                body.state = HealthState::Degraded;
                body.consecutive_failures = Some(consecutive_failures);
                body.last_error_code = last_error;
                body.next_retry_at = next_retry_at.map(to_millis);
            }
            GrantHealth::ReauthorizationRequired { reason } => {
                body.state = HealthState::ReauthorizationRequired;
                body.reason = Some(reason);
            }
        }
        body
    }
}

/// A user's grants.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserGrantsBody {
    grants: Vec<GrantHealthBody>,
}

/// Every grant of a user with its health and scopes (no tokens); an empty list if none.
#[utoipa::path(
    get,
    path = "/v1/users/{userId}/tokens",
    operation_id = "listUserGrants",
    tag = "lifecycle",
    params(UserParams),
    security(("bearer" = [])),
    responses((status = 200, description = "The user's grants", body = UserGrantsBody))
)]
pub(super) async fn list_user_grants(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<UserPath, InvalidInput>,
) -> Result<axum::Json<UserGrantsBody>, ApiError> {
    audited(
        Event::ListGrants,
        &caller,
        Permission::Read,
        &path,
        |path| async move {
            let grants = state.vault.summaries_of(&path.0).await?;
            Ok(axum::Json(UserGrantsBody {
                grants: grants.into_iter().map(Into::into).collect(),
            }))
        },
    )
    .await
}

/// Which grants a page holds.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GrantsQuery {
    /// Only grants in this state.
    state: Option<HealthState>,
    /// Only grants of this provider.
    #[param(min_length = 1, max_length = 32, pattern = r"^[a-z][a-z0-9_-]{0,31}$")]
    provider: Option<String>,
    /// Where the page starts: the previous page's `nextCursor` (the page holds the grants
    /// after it in `(userId, provider)` order).
    #[param(min_length = 1, max_length = 256, pattern = r"^[\x20-\x7E]+$")]
    cursor: Option<String>,
    /// Most grants on the page (1 to 1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of grants.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantsPageBody {
    grants: Vec<GrantHealthBody>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<String>,
}

/// Every grant, page by page in `(userId, provider)` order, with its health (no tokens).
/// Needs the `inspect` permission.
#[utoipa::path(
    get,
    path = "/v1/grants",
    operation_id = "listGrants",
    tag = "lifecycle",
    params(GrantsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of grants", body = GrantsPageBody),
        (status = 422, description = "`invalid_request`: a bad filter, cursor or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_grants(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<GrantsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<GrantsPageBody>, ApiError> {
    caller.require(Permission::Inspect)?;
    let Query(query) = query.map_err(|_| invalid("a query parameter is unknown or malformed"))?;
    let limit = page_size(query.limit)?;
    let provider = query
        .provider
        .as_deref()
        .map(ProviderName::parse)
        .transpose()?;
    let after = query.cursor.as_deref().map(grant_position).transpose()?;
    let grants = state
        .vault
        .list_grants(
            query.state.map(HealthState::as_str),
            provider.as_ref(),
            after
                .as_ref()
                .map(|(user, provider)| (user.as_str(), provider.as_str())),
            limit,
        )
        .await?;
    let next_cursor = (grants.len() == limit as usize)
        .then(|| {
            grants
                .last()
                .map(|g| format!("{}/{}", g.grant.user, g.grant.provider))
        })
        .flatten();
    Ok(axum::Json(GrantsPageBody {
        grants: grants.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Which deliveries a page holds.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// Only deliveries in this state.
    state: Option<DeliveryState>,
    /// Where the page starts: the previous page's `nextCursor` (the page holds the
    /// deliveries after it).
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[0-9]{1,18}/[\x20-\x7E]*$"
    )]
    cursor: Option<String>,
    /// Most deliveries on the page (1 to 1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; tried again after a backoff.
    Pending,
    Delivered,
    /// Given up after the configured number of attempts.
    Failed,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// One event's delivery to one endpoint.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryBody {
    /// The event's `webhook-id`.
    event_id: String,
    /// `grant.connected`, `grant.degraded`, `grant.reauthorization_required`,
    /// `grant.recovered` or `grant.revoked`.
    #[serde(rename = "type")]
    kind: String,
    user_id: String,
    provider: String,
    /// When the event happened (RFC 3339).
    created_at: String,
    /// The endpoint's name in the configuration.
    endpoint: String,
    state: DeliveryState,
    attempts: i32,
    /// The last failed attempt's reason (`http_500`, `timeout`, `connect`, ...).
    last_error: Option<String>,
    /// When the endpoint accepted it (RFC 3339).
    delivered_at: Option<String>,
}

impl From<DeliveryRow> for DeliveryBody {
    fn from(row: DeliveryRow) -> Self {
        Self {
            event_id: row.event_id,
            kind: row.kind,
            user_id: row.grant.user.as_str().to_owned(),
            provider: row.grant.provider.as_str().to_owned(),
            created_at: timestamp(row.created_at),
            endpoint: row.endpoint,
            state: match row.state.as_str() {
                "delivered" => DeliveryState::Delivered,
                "failed" => DeliveryState::Failed,
                _ => DeliveryState::Pending,
            },
            attempts: row.attempts,
            last_error: row.last_error,
            delivered_at: row.delivered_at.map(timestamp),
        }
    }
}

/// A page of deliveries.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveriesPageBody {
    deliveries: Vec<DeliveryBody>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<String>,
}

/// The webhook deliveries of grant events, oldest first, for example those that failed
/// for good (`state=failed`). Needs the `inspect` permission.
#[utoipa::path(
    get,
    path = "/v1/webhook-deliveries",
    operation_id = "listWebhookDeliveries",
    tag = "lifecycle",
    params(DeliveriesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveriesPageBody),
        (status = 422, description = "`invalid_request`: a bad filter, cursor or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<DeliveriesPageBody>, ApiError> {
    caller.require(Permission::Inspect)?;
    let Query(query) = query.map_err(|_| invalid("a query parameter is unknown or malformed"))?;
    let limit = page_size(query.limit)?;
    let after = query.cursor.as_deref().map(delivery_position).transpose()?;
    let rows = state
        .vault
        .list_deliveries(
            query.state.map(DeliveryState::as_str),
            after
                .as_ref()
                .map(|(id, endpoint)| (*id, endpoint.as_str())),
            limit,
        )
        .await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| format!("{}/{}", r.id, r.endpoint)))
        .flatten();
    Ok(axum::Json(DeliveriesPageBody {
        deliveries: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

fn invalid(detail: &str) -> ApiError {
    ApiError::invalid(StatusCode::UNPROCESSABLE_ENTITY, detail)
}

fn page_size(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(invalid("limit must be 1 to 1000")),
    }
}

/// A page's start: where the previous page ended, `userId/provider` (user ids hold no
/// `/`). Any printable text is a position in that order, so any is accepted.
fn grant_position(cursor: &str) -> Result<(String, String), ApiError> {
    let printable = cursor.bytes().all(|b| (0x20..0x7f).contains(&b));
    if cursor.is_empty() || cursor.len() > 256 || !printable {
        return Err(invalid(
            "cursor must be 1 to 256 printable ASCII characters",
        ));
    }
    let (user, provider) = cursor.rsplit_once('/').unwrap_or((cursor, ""));
    Ok((user.to_owned(), provider.to_owned()))
}

/// A page's start: the last delivery's `eventNumber/endpoint`.
fn delivery_position(cursor: &str) -> Result<(i64, String), ApiError> {
    cursor
        .split_once('/')
        .filter(|(_, endpoint)| endpoint.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .and_then(|(id, endpoint)| Some((id.parse().ok()?, endpoint.to_owned())))
        .ok_or_else(|| invalid("cursor is not a position this service gave"))
}
