//! Builds the application from its configuration and runs it until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use futures::FutureExt;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::{Config, DatabaseConfig, KmsConfig, ServerLimits};
use crate::credentials::{CredentialSource, DbCredentials};
use crate::crypto::{CacheSettings, Envelope};
use crate::http::{self, AppState, Services};
use crate::keeper::Keeper;
use crate::lookups::Lookups;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::refresh::Refresher;
use crate::rowcache::RowCache;
use crate::store;
use crate::vault::{Lifecycle, Schedule, Storage, Vault};
use crate::webhooks::Deliverer;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    local_addr: SocketAddr,
    state: AppState,
    limits: ServerLimits,
    metrics_listener: Option<TcpListener>,
    keeper: Option<Keeper>,
    deliverer: Option<Deliverer>,
}

impl Application {
    /// Connects to the database and KMS and binds the listener (port 0 picks a free one).
    /// Refuses to build without a KMS key.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let key_id = config.kms_key_id()?.to_owned();
        let refresh_settings = config.refresh.settings()?;
        let limits = config.server.limits()?;
        let clients = config.clients()?;
        if clients.is_empty() {
            tracing::warn!("no clients configured: every API call will answer 401");
        }
        let metrics = Metrics::new();
        let providers =
            Providers::from_settings(&config.providers, config.refresh.provider_timeout, &metrics)?;
        if config.database.migrate_on_start {
            let migrations = connect_for_migrations(&config.database).await?;
            store::migrate(&migrations)
                .await
                .context("running migrations")?;
            migrations.close().await;
        }
        let credentials = match &config.database.password_secret_arn {
            Some(secret) => {
                let source = CredentialSource::new(
                    aws_sdk_secretsmanager::Client::new(&aws_sdk_config(&config.kms).await),
                    secret.clone(),
                );
                let current = source.fetch().await?;
                Some((source, current))
            }
            None => None,
        };
        let current = credentials.as_ref().map(|(_, current)| current);
        let db = connect(&config.database, current).await?;
        let lock_pool =
            connect_lock_pool(&config.database, refresh_settings.lock_timeout, current, 1)?;
        if let Some((source, current)) = credentials {
            tokio::spawn(
                source.keep_fresh(
                    current,
                    vec![db.clone(), lock_pool.clone()],
                    config
                        .database
                        .password_refresh_interval
                        .max(Duration::from_secs(1)),
                ),
            );
        }
        let envelope = envelope(&config.kms, key_id, metrics.clone()).await;
        let lookups = Lookups::start(
            &db,
            config.database.read_connections as usize,
            config.database.acquire_timeout,
            &metrics,
        );
        let rows = if config.row_cache.enabled {
            config.row_cache.check()?;
            Some(RowCache::start(
                &db,
                &config.row_cache,
                refresh_settings.buffer,
                &metrics,
            ))
        } else {
            None
        };
        let storage = Storage {
            db,
            locks: lock_pool,
            lookups,
            rows,
        };
        let vault = Vault::new(
            storage,
            envelope,
            config.refresh.data_key_max_age,
            lifecycle(&config),
        );
        let refresher = Refresher::new(
            vault.clone(),
            providers.clone(),
            refresh_settings,
            metrics.clone(),
        );
        let keeper = config.keeper.enabled.then(|| {
            let mut names: Vec<String> = config.providers.keys().cloned().collect();
            names.sort();
            Keeper::new(
                vault.clone(),
                refresher.clone(),
                metrics.clone(),
                config.keeper.clone(),
                names,
                config.database.lock_pool_connections,
            )
        });
        let deliverer = Deliverer::new(vault.clone(), metrics.clone(), config.webhooks.clone())?;
        let state = AppState::new(Services {
            vault,
            refresher,
            providers,
            auth: Authenticator::new(clients),
            metrics,
            failed_auth: Default::default(),
        });
        let metrics_listener = match config.server.metrics_listen {
            Some(address) => {
                Some(http::bind(address).with_context(|| format!("binding {address} (metrics)"))?)
            }
            None => None,
        };
        let router = http::app(
            state.clone(),
            config.server.body_limit_bytes,
            limits.request_timeout,
            metrics_listener.is_none(),
        );
        let listener = http::bind(config.server.listen)
            .with_context(|| format!("binding {}", config.server.listen))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            router,
            local_addr,
            state,
            limits,
            metrics_listener,
            keeper,
            deliverer,
        })
    }

    /// Where `/metrics` is served when `[server] metrics_listen` sets its own address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests (for at most
    /// `[server] shutdown_timeout_ms`; see `http::serve`).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr, "listening");
        let shutdown = shutdown.boxed().shared();
        let connections = self.state.metrics.http_connections.clone();
        let keeper = self
            .keeper
            .map(|keeper| tokio::spawn(keeper.run(shutdown.clone())));
        let deliverer = self
            .deliverer
            .map(|deliverer| tokio::spawn(deliverer.run(shutdown.clone())));
        let metrics = self.metrics_listener.map(|listener| {
            tracing::info!(address = ?listener.local_addr().ok(), "serving metrics");
            tokio::spawn(http::serve(
                listener,
                http::metrics_app(self.state.clone()),
                self.limits,
                connections.clone(),
                shutdown.clone(),
            ))
        });
        http::serve(
            self.listener,
            self.router,
            self.limits,
            connections,
            shutdown,
        )
        .await;
        for task in [metrics, keeper, deliverer].into_iter().flatten() {
            let _ = task.await;
        }
        self.state.vault.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// `application_name` of the request pool's sessions (`pg_stat_activity`).
const APPLICATION_NAME: &str = "token-store";
/// `application_name` of the lock pool's sessions.
pub const LOCK_APPLICATION_NAME: &str = "token-store-locks";

/// The request pool. It connects at once, so that a wrong URL or password stops the
/// service at start rather than at its first request. Its sessions (and the read path's,
/// which copy its options) carry `statement_timeout` and `lock_timeout`: a stuck database
/// gives errors (503 `database_unavailable`), not hung requests.
async fn connect(
    config: &DatabaseConfig,
    credentials: Option<&DbCredentials>,
) -> anyhow::Result<PgPool> {
    let options = limited(
        session_options(config, credentials)?,
        config.statement_timeout,
        config,
    )?
    .application_name(APPLICATION_NAME);
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")
}

/// The pool that holds refresh locks. Lazy: it connects at the first refresh. A statement
/// there may wait for the pair's advisory lock for up to `lock_wait` (bounded by the lock
/// itself), so its `statement_timeout` is that plus the usual one.
/// The lock pool, lazy: it connects in the background, keeping `warm` connections open
/// so that the first refresh after a quiet spell (a refresh storm, say) does not also pay
/// for connecting (a TLS handshake and authentication).
fn connect_lock_pool(
    config: &DatabaseConfig,
    lock_wait: Duration,
    credentials: Option<&DbCredentials>,
    warm: u32,
) -> anyhow::Result<PgPool> {
    let statement_timeout = lock_wait + config.statement_timeout;
    let options = limited(
        session_options(config, credentials)?,
        statement_timeout,
        config,
    )?
    .application_name(LOCK_APPLICATION_NAME);
    Ok(PgPoolOptions::new()
        .max_connections(config.lock_pool_connections)
        .min_connections(warm.min(config.lock_pool_connections))
        .acquire_timeout(lock_wait)
        .connect_lazy_with(options))
}

/// The vault for a one-off job such as `token-store rewrap`: the request pool, a lazy lock
/// pool and lookups (neither connects unless used), and an envelope whose key is `key_id`.
pub async fn job_vault(config: &Config, key_id: String) -> anyhow::Result<Vault> {
    let metrics = Metrics::new();
    let db = connect(&config.database, None).await?;
    let storage = Storage {
        locks: connect_lock_pool(&config.database, config.refresh.lock_timeout, None, 0)?,
        lookups: Lookups::start(&db, 1, config.database.acquire_timeout, &metrics),
        // A job reads each row once: a cache would only hold memory.
        rows: None,
        db,
    };
    let envelope = envelope(&config.kms, key_id, metrics).await;
    Ok(Vault::new(
        storage,
        envelope,
        config.refresh.data_key_max_age,
        lifecycle(config),
    ))
}

/// What every write of a grant also records: the keeper's schedule (if a keeper runs) and
/// the webhook endpoints that get its events.
fn lifecycle(config: &Config) -> Lifecycle {
    let schedule = config.keeper.enabled.then(|| Schedule {
        refresh_ahead: config.keeper.refresh_ahead,
        jitter: config.keeper.jitter,
        keep_alive_after: config
            .providers
            .iter()
            .map(|(name, provider)| (name.clone(), provider.keep_alive_after))
            .collect(),
    });
    Lifecycle {
        schedule,
        endpoints: config.webhooks.endpoint_names().into(),
    }
}

/// The envelope over `[kms]`, sealing new rows under `key_id`.
async fn envelope(config: &KmsConfig, key_id: String, metrics: Metrics) -> Envelope {
    Envelope::new(
        kms_client(config).await,
        key_id,
        CacheSettings {
            ttl: config.cache_ttl,
            max_entries: config.cache_max_entries,
        },
        metrics,
    )
    .with_readiness_ttl(config.readiness_cache_ttl)
}

/// One connection without time limits, for migrations: they may wait for another
/// replica's migration lock, and a migration may take longer than any request should.
pub async fn connect_for_migrations(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(session_options(config, None)?.application_name("token-store-migrate"))
        .await
        .context("connecting to PostgreSQL")
}

/// The URL's options, with `credentials` (from the secret) instead of its user and
/// password if given.
fn session_options(
    config: &DatabaseConfig,
    credentials: Option<&DbCredentials>,
) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(config.url.expose_secret())
        .context("database.url is not a valid PostgreSQL URL")?;
    Ok(match credentials {
        Some(c) => options
            .username(&c.username)
            .password(c.password.expose_secret()),
        None => options,
    })
}

fn limited(
    options: PgConnectOptions,
    statement_timeout: Duration,
    config: &DatabaseConfig,
) -> anyhow::Result<PgConnectOptions> {
    // 0 would switch the limits off in PostgreSQL.
    if config.statement_timeout.is_zero() || config.lock_timeout.is_zero() {
        bail!("database.statement_timeout_ms and database.lock_timeout_ms must be above 0");
    }
    Ok(options.options([
        ("statement_timeout", statement_timeout.as_millis()),
        ("lock_timeout", config.lock_timeout.as_millis()),
    ]))
}

/// The standard AWS chain (credentials, region, `AWS_ENDPOINT_URL`) with short timeouts,
/// so that an unreachable AWS service answers 503 quickly rather than hanging.
async fn aws_sdk_config(config: &KmsConfig) -> aws_config::SdkConfig {
    let total = config.timeout;
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500).min(total))
                .operation_attempt_timeout(total / 2)
                .operation_timeout(total)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .load()
        .await
}

/// A KMS client from the standard AWS chain, `[kms] endpoint_url` overriding its endpoint.
async fn kms_client(config: &KmsConfig) -> aws_sdk_kms::Client {
    let sdk = aws_sdk_config(config).await;
    let mut builder = aws_sdk_kms::config::Builder::from(&sdk);
    if let Some(url) = &config.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    aws_sdk_kms::Client::from_conf(builder.build())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
