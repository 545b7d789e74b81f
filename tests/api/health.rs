//! `/healthz` (the process is up), `/readyz` (the database and KMS answer, in bounded time)
//! and `/metrics`: served without a key.

use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::TestApp;
use token_store::crypto::KmsOperation;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let health = app.healthz().await;
    assert_eq!(health.status(), 200);
    let ready = app.readyz().await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    assert_eq!(body["kms"], "ok");
}

#[tokio::test]
async fn readiness_fails_when_the_kms_key_is_disabled() {
    let app = TestApp::spawn().await;
    app.disable_kms_key().await;
    let ready = app.readyz().await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["kms"], "unavailable");
    assert_eq!(body["database"], "ok");
}

#[tokio::test]
async fn health_routes_need_no_key() {
    let app = TestApp::spawn().await;
    let api = app.without_key();
    for (path, response) in [
        ("/healthz", api.healthz().await),
        ("/readyz", api.readyz().await),
        ("/metrics", api.metrics().await),
    ] {
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn readiness_asks_kms_once_per_cache_period() {
    let app = TestApp::spawn_configured(|config| {
        config.kms.readiness_cache_ttl = Duration::from_secs(60);
    })
    .await;
    for _ in 0..5 {
        assert_eq!(app.readyz().await.status(), 200);
    }
    assert_eq!(app.kms_calls(KmsOperation::DescribeKey).await, 1.0);
}

#[tokio::test]
async fn readiness_is_bounded_when_kms_does_not_answer() {
    // A port that takes connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let app = TestApp::spawn_configured(|config| {
        config.kms.endpoint_url = Some(endpoint);
        config.kms.timeout = Duration::from_secs(20);
    })
    .await;
    let started = Instant::now();
    let ready = app.readyz().await;
    let took = started.elapsed();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["kms"], "unavailable");
    assert_eq!(ready["database"], "ok");
    eprintln!("readiness with a silent KMS answered in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
