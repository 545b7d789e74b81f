//! The service under test: the real `token-store serve` binary in its own process, with a
//! configuration written for it, on a free loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use token_store::crypto::{KmsOperation, KmsOutcome};

use crate::load;
use crate::sys;

/// The API key the benchmark calls with; the service knows only its SHA-256.
pub const API_KEY: &str = "bench-key-all-permissions";

/// What differs between the instances of one run.
#[derive(Clone)]
pub struct ServiceConfig {
    pub database_url: String,
    pub kms_key_id: String,
    pub kms_endpoint: String,
    /// The fake provider's `[providers.google]` table ([`FakeProvider::toml`]).
    ///
    /// [`FakeProvider::toml`]: test_support::FakeProvider::toml
    pub provider: String,
    pub cache_max_entries: u64,
    pub cache_ttl_seconds: u64,
    /// `database.max_connections`; `None` keeps the service's default.
    pub pool_size: Option<u32>,
    /// Tokio worker threads of the service (`TOKIO_WORKER_THREADS`); `None`: one per CPU.
    pub worker_threads: Option<usize>,
    pub row_cache: RowCache,
}

/// `[row_cache]`: each replica's cache of sealed rows.
#[derive(Clone, Copy)]
pub struct RowCache {
    /// `false`: every read asks the database (what warm reads compare against).
    pub enabled: bool,
    pub max_entries: u64,
    pub ttl_seconds: u64,
}

/// `[row_cache] max_staleness_ms` of every instance: the service's default (a heartbeat
/// every quarter of it, about 4 `NOTIFY`s a second per replica with the row cache on).
const ROW_CACHE_MAX_STALENESS_MS: u64 = 1000;

impl ServiceConfig {
    fn toml(&self, listen: SocketAddr) -> String {
        let pool = self
            .pool_size
            .map(|n| format!("max_connections = {n}\n"))
            .unwrap_or_default();
        format!(
            r#"# Written by the benchmark (bench/).
[server]
listen = "{listen}"
log_format = "json"

[database]
url = "{database_url}"
migrate_on_start = true
{pool}
[kms]
key_id = "{key_id}"
endpoint_url = "{kms_endpoint}"
cache_max_entries = {cache_max_entries}
cache_ttl_seconds = {cache_ttl_seconds}

[row_cache]
enabled = {row_cache_enabled}
max_entries = {row_cache_max_entries}
ttl_seconds = {row_cache_ttl_seconds}
max_staleness_ms = {row_cache_max_staleness_ms}

{provider}
[[clients]]
name = "bench"
key_sha256 = "{key_hash}"
permissions = ["read", "write", "refresh", "revoke", "read_refresh_token"]
"#,
            database_url = self.database_url,
            key_id = self.kms_key_id,
            kms_endpoint = self.kms_endpoint,
            cache_max_entries = self.cache_max_entries,
            cache_ttl_seconds = self.cache_ttl_seconds,
            row_cache_enabled = self.row_cache.enabled,
            row_cache_max_entries = self.row_cache.max_entries,
            row_cache_ttl_seconds = self.row_cache.ttl_seconds,
            row_cache_max_staleness_ms = ROW_CACHE_MAX_STALENESS_MS,
            provider = self.provider,
            key_hash = token_store::auth::key_hash_hex(API_KEY),
        )
    }
}

/// Starts instances of one binary, their files in one directory.
pub struct Launcher {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub keep_logs: bool,
}

impl Launcher {
    pub async fn start(&self, name: &str, config: &ServiceConfig) -> anyhow::Result<Service> {
        Service::start(&self.binary, &self.dir, name, config, self.keep_logs).await
    }
}

/// A running `token-store serve`. Killed when dropped.
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    pid: u32,
    http: reqwest::Client,
}

impl Service {
    /// Writes `dir/<name>.toml`, starts the binary and waits until `/readyz` answers 200.
    /// The service's log (JSON, info level unless `RUST_LOG` says otherwise) goes to
    /// `dir/<name>.log` when `keep_logs`, else nowhere; its standard error always to
    /// `dir/<name>.stderr`.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        name: &str,
        config: &ServiceConfig,
        keep_logs: bool,
    ) -> anyhow::Result<Self> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config.toml(listen))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let stdout = if keep_logs {
            Stdio::from(std::fs::File::create(dir.join(format!("{name}.log")))?)
        } else {
            Stdio::null()
        };
        let stderr_path = dir.join(format!("{name}.stderr"));
        let mut command = Command::new(binary);
        if let Some(threads) = config.worker_threads {
            command.env("TOKIO_WORKER_THREADS", threads.to_string());
        }
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(&stderr_path)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the service exited at once")?;
        let mut service = Self {
            name: name.to_owned(),
            addr: listen,
            child,
            pid,
            http: reqwest::Client::new(),
        };
        service.wait_ready(&stderr_path).await?;
        Ok(service)
    }

    async fn wait_ready(&mut self, stderr_path: &Path) -> anyhow::Result<()> {
        let started = Instant::now();
        let url = format!("http://{}/readyz", self.addr);
        loop {
            if let Ok(response) = self.http.get(&url).send().await {
                if response.status() == 200 {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
                bail!("service {} exited ({status}): {stderr}", self.name);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("service {} not ready after 60 s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Metrics(text))
    }

    /// Waits (at most 10 s) until the row cache serves: until its first heartbeat comes back
    /// every read bypasses it and nothing is cached, so a pass run earlier would fill
    /// nothing. Reads `user` until one is a hit.
    pub async fn wait_for_row_cache(&self, user: u64) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut connection = load::Connection::open(self.addr, API_KEY).await?;
        loop {
            let hits = self.metrics().await?.row_cache("hit");
            connection.access_token(user).await?;
            if self.metrics().await?.row_cache("hit") > hits {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("the row cache of {} did not serve within 10 s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory (VmRSS), KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        sys::rss_kib(self.pid)
    }
}

/// A scrape of `/metrics`.
pub struct Metrics(String);

impl Metrics {
    /// The sum of the samples of `name` whose labels include `labels`; 0 if none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        token_store::metrics::sample_sum(&self.0, name, labels)
    }

    /// `None` if the service does not export `name` at all.
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.0
            .lines()
            .any(|l| l.starts_with(name))
            .then(|| self.value(name, &[]))
    }

    pub fn kms_decrypts(&self) -> f64 {
        self.value(
            "token_store_kms_requests_total",
            &[
                ("operation", KmsOperation::Decrypt.as_str()),
                ("outcome", KmsOutcome::Ok.as_str()),
            ],
        )
    }

    /// Every KMS call, whatever the operation or outcome.
    pub fn kms_calls(&self) -> f64 {
        self.value("token_store_kms_requests_total", &[])
    }

    pub fn cache_hits(&self) -> f64 {
        self.value("token_store_unwrap_cache_hits_total", &[])
    }

    pub fn cache_misses(&self) -> f64 {
        self.value("token_store_unwrap_cache_misses_total", &[])
    }

    /// Statements of the read path (`store::find` or `find_many`), however many lookups
    /// each answered.
    pub fn lookup_statements(&self) -> f64 {
        self.value("token_store_lookup_batch_size_count", &[])
    }

    /// Reads the row cache answered with `outcome`: `hit`, `miss` or `bypass` (the cache was
    /// not serving, its replica not having heard its own heartbeat in time, or the cached
    /// row needed the database, e.g. a token due for refresh).
    pub fn row_cache(&self, outcome: &str) -> f64 {
        self.value(
            "token_store_row_cache_requests_total",
            &[("outcome", outcome)],
        )
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `token-store` binary: `--service-bin`, else the one next to this executable.
pub fn binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("the bench executable has no directory")?
            .join("token-store"),
    };
    if !path.is_file() {
        bail!(
            "{} does not exist: build it (cargo build --release --bin token-store) or pass --service-bin",
            path.display()
        );
    }
    Ok(path)
}
