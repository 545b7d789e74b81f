//! Database credentials from AWS Secrets Manager, re-read while the service runs.
//!
//! RDS rotates the password of a managed secret (by default every seven days). A service
//! that read it once would fail to open new connections after the rotation, until someone
//! redeployed it. Here the secret (`[database] password_secret_arn`, the RDS JSON form with
//! `username` and `password`) is read at start and then every `password_refresh_seconds`;
//! a change is applied to every pool's connect options, so the next connections use it
//! while the open ones go on. With Secrets Manager's alternating-users rotation, the old
//! user keeps working until the next rotation and no connection ever fails.

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::PgPool;

/// A user name and its password.
#[derive(Clone, Deserialize)]
pub struct DbCredentials {
    pub username: String,
    pub password: SecretString,
}

impl fmt::Debug for DbCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbCredentials")
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

impl PartialEq for DbCredentials {
    fn eq(&self, other: &Self) -> bool {
        self.username == other.username
            && self.password.expose_secret() == other.password.expose_secret()
    }
}

/// Reads one secret.
#[derive(Clone)]
pub struct CredentialSource {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

/// The largest secret accepted (RDS secrets are a few hundred bytes).
const MAX_SECRET_BYTES: usize = 16 * 1024;

impl CredentialSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String) -> Self {
        Self { client, secret_id }
    }

    /// The credentials the secret holds now. Errors name the secret, never its value.
    pub async fn fetch(&self) -> anyhow::Result<DbCredentials> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("{}", aws_sdk_secretsmanager::error::DisplayErrorContext(e))
            })
            .with_context(|| format!("reading the database secret {}", self.secret_id))?;
        let text = output
            .secret_string()
            .filter(|s| s.len() <= MAX_SECRET_BYTES)
            .with_context(|| {
                format!(
                    "the database secret {} holds no usable string",
                    self.secret_id
                )
            })?;
        serde_json::from_str(text).map_err(|_| {
            anyhow::anyhow!(
                "the database secret {} is not JSON with `username` and `password`",
                self.secret_id
            )
        })
    }

    /// Re-reads the secret every `every` and applies a change to `pools`; runs until the
    /// pools are closed. A failed read is logged and tried again at the next tick (the
    /// credentials in use stay).
    pub async fn keep_fresh(self, mut current: DbCredentials, pools: Vec<PgPool>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if pools.iter().all(PgPool::is_closed) {
                return;
            }
            match self.fetch().await {
                Ok(fresh) if fresh != current => {
                    for pool in &pools {
                        apply(pool, &fresh);
                    }
                    tracing::info!(
                        username = %fresh.username,
                        "database credentials changed; new connections use them"
                    );
                    current = fresh;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "could not re-read the database credentials"
                    );
                }
            }
        }
    }
}

/// Makes `pool` open its next connections with `credentials`.
pub fn apply(pool: &PgPool, credentials: &DbCredentials) {
    let options = (*pool.connect_options())
        .clone()
        .username(&credentials.username)
        .password(credentials.password.expose_secret());
    pool.set_connect_options(options);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_redacts_the_password() {
        let credentials: DbCredentials = serde_json::from_str(
            r#"{"username":"app","password":"s3cret-pa55","engine":"postgres"}"#,
        )
        .unwrap();
        let debug = format!("{credentials:?}");
        assert!(!debug.contains("s3cret-pa55"), "{debug}");
        assert!(debug.contains("app"), "{debug}");
    }
}
