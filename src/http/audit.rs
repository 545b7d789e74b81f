//! Structured audit events: one per token operation, with who asked (the API client), for
//! whom (user and provider) and how it ended. Never a secret.
//!
//! Emitted under the tracing target `token_store::audit`, inside the request span (which
//! carries the request id), so log pipelines can route them apart.

use std::future::Future;

use super::error::ApiError;
use super::extract::Caller;
use crate::domain::{ProviderName, UserId};

#[derive(Debug, Clone, Copy)]
pub enum Event {
    Store,
    Read,
    AccessToken,
    Refresh,
    Revoke,
    EraseUser,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Self::Store => "token.store",
            Self::Read => "token.read",
            Self::AccessToken => "token.access_token",
            Self::Refresh => "token.refresh",
            Self::Revoke => "token.revoke",
            Self::EraseUser => "user.erase",
        }
    }
}

/// Runs an operation and records its audit event: `outcome` is `ok` or the error's code.
pub async fn audited<T>(
    event: Event,
    caller: &Caller,
    user: &UserId,
    provider: Option<&ProviderName>,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let result = work.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(err) => err.code(),
    };
    tracing::info!(
        target: "token_store::audit",
        event = event.name(),
        client = %caller.0.name,
        user_id = %user,
        provider = provider.map_or("*", ProviderName::as_str),
        outcome,
        "audit"
    );
    result
}
