//! The vault: the only door to stored grants. It alone turns grants into sealed rows and
//! rows back into grants, so it alone calls `store` (the SQL) and `crypto` (data keys and
//! sealing). Refresh, revoke, rewrap and the HTTP layer call the vault; it knows nothing of
//! HTTP or providers.
//!
//! A refresh works on a [`LockedGrant`]: the grant's advisory lock, held by a transaction
//! on the lock pool, with the reads and the fenced writes a refresh makes under it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tracing::instrument;

use crate::crypto::{CryptoError, Envelope, Field, RowKey, WrappedKey};
use crate::domain::{
    AccessGrant, AccessToken, GrantHealth, GrantKey, GrantState, GrantSummary, ProviderName,
    RefreshToken, Scope, StoredToken, TokenSet, TokenStatus, UserId,
};
use crate::events::{new_event_id, GrantEvent};
use crate::lookups::{LookupError, Lookups};
use crate::rowcache::RowCache;
use crate::store::{
    self, ClaimedDelivery, DeliveryRow, DueGrant, GrantSummaryRow, NewEvent, SealedRow, TokenRow,
    WrappedKeyRow,
};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no token is stored for this user and provider")]
    NotFound,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("stored row is malformed: {0}")]
    Corrupt(&'static str),
}

impl VaultError {
    /// The database is away or did not answer in time (see [`store::is_unavailable`]).
    pub fn is_database_unavailable(&self) -> bool {
        match self {
            Self::Database(err) => store::is_unavailable(err),
            Self::Lookup(err) => err.is_unavailable(),
            _ => false,
        }
    }
}

/// Which of a grant's tokens a read opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reveal {
    AccessToken,
    AccessAndRefreshToken,
}

/// The database handles of the vault: requests and writes on `db`, the refresh locks on
/// `locks` (its own small pool, so that waiting refreshes never starve requests), the
/// read path's batched lookups, and the replica's cache of sealed rows (`None`: switched
/// off, every read asks the database).
#[derive(Clone, Debug)]
pub struct Storage {
    pub db: PgPool,
    pub locks: PgPool,
    pub lookups: Lookups,
    pub rows: Option<RowCache>,
}

/// Cheap to clone: pools, the read path's lookups and an envelope.
#[derive(Clone, Debug)]
pub struct Vault {
    storage: Storage,
    envelope: Envelope,
    /// A refresh re-seals under the row's data key while the key is younger than this.
    data_key_max_age: Duration,
    lifecycle: Lifecycle,
}

/// What every write of a grant also records: when the keeper refreshes it next, and the
/// webhook endpoints each event of the grant is delivered to.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    /// `None`: no keeper runs, and no grant is scheduled.
    pub schedule: Option<Schedule>,
    pub endpoints: Arc<[String]>,
}

/// When the keeper refreshes a grant.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub refresh_ahead: Duration,
    pub jitter: Duration,
    /// Per provider: refresh a grant whose refresh token has been idle this long.
    pub keep_alive_after: HashMap<String, Duration>,
}

impl Schedule {
    /// The next refresh of a grant written `now`: `refresh_ahead` (plus a random part of
    /// `jitter`) before its access token expires, or once its refresh token has been idle
    /// for the provider's `keep_alive_after`, whichever comes first. `None` for a grant
    /// without a refresh token or of a provider without an OAuth client.
    pub fn next_refresh(
        &self,
        grant: &GrantKey,
        token: &TokenSet,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        token.refresh_token.as_ref()?;
        let keep_alive = *self.keep_alive_after.get(grant.provider.as_str())?;
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            rand::thread_rng().gen_range(Duration::ZERO..self.jitter)
        };
        let ahead = self.refresh_ahead + jitter;
        let before_expiry = chrono::TimeDelta::from_std(ahead)
            .ok()
            .and_then(|d| token.expires_at.checked_sub_signed(d))
            .unwrap_or(now);
        let idle_limit = chrono::TimeDelta::from_std(keep_alive)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        Some(before_expiry.min(idle_limit))
    }
}

/// A stored grant as read: its state in the clear, its tokens still sealed. Cheap to clone
/// (the row cache hands out clones).
#[derive(Debug, Clone)]
pub struct SealedGrant(Arc<Sealed>);

#[derive(Debug)]
struct Sealed {
    key: GrantKey,
    state: GrantState,
    /// Its scopes are in `state`, parsed.
    row: TokenRow,
}

impl SealedGrant {
    pub(crate) fn new(key: GrantKey, mut row: TokenRow) -> Result<Self, VaultError> {
        let scopes = std::mem::take(&mut row.scopes)
            .iter()
            .map(|s| Scope::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| VaultError::Corrupt("scopes"))?;
        let state = GrantState {
            status: row.status,
            expires_at: row.expires_at,
            scopes,
            has_refresh_token: row.refresh_token_ct.is_some(),
            refresh_failures: u32::try_from(row.refresh_failure_count.max(0)).unwrap_or(0),
            retry_after: row.refresh_retry_after,
            next_refresh_at: row.next_refresh_at,
        };
        Ok(Self(Arc::new(Sealed { key, state, row })))
    }

    pub fn state(&self) -> &GrantState {
        &self.0.state
    }

    pub fn key(&self) -> &GrantKey {
        &self.0.key
    }

    fn row(&self) -> &TokenRow {
        &self.0.row
    }

    /// Which of two reads of a grant is newer: a row stored again after a delete has a
    /// larger id, and every write of a row bumps its version.
    pub fn generation(&self) -> (i64, i64) {
        (self.0.row.id, self.0.row.version)
    }
}

impl Vault {
    pub fn new(
        storage: Storage,
        envelope: Envelope,
        data_key_max_age: Duration,
        lifecycle: Lifecycle,
    ) -> Self {
        Self {
            storage,
            envelope,
            data_key_max_age,
            lifecycle,
        }
    }

    /// Stores or replaces the grant under a new data key, with its `grant.connected` event
    /// (and `grant.recovered` if it replaced a degraded or dead grant). KMS first: if KMS
    /// fails, nothing is written. With `superseded`, returns the refresh token of the grant
    /// it replaced if that differs from the new one (opened after the commit; `None` if it
    /// cannot be opened).
    #[instrument(skip_all, fields(user_id = %grant.user, provider = %grant.provider))]
    pub async fn store(
        &self,
        grant: &GrantKey,
        token: &TokenSet,
        superseded: bool,
    ) -> Result<Option<RefreshToken>, VaultError> {
        let (wrapped, key) = self.envelope.new_row_key(grant).await?;
        let now = Utc::now();
        let row = self.seal(grant, &wrapped, now, &key, token, now);
        let mut tx = self.storage.db.begin().await?;
        let old = store::find_for_update(&mut *tx, grant).await?;
        store::upsert(&mut *tx, grant, &row).await?;
        self.record(&mut tx, grant, &GrantEvent::Connected).await?;
        let was_unwell = old
            .as_ref()
            .is_some_and(|old| old.status != TokenStatus::Active || old.refresh_failure_count > 0);
        if was_unwell {
            self.record(&mut tx, grant, &GrantEvent::Recovered).await?;
        }
        tx.commit().await?;
        self.forget(grant);

        let Some(old) = old.filter(|old| superseded && old.refresh_token_ct.is_some()) else {
            return Ok(None);
        };
        let old = SealedGrant::new(grant.clone(), old)?;
        match self.open(&old, Reveal::AccessAndRefreshToken).await {
            Ok(opened) => Ok(opened.refresh_token.filter(|old| {
                Some(old.expose()) != token.refresh_token.as_ref().map(|t| t.expose())
            })),
            Err(err) => {
                tracing::warn!(error = %err, "could not open the replaced grant's refresh token; it is not revoked");
                Ok(None)
            }
        }
    }

    /// Writes `event` of `grant` to the outbox, in the transaction of the change.
    async fn record(
        &self,
        tx: &mut PgConnection,
        grant: &GrantKey,
        event: &GrantEvent,
    ) -> Result<(), sqlx::Error> {
        record(tx, grant, event, &self.lifecycle.endpoints).await
    }

    /// A grant sealed under a row's data key, scheduled for the keeper: the one way a grant
    /// becomes a row.
    fn seal(
        &self,
        grant: &GrantKey,
        wrapped: &WrappedKey,
        key_created_at: DateTime<Utc>,
        key: &RowKey,
        token: &TokenSet,
        now: DateTime<Utc>,
    ) -> SealedRow {
        SealedRow {
            kms_key_id: wrapped.key_id.clone(),
            wrapped_data_key: wrapped.blob.clone(),
            data_key_created_at: key_created_at,
            access_token_ct: key.seal(Field::AccessToken, token.access_token.expose().as_bytes()),
            refresh_token_ct: token
                .refresh_token
                .as_ref()
                .map(|t| key.seal(Field::RefreshToken, t.expose().as_bytes())),
            expires_at: token.expires_at,
            scopes: token.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            next_refresh_at: self
                .lifecycle
                .schedule
                .as_ref()
                .and_then(|schedule| schedule.next_refresh(grant, token, now)),
        }
    }

    /// The stored grant, decrypted. No span of its own (the hot path): its audit event
    /// names the grant.
    pub async fn get(&self, grant: &GrantKey, reveal: Reveal) -> Result<StoredToken, VaultError> {
        let rows = self.storage.rows.as_ref();
        let cached = rows.and_then(|rows| rows.get(grant, |state| rows.is_fresh(state)));
        let sealed = match cached {
            Some(sealed) => sealed,
            None => self.read(grant).await?.ok_or(VaultError::NotFound)?,
        };
        let token = self.open(&sealed, reveal).await?;
        Ok(StoredToken {
            token,
            status: sealed.state().status,
        })
    }

    /// The grant from this replica's row cache, if the cache serves, holds it, and may
    /// answer with it: the grant is active, without failed refreshes, and `usable` accepts
    /// its state. Anything else needs the database ([`Vault::read`]).
    pub fn cached(
        &self,
        grant: &GrantKey,
        usable: impl FnOnce(&GrantState) -> bool,
    ) -> Option<SealedGrant> {
        self.storage.rows.as_ref()?.get(grant, usable)
    }

    /// The grant as stored now, still sealed, through the batched lookups of the read path;
    /// what is read fills the row cache.
    pub async fn read(&self, grant: &GrantKey) -> Result<Option<SealedGrant>, VaultError> {
        let cache = self.storage.rows.as_ref();
        let ticket = cache.and_then(|cache| cache.ticket(grant));
        let found = self
            .storage
            .lookups
            .find(grant)
            .await?
            .map(|row| SealedGrant::new(grant.clone(), row))
            .transpose()?;
        if let (Some(cache), Some(ticket)) = (cache, ticket) {
            cache.fill(ticket, grant, found.as_ref());
        }
        Ok(found)
    }

    /// Drops a grant this replica just wrote from its row cache, so that its own next read
    /// sees the write (the other replicas hear of it from the database).
    fn forget(&self, grant: &GrantKey) {
        if let Some(cache) = &self.storage.rows {
            cache.invalidate(grant);
        }
    }

    /// Sealed rows cached in this replica (0 with the cache off).
    pub fn cached_rows(&self) -> u64 {
        self.storage.rows.as_ref().map_or(0, RowCache::entries)
    }

    /// The grant's access token, opened.
    pub async fn open_access(&self, sealed: &SealedGrant) -> Result<AccessGrant, VaultError> {
        Ok(self.open(sealed, Reveal::AccessToken).await?.into())
    }

    /// The grant's tokens, opened (the refresh token only if revealed).
    pub async fn open(&self, sealed: &SealedGrant, reveal: Reveal) -> Result<TokenSet, VaultError> {
        let key = self.row_key(sealed).await?;
        let access = open_text(&key, Field::AccessToken, &sealed.row().access_token_ct)?;
        let refresh = match (&sealed.row().refresh_token_ct, reveal) {
            (Some(ct), Reveal::AccessAndRefreshToken) => {
                Some(open_text(&key, Field::RefreshToken, ct)?)
            }
            _ => None,
        };
        Ok(TokenSet {
            access_token: AccessToken::parse(access)
                .map_err(|_| VaultError::Corrupt("access token"))?,
            refresh_token: refresh
                .map(RefreshToken::parse)
                .transpose()
                .map_err(|_| VaultError::Corrupt("refresh token"))?,
            expires_at: sealed.state().expires_at,
            scopes: sealed.state().scopes.clone(),
        })
    }

    /// The unwrapped data key of a row (cached).
    async fn row_key(&self, sealed: &SealedGrant) -> Result<RowKey, VaultError> {
        let wrapped = WrappedKey {
            key_id: sealed.row().kms_key_id.clone(),
            blob: sealed.row().wrapped_data_key.clone(),
        };
        Ok(self.envelope.row_key(&wrapped, sealed.key()).await?)
    }

    /// Deletes the grant, with its `grant.revoked` event (`provider_confirmed`: the
    /// provider confirmed the revocation). `true` if there was one.
    #[instrument(skip_all, fields(user_id = %grant.user, provider = %grant.provider))]
    pub async fn delete(
        &self,
        grant: &GrantKey,
        provider_confirmed: bool,
    ) -> Result<bool, VaultError> {
        let mut tx = self.storage.db.begin().await?;
        let deleted = store::delete(&mut *tx, grant).await?;
        if deleted {
            let event = GrantEvent::Revoked { provider_confirmed };
            self.record(&mut tx, grant, &event).await?;
        }
        tx.commit().await?;
        self.forget(grant);
        Ok(deleted)
    }

    /// The grants a user has. A stored provider name that no longer parses is logged and
    /// left out: [`Vault::delete_user`] still deletes its row.
    pub async fn grants_of(&self, user: &UserId) -> Result<Vec<GrantKey>, VaultError> {
        let names = store::providers_of(&self.storage.db, user).await?;
        Ok(names
            .iter()
            .filter_map(|name| match ProviderName::parse(name) {
                Ok(provider) => Some(GrantKey::new(user.clone(), provider)),
                Err(_) => {
                    tracing::error!("a stored provider name is malformed");
                    None
                }
            })
            .collect())
    }

    /// Deletes every grant of the user, each with its `grant.revoked` event (`confirmed`:
    /// the providers that confirmed the revocation). The number deleted.
    #[instrument(skip_all, fields(user_id = %user))]
    pub async fn delete_user(
        &self,
        user: &UserId,
        confirmed: &[ProviderName],
    ) -> Result<u64, VaultError> {
        let mut tx = self.storage.db.begin().await?;
        let deleted = store::delete_user(&mut *tx, user).await?;
        let mut forgotten = Vec::with_capacity(deleted.len());
        for name in &deleted {
            // A stored name that no longer parses has no event: nobody could name it.
            let Ok(provider) = ProviderName::parse(name) else {
                continue;
            };
            let event = GrantEvent::Revoked {
                provider_confirmed: confirmed.contains(&provider),
            };
            let grant = GrantKey::new(user.clone(), provider);
            self.record(&mut tx, &grant, &event).await?;
            forgotten.push(grant);
        }
        tx.commit().await?;
        for grant in &forgotten {
            self.forget(grant);
        }
        Ok(deleted.len() as u64)
    }

    /// Every grant of the user with its health (no tokens).
    pub async fn summaries_of(&self, user: &UserId) -> Result<Vec<GrantSummary>, VaultError> {
        let rows = store::grants_of_user(&self.storage.db, user).await?;
        rows.into_iter().map(summary).collect()
    }

    /// A page of every grant by `(user, provider)` after the position `after`, filtered by health state
    /// (`active`, `degraded`, `reauthorization_required`) and provider.
    pub async fn list_grants(
        &self,
        state: Option<&str>,
        provider: Option<&ProviderName>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<GrantSummary>, VaultError> {
        let rows = store::list_grants(
            &self.storage.db,
            state,
            provider.map(ProviderName::as_str),
            after,
            i64::from(limit),
        )
        .await?;
        rows.into_iter().map(summary).collect()
    }

    /// Claims up to `limit` due grants of `providers` for `lease` (see
    /// [`store::claim_due_grants`]).
    pub async fn claim_due(
        &self,
        providers: &[String],
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<DueGrant>, VaultError> {
        Ok(store::claim_due_grants(&self.storage.db, providers, lease, i64::from(limit)).await?)
    }

    /// Grants by health state and provider.
    pub async fn count_by_state(&self) -> Result<Vec<(String, String, i64)>, VaultError> {
        Ok(store::count_by_state(&self.storage.db).await?)
    }

    /// Claims due webhook deliveries (see [`store::claim_deliveries`]).
    pub async fn claim_deliveries(
        &self,
        endpoints: &[String],
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, VaultError> {
        Ok(store::claim_deliveries(&self.storage.db, endpoints, lease, i64::from(limit)).await?)
    }

    pub async fn mark_delivered(&self, delivery: &ClaimedDelivery) -> Result<(), VaultError> {
        Ok(store::mark_delivered(&self.storage.db, delivery.id, &delivery.endpoint).await?)
    }

    /// A failed attempt: tried again at `retry_at`, or failed for good if `None`.
    pub async fn mark_attempt_failed(
        &self,
        delivery: &ClaimedDelivery,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), VaultError> {
        Ok(store::mark_attempt_failed(
            &self.storage.db,
            delivery.id,
            &delivery.endpoint,
            error,
            retry_at,
        )
        .await?)
    }

    /// Webhook deliveries after `after` (event id, endpoint), filtered by state.
    pub async fn list_deliveries(
        &self,
        state: Option<&str>,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, VaultError> {
        Ok(store::list_deliveries(&self.storage.db, state, after, i64::from(limit)).await?)
    }

    /// The grant's advisory lock, or `None` if neither a lock-pool connection nor the lock
    /// could be had within `timeout` (both waits together).
    pub async fn lock(
        &self,
        grant: &GrantKey,
        timeout: Duration,
    ) -> Result<Option<LockedGrant>, VaultError> {
        let started = std::time::Instant::now();
        let mut tx = match tokio::time::timeout(timeout, self.storage.locks.begin()).await {
            Ok(Ok(tx)) => tx,
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => return Ok(None),
            Ok(Err(err)) => return Err(err.into()),
        };
        let remaining = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        match store::lock_grant(&mut tx, grant, remaining).await {
            Ok(()) => Ok(Some(LockedGrant {
                vault: self.clone(),
                key: grant.clone(),
                tx,
            })),
            Err(err) if store::is_lock_timeout(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// The grants table answers a read.
    pub async fn probe_database(&self) -> Result<(), VaultError> {
        Ok(store::probe(&self.storage.db).await?)
    }

    /// KMS answers and the configured key is enabled (see [`Envelope::check_ready`]).
    pub async fn check_kms(&self) -> Result<(), CryptoError> {
        self.envelope.check_ready().await
    }

    /// Unwrapped data keys currently cached.
    pub async fn cached_keys(&self) -> u64 {
        self.envelope.cached_keys().await
    }

    /// Closes the request pool (at shutdown).
    pub async fn close(&self) {
        self.storage.db.close().await;
    }

    /// The ARN of an enabled KMS key named by id, ARN or alias.
    pub async fn key_arn(&self, key_id: &str) -> Result<String, VaultError> {
        Ok(self.envelope.key_arn(key_id).await?)
    }

    /// How many rows have their data key wrapped under another KMS key than `key_arn`.
    pub async fn count_not_under_key(&self, key_arn: &str) -> Result<i64, VaultError> {
        Ok(store::count_not_under_key(&self.storage.db, key_arn).await?)
    }

    /// The next rows (by id, after `after_id`) whose data key is wrapped under another key.
    pub async fn rows_not_under_key(
        &self,
        key_arn: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<WrappedKeyRow>, VaultError> {
        Ok(store::rows_not_under_key(&self.storage.db, key_arn, after_id, limit).await?)
    }

    /// Re-wraps a row's data key under `key_arn` (`ReEncrypt`: the plaintext key never
    /// leaves KMS) and writes it if the row is still at the version read. `true` if
    /// written; `false` if the service wrote the row meanwhile.
    pub async fn rewrap(&self, row: &WrappedKeyRow, key_arn: &str) -> Result<bool, VaultError> {
        let wrapped = WrappedKey {
            key_id: row.kms_key_id.clone(),
            blob: row.wrapped_data_key.clone(),
        };
        let rewrapped = self.envelope.rewrap(&wrapped, &row.grant, key_arn).await?;
        let replaced = store::replace_wrapped_key(
            &self.storage.db,
            row.id,
            row.version,
            &rewrapped.key_id,
            &rewrapped.blob,
        )
        .await?;
        self.forget(&row.grant);
        Ok(replaced)
    }
}

/// A grant whose advisory lock this holds, in a transaction on the lock pool: no other
/// replica refreshes it meanwhile. The lock goes with the transaction, at the write or
/// when dropped.
pub struct LockedGrant {
    vault: Vault,
    key: GrantKey,
    tx: Transaction<'static, Postgres>,
}

impl LockedGrant {
    /// The grant as stored now (perhaps refreshed by another replica while this waited).
    pub async fn reread(&mut self) -> Result<Option<SealedGrant>, VaultError> {
        store::find(&mut *self.tx, &self.key)
            .await?
            .map(|row| SealedGrant::new(self.key.clone(), row))
            .transpose()
    }

    /// The grant's refresh token, opened.
    pub async fn refresh_token(&self, sealed: &SealedGrant) -> Result<RefreshToken, VaultError> {
        self.vault
            .open(sealed, Reveal::AccessAndRefreshToken)
            .await?
            .refresh_token
            .ok_or(VaultError::Corrupt("no refresh token"))
    }

    /// Writes a refreshed grant if the row is still the one read (`version`); `false` if it
    /// was replaced or deleted meanwhile. Re-sealed under the row's data key while that key
    /// is young (no KMS call), else under a new one. A failed write is retried on the
    /// request pool: the version check keeps that safe without the lock.
    pub async fn write_refreshed(
        mut self,
        sealed: &SealedGrant,
        token: &TokenSet,
    ) -> Result<bool, VaultError> {
        let row = self.reseal(sealed, token).await?;
        let version = sealed.row().version;
        // A degraded grant that refreshed again has recovered.
        let recovered = sealed.state().refresh_failures > 0;
        let endpoints = self.vault.lifecycle.endpoints.clone();
        let first = async {
            let written = write_refreshed(
                &mut self.tx,
                &self.key,
                version,
                &row,
                recovered,
                &endpoints,
            )
            .await?;
            self.tx.commit().await?;
            Ok::<_, sqlx::Error>(written)
        }
        .await;
        let written = match first {
            Ok(written) => Ok(written),
            Err(err) => {
                retry_write(
                    &self.vault.storage.db,
                    &self.key,
                    version,
                    &row,
                    recovered,
                    &endpoints,
                    err,
                )
                .await
            }
        };
        self.vault.forget(&self.key);
        written
    }

    /// Marks the grant dead, but only while the refresh token that failed is still the
    /// stored one: a grant refreshed or replaced meanwhile is left alone. `true` if marked.
    pub async fn mark_dead(
        mut self,
        sealed: &SealedGrant,
        error: &str,
    ) -> Result<bool, VaultError> {
        let Some(failed) = &sealed.row().refresh_token_ct else {
            return Ok(false);
        };
        let marked =
            store::mark_reauthorization_required(&mut *self.tx, &self.key, failed, error).await?;
        if marked {
            let event = GrantEvent::ReauthorizationRequired {
                reason: error.to_owned(),
            };
            self.vault.record(&mut self.tx, &self.key, &event).await?;
        }
        self.tx.commit().await?;
        self.vault.forget(&self.key);
        Ok(marked)
    }

    /// Counts a transient failure and starts a cool-down until `retry_after`, if the row is
    /// still the one read. `true` if recorded.
    pub async fn record_failure(
        mut self,
        sealed: &SealedGrant,
        error: &str,
        retry_after: DateTime<Utc>,
    ) -> Result<bool, VaultError> {
        let recorded = store::record_transient_failure(
            &mut *self.tx,
            &self.key,
            sealed.row().version,
            error,
            retry_after,
        )
        .await?;
        // The first failure after a refresh that worked is the change to `degraded`.
        if recorded && sealed.state().refresh_failures == 0 {
            let event = GrantEvent::Degraded {
                consecutive_failures: 1,
                last_error: error.to_owned(),
                next_retry_at: retry_after,
            };
            self.vault.record(&mut self.tx, &self.key, &event).await?;
        }
        self.tx.commit().await?;
        self.vault.forget(&self.key);
        Ok(recorded)
    }

    async fn reseal(
        &self,
        sealed: &SealedGrant,
        token: &TokenSet,
    ) -> Result<SealedRow, VaultError> {
        let now = Utc::now();
        let current = WrappedKey {
            key_id: sealed.row().kms_key_id.clone(),
            blob: sealed.row().wrapped_data_key.clone(),
        };
        let key_age = (now - sealed.row().data_key_created_at)
            .to_std()
            .unwrap_or_default();
        if key_age >= self.vault.data_key_max_age {
            match self.vault.envelope.new_row_key(&self.key).await {
                Ok((wrapped, fresh)) => {
                    return Ok(self
                        .vault
                        .seal(&self.key, &wrapped, now, &fresh, token, now))
                }
                // The provider may have rotated the refresh token already: persisting it
                // under the current (still KMS-wrapped) key beats losing it.
                Err(err) => tracing::warn!(
                    error = %err,
                    "could not get a new data key; re-sealing under the current one"
                ),
            }
        }
        let key = self.vault.row_key(sealed).await?;
        Ok(self.vault.seal(
            &self.key,
            &current,
            sealed.row().data_key_created_at,
            &key,
            token,
            now,
        ))
    }
}

/// A refreshed grant's write, again on the request pool after the lock's transaction
/// failed; logged loudly, because a rotated refresh token that is not persisted is lost.
async fn retry_write(
    db: &PgPool,
    grant: &GrantKey,
    version: i64,
    row: &SealedRow,
    recovered: bool,
    endpoints: &[String],
    first_error: sqlx::Error,
) -> Result<bool, VaultError> {
    tracing::error!(error = %first_error, "persisting a refreshed token failed; retrying");
    let mut last_error = first_error;
    for attempt in 1..=3u32 {
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        let retried = async {
            let mut tx = db.begin().await?;
            let written =
                write_refreshed(&mut tx, grant, version, row, recovered, endpoints).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(written)
        };
        match retried.await {
            Ok(true) => return Ok(true),
            // The first commit may have landed before its error: then the row holds ours.
            Ok(false) => {
                let now = store::find(db, grant).await?;
                return Ok(now.is_some_and(|r| r.access_token_ct == row.access_token_ct));
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

/// Writes a refreshed grant if the row is still at `version`, with its `grant.recovered`
/// event if it was degraded.
async fn write_refreshed(
    tx: &mut PgConnection,
    grant: &GrantKey,
    version: i64,
    row: &SealedRow,
    recovered: bool,
    endpoints: &[String],
) -> Result<bool, sqlx::Error> {
    let written = store::write_refreshed(&mut *tx, grant, version, row).await?;
    if written && recovered {
        record(tx, grant, &GrantEvent::Recovered, endpoints).await?;
    }
    Ok(written)
}

/// Writes `event` of `grant` to the outbox, with a delivery to each of `endpoints`.
async fn record(
    tx: &mut PgConnection,
    grant: &GrantKey,
    event: &GrantEvent,
    endpoints: &[String],
) -> Result<(), sqlx::Error> {
    let event_id = new_event_id();
    let payload = event.payload(grant, Utc::now());
    let new = NewEvent {
        event_id: &event_id,
        kind: event.kind(),
        payload: &payload,
    };
    store::insert_event(tx, grant, &new, endpoints).await
}

/// A grant's state and health as operators see it.
fn summary(row: GrantSummaryRow) -> Result<GrantSummary, VaultError> {
    let scopes = row
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| VaultError::Corrupt("scopes"))?;
    let health = match row.state.as_str() {
        "reauthorization_required" => GrantHealth::ReauthorizationRequired {
            // Dead without a provider error: it expired with no refresh token.
            reason: row
                .last_refresh_error
                .unwrap_or_else(|| "missing_refresh_token".to_owned()),
        },
        "degraded" => GrantHealth::Degraded {
            consecutive_failures: u32::try_from(row.refresh_failure_count).unwrap_or(0),
            last_error: row.last_refresh_error,
            next_retry_at: row.refresh_retry_after,
        },
        _ => GrantHealth::Active,
    };
    Ok(GrantSummary {
        grant: row.grant,
        health,
        scopes,
        expires_at: row.expires_at,
        last_refreshed_at: row.last_refresh_at,
        next_refresh_at: row.next_refresh_at,
    })
}

fn open_text(key: &RowKey, field: Field, sealed: &[u8]) -> Result<String, VaultError> {
    let plain = key.open(field, sealed)?;
    // The zeroizing buffer is dropped (wiped) here; the String moves into a SecretString.
    String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Corrupt("token is not UTF-8"))
}

/// Milliseconds since the Unix epoch, as the API speaks them.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}
