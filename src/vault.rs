//! The token vault: stores, reads and deletes sealed grants. Joins `crypto` (keys and
//! sealing) and `store` (rows); knows nothing of HTTP.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tracing::instrument;

use crate::crypto::{CryptoError, Envelope, Field, KeyContext, RowKey, WrappedKey};
use crate::domain::{
    AccessToken, ProviderName, RefreshToken, Scope, StoredToken, TokenSet, TokenStatus, UserId,
};
use crate::lookups::{LookupError, Lookups};
use crate::store::{self, TokenRow};

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

/// Cheap to clone: a pool, the read path's lookups and an envelope.
#[derive(Clone, Debug)]
pub struct Vault {
    db: PgPool,
    lookups: Lookups,
    envelope: Envelope,
}

impl Vault {
    pub fn new(db: PgPool, lookups: Lookups, envelope: Envelope) -> Self {
        Self {
            db,
            lookups,
            envelope,
        }
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// Stores or replaces the grant under a new data key. KMS first: if KMS fails, nothing
    /// is written.
    #[instrument(skip_all, fields(user_id = %user, provider = %provider))]
    pub async fn store(
        &self,
        user: &UserId,
        provider: &ProviderName,
        token: &TokenSet,
    ) -> Result<(), VaultError> {
        let context = KeyContext::new(user.as_str(), provider.as_str());
        let (wrapped, key) = self.envelope.new_row_key(&context).await?;
        let access_ct = key.seal(Field::AccessToken, token.access_token.expose().as_bytes());
        let refresh_ct = token
            .refresh_token
            .as_ref()
            .map(|t| key.seal(Field::RefreshToken, t.expose().as_bytes()));
        let scopes: Vec<String> = token.scopes.iter().map(|s| s.as_str().to_owned()).collect();
        store::upsert(
            &self.db,
            &store::NewRow {
                user_id: user.as_str(),
                provider: provider.as_str(),
                kms_key_id: &wrapped.key_id,
                wrapped_data_key: &wrapped.blob,
                access_token_ct: &access_ct,
                refresh_token_ct: refresh_ct.as_deref(),
                expires_at: token.expires_at,
                scopes: &scopes,
            },
        )
        .await?;
        Ok(())
    }

    /// The stored grant, decrypted. The refresh token is opened only when asked for. No span
    /// of its own (the hot path): its audit event names the pair.
    pub async fn get(
        &self,
        user: &UserId,
        provider: &ProviderName,
        with_refresh_token: bool,
    ) -> Result<StoredToken, VaultError> {
        let row = self
            .find(user, provider)
            .await?
            .ok_or(VaultError::NotFound)?;
        let key = self.row_key(&row).await?;
        open_row(&key, &row, with_refresh_token)
    }

    /// The sealed row of a pair, through the batched lookups of the read path (not for a
    /// read that must see a transaction's writes or hold a lock).
    pub async fn find(
        &self,
        user: &UserId,
        provider: &ProviderName,
    ) -> Result<Option<TokenRow>, VaultError> {
        Ok(self.lookups.find(user.as_str(), provider.as_str()).await?)
    }

    /// The unwrapped data key of a row (cached).
    pub async fn row_key(&self, row: &TokenRow) -> Result<RowKey, VaultError> {
        let wrapped = WrappedKey {
            key_id: row.kms_key_id.clone(),
            blob: row.wrapped_data_key.clone(),
        };
        let context = KeyContext::new(&row.user_id, &row.provider);
        Ok(self.envelope.row_key(&wrapped, &context).await?)
    }

    #[instrument(skip_all, fields(user_id = %user, provider = %provider))]
    pub async fn delete(&self, user: &UserId, provider: &ProviderName) -> Result<bool, VaultError> {
        Ok(store::delete(&self.db, user.as_str(), provider.as_str()).await?)
    }

    #[instrument(skip_all, fields(user_id = %user))]
    pub async fn delete_user(&self, user: &UserId) -> Result<u64, VaultError> {
        Ok(store::delete_user(&self.db, user.as_str()).await?)
    }
}

/// Opens a row's sealed fields under its key.
pub fn open_row(
    key: &RowKey,
    row: &TokenRow,
    with_refresh_token: bool,
) -> Result<StoredToken, VaultError> {
    let access = open_text(key, Field::AccessToken, &row.access_token_ct)?;
    let refresh = match (&row.refresh_token_ct, with_refresh_token) {
        (Some(ct), true) => Some(open_text(key, Field::RefreshToken, ct)?),
        _ => None,
    };
    let scopes = row
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| VaultError::Corrupt("scopes"))?;
    Ok(StoredToken {
        user_id: UserId::parse(&row.user_id).map_err(|_| VaultError::Corrupt("user_id"))?,
        provider: ProviderName::parse(&row.provider)
            .map_err(|_| VaultError::Corrupt("provider"))?,
        token: TokenSet {
            access_token: AccessToken::parse(access)
                .map_err(|_| VaultError::Corrupt("access token"))?,
            refresh_token: refresh
                .map(RefreshToken::parse)
                .transpose()
                .map_err(|_| VaultError::Corrupt("refresh token"))?,
            expires_at: row.expires_at,
            scopes,
        },
        status: TokenStatus::parse(&row.status).ok_or(VaultError::Corrupt("status"))?,
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
