//! Revocation: tell the provider first (best effort), then delete locally.

use tracing::instrument;

use crate::crypto::CryptoError;
use crate::domain::{GrantKey, UserId};
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::vault::{Reveal, Vault, VaultError};

/// How a revocation at the provider ended: the `outcome` label of
/// `token_store_revocations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationOutcome {
    /// The provider confirmed it.
    Revoked,
    /// The provider has no revocation endpoint.
    Unsupported,
    /// The provider, or KMS, failed; the grant was deleted anyway.
    Failed,
    /// No OAuth client is configured for the provider.
    NotConfigured,
}

impl RevocationOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Unsupported => "unsupported",
            Self::Failed => "failed",
            Self::NotConfigured => "not_configured",
        }
    }
}

/// Revokes the grant at its provider, then deletes it. A provider that fails or is not
/// configured is logged and counted; the local delete happens regardless (the user asked
/// for the grant to be gone). `true` if a grant was deleted.
#[instrument(skip_all, fields(user_id = %grant.user, provider = %grant.provider))]
pub async fn revoke_and_delete(
    vault: &Vault,
    providers: &Providers,
    metrics: &Metrics,
    grant: &GrantKey,
) -> Result<bool, VaultError> {
    revoke_at_provider(vault, providers, metrics, grant).await?;
    vault.delete(grant).await
}

/// Account erasure: revokes every grant of the user, then deletes them all.
#[instrument(skip_all, fields(user_id = %user))]
pub async fn revoke_and_delete_user(
    vault: &Vault,
    providers: &Providers,
    metrics: &Metrics,
    user: &UserId,
) -> Result<u64, VaultError> {
    for grant in vault.grants_of(user).await? {
        revoke_at_provider(vault, providers, metrics, &grant).await?;
    }
    vault.delete_user(user).await
}

async fn revoke_at_provider(
    vault: &Vault,
    providers: &Providers,
    metrics: &Metrics,
    grant: &GrantKey,
) -> Result<(), VaultError> {
    let count = |outcome: RevocationOutcome| {
        metrics
            .revocations
            .with_label_values(&[providers.label(&grant.provider), outcome.as_str()])
            .inc();
    };
    let Some(sealed) = vault.read(grant).await? else {
        return Ok(());
    };
    let Some(client) = providers.get(&grant.provider) else {
        tracing::warn!("no OAuth client configured for this provider; deleting without revoking");
        count(RevocationOutcome::NotConfigured);
        return Ok(());
    };
    let token = match vault.open(&sealed, Reveal::AccessAndRefreshToken).await {
        Ok(token) => token,
        // KMS away: the user's deletion still happens; the grant will lapse at the provider.
        Err(VaultError::Crypto(CryptoError::KmsUnavailable(err))) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "KMS unavailable; deleting without revoking"
            );
            count(RevocationOutcome::Failed);
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    // Revoking the refresh token ends the whole grant (Google, RFC 7009 §2.1).
    let (token, hint) = match &token.refresh_token {
        Some(refresh) => (refresh.expose(), "refresh_token"),
        None => (token.access_token.expose(), "access_token"),
    };
    match client.revoke(token, hint).await {
        Ok(true) => count(RevocationOutcome::Revoked),
        Ok(false) => count(RevocationOutcome::Unsupported),
        Err(err) => {
            tracing::warn!(error = %err, "revocation at the provider failed; deleting anyway");
            count(RevocationOutcome::Failed);
        }
    }
    Ok(())
}
