//! Configuration: a TOML file, overridden by `TOKEN_STORE_*` environment variables
//! (`TOKEN_STORE_DATABASE__URL` overrides `[database] url`: sections and keys joined by `__`).
//!
//! Durations are `Duration`s here; in the file and the environment they are whole numbers
//! whose key names the unit (`request_timeout_ms`, `cache_ttl_seconds`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::auth::{Client, Permission};

/// A `*_ms` key: a whole number of milliseconds.
fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// A `*_seconds` key: a whole number of seconds.
fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_secs)
}

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
    #[serde(default)]
    pub keeper: KeeperConfig,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub row_cache: RowCacheConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// `pretty` for people, `json` for production log pipelines.
    pub log_format: LogFormat,
    /// Longest time from the first byte of a request to the end of its headers.
    #[serde(rename = "header_read_timeout_ms", deserialize_with = "millis")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte of a new one is closed after
    /// this. Above the ALB's 60 s idle timeout, as AWS advises for targets: the ALB then
    /// always closes an idle connection first, and never sends a request on one the
    /// service is closing at that very moment (which the ALB would answer 502).
    #[serde(rename = "idle_timeout_ms", deserialize_with = "millis")]
    pub idle_timeout: Duration,
    /// Longest time a request may take, its body included; then 503 `request_timeout`.
    #[serde(rename = "request_timeout_ms", deserialize_with = "millis")]
    pub request_timeout: Duration,
    /// Most connections open at once; at the cap the service stops accepting (the
    /// kernel's backlog holds the rest) until one closes.
    pub max_connections: usize,
    /// After SIGTERM, how long in-flight requests may take before their connections are
    /// dropped. Below ECS's `stopTimeout` (30 s), after which ECS sends SIGKILL.
    #[serde(rename = "shutdown_timeout_ms", deserialize_with = "millis")]
    pub shutdown_timeout: Duration,
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
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(65),
            request_timeout: Duration::from_secs(30),
            max_connections: 4_096,
            shutdown_timeout: Duration::from_secs(20),
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
        const DAY: Duration = Duration::from_secs(24 * 3600);
        for (name, value) in [
            ("header_read_timeout_ms", self.header_read_timeout),
            ("idle_timeout_ms", self.idle_timeout),
            ("request_timeout_ms", self.request_timeout),
            ("shutdown_timeout_ms", self.shutdown_timeout),
        ] {
            if value.is_zero() || value > DAY {
                bail!(
                    "server.{name} must be between 1 and {}, not {}",
                    DAY.as_millis(),
                    value.as_millis()
                );
            }
        }
        const MAX_CONNECTIONS: usize = 1_000_000;
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            bail!(
                "server.max_connections must be between 1 and {MAX_CONNECTIONS}, not {}",
                self.max_connections
            );
        }
        Ok(ServerLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            shutdown_timeout: self.shutdown_timeout,
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
    /// Longest wait for a pooled connection.
    #[serde(
        rename = "acquire_timeout_ms",
        deserialize_with = "millis",
        default = "default_acquire_timeout"
    )]
    pub acquire_timeout: Duration,
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
    #[serde(
        rename = "statement_timeout_ms",
        deserialize_with = "millis",
        default = "default_statement_timeout"
    )]
    pub statement_timeout: Duration,
    /// PostgreSQL `lock_timeout` of the service's sessions: the longest wait for a row or
    /// table lock (a table locked by a migration or an operator) before the same 503.
    #[serde(
        rename = "lock_timeout_ms",
        deserialize_with = "millis",
        default = "default_lock_timeout"
    )]
    pub lock_timeout: Duration,
    /// A Secrets Manager secret (ARN or name) with the service's database `username` and
    /// `password` (the RDS JSON form). They replace the URL's, and the secret is re-read
    /// every `password_refresh_seconds`, so a rotation needs no restart. Unset: the URL's.
    #[serde(default)]
    pub password_secret_arn: Option<String>,
    #[serde(
        rename = "password_refresh_seconds",
        deserialize_with = "seconds",
        default = "default_password_refresh_interval"
    )]
    pub password_refresh_interval: Duration,
}

fn default_password_refresh_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_statement_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_read_connections() -> u32 {
    1
}

fn default_lock_pool_connections() -> u32 {
    16
}

fn default_max_connections() -> u32 {
    16
}
fn default_acquire_timeout() -> Duration {
    Duration::from_secs(3)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmsConfig {
    /// Key id, ARN or alias of the KMS key that wraps data keys. Required.
    pub key_id: Option<String>,
    /// Overrides the endpoint of the standard AWS chain (`AWS_ENDPOINT_URL`).
    pub endpoint_url: Option<String>,
    /// How long an unwrapped data key stays cached.
    #[serde(rename = "cache_ttl_seconds", deserialize_with = "seconds")]
    pub cache_ttl: Duration,
    /// Most unwrapped data keys cached at once.
    pub cache_max_entries: u64,
    /// Time limit of one KMS call, retries included.
    #[serde(rename = "timeout_ms", deserialize_with = "millis")]
    pub timeout: Duration,
    /// How long `/readyz` reuses KMS's last answer (`DescribeKey`); 0 asks every time.
    #[serde(rename = "readiness_cache_ms", deserialize_with = "millis")]
    pub readiness_cache_ttl: Duration,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            key_id: None,
            endpoint_url: None,
            cache_ttl: Duration::from_secs(300),
            cache_max_entries: 100_000,
            timeout: Duration::from_secs(3),
            readiness_cache_ttl: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    /// Refresh a token that expires within this before handing it out.
    #[serde(rename = "buffer_seconds", deserialize_with = "seconds")]
    pub buffer: Duration,
    /// Longest wait for a pair's refresh lock.
    #[serde(rename = "lock_timeout_ms", deserialize_with = "millis")]
    pub lock_timeout: Duration,
    /// Time limit of one provider call; must be shorter than `lock_timeout`.
    #[serde(rename = "provider_timeout_ms", deserialize_with = "millis")]
    pub provider_timeout: Duration,
    /// Re-seal refreshed tokens under the row's data key while it is younger than this.
    #[serde(rename = "data_key_max_age_seconds", deserialize_with = "seconds")]
    pub data_key_max_age: Duration,
    /// Cool-down after a transient provider failure, doubling per failure up to the max.
    #[serde(rename = "cooldown_base_seconds", deserialize_with = "seconds")]
    pub cooldown_base: Duration,
    #[serde(rename = "cooldown_max_seconds", deserialize_with = "seconds")]
    pub cooldown_max: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            buffer: Duration::from_secs(300),
            lock_timeout: Duration::from_secs(15),
            provider_timeout: Duration::from_secs(10),
            data_key_max_age: Duration::from_secs(24 * 3600),
            cooldown_base: Duration::from_secs(5),
            cooldown_max: Duration::from_secs(300),
        }
    }
}

/// What the refresher needs of `[refresh]`, checked ([`RefreshConfig::settings`]).
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// A token expiring within this is refreshed before it is handed out.
    pub buffer: Duration,
    /// Longest wait for the grant's advisory lock.
    pub lock_timeout: Duration,
    /// First cool-down after a transient failure; doubles per failure up to `cooldown_max`.
    pub cooldown_base: Duration,
    pub cooldown_max: Duration,
}

impl RefreshConfig {
    /// The refresher's settings, or the reason the service must not start: a provider
    /// call must end before the lock wait does.
    pub fn settings(&self) -> anyhow::Result<RefreshSettings> {
        if self.provider_timeout >= self.lock_timeout {
            bail!(
                "refresh.provider_timeout_ms ({}) must be shorter than refresh.lock_timeout_ms ({})",
                self.provider_timeout.as_millis(),
                self.lock_timeout.as_millis()
            );
        }
        Ok(RefreshSettings {
            buffer: self.buffer,
            lock_timeout: self.lock_timeout,
            cooldown_base: self.cooldown_base,
            cooldown_max: self.cooldown_max,
        })
    }
}

/// `TOKEN_STORE_<SECTION>__<KEY>` variables of the known sections (and `TOKEN_STORE_CLIENTS`,
/// a TOML array). Other `TOKEN_STORE_*` names (`TOKEN_STORE_CONFIG`, a script's own) are
/// not configuration and are left alone.
fn environment() -> Env {
    const SECTIONS: [&str; 9] = [
        "server",
        "database",
        "kms",
        "refresh",
        "providers",
        "clients",
        "keeper",
        "webhooks",
        "row_cache",
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
fn scalar_secret<'de, D>(deserializer: D) -> Result<SecretString, D::Error>
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

/// One provider's configuration (`[providers.NAME]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// `google` (Google's defaults) or `oauth2` (endpoints required).
    #[serde(default)]
    pub kind: Option<ProviderKind>,
    pub client_id: String,
    #[serde(deserialize_with = "scalar_secret")]
    pub client_secret: SecretString,
    pub token_endpoint: Option<String>,
    pub revoke_endpoint: Option<String>,
    pub client_auth: Option<ClientAuth>,
    /// The provider issues a new refresh token on every refresh (Microsoft does).
    #[serde(default)]
    pub rotates_refresh_tokens: bool,
    /// The keeper refreshes a grant whose refresh token has not been used for this long,
    /// so that idle expiry never hits (Google drops refresh tokens unused for six months,
    /// Microsoft after 90 days). Default: 7 days.
    #[serde(
        rename = "keep_alive_after_seconds",
        deserialize_with = "seconds",
        default = "default_keep_alive_after"
    )]
    pub keep_alive_after: Duration,
    /// When a new consent replaces a grant with another refresh token, revoke the old one
    /// at the provider (after the commit, best effort), so repeated consents do not pile
    /// up live refresh tokens (Google keeps at most 100 per user and client).
    #[serde(default = "yes")]
    pub revoke_superseded: bool,
}

fn default_keep_alive_after() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn yes() -> bool {
    true
}

/// `[row_cache]`: each replica's cache of sealed rows, kept true across replicas by
/// PostgreSQL `LISTEN`/`NOTIFY`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RowCacheConfig {
    /// `false`: every read asks the database.
    pub enabled: bool,
    /// Most rows cached at once.
    pub max_entries: u64,
    /// How long a row stays cached, however quiet its grant.
    #[serde(rename = "ttl_seconds", deserialize_with = "seconds")]
    pub ttl: Duration,
    /// The most a read served from the cache can lag a write committed on another replica:
    /// a replica that has not heard its own heartbeat for this long stops serving from the
    /// cache until it listens again.
    #[serde(rename = "max_staleness_ms", deserialize_with = "millis")]
    pub max_staleness: Duration,
}

impl RowCacheConfig {
    /// The reason the service must not start, if any.
    pub fn check(&self) -> anyhow::Result<()> {
        let bounds = Duration::from_millis(100)..=Duration::from_secs(60);
        if !bounds.contains(&self.max_staleness) {
            bail!("row_cache.max_staleness_ms must be between 100 and 60000");
        }
        if self.max_entries == 0 {
            bail!(
                "row_cache.max_entries must be at least 1 (enabled = false switches the cache off)"
            );
        }
        Ok(())
    }
}

impl Default for RowCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 100_000,
            ttl: Duration::from_secs(300),
            max_staleness: Duration::from_secs(1),
        }
    }
}

/// `[keeper]`: the background refresh ahead of expiry, in every replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeeperConfig {
    pub enabled: bool,
    /// Refresh grants whose access token expires within this.
    #[serde(rename = "refresh_ahead_seconds", deserialize_with = "seconds")]
    pub refresh_ahead: Duration,
    /// Each grant's refresh is brought forward by a random part of this, so that grants
    /// stored together are not refreshed together.
    #[serde(rename = "jitter_seconds", deserialize_with = "seconds")]
    pub jitter: Duration,
    /// How often the keeper looks for due grants.
    #[serde(rename = "interval_ms", deserialize_with = "millis")]
    pub interval: Duration,
    /// Due grants claimed at once.
    pub batch_size: u32,
    /// Refreshes at once per provider, in this replica. All providers together never take
    /// more than half of `[database] lock_pool_connections`: the rest stay for callers.
    pub concurrency_per_provider: u32,
    /// Refreshes per second per provider, in this replica.
    pub rate_per_provider: u32,
    /// How long a claim keeps other replicas off a grant (longer than one refresh).
    #[serde(rename = "claim_ms", deserialize_with = "millis")]
    pub claim: Duration,
    /// How often the keeper counts grants by state for `token_store_grants` (a scan of
    /// the table).
    #[serde(rename = "count_interval_seconds", deserialize_with = "seconds")]
    pub count_interval: Duration,
}

impl Default for KeeperConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            refresh_ahead: Duration::from_secs(600),
            jitter: Duration::from_secs(120),
            interval: Duration::from_secs(5),
            batch_size: 100,
            concurrency_per_provider: 8,
            rate_per_provider: 50,
            claim: Duration::from_secs(60),
            count_interval: Duration::from_secs(30),
        }
    }
}

/// `[webhooks]`: where grant events are sent, signed per Standard Webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    pub endpoints: HashMap<String, WebhookEndpoint>,
    /// Attempts before a delivery is marked failed (it stays listable).
    pub max_attempts: u32,
    /// First wait after a failed attempt; doubles per attempt (with jitter) up to the max.
    #[serde(rename = "backoff_base_ms", deserialize_with = "millis")]
    pub backoff_base: Duration,
    #[serde(rename = "backoff_max_ms", deserialize_with = "millis")]
    pub backoff_max: Duration,
    /// Time limit of one delivery.
    #[serde(rename = "timeout_ms", deserialize_with = "millis")]
    pub timeout: Duration,
    /// How often the worker looks for due deliveries.
    #[serde(rename = "interval_ms", deserialize_with = "millis")]
    pub interval: Duration,
    /// How long a claim keeps other replicas off a delivery (longer than `timeout`).
    #[serde(rename = "claim_ms", deserialize_with = "millis")]
    pub claim: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            endpoints: HashMap::new(),
            max_attempts: 12,
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            claim: Duration::from_secs(30),
        }
    }
}

impl WebhooksConfig {
    /// The endpoints' names, sorted: what each event gets a delivery to.
    pub fn endpoint_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.endpoints.keys().cloned().collect();
        names.sort();
        names
    }

    /// The reason the service must not start, if any.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.claim <= self.timeout {
            bail!("webhooks.claim_ms must be longer than webhooks.timeout_ms");
        }
        if self.max_attempts == 0 {
            bail!("webhooks.max_attempts must be at least 1");
        }
        for (name, endpoint) in &self.endpoints {
            let url = reqwest::Url::parse(&endpoint.url)
                .map_err(|e| anyhow::anyhow!("webhook endpoint {name}: bad url: {e}"))?;
            if !matches!(url.scheme(), "https" | "http") {
                bail!("webhook endpoint {name}: the url must be https (or http)");
            }
            standardwebhooks::Webhook::new(endpoint.secret.expose_secret()).map_err(|_| {
                anyhow::anyhow!("webhook endpoint {name}: the secret must be whsec_ and base64")
            })?;
        }
        Ok(())
    }
}

/// One webhook endpoint (`[webhooks.endpoints.NAME]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    pub url: String,
    /// The signing secret, `whsec_` and base64 (Standard Webhooks).
    #[serde(deserialize_with = "scalar_secret")]
    pub secret: SecretString,
}

impl fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("url", &self.url)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("token_endpoint", &self.token_endpoint)
            .field("revoke_endpoint", &self.revoke_endpoint)
            .field("client_auth", &self.client_auth)
            .field("rotates_refresh_tokens", &self.rotates_refresh_tokens)
            .field("keep_alive_after", &self.keep_alive_after)
            .field("revoke_superseded", &self.revoke_superseded)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Google,
    Oauth2,
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (Google's default).
    ClientSecretPost,
    /// HTTP Basic with the form-encoded id and secret.
    ClientSecretBasic,
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
            jail.set_env("TOKEN_STORE_ROW_CACHE__ENABLED", "false");
            jail.set_env("TOKEN_STORE_ROW_CACHE__MAX_STALENESS_MS", "500");
            jail.set_env("TOKEN_STORE_CONFIG", "token-store.toml");
            jail.set_env("TOKEN_STORE_CACHE_DIR", "/tmp/elsewhere");
            let config = Config::load(Path::new("token-store.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.kms_key_id().unwrap(), "alias/from-env");
            assert_eq!(
                config.database.url.expose_secret(),
                "postgres://from-file/db"
            );
            assert_eq!(config.refresh.buffer, Duration::from_secs(60));
            assert!(!config.row_cache.enabled);
            assert_eq!(config.row_cache.max_staleness, Duration::from_millis(500));
            let google = &config.providers["google"];
            assert_eq!(google.client_secret.expose_secret(), "123456");
            Ok(())
        });
    }

    #[test]
    fn row_cache_bounds_are_checked() {
        let config = RowCacheConfig::default();
        assert!(config.check().is_ok());
        for wrong in [
            RowCacheConfig {
                max_staleness: Duration::from_millis(99),
                ..config.clone()
            },
            RowCacheConfig {
                max_staleness: Duration::from_secs(61),
                ..config.clone()
            },
            RowCacheConfig {
                max_entries: 0,
                ..config.clone()
            },
        ] {
            assert!(wrong.check().is_err(), "{wrong:?}");
        }
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
                header_read_timeout: Duration::ZERO,
                ..ServerConfig::default()
            },
            ServerConfig {
                max_connections: 0,
                ..ServerConfig::default()
            },
            ServerConfig {
                max_connections: 1_000_001,
                ..ServerConfig::default()
            },
            ServerConfig {
                shutdown_timeout: Duration::ZERO,
                ..ServerConfig::default()
            },
            ServerConfig {
                idle_timeout: Duration::from_millis(u64::MAX),
                ..ServerConfig::default()
            },
        ] {
            assert!(zero.limits().is_err());
        }
        let a_day = ServerConfig {
            request_timeout: Duration::from_secs(24 * 3600),
            max_connections: 1_000_000,
            ..ServerConfig::default()
        };
        assert!(a_day.limits().is_ok());
    }

    #[test]
    fn the_provider_timeout_must_be_shorter_than_the_lock_timeout() {
        let config = RefreshConfig {
            provider_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(5),
            ..RefreshConfig::default()
        };
        let err = config.settings().unwrap_err().to_string();
        assert!(err.contains("refresh.provider_timeout_ms (5000)"), "{err}");
        assert!(RefreshConfig::default().settings().is_ok());
    }

    /// Every duration key, with the unit its name says, from the file and from the
    /// environment (`TOKEN_STORE_<SECTION>__<KEY>`).
    #[test]
    fn durations_are_read_in_the_unit_their_key_names() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "token-store.toml",
                r#"
                [server]
                header_read_timeout_ms = 1001
                idle_timeout_ms = 1002
                request_timeout_ms = 1003
                shutdown_timeout_ms = 1004

                [database]
                url = "postgres://x/y"
                acquire_timeout_ms = 1005
                statement_timeout_ms = 1006
                lock_timeout_ms = 1007
                password_refresh_seconds = 8

                [kms]
                cache_ttl_seconds = 9
                timeout_ms = 1010
                readiness_cache_ms = 0

                [refresh]
                buffer_seconds = 12
                lock_timeout_ms = 1013
                provider_timeout_ms = 1000
                data_key_max_age_seconds = 15
                cooldown_base_seconds = 16
                cooldown_max_seconds = 17
                "#,
            )?;
            jail.set_env("TOKEN_STORE_SERVER__REQUEST_TIMEOUT_MS", "2003");
            jail.set_env("TOKEN_STORE_KMS__CACHE_TTL_SECONDS", "19");
            let config = Config::load(Path::new("token-store.toml")).map_err(|e| e.to_string())?;
            let ms = Duration::from_millis;
            let s = Duration::from_secs;
            let server = &config.server;
            assert_eq!(server.header_read_timeout, ms(1001));
            assert_eq!(server.idle_timeout, ms(1002));
            assert_eq!(server.request_timeout, ms(2003));
            assert_eq!(server.shutdown_timeout, ms(1004));
            let database = &config.database;
            assert_eq!(database.acquire_timeout, ms(1005));
            assert_eq!(database.statement_timeout, ms(1006));
            assert_eq!(database.lock_timeout, ms(1007));
            assert_eq!(database.password_refresh_interval, s(8));
            let kms = &config.kms;
            assert_eq!(kms.cache_ttl, s(19));
            assert_eq!(kms.timeout, ms(1010));
            assert_eq!(kms.readiness_cache_ttl, Duration::ZERO);
            let refresh = &config.refresh;
            assert_eq!(refresh.buffer, s(12));
            assert_eq!(refresh.lock_timeout, ms(1013));
            assert_eq!(refresh.provider_timeout, ms(1000));
            assert_eq!(refresh.data_key_max_age, s(15));
            assert_eq!(refresh.cooldown_base, s(16));
            assert_eq!(refresh.cooldown_max, s(17));
            Ok(())
        });
    }

    #[test]
    fn a_duration_key_without_its_unit_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "token-store.toml",
                "[database]\nurl = \"postgres://x/y\"\n[server]\nrequest_timeout = 5\n",
            )?;
            let err = Config::load(Path::new("token-store.toml")).unwrap_err();
            assert!(format!("{err:#}").contains("request_timeout"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn provider_settings_debug_redacts_the_client_secret() {
        let s = ProviderSettings {
            kind: None,
            client_id: "id".into(),
            client_secret: SecretString::from("very-secret-value"),
            token_endpoint: None,
            revoke_endpoint: None,
            client_auth: None,
            rotates_refresh_tokens: false,
            keep_alive_after: Duration::from_secs(3600),
            revoke_superseded: true,
        };
        let debug = format!("{s:?}");
        assert!(!debug.contains("very-secret-value"), "{debug}");
        assert!(debug.contains("client_secret: \"[REDACTED]\""), "{debug}");
    }

    #[test]
    fn webhook_endpoint_debug_redacts_the_secret_and_bad_secrets_are_refused() {
        let endpoint = WebhookEndpoint {
            url: "https://hooks.example.com/token-store".into(),
            secret: SecretString::from("whsec_c2VjcmV0LXNpZ25pbmcta2V5"),
        };
        let debug = format!("{endpoint:?}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
        assert!(debug.contains("[REDACTED]"), "{debug}");

        let mut webhooks = WebhooksConfig::default();
        webhooks.endpoints.insert("ok".into(), endpoint.clone());
        assert!(webhooks.check().is_ok());
        webhooks.endpoints.insert(
            "bad".into(),
            WebhookEndpoint {
                secret: SecretString::from("whsec_not base64!"),
                ..endpoint
            },
        );
        let err = webhooks.check().unwrap_err().to_string();
        assert!(err.contains("bad"), "{err}");
        assert!(!err.contains("not base64"), "{err}");
    }
}
