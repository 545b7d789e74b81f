//! A valid access token, refreshed at the provider exactly once across every replica.
//!
//! The protocol:
//! 1. In a process, concurrent callers for one grant share one refresh (a flight,
//!    [`flights`]), run as its own task so that a caller going away never strands a
//!    half-done refresh.
//! 2. The flight locks the grant ([`Vault::lock`]: a transaction-scoped advisory lock on a
//!    connection of the small lock pool, never the request pool), waiting at most
//!    `lock_timeout`. The provider's HTTP timeout is shorter than that.
//! 3. Under the lock it re-reads the grant and decides again ([`policy::decide`]): if
//!    another replica refreshed meanwhile, it returns that token and calls nobody.
//! 4. Otherwise it opens the refresh token, calls the provider, re-seals the result (under the
//!    row's data key while it is young: no KMS call) and writes it `where version = read`.
//! 5. A rotated refresh token is persisted in that same write; a failed write is retried on
//!    the request pool (the version check keeps it safe without the lock) and logged loudly.
//! 6. Terminal provider errors mark the row `reauthorization_required` (only if the refresh
//!    token that failed is still stored); transient ones start a cool-down and the current
//!    access token is served while it has not actually expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::Instrument;

use crate::config::RefreshSettings;
use crate::crypto::CryptoError;
use crate::domain::{AccessGrant, GrantKey, ProviderName, Scope, TokenSet, TokenStatus};
use crate::metrics::Metrics;
use crate::providers::{Provider, ProviderError, Providers};
use crate::vault::{SealedGrant, Vault, VaultError};

pub mod flights;
pub mod policy;

use flights::Flights;
use policy::{after, Decision, Fallback, Validity};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    #[error("no token is stored for this user and provider")]
    NotFound,
    #[error("the grant must be authorized again")]
    ReauthorizationRequired,
    #[error("the grant lacks requested scopes")]
    ScopeExpansionRequired(Vec<Scope>),
    #[error("no OAuth client is configured for this provider")]
    ProviderNotConfigured,
    #[error("the provider is unavailable")]
    ProviderUnavailable { retry_after: Duration },
    #[error("the provider rejected the OAuth client: its configuration must be fixed")]
    ProviderMisconfigured { retry_after: Duration },
    #[error("KMS is unavailable")]
    KmsUnavailable(Arc<anyhow::Error>),
    #[error("the database is unavailable")]
    DatabaseUnavailable(Arc<anyhow::Error>),
    #[error("refresh failed")]
    Unexpected(Arc<anyhow::Error>),
}

impl RefreshError {
    fn unexpected(err: impl Into<anyhow::Error>) -> Self {
        Self::Unexpected(Arc::new(err.into()))
    }
}

impl From<VaultError> for RefreshError {
    fn from(err: VaultError) -> Self {
        match err {
            VaultError::NotFound => Self::NotFound,
            VaultError::Crypto(CryptoError::KmsUnavailable(e)) => Self::KmsUnavailable(Arc::new(e)),
            other if other.is_database_unavailable() => {
                Self::DatabaseUnavailable(Arc::new(other.into()))
            }
            other => Self::unexpected(other),
        }
    }
}

/// How a refresh attempt ended: the `outcome` label of `token_store_refreshes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The provider answered and the result was written.
    Refreshed,
    /// Under the lock, the grant was fresh already (another replica refreshed it).
    AlreadyFresh,
    /// A cool-down after a transient failure held the refresh back.
    Cooldown,
    /// The lock could not be had in time.
    LockTimeout,
    /// No OAuth client is configured for the provider.
    NotConfigured,
    /// The grant was replaced or deleted while it was being refreshed.
    Superseded,
    /// The grant has no refresh token.
    NoRefreshToken,
    /// The provider rejected the grant: it is dead.
    Terminal,
    /// The provider rejected the OAuth client (or it did so moments ago): the operator's
    /// configuration is wrong, the grant is untouched.
    Misconfigured,
    /// The provider is unavailable.
    Transient,
    /// The provider answered something unusable.
    Error,
}

impl RefreshOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refreshed => "refreshed",
            Self::AlreadyFresh => "already_fresh",
            Self::Cooldown => "cooldown",
            Self::LockTimeout => "lock_timeout",
            Self::NotConfigured => "not_configured",
            Self::Superseded => "superseded",
            Self::NoRefreshToken => "no_refresh_token",
            Self::Terminal => "terminal",
            Self::Misconfigured => "misconfigured",
            Self::Transient => "transient",
            Self::Error => "error",
        }
    }
}

type Outcome = Result<AccessGrant, RefreshError>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct FlightKey {
    grant: GrantKey,
    kind: FlightKind,
}

/// Which kind of [`Validity`] a flight was started for: callers asking another kind join
/// another flight.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum FlightKind {
    Requested,
    Forced,
    Due,
}

/// Why a refresh was tried: the `trigger` label of `token_store_refreshes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A caller asked for a token, or forced a refresh.
    OnDemand,
    /// The keeper, ahead of the access token's expiry.
    Ahead,
    /// The keeper, because the refresh token had been idle too long.
    KeepAlive,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on_demand",
            Self::Ahead => "ahead",
            Self::KeepAlive => "keep_alive",
        }
    }
}

/// Hands out valid access tokens. Cheap to clone.
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    vault: Vault,
    providers: Providers,
    settings: RefreshSettings,
    metrics: Metrics,
    flights: Flights<FlightKey, Outcome>,
    misconfigured: Misconfigured,
}

/// How long refreshes at a provider pause after it rejected the OAuth client: the
/// `Retry-After` of `provider_misconfigured`, and how often the condition is logged.
pub const MISCONFIGURED_PAUSE: Duration = Duration::from_secs(30);

/// Providers that rejected the OAuth client lately, and until when refreshes there pause.
/// A fixed configuration means a restart, which starts with no pause.
#[derive(Default)]
struct Misconfigured {
    until: std::sync::Mutex<std::collections::HashMap<ProviderName, Instant>>,
}

impl Misconfigured {
    /// Starts a pause, logging the condition if no pause was running (once per pause).
    fn trip(&self, provider: &ProviderName, error: &str) {
        let now = Instant::now();
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let running = until.get(provider).is_some_and(|end| *end > now);
        until.insert(provider.clone(), now + MISCONFIGURED_PAUSE);
        if !running {
            tracing::error!(
                provider = %provider,
                error = %error,
                pause_s = MISCONFIGURED_PAUSE.as_secs(),
                "the provider rejected the OAuth client: check its client_id, client_secret and client_auth; grants are left as they are"
            );
        }
    }

    fn is_paused(&self, provider: &ProviderName) -> bool {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.get(provider).is_some_and(|end| *end > Instant::now())
    }
}

impl Refresher {
    pub fn new(
        vault: Vault,
        providers: Providers,
        settings: RefreshSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                vault,
                providers,
                settings,
                metrics,
                flights: Flights::default(),
                misconfigured: Misconfigured::default(),
            }),
        }
    }

    /// An access token valid for at least the refresh buffer (or `min_validity`, if longer)
    /// that carries every requested scope; refreshed first if need be. No span of its own
    /// (the hot path): its audit event names the grant, and a refresh runs in a span that
    /// does.
    pub async fn access_token(
        &self,
        grant: &GrantKey,
        scopes: &[Scope],
        min_validity: Option<Duration>,
    ) -> Outcome {
        let inner = &self.inner;
        let buffer = inner.settings.buffer;
        let validity = Validity::AtLeast(min_validity.map_or(buffer, |v| v.max(buffer)));
        let now = Utc::now();
        // The row cache answers a token it can serve as it is, and sends one that needs a
        // refresh straight to the flight, which reads the grant again under its lock
        // anyway (a refresh storm then costs no lock-free read per request). Anything else
        // is decided on the row as stored now.
        let decide = |state: &_| policy::decide(state, now, scopes, validity);
        let usable = |state: &_| matches!(decide(state), Decision::Serve | Decision::Refresh);
        if let Some(cached) = inner.vault.cached(grant, usable) {
            return match decide(cached.state()) {
                Decision::Serve => Ok(inner.vault.open_access(&cached).await?),
                _ => self.join_flight(grant, Trigger::OnDemand, validity).await,
            };
        }
        let sealed = inner
            .vault
            .read(grant)
            .await?
            .ok_or(RefreshError::NotFound)?;
        match policy::decide(sealed.state(), Utc::now(), scopes, validity) {
            Decision::Serve => Ok(inner.vault.open_access(&sealed).await?),
            // The flight also answers for a grant it cannot refresh (no OAuth client for
            // the provider comes first, then no refresh token), as it does under the lock.
            Decision::Refresh | Decision::NoRefreshToken => {
                self.join_flight(grant, Trigger::OnDemand, validity).await
            }
            other => inner.settle(grant, Trigger::OnDemand, &sealed, other).await,
        }
    }

    /// Refreshes now, whatever the token's expiry.
    #[tracing::instrument(skip_all, fields(user_id = %grant.user, provider = %grant.provider))]
    pub async fn force_refresh(&self, grant: &GrantKey) -> Outcome {
        self.join_flight(grant, Trigger::OnDemand, Validity::Forced)
            .await
    }

    /// The keeper's refresh of a grant it found due (`trigger`: ahead of expiry, or to keep
    /// it alive), through the same lock, re-read and fenced write as any refresh; a grant
    /// no longer due under the lock is left alone.
    pub async fn keep(&self, grant: &GrantKey, trigger: Trigger) -> Outcome {
        self.join_flight(grant, trigger, Validity::Due).await
    }

    /// Joins the grant's flight in this process, or starts one.
    async fn join_flight(&self, grant: &GrantKey, trigger: Trigger, validity: Validity) -> Outcome {
        let key = FlightKey {
            grant: grant.clone(),
            kind: match validity {
                Validity::AtLeast(_) => FlightKind::Requested,
                Validity::Forced => FlightKind::Forced,
                Validity::Due => FlightKind::Due,
            },
        };
        let inner = self.inner.clone();
        let (flight, joined) = inner.flights.join_or_start(key, {
            let inner = inner.clone();
            // The span is the flight's: callers that join one (a storm) open none.
            move |key| {
                let span = tracing::info_span!(
                    "refresh",
                    user_id = %key.grant.user,
                    provider = %key.grant.provider
                );
                async move { inner.run_flight(&key.grant, trigger, validity).await }
                    .instrument(span)
            }
        });
        if joined {
            inner.metrics.refresh_joins.inc();
        }
        flight
            .await
            .unwrap_or_else(|crashed| Err(RefreshError::unexpected(crashed)))
    }
}

impl Inner {
    async fn run_flight(&self, grant: &GrantKey, trigger: Trigger, validity: Validity) -> Outcome {
        let Some(client) = self.providers.get(&grant.provider) else {
            self.count(grant, trigger, RefreshOutcome::NotConfigured);
            return Err(RefreshError::ProviderNotConfigured);
        };
        if self.misconfigured.is_paused(&grant.provider) {
            self.count(grant, trigger, RefreshOutcome::Misconfigured);
            let sealed = self
                .vault
                .read(grant)
                .await?
                .ok_or(RefreshError::NotFound)?;
            return self.serve_while_misconfigured(&sealed).await;
        }
        // A grant replaced or deleted while the provider was being asked fences the write
        // off; the new state is then looked at under the lock again: a deleted grant is not
        // found, a new one is served if it is fresh and refreshed if it is not (even when
        // this flight was a forced refresh: the new grant is not the one it was asked for).
        let mut validity = validity;
        for _ in 0..2 {
            if let Some(token) = self.attempt(grant, trigger, validity, &*client).await? {
                return Ok(token);
            }
            self.count(grant, trigger, RefreshOutcome::Superseded);
            validity = Validity::AtLeast(self.settings.buffer);
        }
        // Replaced again and again: what is stored now, if it is still valid.
        self.serve_stored(grant).await
    }

    /// One refresh under the grant's lock. `Ok(None)`: the grant changed under it (replaced
    /// or deleted), so nothing it read may be served.
    async fn attempt(
        &self,
        grant: &GrantKey,
        trigger: Trigger,
        validity: Validity,
        client: &dyn Provider,
    ) -> Result<Option<AccessGrant>, RefreshError> {
        let started = Instant::now();
        let locked = self.vault.lock(grant, self.settings.lock_timeout).await;
        self.metrics
            .lock_wait
            .with_label_values(&[self.providers.label(&grant.provider)])
            .observe(started.elapsed().as_secs_f64());
        let Some(mut locked) = locked? else {
            // Busy: another refresh holds the lock, or every lock connection is taken.
            self.count(grant, trigger, RefreshOutcome::LockTimeout);
            tracing::warn!("gave up waiting for the refresh lock");
            return self.serve_stored(grant).await.map(Some);
        };

        // Under the lock: the grant as it is now, perhaps refreshed by another replica.
        let sealed = locked.reread().await?.ok_or(RefreshError::NotFound)?;
        let now = Utc::now();
        match policy::decide(sealed.state(), now, &[], validity) {
            Decision::Refresh => {}
            Decision::Serve => {
                self.count(grant, trigger, RefreshOutcome::AlreadyFresh);
                return Ok(Some(self.vault.open_access(&sealed).await?));
            }
            other => return self.settle(grant, trigger, &sealed, other).await.map(Some),
        }

        let refresh_token = locked.refresh_token(&sealed).await?;
        match client.refresh(&refresh_token).await {
            Ok(refreshed) => {
                let token = TokenSet {
                    access_token: refreshed.access_token,
                    refresh_token: Some(refreshed.refresh_token.unwrap_or(refresh_token)),
                    expires_at: after(now, refreshed.expires_in),
                    scopes: refreshed
                        .scopes
                        .unwrap_or_else(|| sealed.state().scopes.clone()),
                };
                if !locked.write_refreshed(&sealed, &token).await? {
                    tracing::info!("the grant was replaced or deleted while it was being refreshed; the refreshed token is discarded");
                    return Ok(None);
                }
                self.count(grant, trigger, RefreshOutcome::Refreshed);
                Ok(Some(token.into()))
            }
            Err(ProviderError::Misconfigured { error }) => {
                // Not the grant's fault: nothing is written, and calls to this provider
                // pause for a while (no point asking again with the same client).
                self.misconfigured.trip(&grant.provider, &error);
                self.count(grant, trigger, RefreshOutcome::Misconfigured);
                self.serve_while_misconfigured(&sealed).await.map(Some)
            }
            Err(ProviderError::Terminal { error }) => {
                if !locked.mark_dead(&sealed, &error).await? {
                    return Ok(None);
                }
                tracing::warn!(error = %error, "the provider rejected the grant");
                self.count(grant, trigger, RefreshOutcome::Terminal);
                Err(RefreshError::ReauthorizationRequired)
            }
            Err(err) => {
                let asked = match &err {
                    ProviderError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let cooldown = policy::cooldown(
                    sealed.state().refresh_failures,
                    self.settings.cooldown_base,
                    self.settings.cooldown_max,
                    asked,
                );
                let until = after(now, cooldown);
                if !locked.record_failure(&sealed, &err.code(), until).await? {
                    return Ok(None);
                }
                tracing::warn!(error = %err, cooldown_s = cooldown.as_secs(), "refresh failed");
                // An answer the service cannot use (malformed, or an OAuth error it does
                // not know) is the provider's failure, not the caller's and not ours: like
                // an outage, the current token is served while it lasts, else 503.
                let outcome = match err {
                    ProviderError::Unexpected { .. } => RefreshOutcome::Error,
                    _ => RefreshOutcome::Transient,
                };
                self.count(grant, trigger, outcome);
                self.fall_back(&sealed, until).await.map(Some)
            }
        }
    }

    /// The answer to a decision that refreshes nothing and serves nothing fresh.
    async fn settle(
        &self,
        grant: &GrantKey,
        trigger: Trigger,
        sealed: &SealedGrant,
        decision: Decision,
    ) -> Outcome {
        match decision {
            Decision::Serve => Ok(self.vault.open_access(sealed).await?),
            Decision::Dead => Err(RefreshError::ReauthorizationRequired),
            Decision::MissingScopes(missing) => Err(RefreshError::ScopeExpansionRequired(missing)),
            Decision::NoRefreshToken => {
                self.count(grant, trigger, RefreshOutcome::NoRefreshToken);
                Err(RefreshError::ReauthorizationRequired)
            }
            Decision::CoolDown { until } => {
                self.count(grant, trigger, RefreshOutcome::Cooldown);
                self.fall_back(sealed, until).await
            }
            Decision::Refresh => Err(RefreshError::unexpected(anyhow::anyhow!(
                "a refresh was settled without refreshing"
            ))),
        }
    }

    /// The stored grant's access token if it has not actually expired (read without the
    /// lock), else 503: for when the lock cannot be had or the grant keeps changing.
    async fn serve_stored(&self, grant: &GrantKey) -> Outcome {
        let sealed = self
            .vault
            .read(grant)
            .await?
            .ok_or(RefreshError::NotFound)?;
        if sealed.state().status != TokenStatus::Active {
            return Err(RefreshError::ReauthorizationRequired);
        }
        self.fall_back(&sealed, after(Utc::now(), Duration::from_secs(1)))
            .await
    }

    /// The current token if it has not actually expired, else 503.
    async fn fall_back(&self, sealed: &SealedGrant, until: chrono::DateTime<Utc>) -> Outcome {
        match policy::fallback(sealed.state(), Utc::now(), until) {
            Fallback::Serve => Ok(self.vault.open_access(sealed).await?),
            Fallback::Unavailable { retry_after } => {
                Err(RefreshError::ProviderUnavailable { retry_after })
            }
        }
    }

    /// The current token while it has not actually expired (the grant is fine, the client
    /// is not), else 503 `provider_misconfigured`.
    async fn serve_while_misconfigured(&self, sealed: &SealedGrant) -> Outcome {
        let until = after(Utc::now(), MISCONFIGURED_PAUSE);
        match self.fall_back(sealed, until).await {
            Err(RefreshError::ProviderUnavailable { retry_after }) => {
                Err(RefreshError::ProviderMisconfigured { retry_after })
            }
            served => served,
        }
    }

    fn count(&self, grant: &GrantKey, trigger: Trigger, outcome: RefreshOutcome) {
        self.metrics
            .refreshes
            .with_label_values(&[
                self.providers.label(&grant.provider),
                outcome.as_str(),
                trigger.as_str(),
            ])
            .inc();
    }
}
