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
    /// Longest time from the first byte of a request to the end of its headers (ms).
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and no byte of a new one is closed after
    /// this (ms). Above the ALB's 60 s idle timeout, as AWS advises for targets: the ALB
    /// then always closes an idle connection first, and never sends a request on one the
    /// service is closing at that very moment (which the ALB would answer 502).
    pub idle_timeout_ms: u64,
    /// Longest time a request may take, its body included (ms); then 503 `request_timeout`.
    pub request_timeout_ms: u64,
    /// Most connections open at once; at the cap the service stops accepting (the
    /// kernel's backlog holds the rest) until one closes.
    pub max_connections: usize,
    /// After SIGTERM, how long in-flight requests may take before their connections are
    /// dropped (ms). Below ECS's `stopTimeout` (30 s), after which ECS sends SIGKILL.
    pub shutdown_timeout_ms: u64,
    /// Serve `/metrics` on this address only, not on `listen`: in AWS the ALB forwards
    /// `listen`, and metrics are for the scraper alone. Unset: on `listen`.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 64 * 1024,
            log_format: LogFormat::Pretty,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 65_000,
            request_timeout_ms: 30_000,
            max_connections: 4_096,
            shutdown_timeout_ms: 20_000,
            metrics_listen: None,
        }
    }
}

/// The HTTP server's bounds, checked (see [`ServerConfig::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

impl ServerConfig {
    /// The bounds, or the reason the service must not start: each must be above 0 (a 0
    /// would close every connection at once, or accept none), a timeout at most a day and
    /// the cap at most a million (beyond, a deadline or a semaphore would overflow).
    pub fn limits(&self) -> anyhow::Result<ServerLimits> {
        const DAY_MS: u64 = 24 * 3600 * 1000;
        for (name, value, max) in [
            (
                "header_read_timeout_ms",
                self.header_read_timeout_ms,
                DAY_MS,
            ),
            ("idle_timeout_ms", self.idle_timeout_ms, DAY_MS),
            ("request_timeout_ms", self.request_timeout_ms, DAY_MS),
            ("max_connections", self.max_connections as u64, 1_000_000),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms, DAY_MS),
        ] {
            if value == 0 || value > max {
                bail!("server.{name} must be between 1 and {max}, not {value}");
            }
        }
        Ok(ServerLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_connections: self.max_connections,
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
        })
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
    /// PostgreSQL `statement_timeout` of the service's sessions: a statement that runs
    /// longer is cancelled and the request answers 503 `database_unavailable`.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// PostgreSQL `lock_timeout` of the service's sessions: the longest wait for a row or
    /// table lock (a table locked by a migration or an operator) before the same 503.
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// A Secrets Manager secret (ARN or name) with the service's database `username` and
    /// `password` (the RDS JSON form). They replace the URL's, and the secret is re-read
    /// every `password_refresh_seconds`, so a rotation needs no restart. Unset: the URL's.
    #[serde(default)]
    pub password_secret_arn: Option<String>,
    #[serde(default = "default_password_refresh_seconds")]
    pub password_refresh_seconds: u64,
}

fn default_password_refresh_seconds() -> u64 {
    60
}

impl DatabaseConfig {
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }

    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.lock_timeout_ms)
    }
}

fn default_statement_timeout_ms() -> u64 {
    5_000
}

fn default_lock_timeout_ms() -> u64 {
    2_000
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
    /// How long `/readyz` reuses KMS's last answer (`DescribeKey`); 0 asks every time.
    pub readiness_cache_ms: u64,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            key_id: None,
            endpoint_url: None,
            cache_ttl_seconds: 300,
            cache_max_entries: 100_000,
            timeout_ms: 3_000,
            readiness_cache_ms: 5_000,
        }
    }
}

impl KmsConfig {
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_seconds)
    }

    pub fn readiness_cache(&self) -> Duration {
        Duration::from_millis(self.readiness_cache_ms)
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
    fn server_limits_have_defaults_overridable_from_the_environment_and_refuse_zero() {
        Jail::expect_with(|jail| {
            jail.create_file("token-store.toml", FILE)?;
            jail.set_env("TOKEN_STORE_SERVER__IDLE_TIMEOUT_MS", "70000");
            jail.set_env("TOKEN_STORE_SERVER__MAX_CONNECTIONS", "100");
            let config = Config::load(Path::new("token-store.toml")).map_err(|e| e.to_string())?;
            let limits = config.server.limits().unwrap();
            assert_eq!(limits.idle_timeout, Duration::from_secs(70));
            assert_eq!(limits.max_connections, 100);
            assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
            assert_eq!(limits.request_timeout, Duration::from_secs(30));
            assert_eq!(limits.shutdown_timeout, Duration::from_secs(20));
            jail.set_env("TOKEN_STORE_SERVER__REQUEST_TIMEOUT_MS", "0");
            let config = Config::load(Path::new("token-store.toml")).map_err(|e| e.to_string())?;
            let err = config.server.limits().unwrap_err().to_string();
            assert!(err.contains("server.request_timeout_ms"), "{err}");
            Ok(())
        });
        for zero in [
            ServerConfig {
                header_read_timeout_ms: 0,
                ..ServerConfig::default()
            },
            ServerConfig {
                max_connections: 0,
                ..ServerConfig::default()
            },
            ServerConfig {
                shutdown_timeout_ms: 0,
                ..ServerConfig::default()
            },
            ServerConfig {
                idle_timeout_ms: u64::MAX,
                ..ServerConfig::default()
            },
        ] {
            assert!(zero.limits().is_err());
        }
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
