//! A valid access token, refreshed at the provider exactly once across every replica.
//!
//! The protocol (DESIGN §6):
//! 1. In a process, concurrent callers for one pair share one refresh ("flight"), run as
//!    its own task so that a caller going away never strands a half-done refresh.
//! 2. The flight takes a transaction-scoped advisory lock of the pair on a connection of the
//!    small lock pool, never the request pool, waiting at most `lock_timeout`. The provider's
//!    HTTP timeout is shorter than that.
//! 3. Under the lock it re-reads the row: if another replica refreshed meanwhile, it returns
//!    that token and calls nobody.
//! 4. Otherwise it opens the refresh token, calls the provider, re-seals the result (under the
//!    row's data key while it is young: no KMS call) and writes it `where version = read`.
//! 5. A rotated refresh token is persisted in that same write; a failed write is retried on
//!    the request pool (the version check keeps it safe without the lock) and logged loudly.
//! 6. Terminal provider errors mark the row `reauthorization_required` (only if the refresh
//!    token that failed is still stored); transient ones start a cool-down and the current
//!    access token is served while it has not actually expired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, FutureExt, Shared};
use sqlx::PgPool;
use tracing::{instrument, Instrument};

use crate::crypto::{CryptoError, Field, KeyContext, RowKey};
use crate::domain::{AccessToken, ProviderName, RefreshToken, Scope, TokenStatus, UserId};
use crate::metrics::Metrics;
use crate::providers::{ProviderError, Providers, Refreshed};
use crate::store::{self, TokenRow};
use crate::vault::{open_row, Vault, VaultError};

#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// A token expiring within this is refreshed before it is handed out.
    pub buffer: Duration,
    /// Longest wait for the pair's advisory lock.
    pub lock_timeout: Duration,
    /// A refresh re-seals under the row's data key while the key is younger than this.
    pub data_key_max_age: Duration,
    /// First cool-down after a transient failure; doubles per failure up to `cooldown_max`.
    pub cooldown_base: Duration,
    pub cooldown_max: Duration,
}

/// An access token ready to hand out.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub access_token: AccessToken,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    #[error("no token is stored for this user and provider")]
    NotFound,
    #[error("the grant must be authorized again")]
    ReauthorizationRequired,
    #[error("the grant lacks requested scopes")]
    ScopeExpansionRequired(Vec<String>),
    #[error("no OAuth client is configured for this provider")]
    ProviderNotConfigured,
    #[error("the provider is unavailable")]
    ProviderUnavailable { retry_after: Duration },
    #[error("KMS is unavailable")]
    KmsUnavailable(Arc<anyhow::Error>),
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
            other => Self::unexpected(other),
        }
    }
}

impl From<CryptoError> for RefreshError {
    fn from(err: CryptoError) -> Self {
        VaultError::from(err).into()
    }
}

impl From<sqlx::Error> for RefreshError {
    fn from(err: sqlx::Error) -> Self {
        Self::unexpected(err)
    }
}

type Outcome = Result<AccessGrant, RefreshError>;
type Flight = Shared<BoxFuture<'static, Outcome>>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct FlightKey {
    user: UserId,
    provider: ProviderName,
    force: bool,
}

/// Hands out valid access tokens. Cheap to clone.
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    vault: Vault,
    lock_pool: PgPool,
    providers: Providers,
    settings: RefreshSettings,
    metrics: Metrics,
    flights: Mutex<HashMap<FlightKey, Flight>>,
}

impl Refresher {
    pub fn new(
        vault: Vault,
        lock_pool: PgPool,
        providers: Providers,
        settings: RefreshSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                vault,
                lock_pool,
                providers,
                settings,
                metrics,
                flights: Mutex::default(),
            }),
        }
    }

    /// An access token valid for at least the refresh buffer (or `min_validity`, if longer)
    /// that carries every requested scope; refreshed first if need be. No span of its own
    /// (the hot path): its audit event names the pair, and a refresh runs in a span that does.
    pub async fn access_token(
        &self,
        user: &UserId,
        provider: &ProviderName,
        requested_scopes: &[Scope],
        min_validity: Option<Duration>,
    ) -> Outcome {
        let inner = &self.inner;
        let row = inner
            .vault
            .find(user, provider)
            .await?
            .ok_or(RefreshError::NotFound)?;
        ensure_active(&row)?;
        let missing: Vec<String> = requested_scopes
            .iter()
            .map(Scope::as_str)
            .filter(|s| !row.scopes.iter().any(|have| have == s))
            .map(str::to_owned)
            .collect();
        if !missing.is_empty() {
            return Err(RefreshError::ScopeExpansionRequired(missing));
        }
        let validity = min_validity.map_or(inner.settings.buffer, |v| v.max(inner.settings.buffer));
        let now = Utc::now();
        if row.expires_at > now + validity {
            return inner.open_access(&row).await;
        }
        if let Some(until) = row.refresh_retry_after.filter(|t| *t > now) {
            inner.count(provider, "cooldown");
            return inner.serve_or_unavailable(&row, until).await;
        }
        self.join_flight(user, provider, Some(validity)).await
    }

    /// Refreshes now, whatever the token's expiry.
    #[instrument(skip_all, fields(user_id = %user, provider = %provider))]
    pub async fn force_refresh(&self, user: &UserId, provider: &ProviderName) -> Outcome {
        self.join_flight(user, provider, None).await
    }

    /// Joins the pair's flight in this process, or starts one.
    async fn join_flight(
        &self,
        user: &UserId,
        provider: &ProviderName,
        validity: Option<Duration>,
    ) -> Outcome {
        let key = FlightKey {
            user: user.clone(),
            provider: provider.clone(),
            force: validity.is_none(),
        };
        let flight = {
            let mut flights = self.inner.flights.lock().expect("flights lock");
            if let Some(flight) = flights.get(&key) {
                self.inner.metrics.refresh_joins.inc();
                flight.clone()
            } else {
                let inner = self.inner.clone();
                let task_key = key.clone();
                let span = tracing::info_span!("refresh", user_id = %user, provider = %provider);
                let task = tokio::spawn(
                    async move {
                        let outcome = inner.run_flight(&task_key, validity).await;
                        inner
                            .flights
                            .lock()
                            .expect("flights lock")
                            .remove(&task_key);
                        outcome
                    }
                    .instrument(span),
                );
                let flight = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(RefreshError::unexpected(anyhow::anyhow!(
                            "refresh task failed: {e}"
                        )))
                    })
                }
                .boxed()
                .shared();
                flights.insert(key, flight.clone());
                flight
            }
        };
        flight.await
    }
}

impl Inner {
    async fn run_flight(&self, key: &FlightKey, validity: Option<Duration>) -> Outcome {
        let (user, provider) = (key.user.as_str(), key.provider.as_str());
        let Some(client) = self.providers.get(&key.provider) else {
            self.count(&key.provider, "not_configured");
            return Err(RefreshError::ProviderNotConfigured);
        };

        let mut tx = self.lock_pool.begin().await?;
        let waited = Instant::now();
        let locked = store::lock_pair(&mut tx, user, provider, self.settings.lock_timeout).await;
        self.metrics
            .lock_wait
            .with_label_values(&[provider])
            .observe(waited.elapsed().as_secs_f64());
        if let Err(err) = locked {
            if store::is_lock_timeout(&err) {
                self.count(&key.provider, "lock_timeout");
                tracing::warn!("gave up waiting for the refresh lock");
                return Err(RefreshError::ProviderUnavailable {
                    retry_after: Duration::from_secs(1),
                });
            }
            return Err(err.into());
        }

        // Under the lock: the row as it is now, perhaps refreshed by another replica.
        let row = store::find(&mut *tx, user, provider)
            .await?
            .ok_or(RefreshError::NotFound)?;
        ensure_active(&row)?;
        let now = Utc::now();
        if let Some(validity) = validity {
            if row.expires_at > now + validity {
                self.count(&key.provider, "already_fresh");
                return self.open_access(&row).await;
            }
        }
        if let Some(until) = row.refresh_retry_after.filter(|t| *t > now) {
            self.count(&key.provider, "cooldown");
            return self.serve_or_unavailable(&row, until).await;
        }
        let Some(refresh_ct) = row.refresh_token_ct.clone() else {
            self.count(&key.provider, "no_refresh_token");
            return Err(RefreshError::ReauthorizationRequired);
        };

        let row_key = self.vault.row_key(&row).await?;
        let refresh_token = open_refresh_token(&row_key, &row)?;
        match client.refresh(&refresh_token).await {
            Ok(refreshed) => {
                let grant = self
                    .persist(tx, key, &row, row_key, refresh_token, refreshed)
                    .await?;
                self.count(&key.provider, "refreshed");
                Ok(grant)
            }
            Err(ProviderError::Terminal { error }) => {
                let marked = store::mark_reauthorization_required(
                    &mut *tx,
                    user,
                    provider,
                    &refresh_ct,
                    &error,
                )
                .await?;
                tx.commit().await?;
                tracing::warn!(error = %error, marked, "the provider rejected the grant");
                self.count(&key.provider, "terminal");
                Err(RefreshError::ReauthorizationRequired)
            }
            Err(err) => {
                let cooldown = self.cooldown(&row, &err);
                let until = now + cooldown;
                store::record_transient_failure(
                    &mut *tx,
                    user,
                    provider,
                    row.version,
                    &err.code(),
                    until,
                )
                .await?;
                tx.commit().await?;
                tracing::warn!(error = %err, cooldown_s = cooldown.as_secs(), "refresh failed");
                match err {
                    ProviderError::Unexpected { .. } => {
                        self.count(&key.provider, "error");
                        Err(RefreshError::unexpected(err))
                    }
                    _ => {
                        self.count(&key.provider, "transient");
                        self.serve_or_unavailable(&row, until).await
                    }
                }
            }
        }
    }

    /// Seals the provider's answer and writes it with the version check, in the lock's
    /// transaction; a failed write is retried on the request pool.
    async fn persist(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        key: &FlightKey,
        row: &TokenRow,
        row_key: RowKey,
        old_refresh_token: RefreshToken,
        refreshed: Refreshed,
    ) -> Outcome {
        let (user, provider) = (key.user.as_str(), key.provider.as_str());
        let now = Utc::now();
        let key_age = (now - row.data_key_created_at).to_std().unwrap_or_default();
        let (kms_key_id, wrapped, key_created_at, seal_key) = if key_age
            < self.settings.data_key_max_age
        {
            (
                row.kms_key_id.clone(),
                row.wrapped_data_key.clone(),
                row.data_key_created_at,
                row_key,
            )
        } else {
            match self
                .vault
                .envelope()
                .new_row_key(&KeyContext::new(user, provider))
                .await
            {
                Ok((wrapped, fresh)) => (wrapped.key_id, wrapped.blob, now, fresh),
                Err(err) => {
                    // The provider may have rotated the refresh token already: persisting it
                    // under the old (still KMS-wrapped) key beats losing it.
                    tracing::warn!(error = %err, "could not get a new data key; re-sealing under the current one");
                    (
                        row.kms_key_id.clone(),
                        row.wrapped_data_key.clone(),
                        row.data_key_created_at,
                        row_key,
                    )
                }
            }
        };
        let refresh_token = refreshed.refresh_token.unwrap_or(old_refresh_token);
        let access_ct = seal_key.seal(
            Field::AccessToken,
            refreshed.access_token.expose().as_bytes(),
        );
        let refresh_ct = seal_key.seal(Field::RefreshToken, refresh_token.expose().as_bytes());
        let scopes = refreshed.scopes.unwrap_or_else(|| {
            row.scopes
                .iter()
                .filter_map(|s| Scope::parse(s).ok())
                .collect()
        });
        let scope_strings: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
        let expires_at = now + chrono::Duration::from_std(refreshed.expires_in).unwrap_or_default();
        let write = store::RefreshedRow {
            kms_key_id: &kms_key_id,
            wrapped_data_key: &wrapped,
            data_key_created_at: key_created_at,
            access_token_ct: &access_ct,
            refresh_token_ct: Some(&refresh_ct),
            expires_at,
            scopes: &scope_strings,
        };

        let first = async {
            let written =
                store::write_refreshed(&mut *tx, user, provider, row.version, &write).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(written)
        }
        .await;
        let written = match first {
            Ok(written) => written,
            Err(err) => self.retry_persist(key, row.version, &write, err).await?,
        };
        if !written {
            tracing::error!("the grant was replaced while it was being refreshed; the refreshed token is discarded");
            return Err(RefreshError::unexpected(anyhow::anyhow!(
                "grant replaced during refresh"
            )));
        }
        Ok(AccessGrant {
            access_token: refreshed.access_token,
            expires_at,
            scopes,
        })
    }

    async fn retry_persist(
        &self,
        key: &FlightKey,
        version: i64,
        write: &store::RefreshedRow<'_>,
        first_error: sqlx::Error,
    ) -> Result<bool, RefreshError> {
        let (user, provider) = (key.user.as_str(), key.provider.as_str());
        tracing::error!(error = %first_error, "persisting a refreshed token failed; retrying");
        let mut last_error = first_error;
        for attempt in 1..=3u32 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            let result =
                store::write_refreshed(self.vault.db(), user, provider, version, write).await;
            match result {
                Ok(true) => return Ok(true),
                // The first commit may have landed before its error: then the row holds ours.
                Ok(false) => {
                    let now = store::find(self.vault.db(), user, provider).await?;
                    return Ok(now.is_some_and(|r| r.access_token_ct == write.access_token_ct));
                }
                Err(err) => {
                    tracing::error!(error = %err, attempt, "persisting a refreshed token failed again");
                    last_error = err;
                }
            }
        }
        tracing::error!(
            error = %last_error,
            "LOST REFRESH RESULT: a refreshed (possibly rotated) token could not be persisted"
        );
        Err(last_error.into())
    }

    fn cooldown(&self, row: &TokenRow, err: &ProviderError) -> Duration {
        let failures = u32::try_from(row.refresh_failure_count.max(0)).unwrap_or(0);
        let backoff = self
            .settings
            .cooldown_base
            .saturating_mul(1u32 << failures.min(16))
            .min(self.settings.cooldown_max);
        match err {
            ProviderError::Transient {
                retry_after: Some(asked),
                ..
            } => backoff.max(*asked),
            _ => backoff,
        }
    }

    /// During a cool-down: the current token if it has not actually expired, else 503.
    async fn serve_or_unavailable(&self, row: &TokenRow, until: DateTime<Utc>) -> Outcome {
        let now = Utc::now();
        if row.expires_at > now {
            return self.open_access(row).await;
        }
        let wait = (until - now).to_std().unwrap_or_default();
        Err(RefreshError::ProviderUnavailable {
            retry_after: wait.max(Duration::from_secs(1)),
        })
    }

    async fn open_access(&self, row: &TokenRow) -> Outcome {
        let key = self.vault.row_key(row).await?;
        let stored = open_row(&key, row, false)?;
        Ok(AccessGrant {
            access_token: stored.token.access_token,
            expires_at: stored.token.expires_at,
            scopes: stored.token.scopes,
        })
    }

    fn count(&self, provider: &ProviderName, outcome: &str) {
        self.metrics
            .refreshes
            .with_label_values(&[provider.as_str(), outcome])
            .inc();
    }
}

fn ensure_active(row: &TokenRow) -> Result<(), RefreshError> {
    match TokenStatus::parse(&row.status) {
        Some(TokenStatus::Active) => Ok(()),
        Some(TokenStatus::ReauthorizationRequired) => Err(RefreshError::ReauthorizationRequired),
        None => Err(RefreshError::unexpected(anyhow::anyhow!(
            "unknown row status"
        ))),
    }
}

fn open_refresh_token(key: &RowKey, row: &TokenRow) -> Result<RefreshToken, RefreshError> {
    let stored = open_row(key, row, true)?;
    stored
        .token
        .refresh_token
        .ok_or(RefreshError::ReauthorizationRequired)
}
