//! Builds the application from its configuration and runs it until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::{Config, DatabaseConfig, KmsConfig};
use crate::crypto::{CacheSettings, Envelope};
use crate::http::{self, AppState, Services};
use crate::lookups::Lookups;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::refresh::Refresher;
use crate::store;
use crate::vault::Vault;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    local_addr: SocketAddr,
    state: AppState,
}

impl Application {
    /// Connects to the database and KMS and binds the listener (port 0 picks a free one).
    /// Refuses to build without a KMS key.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let key_id = config.kms_key_id()?.to_owned();
        let refresh_settings = config.refresh.settings()?;
        let clients = config.clients()?;
        if clients.is_empty() {
            tracing::warn!("no clients configured: every API call will answer 401");
        }
        let metrics = Metrics::new();
        let providers = Providers::from_settings(
            &config.providers,
            config.refresh.provider_timeout(),
            &metrics,
        )?;
        let db = connect(&config.database).await?;
        let lock_pool = PgPoolOptions::new()
            .max_connections(config.database.lock_pool_connections)
            .acquire_timeout(refresh_settings.lock_timeout)
            .connect_lazy(config.database.url.expose_secret())
            .context("configuring the lock pool")?;
        if config.database.migrate_on_start {
            store::migrate(&db).await.context("running migrations")?;
        }
        let envelope = Envelope::new(
            kms_client(&config.kms).await,
            key_id,
            CacheSettings {
                ttl: config.kms.cache_ttl(),
                max_entries: config.kms.cache_max_entries,
            },
            metrics.clone(),
        );
        let lookups = Lookups::start(
            &db,
            config.database.read_connections as usize,
            Duration::from_millis(config.database.acquire_timeout_ms),
            &metrics,
        );
        let vault = Vault::new(db, lookups, envelope);
        let refresher = Refresher::new(
            vault.clone(),
            lock_pool.clone(),
            providers.clone(),
            refresh_settings,
            metrics.clone(),
        );
        let state = AppState::new(Services {
            vault,
            refresher,
            providers,
            auth: Authenticator::new(clients),
            metrics,
        });
        let router = http::app(state.clone(), config.server.body_limit_bytes);
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            router,
            local_addr,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr, "listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")?;
        self.state.vault.db().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The request pool. Connections are made lazily, so a service can start while the
/// database is briefly away; `/readyz` tells when it is not.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .connect(config.url.expose_secret())
        .await
        .context("connecting to PostgreSQL")
}

/// A KMS client from the standard AWS chain (credentials, region, `AWS_ENDPOINT_URL`),
/// with short timeouts so that an unreachable KMS answers 503 quickly rather than hanging.
pub async fn kms_client(config: &KmsConfig) -> aws_sdk_kms::Client {
    let total = Duration::from_millis(config.timeout_ms);
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500).min(total))
                .operation_attempt_timeout(total / 2)
                .operation_timeout(total)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .load()
        .await;
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
