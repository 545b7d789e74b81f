//! No token appears in any log line, error or response it should not be in.

use serde_json::json;

use test_support::provider::{FakeProvider, Mode, CLIENT_SECRET};
use test_support::{captured_logs, token_body, TestApp, FULL_KEY, RW_KEY};

#[tokio::test]
async fn logs_of_a_whole_session_contain_no_token() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::Rotate);
    let app = TestApp::spawn_with_provider(&provider).await;
    let body = token_body("log-leak");
    let access = body["accessToken"].as_str().unwrap().to_owned();
    let refresh = body["refreshToken"].as_str().unwrap().to_owned();

    app.put_token("alice", "google", &body).await;
    app.get_token("alice", "google").await;
    app.with_key(RW_KEY).get_token("alice", "google").await;
    // A refresh with rotation, then a revocation at the provider.
    let refreshed = app.force_refresh("alice", "google").await;
    assert_eq!(refreshed.status(), 200);
    app.put_token("carol", "google", &body).await;
    app.delete_token("carol", "google").await;
    assert_eq!(provider.revoked().len(), 1);
    // A cold read through another instance, so KMS Decrypt runs and logs too.
    app.sibling().await.get_token("alice", "google").await;
    // Failures: tampered ciphertext (500), bad input carrying the token, an unknown key
    // that is a token.
    sqlx::query("update integration_tokens set refresh_token_ct = access_token_ct")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(app.get_token("alice", "google").await.status(), 500);
    let mut bad = body.clone();
    bad["expiresAt"] = json!(access.clone());
    app.put_token("alice", "google", &bad).await;
    app.with_key(&refresh).get_token("alice", "google").await;
    app.delete_token("alice", "google").await;

    let logs = captured_logs();
    assert!(logs.contains("alice"), "the logs were captured");
    assert!(logs.contains("request failed"), "the 500 was logged");
    let issued = [provider.access_token(1), provider.refresh_token(1)];
    for secret in [&access, &refresh, &issued[0], &issued[1]] {
        assert!(
            !logs.contains(secret.as_str()),
            "a token appeared in the logs"
        );
    }
    assert!(
        !logs.contains(CLIENT_SECRET),
        "the client secret appeared in the logs"
    );
    assert!(!logs.contains(FULL_KEY), "an API key appeared in the logs");
}
