//! Configuration: a TOML file, overridden by `TOKEN_STORE_*` environment variables
//! (`TOKEN_STORE_DATABASE__URL` overrides `[database] url`: sections and keys joined by `__`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::{Client, Permission};
use crate::providers::ProviderSettings;
use crate::refresh::RefreshSettings;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub kms: KmsConfig,
    #[serde(default)]
    pub refresh: RefreshConfig,
    #[serde(default)]
    pub providers: HashMap<String, ProviderSettings>,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// `pretty` for people, `json` for production log pipelines.
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 64 * 1024,
            log_format: LogFormat::Pretty,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// May carry a password, so it is a secret.
    pub url: SecretString,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// Run the migrations at start (as `token-store migrate` does).
    #[serde(default)]
    pub migrate_on_start: bool,
    /// Connections of the separate pool that holds refresh locks, so a slow provider never
    /// drains the request pool.
    #[serde(default = "default_lock_pool_connections")]
    pub lock_pool_connections: u32,
    /// Long-lived connections that answer the read path's lookups, in batches (`lookups`).
    #[serde(default = "default_read_connections")]
    pub read_connections: u32,
}

fn default_read_connections() -> u32 {
    1
}

fn default_lock_pool_connections() -> u32 {
    4
}

fn default_max_connections() -> u32 {
    16
}
fn default_acquire_timeout_ms() -> u64 {
    3_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmsConfig {
    /// Key id, ARN or alias of the KMS key that wraps data keys. Required.
    pub key_id: Option<String>,
    /// Overrides the endpoint of the standard AWS chain (`AWS_ENDPOINT_URL`).
    pub endpoint_url: Option<String>,
    /// How long an unwrapped data key stays cached.
    pub cache_ttl_seconds: u64,
    /// Most unwrapped data keys cached at once.
    pub cache_max_entries: u64,
    /// Time limit of one KMS call, retries included.
    pub timeout_ms: u64,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            key_id: None,
            endpoint_url: None,
            cache_ttl_seconds: 300,
            cache_max_entries: 100_000,
            timeout_ms: 3_000,
        }
    }
}

impl KmsConfig {
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_seconds)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    /// Refresh a token that expires within this many seconds before handing it out.
    pub buffer_seconds: u64,
    /// Longest wait for a pair's refresh lock (ms).
    pub lock_timeout_ms: u64,
    /// Time limit of one provider call (ms); must be shorter than `lock_timeout_ms`.
    pub provider_timeout_ms: u64,
    /// Re-seal refreshed tokens under the row's data key while it is younger than this.
    pub data_key_max_age_seconds: u64,
    /// Cool-down after a transient provider failure, doubling per failure up to the max.
    pub cooldown_base_seconds: u64,
    pub cooldown_max_seconds: u64,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            buffer_seconds: 300,
            lock_timeout_ms: 15_000,
            provider_timeout_ms: 10_000,
            data_key_max_age_seconds: 24 * 3600,
            cooldown_base_seconds: 5,
            cooldown_max_seconds: 300,
        }
    }
}

impl RefreshConfig {
    pub fn settings(&self) -> anyhow::Result<RefreshSettings> {
        if self.provider_timeout_ms >= self.lock_timeout_ms {
            bail!(
                "refresh.provider_timeout_ms ({}) must be shorter than refresh.lock_timeout_ms ({})",
                self.provider_timeout_ms,
                self.lock_timeout_ms
            );
        }
        Ok(RefreshSettings {
            buffer: Duration::from_secs(self.buffer_seconds),
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            data_key_max_age: Duration::from_secs(self.data_key_max_age_seconds),
            cooldown_base: Duration::from_secs(self.cooldown_base_seconds),
            cooldown_max: Duration::from_secs(self.cooldown_max_seconds),
        })
    }

    pub fn provider_timeout(&self) -> Duration {
        Duration::from_millis(self.provider_timeout_ms)
    }
}

/// `TOKEN_STORE_<SECTION>__<KEY>` variables of the known sections (and `TOKEN_STORE_CLIENTS`,
/// a TOML array). Other `TOKEN_STORE_*` names (`TOKEN_STORE_CONFIG`, a script's own) are
/// not configuration and are left alone.
fn environment() -> Env {
    const SECTIONS: [&str; 6] = [
        "server",
        "database",
        "kms",
        "refresh",
        "providers",
        "clients",
    ];
    Env::prefixed("TOKEN_STORE_")
        .filter(|key| {
            let section = key.as_str().split("__").next().unwrap_or_default();
            SECTIONS.iter().any(|s| section.eq_ignore_ascii_case(s))
        })
        .split("__")
}

/// A secret that may arrive as any scalar: `TOKEN_STORE_..._CLIENT_SECRET=123456` is read
/// by the environment provider as a number, and must still be taken as text.
pub fn scalar_secret<'de, D>(deserializer: D) -> Result<SecretString, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Signed(i64),
        Unsigned(u64),
        Float(f64),
        Bool(bool),
    }
    let text = match Scalar::deserialize(deserializer)? {
        Scalar::Text(s) => s,
        Scalar::Signed(n) => n.to_string(),
        Scalar::Unsigned(n) => n.to_string(),
        Scalar::Float(n) => n.to_string(),
        Scalar::Bool(b) => b.to_string(),
    };
    Ok(SecretString::from(text))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    /// Hex SHA-256 of the client's API key (never the key).
    pub key_sha256: String,
    pub permissions: Vec<Permission>,
}

impl Config {
    /// Reads the file, then the environment.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            bail!("configuration file {} does not exist", path.display());
        }
        Figment::from(Toml::file(path))
            .merge(environment())
            .extract()
            .with_context(|| {
                format!(
                    "invalid configuration in {} or TOKEN_STORE_* variables",
                    path.display()
                )
            })
    }

    /// The KMS key id, or the reason the service must not start.
    pub fn kms_key_id(&self) -> anyhow::Result<&str> {
        match self.kms.key_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => Ok(id),
            _ => bail!(
                "no KMS key configured: set [kms] key_id or TOKEN_STORE_KMS__KEY_ID. \
                 token-store seals every token under KMS and has no plaintext mode"
            ),
        }
    }

    pub fn clients(&self) -> anyhow::Result<Vec<Client>> {
        self.clients
            .iter()
            .map(|c| {
                Client::new(c.name.clone(), &c.key_sha256, c.permissions.iter().copied())
                    .map_err(anyhow::Error::msg)
            })
            .collect()
    }
}

#[cfg(test)]
// figment's `Jail` closures must return its (large) `figment::Error`.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;
    use secrecy::ExposeSecret;

    const FILE: &str = r#"
        [database]
        url = "postgres://from-file/db"

        [kms]
        key_id = "alias/from-file"

        [providers.google]
        client_id = "id"
        client_secret = "from-file"
    "#;

    #[test]
    fn environment_overrides_the_file_and_other_prefixed_names_are_ignored() {
        Jail::expect_with(|jail| {
            jail.create_file("token-store.toml", FILE)?;
            jail.set_env("TOKEN_STORE_KMS__KEY_ID", "alias/from-env");
            jail.set_env("TOKEN_STORE_PROVIDERS__GOOGLE__CLIENT_SECRET", "123456");
            jail.set_env("TOKEN_STORE_REFRESH__BUFFER_SECONDS", "60");
            jail.set_env("TOKEN_STORE_CONFIG", "token-store.toml");
            jail.set_env("TOKEN_STORE_CACHE_DIR", "/tmp/elsewhere");
            let config = Config::load(Path::new("token-store.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.kms_key_id().unwrap(), "alias/from-env");
            assert_eq!(
                config.database.url.expose_secret(),
                "postgres://from-file/db"
            );
            assert_eq!(config.refresh.buffer_seconds, 60);
            let google = &config.providers["google"];
            assert_eq!(google.client_secret.expose_secret(), "123456");
            Ok(())
        });
    }

    #[test]
    fn a_missing_kms_key_is_refused_with_a_clear_message() {
        Jail::expect_with(|jail| {
            jail.create_file("token-store.toml", "[database]\nurl = \"postgres://x/y\"\n")?;
            let config = Config::load(Path::new("token-store.toml")).map_err(|e| e.to_string())?;
            let err = config.kms_key_id().unwrap_err().to_string();
            assert!(err.contains("no KMS key configured"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_provider_timeout_must_be_shorter_than_the_lock_timeout() {
        let config = RefreshConfig {
            provider_timeout_ms: 5_000,
            lock_timeout_ms: 5_000,
            ..RefreshConfig::default()
        };
        assert!(config.settings().is_err());
        assert!(RefreshConfig::default().settings().is_ok());
    }
}
