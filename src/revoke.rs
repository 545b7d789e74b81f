//! Revocation: tell the provider first (best effort), then delete locally.

use tracing::instrument;

use crate::crypto::CryptoError;
use crate::domain::{ProviderName, UserId};
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::store;
use crate::vault::{open_row, Vault, VaultError};

/// Revokes the grant at its provider, then deletes it. A provider that fails or is not
/// configured is logged and counted; the local delete happens regardless (the user asked
/// for the grant to be gone). `true` if a grant was deleted.
#[instrument(skip_all, fields(user_id = %user, provider = %provider))]
pub async fn revoke_and_delete(
    vault: &Vault,
    providers: &Providers,
    metrics: &Metrics,
    user: &UserId,
    provider: &ProviderName,
) -> Result<bool, VaultError> {
    revoke_at_provider(vault, providers, metrics, user, provider).await?;
    vault.delete(user, provider).await
}

/// Account erasure: revokes every grant of the user, then deletes them all.
#[instrument(skip_all, fields(user_id = %user))]
pub async fn revoke_and_delete_user(
    vault: &Vault,
    providers: &Providers,
    metrics: &Metrics,
    user: &UserId,
) -> Result<u64, VaultError> {
    for name in store::providers_of(vault.db(), user.as_str()).await? {
        match ProviderName::parse(&name) {
            Ok(provider) => revoke_at_provider(vault, providers, metrics, user, &provider).await?,
            Err(_) => {
                tracing::error!("a stored provider name is malformed; deleting without revoking")
            }
        }
    }
    vault.delete_user(user).await
}

async fn revoke_at_provider(
    vault: &Vault,
    providers: &Providers,
    metrics: &Metrics,
    user: &UserId,
    provider: &ProviderName,
) -> Result<(), VaultError> {
    let count = |outcome: &str| {
        metrics
            .revocations
            .with_label_values(&[providers.label(provider), outcome])
            .inc();
    };
    let Some(row) = store::find(vault.db(), user.as_str(), provider.as_str()).await? else {
        return Ok(());
    };
    let Some(client) = providers.get(provider) else {
        tracing::warn!("no OAuth client configured for this provider; deleting without revoking");
        count("not_configured");
        return Ok(());
    };
    let opened = match vault.row_key(&row).await {
        Ok(key) => open_row(&key, &row, true),
        Err(err) => Err(err),
    };
    let stored = match opened {
        Ok(stored) => stored,
        // KMS away: the user's deletion still happens; the grant will lapse at the provider.
        Err(VaultError::Crypto(CryptoError::KmsUnavailable(err))) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "KMS unavailable; deleting without revoking"
            );
            count("failed");
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    // Revoking the refresh token ends the whole grant (Google, RFC 7009 §2.1).
    let (token, hint) = match &stored.token.refresh_token {
        Some(refresh) => (refresh.expose(), "refresh_token"),
        None => (stored.token.access_token.expose(), "access_token"),
    };
    match client.revoke(token, hint).await {
        Ok(true) => count("revoked"),
        Ok(false) => count("unsupported"),
        Err(err) => {
            tracing::warn!(error = %err, "revocation at the provider failed; deleting anyway");
            count("failed");
        }
    }
    Ok(())
}
