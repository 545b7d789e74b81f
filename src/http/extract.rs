//! Extractors that reject with our problem+json instead of axum's plain text.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::AppState;
use crate::auth::{Client, Permission};
use crate::domain::{GrantKey, InvalidInput, ProviderName, UserId};

/// A JSON object body (`axum::Json` with our rejection).
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(Object(value)) = axum::Json::<Object<T>>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// `T`, read only from a JSON object: serde would also fill a struct from an array of
/// its fields in order (`[null, null]`), which no caller means and the contract forbids.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Visit<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer.deserialize_map(Visit(PhantomData)).map(Object)
    }
}

/// The path parameters of one grant, as sent and as the contract describes them.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[serde(rename_all = "camelCase")]
pub struct GrantParams {
    /// The caller's id for one of its users: 1 to 128 of `A-Z a-z 0-9 . _ - @ : +`, not `.`
    /// or `..`, and not an email address (`local@domain.tld`): it is written in plain text
    /// to CloudTrail with every KMS call, so it must be an opaque id.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^(?!\.\.?$)(?![^@]+@[^@.][^@]*[.][^@]*[^@.]$)[A-Za-z0-9._@:+-]{1,128}$",
        example = "user-42"
    )]
    user_id: String,
    /// The provider, as named in the service's configuration: 1 to 32 of `a-z 0-9 _ -`,
    /// starting with a letter.
    #[param(
        min_length = 1,
        max_length = 32,
        pattern = r"^[a-z][a-z0-9_-]{0,31}$",
        example = "google"
    )]
    provider: String,
}

/// The path parameter of a user.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[serde(rename_all = "camelCase")]
pub struct UserParams {
    /// The caller's id for one of its users (as in [`GrantParams`]).
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^(?!\.\.?$)(?![^@]+@[^@.][^@]*[.][^@]*[^@.]$)[A-Za-z0-9._@:+-]{1,128}$",
        example = "user-42"
    )]
    user_id: String,
}

/// `{userId}/tokens/{provider}` from the path, parsed. Handlers take it as
/// `Result<TokenPath, InvalidInput>` and look at the error only once the caller is
/// authorised (see `audit::audited`): a key without the permission learns nothing about
/// which inputs are valid.
pub struct TokenPath(pub GrantKey);

impl FromRequestParts<AppState> for TokenPath {
    type Rejection = InvalidInput;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, InvalidInput> {
        let raw = raw_path::<GrantParams>(parts, state).await?;
        Ok(Self(GrantKey::new(
            UserId::parse(&raw.user_id)?,
            ProviderName::parse(&raw.provider)?,
        )))
    }
}

/// `{userId}` from the path, parsed (taken as `Result` as [`TokenPath`] is).
pub struct UserPath(pub UserId);

impl FromRequestParts<AppState> for UserPath {
    type Rejection = InvalidInput;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, InvalidInput> {
        let raw = raw_path::<UserParams>(parts, state).await?;
        Ok(Self(UserId::parse(&raw.user_id)?))
    }
}

/// The path's parameters, percent-decoded; the only failure a matched route leaves is a
/// segment that does not decode to UTF-8.
async fn raw_path<T: serde::de::DeserializeOwned + Send>(
    parts: &mut Parts,
    state: &AppState,
) -> Result<T, InvalidInput> {
    let axum::extract::Path(raw) = axum::extract::Path::<T>::from_request_parts(parts, state)
        .await
        .map_err(|_| InvalidInput {
            field: "path",
            rule: "must be percent-encoded UTF-8",
        })?;
    Ok(raw)
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
        let mut headers = parts.headers.get_all(AUTHORIZATION).iter();
        let (Some(header), None) = (headers.next(), headers.next()) else {
            if parts.headers.contains_key(AUTHORIZATION) {
                // Which one would count? Neither: a proxy and a caller disagree.
                return Err(ApiError::invalid(
                    StatusCode::BAD_REQUEST,
                    "more than one Authorization header",
                ));
            }
            return Err(refused(state, AuthFailure::Missing));
        };
        let key = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        let Some(key) = key else {
            return Err(refused(state, AuthFailure::Malformed));
        };
        match state.auth.authenticate(key) {
            Some(client) => Ok(Self(client)),
            None => Err(refused(state, AuthFailure::UnknownKey)),
        }
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <key>`.
    Malformed,
    /// A key no client has.
    UnknownKey,
}

impl AuthFailure {
    /// The `reason` of an `auth.failed` audit event and of `token_store_auth_failures_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
        }
    }
}

/// A 401, counted and audited (rate-limited) so that guessing keys is visible.
fn refused(state: &AppState, failure: AuthFailure) -> ApiError {
    state.failed_auth.record(&state.metrics, failure);
    ApiError::Unauthorized
}

/// A JSON body that may be absent altogether (an empty body or `null` is `None`).
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
        // A JSON `null` is no body too.
        let axum::Json(value) = axum::Json::<Option<Object<T>>>::from_bytes(&bytes)?;
        Ok(Self(value.map(|Object(value)| value)))
    }
}
