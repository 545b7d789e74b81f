//! Test harness: a real PostgreSQL database per test, a real LocalStack KMS key per test, and
//! the application served on a free loopback port.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once, OnceLock};

use aws_sdk_kms::types::KeySpec;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use token_store::auth::key_hash_hex;
use token_store::config::{
    ClientConfig, Config, DatabaseConfig, KmsConfig, RefreshConfig, ServerConfig,
};
use token_store::startup::Application;
use tokio::sync::oneshot;

pub const FULL_KEY: &str = "test-key-full-access";
pub const RW_KEY: &str = "test-key-read-write";
pub const READ_KEY: &str = "test-key-read-only";
pub const WRITE_KEY: &str = "test-key-write-only";

/// Where LocalStack answers (the test command exports it).
pub fn kms_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

fn database_server_url() -> String {
    std::env::var("TS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static INIT: Once = Once::new();

/// Everything the code under test logs, for the secret-leak checks.
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

fn init_process() {
    INIT.call_once(|| {
        // LocalStack does not check signatures; the standard chain only needs something.
        for (name, value) in [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ] {
            if std::env::var_os(name).is_none() {
                std::env::set_var(name, value);
            }
        }
        // Every log line at debug level and above (more than production's info) is kept,
        // as JSON lines like production's.
        let writer = BufferWriter(log_buffer().clone());
        let _ = tracing_subscriber::fmt()
            .event_format(token_store::telemetry::JsonLines)
            .fmt_fields(token_store::telemetry::JsonFields)
            .with_env_filter("debug")
            .with_writer(move || writer.clone())
            .try_init();
    });
}

pub async fn kms_admin() -> aws_sdk_kms::Client {
    init_process();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(kms_endpoint())
        .load()
        .await;
    aws_sdk_kms::Client::new(&sdk)
}

/// A fresh symmetric KMS key, so tests that disable keys do not disturb others.
pub async fn create_kms_key(kms: &aws_sdk_kms::Client) -> String {
    let out = kms
        .create_key()
        .key_spec(KeySpec::SymmetricDefault)
        .description("token-store test key")
        .send()
        .await
        .expect("creating a KMS key in LocalStack (is it running? see README)");
    out.key_metadata().unwrap().arn().unwrap().to_owned()
}

/// A new, migrated database.
pub async fn create_database() -> String {
    let name = format!("ts_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&format!("{}/postgres", database_server_url()))
        .await
        .expect("connecting to PostgreSQL (is it running? see README)");
    admin
        .execute(format!(r#"create database "{name}""#).as_str())
        .await
        .unwrap();
    let url = format!("{}/{name}", database_server_url());
    let pool = PgPool::connect(&url).await.unwrap();
    token_store::store::migrate(&pool).await.unwrap();
    pool.close().await;
    url
}

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
            "read,write,refresh,revoke,read_refresh_token",
        ),
        client("read-write", RW_KEY, "read,write,refresh,revoke"),
        client("reader", READ_KEY, "read"),
        client("writer", WRITE_KEY, "write"),
    ]
}

pub fn config(database_url: &str, key_id: &str, kms_endpoint: &str) -> Config {
    Config {
        server: ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..ServerConfig::default()
        },
        database: DatabaseConfig {
            url: database_url.to_owned().into(),
            max_connections: 10,
            acquire_timeout_ms: 3_000,
            migrate_on_start: false,
            lock_pool_connections: 4,
            read_connections: 1,
            statement_timeout_ms: 5_000,
            lock_timeout_ms: 2_000,
            password_secret_arn: None,
            password_refresh_seconds: 60,
        },
        kms: KmsConfig {
            key_id: Some(key_id.to_owned()),
            endpoint_url: Some(kms_endpoint.to_owned()),
            timeout_ms: 2_000,
            // Tests that change KMS read readiness right after; one test pins the cache.
            readiness_cache_ms: 0,
            ..KmsConfig::default()
        },
        refresh: RefreshConfig {
            lock_timeout_ms: 5_000,
            provider_timeout_ms: 2_000,
            cooldown_base_seconds: 30,
            ..RefreshConfig::default()
        },
        providers: Default::default(),
        clients: clients(),
    }
}

pub struct TestApp {
    pub address: String,
    /// Where `/metrics` is served when `[server] metrics_listen` is set.
    pub metrics_address: Option<String>,
    pub database_url: String,
    pub key_id: String,
    pub db: PgPool,
    pub http: reqwest::Client,
    pub kms: aws_sdk_kms::Client,
    _stop: oneshot::Sender<()>,
}

impl TestApp {
    /// A new database, a new KMS key, and the service on a free port.
    pub async fn spawn() -> Self {
        let kms = kms_admin().await;
        let key_id = create_kms_key(&kms).await;
        let database_url = create_database().await;
        Self::spawn_with(config(&database_url, &key_id, &kms_endpoint())).await
    }

    /// Another instance (own pools, own cache) on the same database and key.
    pub async fn sibling(&self) -> Self {
        Self::spawn_with(self.config()).await
    }

    /// The configuration this instance was built with (providers aside).
    pub fn config(&self) -> Config {
        config(&self.database_url, &self.key_id, &kms_endpoint())
    }

    /// This instance's configuration with `google` pointing at `provider`.
    pub fn config_with(&self, provider: &crate::provider::FakeProvider) -> Config {
        let mut config = self.config();
        config
            .providers
            .insert("google".into(), provider.settings());
        config
    }

    /// A new database and KMS key, served with `google` pointing at `provider`.
    pub async fn spawn_with_provider(provider: &crate::provider::FakeProvider) -> Self {
        let kms = kms_admin().await;
        let key_id = create_kms_key(&kms).await;
        let mut config = config(&create_database().await, &key_id, &kms_endpoint());
        config
            .providers
            .insert("google".into(), provider.settings());
        Self::spawn_with(config).await
    }

    pub async fn spawn_with(config: Config) -> Self {
        init_process();
        let database_url = secrecy::ExposeSecret::expose_secret(&config.database.url).to_owned();
        let key_id = config.kms.key_id.clone().unwrap();
        let app = Application::build(config).await.expect("building the app");
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
            _stop: stop,
        }
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

    pub async fn readyz(&self) -> reqwest::Response {
        self.http
            .get(format!("{}/readyz", self.address))
            .send()
            .await
            .unwrap()
    }

    pub fn token_url(&self, user: &str, provider: &str) -> String {
        format!("{}/v1/users/{user}/tokens/{provider}", self.address)
    }

    pub async fn put_token(&self, user: &str, provider: &str, body: &Value) -> reqwest::Response {
        self.http
            .put(self.token_url(user, provider))
            .bearer_auth(FULL_KEY)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `POST .../access-token` without a body, with every permission.
    pub async fn access_token(&self, user: &str, provider: &str) -> reqwest::Response {
        self.post_full(&format!("{}/access-token", self.token_url(user, provider)))
            .await
    }

    /// `POST .../refresh`, with every permission.
    pub async fn force_refresh(&self, user: &str, provider: &str) -> reqwest::Response {
        self.post_full(&format!("{}/refresh", self.token_url(user, provider)))
            .await
    }

    async fn post_full(&self, url: &str) -> reqwest::Response {
        self.http
            .post(url)
            .bearer_auth(FULL_KEY)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_token(&self, user: &str, provider: &str, key: &str) -> reqwest::Response {
        self.http
            .get(self.token_url(user, provider))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// The value of one sample of `/metrics`, 0 if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        token_store::metrics::sample_sum(&text, name, labels)
    }

    pub async fn row_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from integration_tokens")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn kms_calls(&self, operation: &str) -> f64 {
        self.metric(
            "token_store_kms_requests_total",
            &[("operation", operation), ("outcome", "ok")],
        )
        .await
    }
}

/// A token body with unique, recognisable secrets.
pub fn token_body(tag: &str) -> Value {
    json!({
        "accessToken": format!("ya29.access-{tag}-{}", uuid::Uuid::new_v4().simple()),
        "refreshToken": format!("1//refresh-{tag}-{}", uuid::Uuid::new_v4().simple()),
        "expiresAt": chrono::Utc::now().timestamp_millis() + 3_600_000,
        "scopes": ["openid", "https://www.googleapis.com/auth/gmail.readonly"],
    })
}

pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    body
}
