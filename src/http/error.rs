//! The one HTTP error type: a stable `code` per variant, problem+json bodies, and 5xx bodies
//! that carry no internal detail (the cause is logged once, inside the request span).

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Permission;
use crate::crypto::CryptoError;
use crate::domain::InvalidInput;
use crate::refresh::RefreshError;
use crate::vault::VaultError;

/// Seconds a client should wait before retrying a 503 of ours.
const RETRY_AFTER_SECONDS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    InvalidRequest { status: StatusCode, detail: String },
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("this client lacks the {} permission", .0.as_str())]
    Forbidden(Permission),
    #[error("no token is stored for this user and provider")]
    TokenNotFound,
    #[error("the stored grant lacks some requested scopes")]
    ScopeExpansionRequired(Vec<String>),
    #[error("the provider no longer honours this grant; the user must consent again")]
    ReauthorizationRequired,
    #[error("no OAuth client is configured for this provider")]
    ProviderNotConfigured,
    #[error("the provider is unavailable")]
    ProviderUnavailable { retry_after_seconds: u64 },
    #[error("the provider rejected this service's OAuth client; an operator must fix its configuration (the grant is unharmed)")]
    ProviderMisconfigured { retry_after_seconds: u64 },
    #[error("KMS is unavailable")]
    KmsUnavailable(#[source] anyhow::Error),
    #[error("the database is unavailable")]
    DatabaseUnavailable(#[source] anyhow::Error),
    #[error("the request took longer than its deadline")]
    RequestTimeout,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::InvalidRequest {
            status,
            detail: detail.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { status, .. } => *status,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::ScopeExpansionRequired(_) => StatusCode::FORBIDDEN,
            Self::TokenNotFound => StatusCode::NOT_FOUND,
            Self::ReauthorizationRequired => StatusCode::CONFLICT,
            Self::ProviderNotConfigured => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ProviderUnavailable { .. }
            | Self::ProviderMisconfigured { .. }
            | Self::KmsUnavailable(_)
            | Self::DatabaseUnavailable(_)
            | Self::RequestTimeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> ProblemCode {
        match self {
            Self::InvalidRequest { .. } => ProblemCode::InvalidRequest,
            Self::Unauthorized => ProblemCode::Unauthorized,
            Self::Forbidden(_) => ProblemCode::Forbidden,
            Self::TokenNotFound => ProblemCode::TokenNotFound,
            Self::ScopeExpansionRequired(_) => ProblemCode::ScopeExpansionRequired,
            Self::ReauthorizationRequired => ProblemCode::ReauthorizationRequired,
            Self::ProviderNotConfigured => ProblemCode::ProviderNotConfigured,
            Self::ProviderUnavailable { .. } => ProblemCode::ProviderUnavailable,
            Self::ProviderMisconfigured { .. } => ProblemCode::ProviderMisconfigured,
            Self::KmsUnavailable(_) => ProblemCode::KmsUnavailable,
            Self::DatabaseUnavailable(_) => ProblemCode::DatabaseUnavailable,
            Self::RequestTimeout => ProblemCode::RequestTimeout,
            Self::Internal(_) => ProblemCode::Internal,
        }
    }
}

/// Every error's stable code: what callers match on (the status alone is ambiguous: 403 is
/// `forbidden` or `scope_expansion_required`, 503 has four causes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// 400, 404, 405, 413, 415 or 422: the request is malformed or a value is invalid.
    InvalidRequest,
    /// 401: no API key, or an unknown one.
    Unauthorized,
    /// 403: the key lacks the route's permission.
    Forbidden,
    /// 404: nothing is stored for this user and provider.
    TokenNotFound,
    /// 403: the grant lacks requested scopes (`missingScopes`).
    ScopeExpansionRequired,
    /// 409: the grant is dead; the user must consent again.
    ReauthorizationRequired,
    /// 422: a refresh is needed but the provider has no OAuth client configured.
    ProviderNotConfigured,
    /// 503: the provider failed or the refresh lock is busy, and the token has expired.
    ProviderUnavailable,
    /// 503: the provider rejected this service's OAuth client (`invalid_client`,
    /// `unauthorized_client`) and the token has expired; the grant is unharmed and works
    /// again, with no new consent, once an operator fixes the client's configuration.
    ProviderMisconfigured,
    /// 503: KMS is unreachable or refuses.
    KmsUnavailable,
    /// 503: PostgreSQL is down or did not answer in time.
    DatabaseUnavailable,
    /// 503: the request took longer than its deadline.
    RequestTimeout,
    /// 500: anything else; the body says only "internal error".
    Internal,
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::TokenNotFound => "token_not_found",
            Self::ScopeExpansionRequired => "scope_expansion_required",
            Self::ReauthorizationRequired => "reauthorization_required",
            Self::ProviderNotConfigured => "provider_not_configured",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::ProviderMisconfigured => "provider_misconfigured",
            Self::KmsUnavailable => "kms_unavailable",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::RequestTimeout => "request_timeout",
            Self::Internal => "internal",
        }
    }
}

/// An error response body (RFC 9457 `application/problem+json`). Match on `code`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "type": "urn:token-store:problem:token_not_found",
    "title": "Not Found",
    "status": 404,
    "code": "token_not_found",
    "detail": "no token is stored for this user and provider"
}))]
pub struct Problem {
    /// `urn:token-store:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:token-store:problem:token_not_found")]
    kind: String,
    /// The status's reason phrase.
    title: &'static str,
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    code: ProblemCode,
    /// What was wrong, for people; never echoes a value the caller sent. 5xx: a fixed text.
    detail: String,
    /// `scope_expansion_required` only: the requested scopes the grant lacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_scopes: Option<Vec<String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let detail = match &self {
            // Ours: log the cause once, answer a fixed text.
            Self::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "request failed");
                "internal error".to_owned()
            }
            Self::KmsUnavailable(err) => {
                tracing::warn!(error = format!("{err:#}"), "KMS unavailable");
                "KMS is unavailable; retry later".to_owned()
            }
            Self::DatabaseUnavailable(err) => {
                tracing::warn!(error = format!("{err:#}"), "database unavailable");
                "the database is unavailable; retry later".to_owned()
            }
            Self::RequestTimeout => {
                tracing::warn!("request deadline exceeded");
                "the request took too long; retry later".to_owned()
            }
            _ => self.to_string(),
        };
        let missing_scopes = match &self {
            Self::ScopeExpansionRequired(missing) => Some(missing.clone()),
            _ => None,
        };
        let body = Problem {
            kind: format!("urn:token-store:problem:{}", code.as_str()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code,
            detail,
            missing_scopes,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let retry_after = match self {
            Self::ProviderUnavailable {
                retry_after_seconds,
            }
            | Self::ProviderMisconfigured {
                retry_after_seconds,
            } => Some(retry_after_seconds),
            Self::KmsUnavailable(_) | Self::DatabaseUnavailable(_) | Self::RequestTimeout => {
                Some(RETRY_AFTER_SECONDS)
            }
            _ => None,
        };
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<InvalidInput> for ApiError {
    fn from(err: InvalidInput) -> Self {
        Self::invalid(StatusCode::UNPROCESSABLE_ENTITY, err.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // Keep axum's status (400, 413, 415 or 422), not its text.
        let status = rejection.status();
        let detail = match &rejection {
            JsonRejection::JsonDataError(e) => describe_data_error(&e.body_text()),
            JsonRejection::JsonSyntaxError(_) => "the body is not valid JSON".to_owned(),
            JsonRejection::MissingJsonContentType(_) => {
                "expected Content-Type: application/json".to_owned()
            }
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "the body is too large".to_owned(),
            _ => "could not read the body".to_owned(),
        };
        Self::invalid(status, detail)
    }
}

/// Names the field at fault without echoing the value the caller sent (it may be a token):
/// serde's "invalid type: string \"...\"" messages quote it.
fn describe_data_error(text: &str) -> String {
    let detail = text
        .split_once("target type: ")
        .map_or(text, |(_, rest)| rest);
    if let Some(start) = detail.find("missing field `") {
        let field = detail[start..].split('`').nth(1).unwrap_or("");
        return format!("invalid body: missing field `{field}`");
    }
    if let Some(start) = detail.find("unknown field `") {
        // The name is the caller's: echoed only if it looks like a field name.
        let field = detail[start..].split('`').nth(1).unwrap_or("");
        let plain = field.len() <= 64
            && !field.is_empty()
            && field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        return if plain {
            format!("invalid body: unknown field `{field}`")
        } else {
            "invalid body: an unknown field".to_owned()
        };
    }
    match detail.split_once(": ") {
        Some((path, _)) if !path.contains(' ') => {
            format!("invalid body: `{path}` has the wrong type or value")
        }
        _ => "invalid body: a field has the wrong type or value".to_owned(),
    }
}

/// The rejection of the path extractors: the caller's mistake, as any other.
impl IntoResponse for InvalidInput {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl From<RefreshError> for ApiError {
    fn from(err: RefreshError) -> Self {
        match err {
            RefreshError::NotFound => Self::TokenNotFound,
            RefreshError::ReauthorizationRequired => Self::ReauthorizationRequired,
            RefreshError::ScopeExpansionRequired(missing) => Self::ScopeExpansionRequired(
                missing.iter().map(|s| s.as_str().to_owned()).collect(),
            ),
            RefreshError::ProviderNotConfigured => Self::ProviderNotConfigured,
            RefreshError::ProviderUnavailable { retry_after } => Self::ProviderUnavailable {
                retry_after_seconds: whole_seconds(retry_after),
            },
            RefreshError::ProviderMisconfigured { retry_after } => Self::ProviderMisconfigured {
                retry_after_seconds: whole_seconds(retry_after),
            },
            RefreshError::KmsUnavailable(e) => Self::KmsUnavailable(anyhow::anyhow!("{e:#}")),
            RefreshError::DatabaseUnavailable(e) => {
                Self::DatabaseUnavailable(anyhow::anyhow!("{e:#}"))
            }
            RefreshError::Unexpected(e) => Self::Internal(anyhow::anyhow!("{e:#}")),
        }
    }
}

/// Rounded up: "retry in 0 s" would invite a hot loop.
fn whole_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl From<VaultError> for ApiError {
    fn from(err: VaultError) -> Self {
        match err {
            VaultError::NotFound => Self::TokenNotFound,
            VaultError::Crypto(CryptoError::KmsUnavailable(e)) => Self::KmsUnavailable(e),
            other if other.is_database_unavailable() => Self::DatabaseUnavailable(other.into()),
            other => Self::Internal(other.into()),
        }
    }
}
