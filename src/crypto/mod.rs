//! Envelope encryption: one KMS data key per row, AES-256-GCM per secret field, and a cache
//! of unwrapped keys so that reads cost no KMS call.
//!
//! **Only this module holds plaintext key bytes.** Callers get a [`RowKey`], which can seal
//! and open a row's fields and prints nothing secret.

#![forbid(unsafe_code)]

mod aead;
mod kms;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::future::Cache;
use sha2::{Digest, Sha256};

pub use aead::{Field, OpenError, FORMAT_VERSION};
use aead::{RowRef, SealingKey};
use kms::Kms;
pub use kms::{KmsOperation, KmsOutcome};

use crate::domain::GrantKey;
use crate::metrics::Metrics;

/// A data key as KMS wrapped it, with the id of the KMS key that wrapped it. Not secret:
/// only KMS can unwrap it, and only under the row's encryption context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub key_id: String,
    pub blob: Vec<u8>,
}

/// The row a data key serves: its grant names the KMS encryption context and the AAD of
/// its fields.
fn row_ref(grant: &GrantKey) -> RowRef<'_> {
    RowRef {
        user_id: grant.user.as_str(),
        provider: grant.provider.as_str(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// KMS could not be reached or refused to serve (throttled, disabled key, outage).
    #[error("KMS is unavailable")]
    KmsUnavailable(#[source] anyhow::Error),
    /// KMS refused to unwrap this key under this row's context: the row was tampered with.
    #[error("KMS refused to unwrap the data key under this row's encryption context")]
    KeyRejected,
    /// A field failed to authenticate under its row's key: tampered or moved ciphertext.
    #[error("a sealed field failed to authenticate")]
    Integrity(#[from] OpenError),
}

/// How the unwrap cache is bounded.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub max_entries: u64,
}

/// A row's unwrapped data key, shared by the cache and its readers.
#[derive(Clone)]
pub struct RowKey {
    key: Arc<SealingKey>,
    grant: GrantKey,
}

impl RowKey {
    pub fn seal(&self, field: Field, plaintext: &[u8]) -> Vec<u8> {
        self.key.seal(row_ref(&self.grant), field, plaintext)
    }

    pub fn open(
        &self,
        field: Field,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
        Ok(self.key.open(row_ref(&self.grant), field, sealed)?)
    }
}

impl fmt::Debug for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowKey")
            .field("key", &self.key)
            .field("grant", &self.grant)
            .finish()
    }
}

/// KMS plus the unwrap cache. Cheap to clone.
#[derive(Clone)]
pub struct Envelope {
    kms: Kms,
    /// Keyed by a SHA-256 of the wrapped key and its context, holding the 32 key bytes.
    cache: Cache<[u8; 32], Arc<SealingKey>>,
    metrics: Metrics,
    /// The last readiness answer and when KMS gave it.
    readiness: Arc<Mutex<Option<Readiness>>>,
    readiness_ttl: Duration,
}

/// When KMS last answered a readiness check, and what (the error as text).
type Readiness = (Instant, Result<(), String>);

/// Longest a readiness check waits for KMS: well below a load balancer's health-check
/// timeout (the ALB's default is 5 s), so a hanging KMS reads as unavailable, not as a
/// probe that timed out.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

impl fmt::Debug for Envelope {
    // Never derive: moka's `Debug` would print the cached keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("cached_keys", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl Envelope {
    pub fn new(
        client: aws_sdk_kms::Client,
        key_id: String,
        cache: CacheSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            kms: Kms::new(client, key_id, metrics.clone()),
            cache: Cache::builder()
                .max_capacity(cache.max_entries)
                .time_to_live(cache.ttl)
                .build(),
            metrics,
            readiness: Arc::default(),
            readiness_ttl: Duration::from_secs(5),
        }
    }

    /// How long [`Envelope::check_ready`] reuses KMS's last answer (0: never).
    pub fn with_readiness_ttl(mut self, ttl: Duration) -> Self {
        self.readiness_ttl = ttl;
        self
    }

    /// A fresh data key for a row (`GenerateDataKey`), already in the cache so that reads
    /// of the row need no `Decrypt` while it stays there.
    pub async fn new_row_key(&self, grant: &GrantKey) -> Result<(WrappedKey, RowKey), CryptoError> {
        let (wrapped, plaintext) = self.kms.generate_data_key(grant).await?;
        let key = Arc::new(SealingKey::from_bytes(&plaintext).ok_or_else(|| {
            CryptoError::KmsUnavailable(anyhow::anyhow!(
                "KMS returned a data key of the wrong size"
            ))
        })?);
        self.cache
            .insert(cache_key(&wrapped, grant), key.clone())
            .await;
        Ok((
            wrapped,
            RowKey {
                key,
                grant: grant.clone(),
            },
        ))
    }

    /// The row's data key, from the cache or by one KMS `Decrypt`. Concurrent misses for
    /// the same key wait on a single `Decrypt`.
    pub async fn row_key(
        &self,
        wrapped: &WrappedKey,
        grant: &GrantKey,
    ) -> Result<RowKey, CryptoError> {
        let digest = cache_key(wrapped, grant);
        if let Some(key) = self.cache.get(&digest).await {
            self.metrics.unwrap_cache_hits.inc();
            return Ok(RowKey {
                key,
                grant: grant.clone(),
            });
        }
        self.metrics.unwrap_cache_misses.inc();
        let key = self
            .cache
            .try_get_with(digest, async {
                let plaintext = self.kms.decrypt(wrapped, grant).await?;
                SealingKey::from_bytes(&plaintext)
                    .map(Arc::new)
                    .ok_or(CryptoError::KeyRejected)
            })
            .await
            .map_err(unshare)?;
        Ok(RowKey {
            key,
            grant: grant.clone(),
        })
    }

    /// The same data key, wrapped under another KMS key (`ReEncrypt`); the plaintext key
    /// never leaves KMS and the encryption context stays the row's.
    pub async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        grant: &GrantKey,
        to_key_arn: &str,
    ) -> Result<WrappedKey, CryptoError> {
        self.kms.re_encrypt(wrapped, grant, to_key_arn).await
    }

    /// The ARN of an enabled KMS key named by id, ARN or alias.
    pub async fn key_arn(&self, key_id: &str) -> Result<String, CryptoError> {
        self.kms.key_arn(key_id).await
    }

    /// KMS answers and the configured key is enabled.
    ///
    /// Probes come every few seconds from every load-balancer node, so KMS is asked
    /// (`DescribeKey`) at most once per readiness TTL and the answer reused meanwhile; a
    /// call that takes longer than [`READINESS_TIMEOUT`] counts as unavailable.
    pub async fn check_ready(&self) -> Result<(), CryptoError> {
        let cached = self
            .readiness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|(at, _)| at.elapsed() < self.readiness_ttl);
        let answer = match cached {
            Some((_, answer)) => answer,
            None => {
                let answer =
                    match tokio::time::timeout(READINESS_TIMEOUT, self.kms.check_key()).await {
                        Ok(result) => result.map_err(|e| format!("{:#}", anyhow::Error::from(e))),
                        Err(_) => Err("KMS did not answer in time".to_owned()),
                    };
                *self
                    .readiness
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    Some((Instant::now(), answer.clone()));
                answer
            }
        };
        answer.map_err(|e| CryptoError::KmsUnavailable(anyhow::anyhow!(e)))
    }

    /// Unwrapped keys currently cached (after pending evictions ran).
    pub async fn cached_keys(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }
}

/// moka shares one error among the callers that waited on the same load.
fn unshare(err: Arc<CryptoError>) -> CryptoError {
    match &*err {
        CryptoError::KmsUnavailable(e) => CryptoError::KmsUnavailable(anyhow::anyhow!("{e:#}")),
        CryptoError::KeyRejected => CryptoError::KeyRejected,
        CryptoError::Integrity(e) => CryptoError::Integrity(*e),
    }
}

fn cache_key(wrapped: &WrappedKey, grant: &GrantKey) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        wrapped.key_id.as_bytes(),
        &wrapped.blob,
        grant.user.as_str().as_bytes(),
        grant.provider.as_str().as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ProviderName, UserId};

    fn grant(user: &str, provider: &str) -> GrantKey {
        GrantKey::new(
            UserId::parse(user).unwrap(),
            ProviderName::parse(provider).unwrap(),
        )
    }

    #[test]
    fn cache_key_depends_on_every_part() {
        let w = WrappedKey {
            key_id: "k".into(),
            blob: vec![1, 2, 3],
        };
        let c = grant("u", "google");
        let base = cache_key(&w, &c);
        assert_ne!(
            base,
            cache_key(
                &WrappedKey {
                    key_id: "k2".into(),
                    ..w.clone()
                },
                &c
            )
        );
        assert_ne!(
            base,
            cache_key(
                &WrappedKey {
                    blob: vec![1, 2],
                    ..w.clone()
                },
                &c
            )
        );
        assert_ne!(base, cache_key(&w, &grant("u2", "google")));
        assert_ne!(base, cache_key(&w, &grant("u", "microsoft")));
    }

    #[test]
    fn row_key_debug_is_redacted() {
        let key = SealingKey::from_bytes(&zeroize::Zeroizing::new(vec![0x41; 32])).unwrap();
        let row_key = RowKey {
            key: Arc::new(key),
            grant: grant("u", "google"),
        };
        let debug = format!("{row_key:?}");
        assert_eq!(
            debug,
            r#"RowKey { key: SealingKey([REDACTED]), grant: GrantKey { user: UserId("u"), provider: ProviderName("google") } }"#
        );
    }
}
