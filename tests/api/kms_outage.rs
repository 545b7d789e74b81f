//! KMS taken away from a running service, then given back.

use serde_json::Value;

use test_support::{assert_problem, kms_endpoint, token_body, TestApp};

use crate::proxy::Proxy;

#[tokio::test]
async fn writes_fail_closed_while_kms_is_unreachable_and_recover_without_restart() {
    let proxy = Proxy::start(&kms_endpoint()).await;
    let app = TestApp::spawn_configured(|config| config.kms.endpoint_url = Some(proxy.url())).await;

    let cached = token_body("cached");
    assert_eq!(
        app.put_token("alice", "google", &cached).await.status(),
        204
    );
    let version_before: i64 = sqlx::query_scalar("select version from integration_tokens")
        .fetch_one(&app.db)
        .await
        .unwrap();

    proxy.down();

    // A new row: 503 with Retry-After, and nothing written.
    let response = app.put_token("bob", "google", &token_body("new")).await;
    let retry_after = response.headers().get("retry-after").cloned();
    assert_problem(response, 503, "kms_unavailable").await;
    assert!(retry_after.is_some(), "Retry-After must be set");
    assert_eq!(app.row_count().await, 1);

    // Replacing an existing row: 503, and the row is untouched.
    let response = app
        .put_token("alice", "google", &token_body("replacement"))
        .await;
    assert_problem(response, 503, "kms_unavailable").await;
    let version_after: i64 = sqlx::query_scalar("select version from integration_tokens")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(version_after, version_before);

    // A read whose key is cached still succeeds.
    let got = app.get_token("alice", "google").await;
    assert_eq!(got.status(), 200);
    let got: Value = got.json().await.unwrap();
    assert_eq!(got["accessToken"], cached["accessToken"]);

    // Readiness says so.
    let ready = app.readyz().await;
    assert_eq!(ready.status(), 503);

    proxy.up().await;

    let response = app.put_token("bob", "google", &token_body("after")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(app.row_count().await, 2);
    let ready = app.readyz().await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_cold_read_while_kms_is_unreachable_is_503_kms_unavailable() {
    let writer = TestApp::spawn().await;
    writer
        .put_token("alice", "google", &token_body("cold"))
        .await;

    let proxy = Proxy::start(&kms_endpoint()).await;
    proxy.down();
    let reader = writer
        .sibling_with(|config| config.kms.endpoint_url = Some(proxy.url()))
        .await;
    let response = reader.get_token("alice", "google").await;
    assert_problem(response, 503, "kms_unavailable").await;
}

#[tokio::test]
async fn a_disabled_key_refuses_writes_with_kms_unavailable() {
    let app = TestApp::spawn().await;
    app.disable_kms_key().await;
    let response = app
        .put_token("alice", "google", &token_body("disabled"))
        .await;
    assert_problem(response, 503, "kms_unavailable").await;
    assert_eq!(app.row_count().await, 0);
}
