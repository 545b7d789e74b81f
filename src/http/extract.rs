//! Extractors that reject with our problem+json instead of axum's plain text.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::auth::{Client, Permission};
use crate::domain::{ProviderName, UserId};

/// `axum::Json` with our rejection.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// `{userId}/tokens/{provider}` from the path, parsed.
pub struct TokenPath {
    pub user: UserId,
    pub provider: ProviderName,
}

impl FromRequestParts<AppState> for TokenPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Raw {
            user_id: String,
            provider: String,
        }
        let axum::extract::Path(raw) =
            axum::extract::Path::<Raw>::from_request_parts(parts, state).await?;
        Ok(Self {
            user: UserId::parse(&raw.user_id)?,
            provider: ProviderName::parse(&raw.provider)?,
        })
    }
}

/// `{userId}` from the path, parsed.
pub struct UserPath(pub UserId);

impl FromRequestParts<AppState> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Raw {
            user_id: String,
        }
        let axum::extract::Path(raw) =
            axum::extract::Path::<Raw>::from_request_parts(parts, state).await?;
        Ok(Self(UserId::parse(&raw.user_id)?))
    }
}

/// The authenticated caller (`Authorization: Bearer <key>`).
pub struct Caller(pub Arc<Client>);

impl Caller {
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.0.has(permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(permission))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let (scheme, key) = header.split_once(' ').ok_or(ApiError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized);
        }
        let client = state
            .auth
            .authenticate(key.trim())
            .ok_or(ApiError::Unauthorized)?;
        Ok(Self(client))
    }
}

/// A JSON body that may be absent altogether (an empty body is `None`).
pub struct OptionalJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                ApiError::invalid(status, "could not read the body (too large?)")
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Self(Some(value)))
    }
}
