//! The vault: the only door to stored grants. It alone turns grants into sealed rows and
//! rows back into grants, so it alone calls `store` (the SQL) and `crypto` (data keys and
//! sealing). Refresh, revoke, rewrap and the HTTP layer call the vault; it knows nothing of
//! HTTP or providers.
//!
//! A refresh works on a [`LockedGrant`]: the grant's advisory lock, held by a transaction
//! on the lock pool, with the reads and the fenced writes a refresh makes under it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tracing::instrument;

use crate::crypto::{CryptoError, Envelope, Field, RowKey, WrappedKey};
use crate::domain::{
    AccessGrant, AccessToken, GrantKey, GrantState, ProviderName, RefreshToken, Scope, StoredToken,
    TokenSet, UserId,
};
use crate::lookups::{LookupError, Lookups};
use crate::store::{self, SealedRow, TokenRow, WrappedKeyRow};

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
/// `locks` (its own small pool, so that waiting refreshes never starve requests), and the
/// read path's batched lookups.
#[derive(Clone, Debug)]
pub struct Storage {
    pub db: PgPool,
    pub locks: PgPool,
    pub lookups: Lookups,
}

/// Cheap to clone: pools, the read path's lookups and an envelope.
#[derive(Clone, Debug)]
pub struct Vault {
    storage: Storage,
    envelope: Envelope,
    /// A refresh re-seals under the row's data key while the key is younger than this.
    data_key_max_age: Duration,
}

/// A stored grant as read: its state in the clear, its tokens still sealed.
#[derive(Debug, Clone)]
pub struct SealedGrant {
    key: GrantKey,
    state: GrantState,
    row: TokenRow,
}

impl SealedGrant {
    fn new(key: GrantKey, row: TokenRow) -> Result<Self, VaultError> {
        let scopes = row
            .scopes
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
        };
        Ok(Self { key, state, row })
    }

    pub fn state(&self) -> &GrantState {
        &self.state
    }
}

impl Vault {
    pub fn new(storage: Storage, envelope: Envelope, data_key_max_age: Duration) -> Self {
        Self {
            storage,
            envelope,
            data_key_max_age,
        }
    }

    /// Stores or replaces the grant under a new data key. KMS first: if KMS fails, nothing
    /// is written.
    #[instrument(skip_all, fields(user_id = %grant.user, provider = %grant.provider))]
    pub async fn store(&self, grant: &GrantKey, token: &TokenSet) -> Result<(), VaultError> {
        let (wrapped, key) = self.envelope.new_row_key(grant).await?;
        let row = seal(&wrapped, Utc::now(), &key, token);
        store::upsert(&self.storage.db, grant, &row).await?;
        Ok(())
    }

    /// The stored grant, decrypted. No span of its own (the hot path): its audit event
    /// names the grant.
    pub async fn get(&self, grant: &GrantKey, reveal: Reveal) -> Result<StoredToken, VaultError> {
        let sealed = self.read(grant).await?.ok_or(VaultError::NotFound)?;
        let token = self.open(&sealed, reveal).await?;
        Ok(StoredToken {
            token,
            status: sealed.state.status,
        })
    }

    /// The grant as stored now, still sealed, through the batched lookups of the read path.
    pub async fn read(&self, grant: &GrantKey) -> Result<Option<SealedGrant>, VaultError> {
        self.storage
            .lookups
            .find(grant)
            .await?
            .map(|row| SealedGrant::new(grant.clone(), row))
            .transpose()
    }

    /// The grant's access token, opened.
    pub async fn open_access(&self, sealed: &SealedGrant) -> Result<AccessGrant, VaultError> {
        Ok(self.open(sealed, Reveal::AccessToken).await?.into())
    }

    /// The grant's tokens, opened (the refresh token only if revealed).
    pub async fn open(&self, sealed: &SealedGrant, reveal: Reveal) -> Result<TokenSet, VaultError> {
        let key = self.row_key(sealed).await?;
        let access = open_text(&key, Field::AccessToken, &sealed.row.access_token_ct)?;
        let refresh = match (&sealed.row.refresh_token_ct, reveal) {
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
            expires_at: sealed.state.expires_at,
            scopes: sealed.state.scopes.clone(),
        })
    }

    /// The unwrapped data key of a row (cached).
    async fn row_key(&self, sealed: &SealedGrant) -> Result<RowKey, VaultError> {
        let wrapped = WrappedKey {
            key_id: sealed.row.kms_key_id.clone(),
            blob: sealed.row.wrapped_data_key.clone(),
        };
        Ok(self.envelope.row_key(&wrapped, &sealed.key).await?)
    }

    #[instrument(skip_all, fields(user_id = %grant.user, provider = %grant.provider))]
    pub async fn delete(&self, grant: &GrantKey) -> Result<bool, VaultError> {
        Ok(store::delete(&self.storage.db, grant).await?)
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

    #[instrument(skip_all, fields(user_id = %user))]
    pub async fn delete_user(&self, user: &UserId) -> Result<u64, VaultError> {
        Ok(store::delete_user(&self.storage.db, user).await?)
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
        Ok(store::replace_wrapped_key(
            &self.storage.db,
            row.id,
            row.version,
            &rewrapped.key_id,
            &rewrapped.blob,
        )
        .await?)
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
        let version = sealed.row.version;
        let first = async {
            let written = store::write_refreshed(&mut *self.tx, &self.key, version, &row).await?;
            self.tx.commit().await?;
            Ok::<_, sqlx::Error>(written)
        }
        .await;
        match first {
            Ok(written) => Ok(written),
            Err(err) => retry_write(&self.vault.storage.db, &self.key, version, &row, err).await,
        }
    }

    /// Marks the grant dead, but only while the refresh token that failed is still the
    /// stored one: a grant refreshed or replaced meanwhile is left alone. `true` if marked.
    pub async fn mark_dead(
        mut self,
        sealed: &SealedGrant,
        error: &str,
    ) -> Result<bool, VaultError> {
        let Some(failed) = &sealed.row.refresh_token_ct else {
            return Ok(false);
        };
        let marked =
            store::mark_reauthorization_required(&mut *self.tx, &self.key, failed, error).await?;
        self.tx.commit().await?;
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
            sealed.row.version,
            error,
            retry_after,
        )
        .await?;
        self.tx.commit().await?;
        Ok(recorded)
    }

    async fn reseal(
        &self,
        sealed: &SealedGrant,
        token: &TokenSet,
    ) -> Result<SealedRow, VaultError> {
        let now = Utc::now();
        let current = WrappedKey {
            key_id: sealed.row.kms_key_id.clone(),
            blob: sealed.row.wrapped_data_key.clone(),
        };
        let key_age = (now - sealed.row.data_key_created_at)
            .to_std()
            .unwrap_or_default();
        if key_age >= self.vault.data_key_max_age {
            match self.vault.envelope.new_row_key(&self.key).await {
                Ok((wrapped, fresh)) => return Ok(seal(&wrapped, now, &fresh, token)),
                // The provider may have rotated the refresh token already: persisting it
                // under the current (still KMS-wrapped) key beats losing it.
                Err(err) => tracing::warn!(
                    error = %err,
                    "could not get a new data key; re-sealing under the current one"
                ),
            }
        }
        let key = self.vault.row_key(sealed).await?;
        Ok(seal(&current, sealed.row.data_key_created_at, &key, token))
    }
}

/// A refreshed grant's write, again on the request pool after the lock's transaction
/// failed; logged loudly, because a rotated refresh token that is not persisted is lost.
async fn retry_write(
    db: &PgPool,
    grant: &GrantKey,
    version: i64,
    row: &SealedRow,
    first_error: sqlx::Error,
) -> Result<bool, VaultError> {
    tracing::error!(error = %first_error, "persisting a refreshed token failed; retrying");
    let mut last_error = first_error;
    for attempt in 1..=3u32 {
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        match store::write_refreshed(db, grant, version, row).await {
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

/// A grant sealed under a row's data key: the one way a grant becomes a row.
fn seal(
    wrapped: &WrappedKey,
    key_created_at: DateTime<Utc>,
    key: &RowKey,
    token: &TokenSet,
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
    }
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
