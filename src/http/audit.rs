//! Structured audit events: one per token operation, with who asked (the API client), for
//! whom (user and provider) and how it ended. Never a secret.
//!
//! Emitted under the tracing target `token_store::audit`, inside the request span (which
//! carries the request id), so log pipelines can route them apart.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::error::ApiError;
use super::extract::{AuthFailure, Caller, TokenPath, UserPath};
use crate::auth::Permission;
use crate::domain::{InvalidInput, ProviderName, UserId};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy)]
pub enum Event {
    Store,
    Read,
    AccessToken,
    Refresh,
    Revoke,
    EraseUser,
    ListGrants,
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
            Self::ListGrants => "user.list_grants",
        }
    }
}

/// What a request is about, as its audit event names it.
pub trait Subject {
    fn user(&self) -> &UserId;
    fn provider(&self) -> Option<&ProviderName>;
}

impl Subject for TokenPath {
    fn user(&self) -> &UserId {
        &self.0.user
    }
    fn provider(&self) -> Option<&ProviderName> {
        Some(&self.0.provider)
    }
}

impl Subject for UserPath {
    fn user(&self) -> &UserId {
        &self.0
    }
    fn provider(&self) -> Option<&ProviderName> {
        None
    }
}

/// Runs an operation and records its audit event: `outcome` is `ok` or the error's code.
///
/// The order of refusals is fixed here for every route: the caller's permission first,
/// then the path (`path` is the extractor's result, not yet looked at), then `work`, which
/// parses the body. A caller without the permission is refused before any of its input is
/// validated, so it learns nothing about which inputs are valid. An event whose path did
/// not parse names neither user nor provider (`-`): the raw values are the caller's.
pub async fn audited<'a, P: Subject, T, F>(
    event: Event,
    caller: &Caller,
    needs: Permission,
    path: &'a Result<P, InvalidInput>,
    work: impl FnOnce(&'a P) -> F,
) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let result = match (caller.require(needs), path) {
        (Err(forbidden), _) => Err(forbidden),
        (Ok(()), Err(invalid)) => Err(invalid.clone().into()),
        (Ok(()), Ok(path)) => work(path).await,
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(err) => err.code().as_str(),
    };
    let subject = path.as_ref().ok();
    tracing::info!(
        target: "token_store::audit",
        event = event.name(),
        client = %caller.0.name,
        user_id = subject.map_or("-", |s| s.user().as_str()),
        provider = match subject {
            Some(s) => s.provider().map_or("*", ProviderName::as_str),
            None => "-",
        },
        outcome,
        "audit"
    );
    result
}

/// Most `auth.failed` audit events written per second; the rest are counted, and the next
/// event written says how many were left out. `token_store_auth_failures_total` counts all.
const AUTH_FAILURE_EVENTS_PER_SECOND: u32 = 10;

/// Audit events of failed authentications, rate-limited: a flood of guesses must not
/// become a flood of log lines.
#[derive(Default)]
pub struct FailedAuthentications {
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    written: u32,
    left_out: u64,
}

impl FailedAuthentications {
    pub fn record(&self, metrics: &Metrics, failure: AuthFailure) {
        metrics
            .auth_failures
            .with_label_values(&[failure.as_str()])
            .inc();
        let left_out = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if window
                .started
                .is_none_or(|started| now.duration_since(started) >= Duration::from_secs(1))
            {
                window.started = Some(now);
                window.written = 0;
            }
            if window.written >= AUTH_FAILURE_EVENTS_PER_SECOND {
                window.left_out += 1;
                return;
            }
            window.written += 1;
            std::mem::take(&mut window.left_out)
        };
        tracing::info!(
            target: "token_store::audit",
            event = "auth.failed",
            reason = failure.as_str(),
            outcome = "unauthorized",
            left_out,
            "audit"
        );
    }
}
