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
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, FutureExt, Shared};
use sqlx::PgPool;
use tracing::{instrument, Instrument};

use crate::crypto::{CryptoError, Field, KeyContext, RowKey};
use crate::domain::{AccessToken, ProviderName, RefreshToken, Scope, TokenStatus, UserId};
use crate::metrics::Metrics;
use crate::providers::{Provider, ProviderError, Providers, Refreshed};
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

impl From<CryptoError> for RefreshError {
    fn from(err: CryptoError) -> Self {
        VaultError::from(err).into()
    }
}

impl From<sqlx::Error> for RefreshError {
    fn from(err: sqlx::Error) -> Self {
        VaultError::from(err).into()
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
    flights: Flights<FlightKey>,
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
                flights: Flights::default(),
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
        if row.expires_at > after(now, validity) {
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
        let span = tracing::info_span!("refresh", user_id = %user, provider = %provider);
        let inner = self.inner.clone();
        let (flight, joined) = self.inner.flights.join_or_start(key, move |key| {
            async move { inner.run_flight(&key, validity).await }.instrument(span)
        });
        if joined {
            self.inner.metrics.refresh_joins.inc();
        }
        flight.await
    }
}

/// The flights in progress in this process, one per key. A flight runs as its own task and
/// leaves the map when that task ends, however it ends: with an outcome, a panic or the
/// runtime shutting down (a guard removes it on drop). A flight that stayed behind would
/// answer every later caller with its stale outcome.
struct Flights<K> {
    map: Arc<Mutex<HashMap<K, Flight>>>,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Self {
            map: Arc::default(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> Flights<K> {
    /// The flight of `key`, started with `start(key)` if there is none; `true` if joined.
    fn join_or_start<F>(&self, key: K, start: impl FnOnce(K) -> F) -> (Flight, bool)
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(&key) {
            return (flight.clone(), true);
        }
        let landing = Landing {
            map: self.map.clone(),
            key: key.clone(),
        };
        let work = start(key.clone());
        let task = tokio::spawn(async move {
            let _landing = landing;
            work.await
        });
        let flight = async move {
            task.await.unwrap_or_else(|e| {
                Err(RefreshError::unexpected(anyhow::anyhow!(
                    "refresh task failed: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        map.insert(key, flight.clone());
        (flight, false)
    }
}

/// Removes its flight from the map when dropped: at the end of the flight's task.
struct Landing<K: Eq + Hash> {
    map: Arc<Mutex<HashMap<K, Flight>>>,
    key: K,
}

impl<K: Eq + Hash> Drop for Landing<K> {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.key);
    }
}

/// The map's lock, even if a thread panicked while holding it (the map stays consistent:
/// every change is a single insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    async fn run_flight(&self, key: &FlightKey, validity: Option<Duration>) -> Outcome {
        let Some(client) = self.providers.get(&key.provider) else {
            self.count(&key.provider, "not_configured");
            return Err(RefreshError::ProviderNotConfigured);
        };
        // A grant replaced or deleted while the provider was being asked fences the write
        // off; the new state is then looked at under the lock again: a deleted grant is not
        // found, a new one is served if it is fresh and refreshed if it is not (even when
        // this flight was a forced refresh: the new grant is not the one it was asked for).
        let mut validity = validity;
        for _ in 0..2 {
            if let Some(grant) = self.attempt(key, validity, &*client).await? {
                return Ok(grant);
            }
            self.count(&key.provider, "superseded");
            validity = Some(validity.unwrap_or(self.settings.buffer));
        }
        // Replaced again and again: what is stored now, if it is still valid.
        self.serve_stored(key).await
    }

    /// One refresh under the pair's lock. `Ok(None)`: the grant changed under it (replaced
    /// or deleted), so nothing it read may be served.
    async fn attempt(
        &self,
        key: &FlightKey,
        validity: Option<Duration>,
        client: &dyn Provider,
    ) -> Result<Option<AccessGrant>, RefreshError> {
        let (user, provider) = (key.user.as_str(), key.provider.as_str());
        let Some(mut tx) = self.lock(key).await? else {
            // Busy: another refresh holds the lock, or every lock connection is taken.
            self.count(&key.provider, "lock_timeout");
            tracing::warn!("gave up waiting for the refresh lock");
            return self.serve_stored(key).await.map(Some);
        };

        // Under the lock: the row as it is now, perhaps refreshed by another replica.
        let row = store::find(&mut *tx, user, provider)
            .await?
            .ok_or(RefreshError::NotFound)?;
        ensure_active(&row)?;
        let now = Utc::now();
        if let Some(validity) = validity {
            if row.expires_at > after(now, validity) {
                self.count(&key.provider, "already_fresh");
                return self.open_access(&row).await.map(Some);
            }
        }
        if let Some(until) = row.refresh_retry_after.filter(|t| *t > now) {
            self.count(&key.provider, "cooldown");
            return self.serve_or_unavailable(&row, until).await.map(Some);
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
                if grant.is_some() {
                    self.count(&key.provider, "refreshed");
                }
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
                if !marked {
                    return Ok(None);
                }
                tracing::warn!(error = %error, "the provider rejected the grant");
                self.count(&key.provider, "terminal");
                Err(RefreshError::ReauthorizationRequired)
            }
            Err(err) => {
                let cooldown = self.cooldown(&row, &err);
                let until = after(now, cooldown);
                let recorded = store::record_transient_failure(
                    &mut *tx,
                    user,
                    provider,
                    row.version,
                    &err.code(),
                    until,
                )
                .await?;
                tx.commit().await?;
                if !recorded {
                    return Ok(None);
                }
                tracing::warn!(error = %err, cooldown_s = cooldown.as_secs(), "refresh failed");
                // An answer the service cannot use (malformed, or an OAuth error it does
                // not know) is the provider's failure, not the caller's and not ours: like
                // an outage, the current token is served while it lasts, else 503.
                let outcome = match err {
                    ProviderError::Unexpected { .. } => "error",
                    _ => "transient",
                };
                self.count(&key.provider, outcome);
                self.serve_or_unavailable(&row, until).await.map(Some)
            }
        }
    }

    /// A transaction holding the pair's advisory lock, or `None` if neither a lock-pool
    /// connection nor the lock could be had within `lock_timeout` (both waits together).
    async fn lock(
        &self,
        key: &FlightKey,
    ) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, RefreshError> {
        let (user, provider) = (key.user.as_str(), key.provider.as_str());
        let started = Instant::now();
        let timeout = self.settings.lock_timeout;
        let observe = || {
            self.metrics
                .lock_wait
                .with_label_values(&[self.providers.label(&key.provider)])
                .observe(started.elapsed().as_secs_f64());
        };
        let mut tx = match tokio::time::timeout(timeout, self.lock_pool.begin()).await {
            Ok(Ok(tx)) => tx,
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => {
                observe();
                return Ok(None);
            }
            Ok(Err(err)) => return Err(err.into()),
        };
        let remaining = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let locked = store::lock_pair(&mut tx, user, provider, remaining).await;
        observe();
        match locked {
            Ok(()) => Ok(Some(tx)),
            Err(err) if store::is_lock_timeout(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// The stored grant's access token if it has not actually expired (read without the
    /// lock), else 503: for when the lock cannot be had or the grant keeps changing.
    async fn serve_stored(&self, key: &FlightKey) -> Outcome {
        let row = self
            .vault
            .find(&key.user, &key.provider)
            .await?
            .ok_or(RefreshError::NotFound)?;
        ensure_active(&row)?;
        self.serve_or_unavailable(&row, after(Utc::now(), Duration::from_secs(1)))
            .await
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
    ) -> Result<Option<AccessGrant>, RefreshError> {
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
        let expires_at = after(now, refreshed.expires_in);
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
            tracing::info!("the grant was replaced or deleted while it was being refreshed; the refreshed token is discarded");
            return Ok(None);
        }
        Ok(Some(AccessGrant {
            access_token: refreshed.access_token,
            expires_at,
            scopes,
        }))
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
            .with_label_values(&[self.providers.label(provider), outcome])
            .inc();
    }
}

/// `now + duration`, saturating at the latest representable time: durations here come from
/// providers and configuration, and adding them must never panic.
fn after(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(duration)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(token: &str) -> Outcome {
        Ok(AccessGrant {
            access_token: AccessToken::parse(token.to_owned()).unwrap(),
            expires_at: Utc::now(),
            scopes: Vec::new(),
        })
    }

    #[tokio::test]
    async fn a_flight_whose_task_panics_leaves_the_map_and_the_next_caller_flies_anew() {
        let flights = Flights::<&str>::default();
        let (first, joined) = flights.join_or_start("pair", |_| async {
            panic!("provider arithmetic overflowed");
        });
        assert!(!joined);
        assert!(matches!(first.await, Err(RefreshError::Unexpected(_))));
        assert!(lock(&flights.map).is_empty(), "the failed flight stayed");

        let (second, joined) = flights.join_or_start("pair", |_| async { grant("fresh") });
        assert!(!joined, "the next caller joined a dead flight");
        assert_eq!(second.await.unwrap().access_token.expose(), "fresh");
        assert!(lock(&flights.map).is_empty());
    }

    #[tokio::test]
    async fn concurrent_callers_join_one_flight() {
        let flights = Flights::<&str>::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (first, _) = flights.join_or_start("pair", |_| async move {
            let _ = released.await;
            grant("shared")
        });
        let (second, joined) = flights.join_or_start("pair", |_| async { grant("other") });
        assert!(joined);
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().access_token.expose(), "shared");
        assert_eq!(second.await.unwrap().access_token.expose(), "shared");
    }

    #[test]
    fn adding_a_huge_duration_saturates_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(after(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            after(now, Duration::from_secs(9_000_000_000_000)),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            after(now, Duration::from_secs(60)),
            now + chrono::TimeDelta::seconds(60)
        );
    }
}
