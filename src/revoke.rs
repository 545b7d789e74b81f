//! Revocation: tell the provider first (best effort), then delete locally.

use tracing::instrument;

use crate::crypto::CryptoError;
use crate::domain::{GrantKey, RefreshToken, UserId};
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
    let outcome = revoke_at_provider(vault, providers, metrics, grant).await?;
    vault
        .delete(grant, outcome == Some(RevocationOutcome::Revoked))
        .await
}

/// Account erasure: revokes every grant of the user, then deletes them all.
#[instrument(skip_all, fields(user_id = %user))]
pub async fn revoke_and_delete_user(
    vault: &Vault,
    providers: &Providers,
    metrics: &Metrics,
    user: &UserId,
) -> Result<u64, VaultError> {
    let mut confirmed = Vec::new();
    for grant in vault.grants_of(user).await? {
        if revoke_at_provider(vault, providers, metrics, &grant).await?
            == Some(RevocationOutcome::Revoked)
        {
            confirmed.push(grant.provider);
        }
    }
    vault.delete_user(user, &confirmed).await
}

/// Revokes at the provider the refresh token of a grant that a new consent replaced (best
/// effort, counted as `token_store_superseded_revocations_total{provider, outcome}`).
pub async fn revoke_superseded(
    providers: &Providers,
    metrics: &Metrics,
    grant: &GrantKey,
    refresh_token: &RefreshToken,
) {
    let Some(client) = providers.get(&grant.provider) else {
        return;
    };
    let outcome = match client.revoke(refresh_token.expose(), "refresh_token").await {
        Ok(true) => RevocationOutcome::Revoked,
        Ok(false) => RevocationOutcome::Unsupported,
        Err(err) => {
            tracing::warn!(user_id = %grant.user, provider = %grant.provider, error = %err, "revoking a replaced refresh token failed");
            RevocationOutcome::Failed
        }
    };
    metrics
        .superseded_revocations
        .with_label_values(&[providers.label(&grant.provider), outcome.as_str()])
        .inc();
}

/// How the revocation at the provider ended; `None` if there was no grant.
async fn revoke_at_provider(
    vault: &Vault,
    providers: &Providers,
    metrics: &Metrics,
    grant: &GrantKey,
) -> Result<Option<RevocationOutcome>, VaultError> {
    let count = |outcome: RevocationOutcome| {
        metrics
            .revocations
            .with_label_values(&[providers.label(&grant.provider), outcome.as_str()])
            .inc();
        Ok(Some(outcome))
    };
    let Some(sealed) = vault.read(grant).await? else {
        return Ok(None);
    };
    let Some(client) = providers.get(&grant.provider) else {
        tracing::warn!("no OAuth client configured for this provider; deleting without revoking");
        return count(RevocationOutcome::NotConfigured);
    };
    let token = match vault.open(&sealed, Reveal::AccessAndRefreshToken).await {
        Ok(token) => token,
        // KMS away: the user's deletion still happens; the grant will lapse at the provider.
        Err(VaultError::Crypto(CryptoError::KmsUnavailable(err))) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "KMS unavailable; deleting without revoking"
            );
            return count(RevocationOutcome::Failed);
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
            count(RevocationOutcome::Failed)
        }
    }
}
