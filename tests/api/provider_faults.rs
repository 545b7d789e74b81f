//! Providers that misbehave: absurd lifetimes, oversized answers, error texts that echo
//! secrets, and the answers that kill a grant.

use serde_json::{json, Value};
use token_store::providers::MAX_RESPONSE_BYTES;

use test_support::provider::{FakeProvider, Mode, CLIENT_ID, CLIENT_SECRET};
use test_support::{
    assert_problem, captured_logs, expired_body, expiring_body, token_body, TestApp,
};

async fn last_refresh_error(app: &TestApp, user: &str) -> Option<String> {
    sqlx::query_scalar(
        "select last_refresh_error from integration_tokens \
         where user_id = $1 and provider = 'google'",
    )
    .bind(user)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// A valid token response carrying an extra field of `padding` bytes.
fn padded_token_response(access_token: &str, padding: usize) -> Value {
    json!({
        "access_token": access_token,
        "expires_in": 3599,
        "token_type": "Bearer",
        "padding": "x".repeat(padding),
    })
}

/// The provider answers 200 with `expires_in` set to `expires_in`.
async fn an_absurd_expires_in_is_taken_as_an_hour(expires_in: Value) {
    let provider = FakeProvider::start().await;
    let new_access = format!("ya29.absurd-{}", uuid::Uuid::new_v4().simple());
    provider.set_mode(Mode::json(
        200,
        &json!({ "access_token": new_access, "expires_in": expires_in, "token_type": "Bearer" }),
    ));
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &token_body("absurd"))
        .await;

    let refreshed = app.force_refresh("alice", "google").await;
    assert_eq!(refreshed.status(), 200, "expires_in {expires_in}");
    let refreshed: Value = refreshed.json().await.unwrap();
    assert_eq!(refreshed["accessToken"], new_access);
    let in_an_hour = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let expires_at = refreshed["expiresAt"].as_i64().unwrap();
    assert!(
        (in_an_hour - 60_000..=in_an_hour).contains(&expires_at),
        "expiresAt {expires_at} is not about an hour ahead"
    );

    // Served from the store: no second provider call.
    let again = app.access_token("alice", "google").await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["accessToken"], new_access);
    assert_eq!(again["expiresAt"], expires_at);
    assert_eq!(provider.token_calls(), 1);
}

#[tokio::test]
async fn expires_in_of_9000000000000_is_taken_as_an_hour_and_the_pair_stays_usable() {
    an_absurd_expires_in_is_taken_as_an_hour(json!(9_000_000_000_000_u64)).await;
}

#[tokio::test]
async fn expires_in_of_u64_max_is_taken_as_an_hour_and_the_pair_stays_usable() {
    an_absurd_expires_in_is_taken_as_an_hour(json!(u64::MAX)).await;
}

/// `oversized` is a 200 answer far over the limit: for a still valid token the refresh is a
/// transient failure that serves the stored token, for an expired one it is 503. An answer
/// just under the limit is still accepted.
async fn an_oversized_answer_is_a_transient_failure(oversized: Mode) {
    let provider = FakeProvider::start().await;
    provider.set_mode_for("oversized", oversized);
    let near_limit = format!("ya29.near-limit-{}", uuid::Uuid::new_v4().simple());
    provider.set_mode_for(
        "near-limit",
        Mode::json(
            200,
            &padded_token_response(&near_limit, MAX_RESPONSE_BYTES - 1024),
        ),
    );
    let app = TestApp::spawn_with_provider(&provider).await;
    let valid = expiring_body("oversized-valid");
    app.put_token("valid", "google", &valid).await;
    app.put_token("expired", "google", &expired_body("oversized-expired"))
        .await;
    app.put_token("near", "google", &expired_body("near-limit"))
        .await;

    let served = app.access_token("valid", "google").await;
    assert_eq!(served.status(), 200);
    let served: Value = served.json().await.unwrap();
    assert_eq!(served["accessToken"], valid["accessToken"]);
    assert_eq!(
        last_refresh_error(&app, "valid").await.as_deref(),
        Some("response_too_large")
    );

    let unavailable = app.access_token("expired", "google").await;
    let retry_after: u64 = unavailable.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_problem(unavailable, 503, "provider_unavailable").await;
    assert_eq!(
        last_refresh_error(&app, "expired").await.as_deref(),
        Some("response_too_large")
    );

    let near = app.access_token("near", "google").await;
    assert_eq!(near.status(), 200);
    assert_eq!(
        near.json::<Value>().await.unwrap()["accessToken"],
        near_limit
    );
    assert_eq!(provider.token_calls(), 3);
}

#[tokio::test]
async fn an_oversized_token_response_is_a_transient_failure() {
    let body = padded_token_response("ya29.oversized", 2 << 20);
    an_oversized_answer_is_a_transient_failure(Mode::json(200, &body)).await;
}

#[tokio::test]
async fn an_oversized_chunked_token_response_is_a_transient_failure() {
    let body = padded_token_response("ya29.oversized", 2 << 20);
    let mode = Mode::chunked_json(200, &body);
    an_oversized_answer_is_a_transient_failure(mode.clone()).await;

    // The fake really sent it without a Content-Length.
    let provider = FakeProvider::start().await;
    provider.set_mode(mode);
    let direct = reqwest::Client::new()
        .post(format!("{}/token", provider.url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "probe"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(direct.content_length(), None);
}

#[tokio::test]
async fn provider_error_texts_that_echo_tokens_never_reach_the_logs() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    let echoed = expired_body("echo-both");
    let access = echoed["accessToken"].as_str().unwrap().to_owned();
    let refresh = echoed["refreshToken"].as_str().unwrap().to_owned();
    provider.set_mode_for(
        "echo-both",
        Mode::json(
            400,
            &json!({
                "error": "invalid_request",
                "error_description": refresh,
                "error_subtype": access,
            }),
        ),
    );
    // A short token-like word: only its `/` and `=` give it away.
    let word = format!("k/{}=", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let description = format!("the key {word} is not valid");
    provider.set_mode_for(
        "echo-word",
        Mode::json(
            400,
            &json!({ "error": "invalid_request", "error_description": description }),
        ),
    );
    // The token as the error code itself: sanitized, so never as sent.
    let as_code = expired_body("echo-code");
    let code_token = as_code["accessToken"].as_str().unwrap().to_owned();
    provider.set_mode_for(
        "echo-code",
        Mode::json(401, &json!({ "error": code_token })),
    );

    app.put_token("both", "google", &echoed).await;
    app.put_token("word", "google", &expired_body("echo-word"))
        .await;
    app.put_token("code", "google", &as_code).await;
    for user in ["both", "word", "code"] {
        app.access_token(user, "google").await;
    }
    assert_eq!(provider.token_calls(), 3);

    let logs = captured_logs();
    assert!(
        logs.contains("OAuth error response"),
        "the errors were logged"
    );
    assert!(logs.contains("[omitted]"), "the texts were omitted");
    for secret in [&access, &refresh, &word, &code_token] {
        assert!(
            !logs.contains(secret.as_str()),
            "a provider's text appeared in the logs: {secret}"
        );
    }
}

/// An answer with OAuth `error` = `code` (400 or 401) blames the service's OAuth client, not
/// the grant: 503 `provider_misconfigured` with `Retry-After`, the row untouched.
async fn rejected_client_leaves_the_grant_alone(code: &str) {
    for status in [400, 401] {
        let provider = FakeProvider::start().await;
        provider.set_mode(Mode::json(
            status,
            &json!({ "error": code, "error_description": "no" }),
        ));
        let app = TestApp::spawn_with_provider(&provider).await;
        let user = format!("user-{status}");
        app.put_token(&user, "google", &expired_body(&user)).await;
        let before = stored_row(&app, &user).await;

        let served = app.access_token(&user, "google").await;
        assert!(served.headers().contains_key("retry-after"), "{status}");
        assert_problem(served, 503, "provider_misconfigured").await;
        let stored: Value = app.get_token(&user, "google").await.json().await.unwrap();
        assert_eq!(stored["status"], "active", "{status}");
        assert_eq!(
            stored_row(&app, &user).await,
            before,
            "the row is untouched"
        );
        // The next call does not ask the provider again for a while.
        assert_problem(
            app.access_token(&user, "google").await,
            503,
            "provider_misconfigured",
        )
        .await;
        assert_eq!(
            provider.token_calls(),
            1,
            "one call, then the provider pauses"
        );
        assert_eq!(
            app.metric(
                "token_store_refreshes_total",
                &[("provider", "google"), ("outcome", "misconfigured")]
            )
            .await,
            2.0
        );
    }
}

/// What a rejected client must not change: the row's version, status and bookkeeping.
async fn stored_row(app: &TestApp, user: &str) -> (i64, String, i32, Option<String>) {
    sqlx::query_as(
        "select version, status, refresh_failure_count, last_refresh_error \
         from integration_tokens where user_id = $1 and provider = 'google'",
    )
    .bind(user)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn invalid_client_is_the_operators_mistake_not_a_dead_grant() {
    rejected_client_leaves_the_grant_alone("invalid_client").await;
}

#[tokio::test]
async fn unauthorized_client_is_the_operators_mistake_not_a_dead_grant() {
    rejected_client_leaves_the_grant_alone("unauthorized_client").await;
}

#[tokio::test]
async fn after_a_wrong_client_secret_is_fixed_the_same_grants_refresh_without_new_consent() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_configured(|config| {
        let mut wrong = provider.settings();
        wrong.client_secret = "a-typo-in-the-secret".to_owned().into();
        config.providers.insert("google".into(), wrong);
    })
    .await;
    let users: Vec<String> = (0..3).map(|n| format!("typo-{n}")).collect();
    for user in &users {
        app.put_token(user, "google", &expired_body(user)).await;
        assert_problem(
            app.access_token(user, "google").await,
            503,
            "provider_misconfigured",
        )
        .await;
    }
    for user in &users {
        let stored: Value = app.get_token(user, "google").await.json().await.unwrap();
        assert_eq!(stored["status"], "active");
    }
    assert_eq!(
        provider.token_calls(),
        1,
        "the provider was asked once, then paused"
    );

    // The operator fixes the secret and the service restarts: no user consents again.
    let fixed = app
        .sibling_with(|config| {
            config
                .providers
                .insert("google".into(), provider.settings());
        })
        .await;
    for user in &users {
        let served = fixed.access_token(user, "google").await;
        assert_eq!(served.status(), 200, "{user}");
    }
    assert_eq!(provider.token_calls(), 4);
}

#[tokio::test]
async fn an_answer_the_service_cannot_use_is_the_providers_failure_not_a_500() {
    let provider = FakeProvider::start().await;
    // 200 without an access token, and an OAuth error code the service does not know.
    provider.set_mode_for(
        "no-token",
        Mode::json(200, &json!({"token_type": "Bearer"})),
    );
    provider.set_mode_for(
        "odd-error",
        Mode::json(400, &json!({"error": "invalid_scope"})),
    );
    let app = TestApp::spawn_with_provider(&provider).await;
    for tag in ["no-token", "odd-error"] {
        let valid = expiring_body(tag);
        app.put_token(&format!("valid-{tag}"), "google", &valid)
            .await;
        app.put_token(&format!("expired-{tag}"), "google", &expired_body(tag))
            .await;

        let served = app.access_token(&format!("valid-{tag}"), "google").await;
        assert_eq!(served.status(), 200, "{tag}");
        assert_eq!(
            served.json::<Value>().await.unwrap()["accessToken"],
            valid["accessToken"]
        );
        let unavailable = app.access_token(&format!("expired-{tag}"), "google").await;
        assert!(unavailable.headers().contains_key("retry-after"), "{tag}");
        assert_problem(unavailable, 503, "provider_unavailable").await;
    }
}
