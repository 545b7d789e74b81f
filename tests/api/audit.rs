//! One structured audit event per token operation, never a secret.

use serde_json::{json, Value};

use test_support::provider::FakeProvider;
use test_support::{captured_logs, token_body, TestApp, READ_KEY};

fn audit_events() -> Vec<Value> {
    captured_logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "token_store::audit")
        .collect()
}

#[tokio::test]
async fn every_token_operation_leaves_one_audit_event() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    let body = token_body("audit");

    app.put_token("audited-user", "google", &body).await;
    app.get_token("audited-user", "google").await;
    app.access_token_with("audited-user", "google", &json!({}))
        .await;
    app.force_refresh("audited-user", "google").await;
    // Refused for lack of permission: audited with its code.
    app.with_key(READ_KEY)
        .put_token("audited-user", "google", &body)
        .await;
    app.delete_token("audited-user", "google").await;
    app.get_token("audited-user", "google").await;
    app.delete_user("audited-user").await;

    let events: Vec<(String, String, String, String, String)> = audit_events()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (
                s("event"),
                s("client"),
                s("user_id"),
                s("provider"),
                s("outcome"),
            )
        })
        .collect();
    let expected = [
        ("token.store", "full", "ok"),
        ("token.read", "full", "ok"),
        ("token.access_token", "full", "ok"),
        ("token.refresh", "full", "ok"),
        ("token.store", "reader", "forbidden"),
        ("token.revoke", "full", "ok"),
        ("token.read", "full", "token_not_found"),
        ("user.erase", "full", "ok"),
    ];
    assert_eq!(events.len(), expected.len(), "{events:?}");
    for (got, (event, client, outcome)) in events.iter().zip(expected) {
        assert_eq!(got.0, event);
        assert_eq!(got.1, client);
        assert_eq!(got.2, "audited-user");
        assert_eq!(got.3, if event == "user.erase" { "*" } else { "google" });
        assert_eq!(got.4, outcome);
    }
    // Each carries its request id (from the request span).
    for event in audit_events() {
        let id = event["span"]["request_id"].as_str().unwrap_or_default();
        assert_eq!(id.len(), 36, "{event}");
    }
    let logs = captured_logs();
    for secret in [&body["accessToken"], &body["refreshToken"]] {
        assert!(!logs.contains(secret.as_str().unwrap()));
    }
    assert!(!logs.contains(&provider.access_token(1)));
}

#[tokio::test]
async fn failed_authentications_are_audited_rate_limited_and_all_counted() {
    let app = TestApp::spawn().await;
    let guess = "guessed-key-0123456789";
    let guesser = app.with_key(guess);
    let started = std::time::Instant::now();
    let sends = (0..30).map(|_| guesser.get_token("alice", "google"));
    for response in futures::future::join_all(sends).await {
        assert_eq!(response.status(), 401);
    }
    let windows = started.elapsed().as_secs() as usize + 2;
    assert_eq!(
        app.without_key()
            .get_token("alice", "google")
            .await
            .status(),
        401
    );

    let failed: Vec<Value> = audit_events()
        .into_iter()
        .filter(|e| e["event"] == "auth.failed")
        .collect();
    let unknown = failed
        .iter()
        .filter(|e| e["reason"] == "unknown_key")
        .count();
    // At most 10 a second are written: 30 guesses within a second or two write 10 to 20.
    assert!(
        unknown >= 10 && unknown <= (10 * windows).min(30),
        "{unknown} events for 30 guesses in {windows} windows"
    );
    assert!(failed.iter().all(|e| e["outcome"] == "unauthorized"));
    assert_eq!(
        app.metric("token_store_auth_failures_total", &[("reason", "missing")])
            .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "token_store_auth_failures_total",
            &[("reason", "unknown_key")]
        )
        .await,
        30.0
    );
    assert!(
        !captured_logs().contains(guess),
        "the guessed key was logged"
    );
}
