//! [`TestApp`]: the real `Application` on a free loopback port, on a database and a KMS key
//! of its own, and [`Api`]: its HTTP routes, one method each.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;
use token_store::auth::key_hash_hex;
use token_store::config::{
    ClientConfig, Config, DatabaseConfig, KeeperConfig, KmsConfig, RefreshConfig, RowCacheConfig,
    ServerConfig, WebhooksConfig,
};
use token_store::crypto::{KmsOperation, KmsOutcome};
use token_store::startup::Application;
use tokio::sync::oneshot;
use tracing_subscriber::util::SubscriberInitExt;

use crate::database::TestDatabase;
use crate::env::{kms_endpoint, set_aws_defaults};
use crate::kms::{kms_admin, TestKmsKey};
use crate::provider::FakeProvider;

/// API keys of the configured clients ([`app_config`]), by permissions.
/// Every permission: read, write, refresh, revoke, read_refresh_token.
pub const FULL_KEY: &str = "test-key-full-access";
/// Read, write, refresh and revoke, not read_refresh_token.
pub const RW_KEY: &str = "test-key-read-write";
/// Read only.
pub const READ_KEY: &str = "test-key-read-only";
/// Write only.
pub const WRITE_KEY: &str = "test-key-write-only";

/// The clients every test configuration has: `full`, `read-write`, `reader`, `writer`.
pub fn clients() -> Vec<ClientConfig> {
    let client = |name: &str, key: &str, perms: &str| ClientConfig {
        name: name.into(),
        key_sha256: key_hash_hex(key),
        permissions: serde_json::from_value(json!(perms.split(',').collect::<Vec<_>>())).unwrap(),
    };
    vec![
        client(
            "full",
            FULL_KEY,
            "read,write,refresh,revoke,read_refresh_token,inspect",
        ),
        client("read-write", RW_KEY, "read,write,refresh,revoke"),
        client("reader", READ_KEY, "read"),
        client("writer", WRITE_KEY, "write"),
    ]
}

/// The tests' configuration: loopback port 0, small pools, short timeouts, no provider, the
/// [`clients`].
pub fn app_config(database_url: &str, key_id: &str, kms_endpoint: &str) -> Config {
    Config {
        server: ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..ServerConfig::default()
        },
        database: DatabaseConfig {
            url: database_url.to_owned().into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            migrate_on_start: false,
            lock_pool_connections: 4,
            read_connections: 1,
            statement_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(2),
            password_secret_arn: None,
            password_refresh_interval: Duration::from_secs(60),
        },
        kms: KmsConfig {
            key_id: Some(key_id.to_owned()),
            endpoint_url: Some(kms_endpoint.to_owned()),
            timeout: Duration::from_secs(2),
            // Tests that change KMS read readiness right after; one test pins the cache.
            readiness_cache_ttl: Duration::ZERO,
            ..KmsConfig::default()
        },
        refresh: RefreshConfig {
            lock_timeout: Duration::from_secs(5),
            provider_timeout: Duration::from_secs(2),
            cooldown_base: Duration::from_secs(30),
            ..RefreshConfig::default()
        },
        providers: Default::default(),
        clients: clients(),
        // Off unless a test turns it on: most tests count provider calls exactly.
        keeper: KeeperConfig {
            enabled: false,
            ..KeeperConfig::default()
        },
        webhooks: WebhooksConfig::default(),
        row_cache: RowCacheConfig::default(),
    }
}

/// Everything the code under test has logged in this process (every line at debug level
/// and above, as production's JSON lines), for the secret-leak checks.
pub fn captured_logs() -> String {
    init_process();
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(Default::default)
}

#[derive(Clone)]
struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sets the test process up, once: the AWS settings that reach LocalStack, and the capture of
/// every log line ([`captured_logs`]). [`TestApp`] calls it; a test that builds an
/// `Application` itself calls it first, or its logs are not captured.
pub fn init_process() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        set_aws_defaults();
        // Every log line at debug level and above (more than production's info) is kept,
        // as JSON lines like production's.
        let writer = BufferWriter(log_buffer().clone());
        let _ = token_store::telemetry::json_lines(
            tracing_subscriber::EnvFilter::new("debug"),
            move || writer.clone(),
        )
        .try_init();
    });
}

/// The HTTP API of one service instance as one caller sees it: one method per route, each
/// returning the response as it came. The token routes send the caller's API key (if it has
/// one) as `Authorization: Bearer`; the health routes and `/openapi.json` send none.
///
/// It owns what it needs, so it can be moved into a spawned task.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    /// The API at `base` (`http://host:port`), called with `key`.
    pub fn new(http: reqwest::Client, base: &str, key: Option<&str>) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: key.map(str::to_owned),
        }
    }

    /// The same instance, called with another key.
    pub fn with_key(&self, key: &str) -> Self {
        Self {
            key: Some(key.to_owned()),
            ..self.clone()
        }
    }

    /// `http://host:port/v1/users/{user}/tokens/{provider}`.
    pub fn token_url(&self, user: &str, provider: &str) -> String {
        format!("{}/v1/users/{user}/tokens/{provider}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let request = match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        request
            .send()
            .await
            .expect("sending a request to the service")
    }

    /// `PUT /v1/users/{user}/tokens/{provider}`: store (or replace) a grant.
    pub async fn put_token(&self, user: &str, provider: &str, body: &Value) -> reqwest::Response {
        self.send(self.http.put(self.token_url(user, provider)).json(body))
            .await
    }

    /// `GET /v1/users/{user}/tokens/{provider}`: the stored grant, decrypted.
    pub async fn get_token(&self, user: &str, provider: &str) -> reqwest::Response {
        self.send(self.http.get(self.token_url(user, provider)))
            .await
    }

    /// `DELETE /v1/users/{user}/tokens/{provider}`: revoke at the provider, then delete.
    pub async fn delete_token(&self, user: &str, provider: &str) -> reqwest::Response {
        self.send(self.http.delete(self.token_url(user, provider)))
            .await
    }

    /// `POST /v1/users/{user}/tokens/{provider}/access-token` without a body.
    pub async fn access_token(&self, user: &str, provider: &str) -> reqwest::Response {
        let url = format!("{}/access-token", self.token_url(user, provider));
        self.send(self.http.post(url)).await
    }

    /// `POST .../access-token` with a JSON body (`scopes`, `minValiditySeconds`).
    pub async fn access_token_with(
        &self,
        user: &str,
        provider: &str,
        body: &Value,
    ) -> reqwest::Response {
        let url = format!("{}/access-token", self.token_url(user, provider));
        self.send(self.http.post(url).json(body)).await
    }

    /// `POST /v1/users/{user}/tokens/{provider}/refresh`: refresh now, whatever the expiry.
    pub async fn force_refresh(&self, user: &str, provider: &str) -> reqwest::Response {
        let url = format!("{}/refresh", self.token_url(user, provider));
        self.send(self.http.post(url)).await
    }

    /// `DELETE /v1/users/{user}/tokens`: revoke and delete every grant of the user.
    pub async fn delete_user(&self, user: &str) -> reqwest::Response {
        let url = format!("{}/v1/users/{user}/tokens", self.base);
        self.send(self.http.delete(url)).await
    }

    /// `GET /v1/users/{user}/tokens`: the user's grants with their health.
    pub async fn list_user_grants(&self, user: &str) -> reqwest::Response {
        let url = format!("{}/v1/users/{user}/tokens", self.base);
        self.send(self.http.get(url)).await
    }

    /// `GET /v1/grants?{query}`: a page of every grant (operators).
    pub async fn list_grants(&self, query: &str) -> reqwest::Response {
        let url = format!("{}/v1/grants?{query}", self.base);
        self.send(self.http.get(url)).await
    }

    /// `GET /v1/webhook-deliveries?{query}`: a page of webhook deliveries (operators).
    pub async fn webhook_deliveries(&self, query: &str) -> reqwest::Response {
        let url = format!("{}/v1/webhook-deliveries?{query}", self.base);
        self.send(self.http.get(url)).await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> reqwest::Response {
        self.get_unauthenticated("/healthz").await
    }

    /// `GET /healthz`, `None` while nothing answers (a starting process).
    pub async fn try_healthz(&self) -> Option<reqwest::Response> {
        self.http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .ok()
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> reqwest::Response {
        self.get_unauthenticated("/readyz").await
    }

    /// `GET /metrics` (on this listener).
    pub async fn metrics(&self) -> reqwest::Response {
        self.get_unauthenticated("/metrics").await
    }

    /// `GET /openapi.json`.
    pub async fn openapi_json(&self) -> reqwest::Response {
        self.get_unauthenticated("/openapi.json").await
    }

    async fn get_unauthenticated(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("sending a request to the service")
    }
}

/// The database and KMS key an instance was started on, shared with its siblings and removed
/// when the last of them is dropped.
struct Owned {
    _database: TestDatabase,
    _key: TestKmsKey,
}

/// The service, in process: the real `Application`, served on a free loopback port until
/// dropped.
///
/// [`spawn`](Self::spawn) gives it a new database and a new KMS key, both removed when the
/// instance (and every [`sibling`](Self::sibling)) is dropped, also when the test fails.
/// Its route methods call with every permission ([`FULL_KEY`]); [`with_key`](Self::with_key)
/// and [`without_key`](Self::without_key) give the same methods for another caller.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// Where `/metrics` is served when `[server] metrics_listen` is set.
    pub metrics_address: Option<String>,
    pub database_url: String,
    /// The ARN of the KMS key the instance seals under.
    pub key_id: String,
    /// A pool of the test's own on the instance's database.
    pub db: PgPool,
    /// For requests no route method sends (malformed on purpose).
    pub http: reqwest::Client,
    /// A LocalStack KMS client of the test's own.
    pub kms: aws_sdk_kms::Client,
    config: Config,
    // Dropped in this order: the server is told to stop, then the database and key go.
    _stop: oneshot::Sender<()>,
    owned: Option<Arc<Owned>>,
}

impl TestApp {
    /// A new database, a new KMS key, and the service on a free port.
    pub async fn spawn() -> Self {
        Self::spawn_configured(|_| {}).await
    }

    /// A new database and KMS key, served with `google` pointing at `provider`.
    pub async fn spawn_with_provider(provider: &FakeProvider) -> Self {
        Self::spawn_configured(|config| {
            config
                .providers
                .insert("google".into(), provider.settings());
        })
        .await
    }

    /// A new database and KMS key, served with the tests' configuration ([`app_config`])
    /// as `adjust` changes it.
    pub async fn spawn_configured(adjust: impl FnOnce(&mut Config)) -> Self {
        init_process();
        let (database, key) = tokio::join!(TestDatabase::create("app"), TestKmsKey::create());
        let mut config = app_config(database.url(), key.arn(), &kms_endpoint());
        adjust(&mut config);
        let owned = Owned {
            _database: database,
            _key: key,
        };
        Self::start(config, Some(Arc::new(owned))).await
    }

    /// The service with `config`, on whatever database and key it names: the caller keeps
    /// those (a [`TestDatabase`], a [`TestKmsKey`]) for as long as the instance runs.
    pub async fn spawn_with(config: Config) -> Self {
        Self::start(config, None).await
    }

    /// Another instance (own pools, own cache) with the same configuration, on the same
    /// database and key.
    pub async fn sibling(&self) -> Self {
        self.sibling_with(|_| {}).await
    }

    /// Another instance on the same database and key, with this one's configuration as
    /// `adjust` changes it.
    pub async fn sibling_with(&self, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.config();
        adjust(&mut config);
        Self::start(config, self.owned.clone()).await
    }

    async fn start(config: Config, owned: Option<Arc<Owned>>) -> Self {
        init_process();
        let database_url = secrecy::ExposeSecret::expose_secret(&config.database.url).to_owned();
        let key_id = config.kms.key_id.clone().expect("a KMS key in the config");
        let app = Application::build(config.clone())
            .await
            .expect("building the app");
        let address = format!("http://{}", app.local_addr());
        let metrics_address = app.metrics_addr().map(|a| format!("http://{a}"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            address,
            metrics_address,
            db: PgPool::connect(&database_url).await.unwrap(),
            database_url,
            key_id,
            http: reqwest::Client::new(),
            kms: kms_admin().await,
            config,
            _stop: stop,
            owned,
        }
    }

    /// The configuration this instance was built with.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// This instance's API, called with every permission ([`FULL_KEY`]).
    pub fn api(&self) -> Api {
        self.with_key(FULL_KEY)
    }

    /// This instance's API, called with `key`.
    pub fn with_key(&self, key: &str) -> Api {
        Api::new(self.http.clone(), &self.address, Some(key))
    }

    /// This instance's API, called without an `Authorization` header.
    pub fn without_key(&self) -> Api {
        Api::new(self.http.clone(), &self.address, None)
    }

    /// `http://127.0.0.1:<port>/v1/users/{user}/tokens/{provider}`.
    pub fn token_url(&self, user: &str, provider: &str) -> String {
        self.api().token_url(user, provider)
    }

    /// `PUT /v1/users/{user}/tokens/{provider}`, with every permission.
    pub async fn put_token(&self, user: &str, provider: &str, body: &Value) -> reqwest::Response {
        self.api().put_token(user, provider, body).await
    }

    /// `GET /v1/users/{user}/tokens/{provider}`, with every permission.
    pub async fn get_token(&self, user: &str, provider: &str) -> reqwest::Response {
        self.api().get_token(user, provider).await
    }

    /// `DELETE /v1/users/{user}/tokens/{provider}`, with every permission.
    pub async fn delete_token(&self, user: &str, provider: &str) -> reqwest::Response {
        self.api().delete_token(user, provider).await
    }

    /// `GET /v1/users/{user}/tokens`, with every permission.
    pub async fn list_user_grants(&self, user: &str) -> reqwest::Response {
        self.api().list_user_grants(user).await
    }

    /// `GET /v1/grants?{query}`, with every permission.
    pub async fn list_grants(&self, query: &str) -> reqwest::Response {
        self.api().list_grants(query).await
    }

    /// `GET /v1/webhook-deliveries?{query}`, with every permission.
    pub async fn webhook_deliveries(&self, query: &str) -> reqwest::Response {
        self.api().webhook_deliveries(query).await
    }

    /// `POST .../access-token` without a body, with every permission.
    pub async fn access_token(&self, user: &str, provider: &str) -> reqwest::Response {
        self.api().access_token(user, provider).await
    }

    /// `POST .../access-token` with a JSON body, with every permission.
    pub async fn access_token_with(
        &self,
        user: &str,
        provider: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.api().access_token_with(user, provider, body).await
    }

    /// `POST .../refresh`, with every permission.
    pub async fn force_refresh(&self, user: &str, provider: &str) -> reqwest::Response {
        self.api().force_refresh(user, provider).await
    }

    /// `DELETE /v1/users/{user}/tokens`, with every permission.
    pub async fn delete_user(&self, user: &str) -> reqwest::Response {
        self.api().delete_user(user).await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> reqwest::Response {
        self.without_key().healthz().await
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> reqwest::Response {
        self.without_key().readyz().await
    }

    /// `GET /metrics` on the main listener.
    pub async fn metrics(&self) -> reqwest::Response {
        self.without_key().metrics().await
    }

    /// `GET /metrics` on the metrics listener (`[server] metrics_listen`); panics without one.
    pub async fn metrics_on_metrics_listener(&self) -> reqwest::Response {
        let address = self.metrics_address.as_deref().expect("a metrics listener");
        Api::new(self.http.clone(), address, None).metrics().await
    }

    /// `GET /openapi.json`.
    pub async fn openapi_json(&self) -> reqwest::Response {
        self.without_key().openapi_json().await
    }

    /// The value of one sample of `/metrics` (where this instance serves it), 0 if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let response = match self.metrics_address {
            Some(_) => self.metrics_on_metrics_listener().await,
            None => self.metrics().await,
        };
        let text = response.text().await.unwrap();
        token_store::metrics::sample_sum(&text, name, labels)
    }

    /// Successful KMS calls of `operation` so far.
    pub async fn kms_calls(&self, operation: KmsOperation) -> f64 {
        self.metric(
            "token_store_kms_requests_total",
            &[
                ("operation", operation.as_str()),
                ("outcome", KmsOutcome::Ok.as_str()),
            ],
        )
        .await
    }

    /// Rows in the grants table.
    pub async fn row_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from integration_tokens")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Disables this instance's KMS key in LocalStack.
    pub async fn disable_kms_key(&self) {
        self.kms
            .disable_key()
            .key_id(&self.key_id)
            .send()
            .await
            .unwrap();
    }
}
