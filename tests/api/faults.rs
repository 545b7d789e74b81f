//! A database or lock that does not answer gives errors in bounded time, never hangs or
//! 500s: a locked table, a database that goes away, a busy refresh lock, a hanging KMS.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};
use token_store::startup::LOCK_APPLICATION_NAME;

use test_support::provider::{FakeProvider, Mode};
use test_support::{
    app_config, assert_problem, kms_endpoint, token_body, TestApp, TestDatabase, TestKmsKey,
};

use crate::proxy::Proxy;

/// A session of the test's own that holds `integration_tokens` locked until dropped.
async fn lock_table(app: &TestApp) -> PgConnection {
    let mut conn = PgConnection::connect(&app.database_url).await.unwrap();
    conn.execute("begin").await.unwrap();
    conn.execute("lock table integration_tokens in access exclusive mode")
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn a_locked_table_gives_503_database_unavailable_in_bounded_time_and_readiness_says_so() {
    let app = TestApp::spawn().await;
    let body = token_body("locked");
    assert_eq!(app.put_token("alice", "google", &body).await.status(), 204);

    let lock = lock_table(&app).await;
    // The default lock_timeout is 2 s and statement_timeout 5 s; a request that hung until
    // the lock went would take as long as the lock is held (here: until the end).
    let started = Instant::now();
    let read = app.get_token("alice", "google").await;
    let first_error = started.elapsed();
    assert!(read.headers().contains_key("retry-after"));
    assert_problem(read, 503, "database_unavailable").await;
    let write = app.put_token("bob", "google", &token_body("b")).await;
    assert_problem(write, 503, "database_unavailable").await;
    let access = app.access_token("alice", "google").await;
    assert_problem(access, 503, "database_unavailable").await;

    let probed = Instant::now();
    let ready = app.readyz().await;
    let probe_time = probed.elapsed();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["database"], "unavailable");
    eprintln!("locked table: first error after {first_error:?}, readiness after {probe_time:?}");
    assert!(first_error < Duration::from_secs(8), "{first_error:?}");
    assert!(probe_time < Duration::from_secs(3), "{probe_time:?}");

    drop(lock);
    let read = app.get_token("alice", "google").await;
    assert_eq!(read.status(), 200);
    assert_eq!(app.readyz().await.status(), 200);
}

#[tokio::test]
async fn a_database_that_goes_away_gives_503_then_serves_again_without_restart() {
    let (database, key) = (
        TestDatabase::create("away").await,
        TestKmsKey::create().await,
    );
    let mut url = reqwest::Url::parse(database.url()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Proxy::start(&upstream).await;
    let proxied = reqwest::Url::parse(&proxy.url()).unwrap();
    url.set_port(proxied.port()).unwrap();
    let mut config = app_config(url.as_str(), key.arn(), &kms_endpoint());
    config.database.acquire_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    let body = token_body("away");
    assert_eq!(app.put_token("alice", "google", &body).await.status(), 204);
    assert_eq!(app.get_token("alice", "google").await.status(), 200);

    proxy.down();
    // A read may be answered from the row cache until its listening connection is missed
    // (at most `max_staleness`); after that, only by the database.
    let deadline = Instant::now() + config_staleness() + Duration::from_secs(2);
    while app.get_token("alice", "google").await.status() == 200 {
        assert!(
            Instant::now() < deadline,
            "the cache kept serving without the database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..2 {
        let read = app.get_token("alice", "google").await;
        assert!(read.headers().contains_key("retry-after"));
        assert_problem(read, 503, "database_unavailable").await;
        let write = app.put_token("bob", "google", &token_body("b")).await;
        assert_problem(write, 503, "database_unavailable").await;
    }
    assert_eq!(app.readyz().await.status(), 503);

    proxy.up().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = app.get_token("alice", "google").await;
        if read.status() == 200 {
            let read: Value = read.json().await.unwrap();
            assert_eq!(read["accessToken"], body["accessToken"]);
            break;
        }
        assert_eq!(read.status(), 503);
        assert!(Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn config_staleness() -> Duration {
    token_store::config::RowCacheConfig::default().max_staleness
}

/// A token valid for two more minutes: inside the 5-minute refresh buffer, not expired.
fn still_valid_body(tag: &str) -> Value {
    let mut body = token_body(tag);
    body["expiresAt"] = json!(chrono::Utc::now().timestamp_millis() + 120_000);
    body
}

/// Takes the refresh lock of a pair (as the service computes it) in a session of the
/// test's own, held until the connection is dropped.
async fn hold_refresh_lock(app: &TestApp, user: &str, provider: &str) -> PgConnection {
    let mut conn = PgConnection::connect(&app.database_url).await.unwrap();
    sqlx::query("select pg_advisory_lock(hashtextextended($1 || '/' || $2, 0))")
        .bind(provider)
        .bind(user)
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn a_busy_refresh_lock_serves_a_still_valid_token_and_503s_an_expired_one() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_configured(|config| {
        config
            .providers
            .insert("google".into(), provider.settings());
        config.refresh.lock_timeout = Duration::from_millis(1_500);
        config.refresh.provider_timeout = Duration::from_secs(1);
        // One lock connection: a flight waiting on a held lock keeps it, and the next pair's
        // flight cannot get one.
        config.database.lock_pool_connections = 1;
    })
    .await;
    let alice = still_valid_body("alice");
    let bob = still_valid_body("bob");
    let mut carol = token_body("carol");
    carol["expiresAt"] = json!(chrono::Utc::now().timestamp_millis() - 1_000);
    for (user, body) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        assert_eq!(app.put_token(user, "google", body).await.status(), 204);
    }
    // Every pair's lock is held elsewhere (another replica's refresh, say); alice's flight
    // waits for hers on the one lock connection, bob's and carol's wait for that connection,
    // then (if it frees in time) for their locks: busy either way.
    let mut held = Vec::new();
    for user in ["alice", "bob", "carol"] {
        held.push(hold_refresh_lock(&app, user, "google").await);
    }
    let access = |user: &'static str| {
        let api = app.api();
        async move { api.access_token(user, "google").await }
    };
    let later = |user: &'static str| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        access(user).await
    };
    let (a, b, c) = tokio::join!(access("alice"), later("bob"), later("carol"));
    assert_eq!(a.status(), 200, "the lock is busy, the token still valid");
    assert_eq!(
        a.json::<Value>().await.unwrap()["accessToken"],
        alice["accessToken"]
    );
    assert_eq!(b.status(), 200, "no lock connection, the token still valid");
    assert_eq!(
        b.json::<Value>().await.unwrap()["accessToken"],
        bob["accessToken"]
    );
    assert!(c.headers().contains_key("retry-after"));
    assert_problem(c, 503, "provider_unavailable").await;
    assert_eq!(provider.token_calls(), 0);
    drop(held);
}

#[tokio::test]
async fn the_lock_pool_connects_only_when_a_refresh_needs_it() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::Success);
    let app = TestApp::spawn_with_provider(&provider).await;
    let lock_sessions = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity \
             where application_name = $1 and datname = current_database()",
        )
        .bind(LOCK_APPLICATION_NAME)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    app.put_token("alice", "google", &token_body("lazy")).await;
    app.get_token("alice", "google").await;
    assert_eq!(lock_sessions().await, 0);
    let refreshed = app.force_refresh("alice", "google").await;
    assert_eq!(refreshed.status(), 200);
    assert_eq!(lock_sessions().await, 1);
}
