//! `access-token` and `refresh`: exactly one provider call, however many ask.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use token_store::domain::{GrantKey, ProviderName, TokenStatus, UserId};

use test_support::provider::{FakeProvider, Mode};
use test_support::{assert_problem, expired_body, expiring_body, token_body, TestApp};
use token_store::crypto::KmsOperation;
use token_store::refresh::RefreshOutcome;

/// The stored row's status (decoded as the service decodes it), failure count and error.
async fn row(app: &TestApp, user: &str) -> (TokenStatus, i32, Option<String>) {
    sqlx::query_as(
        "select status, refresh_failure_count, last_refresh_error from integration_tokens \
         where user_id = $1 and provider = 'google'",
    )
    .bind(user)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

async fn stored(app: &TestApp, user: &str) -> Value {
    app.get_token(user, "google").await.json().await.unwrap()
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_then_served_from_the_store() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    let body = expired_body("expired");
    app.put_token("alice", "google", &body).await;

    let response = app.access_token("alice", "google").await;
    assert_eq!(response.status(), 200);
    let fresh: Value = response.json().await.unwrap();
    assert_eq!(fresh["accessToken"], provider.access_token(1));
    assert_eq!(fresh["tokenType"], "Bearer");
    assert_eq!(fresh["scopes"], body["scopes"]);
    let expires_at = fresh["expiresAt"].as_i64().unwrap();
    assert!(expires_at > chrono::Utc::now().timestamp_millis() + 3_000_000);
    assert_eq!(
        provider.refresh_tokens_seen(),
        vec![body["refreshToken"].as_str().unwrap()]
    );

    // Stored sealed, and the refresh token kept since Google sent none.
    let text: String = sqlx::query_scalar("select t::text from integration_tokens t")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!text.contains(&provider.access_token(1)));
    let got = stored(&app, "alice").await;
    assert_eq!(got["accessToken"], provider.access_token(1));
    assert_eq!(got["refreshToken"], body["refreshToken"]);
    assert_eq!(got["expiresAt"], fresh["expiresAt"]);

    // The next call is served from the store.
    let again: Value = app
        .access_token("alice", "google")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["accessToken"], provider.access_token(1));
    assert_eq!(provider.token_calls(), 1);

    // The young data key was reused: the one GenerateDataKey of the store, no Decrypt.
    assert_eq!(app.kms_calls(KmsOperation::GenerateDataKey).await, 1.0);
    assert_eq!(app.kms_calls(KmsOperation::Decrypt).await, 0.0);
    assert_eq!(
        app.metric(
            "token_store_refreshes_total",
            &[
                ("provider", "google"),
                ("outcome", RefreshOutcome::Refreshed.as_str())
            ]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_valid_token_is_served_without_calling_the_provider() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    let body = token_body("valid");
    app.put_token("alice", "google", &body).await;
    let got: Value = app
        .access_token_with("alice", "google", &json!({ "scopes": ["openid"] }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["accessToken"], body["accessToken"]);
    assert_eq!(got["expiresAt"], body["expiresAt"]);
    assert_eq!(provider.token_calls(), 0);

    // Asking for more validity than the token has left refreshes it.
    let got: Value = app
        .access_token_with("alice", "google", &json!({ "minValiditySeconds": 7200 }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["accessToken"], provider.access_token(1));
    assert_eq!(provider.token_calls(), 1);
}

#[tokio::test]
async fn an_old_data_key_is_replaced_on_refresh() {
    let provider = FakeProvider::start().await;
    let first = TestApp::spawn_with_provider(&provider).await;
    let app = first
        .sibling_with(|config| config.refresh.data_key_max_age = Duration::ZERO)
        .await;
    app.put_token("alice", "google", &expired_body("old-key"))
        .await;
    let before: Vec<u8> = sqlx::query_scalar("select wrapped_data_key from integration_tokens")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(app.access_token("alice", "google").await.status(), 200);
    let after: Vec<u8> = sqlx::query_scalar("select wrapped_data_key from integration_tokens")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_ne!(before, after);
    assert_eq!(app.kms_calls(KmsOperation::GenerateDataKey).await, 2.0);
    assert_eq!(
        stored(&app, "alice").await["accessToken"],
        provider.access_token(1)
    );
}

#[tokio::test]
async fn two_hundred_concurrent_calls_over_three_instances_cause_one_provider_call() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::Slow(Duration::from_millis(500), &Mode::Success));
    let first = TestApp::spawn_with_provider(&provider).await;
    let second = first.sibling().await;
    let third = first.sibling().await;
    first
        .put_token("alice", "google", &expired_body("storm"))
        .await;

    let apps = [&first, &second, &third];
    let calls = (0..200).map(|i| apps[i % 3].access_token("alice", "google"));
    let responses = join_all(calls).await;

    let mut tokens = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        tokens.push(body["accessToken"].as_str().unwrap().to_owned());
    }
    assert_eq!(provider.token_calls(), 1);
    assert!(tokens.iter().all(|t| *t == provider.access_token(1)));

    // Each process joined its own flight; the other two found the fresh row under the lock.
    let mut joins = 0.0;
    let mut already_fresh = 0.0;
    for app in apps {
        joins += app
            .metric("token_store_refresh_single_flight_joins_total", &[])
            .await;
        already_fresh += app
            .metric(
                "token_store_refreshes_total",
                &[("outcome", RefreshOutcome::AlreadyFresh.as_str())],
            )
            .await;
    }
    assert!(joins > 0.0, "callers in one process shared a flight");
    assert!(already_fresh <= 2.0);
}

#[tokio::test]
async fn a_slow_refresh_does_not_hold_up_other_users() {
    let provider = FakeProvider::start().await;
    provider.set_mode_for(
        "slow-user",
        Mode::Slow(Duration::from_secs(4), &Mode::Success),
    );
    let first = TestApp::spawn_with_provider(&provider).await;
    let app = first
        .sibling_with(|config| {
            // A request pool of two connections: a refresh holding one would drain it.
            config.database.max_connections = 2;
            config.refresh.provider_timeout = Duration::from_secs(8);
            config.refresh.lock_timeout = Duration::from_secs(10);
        })
        .await;

    app.put_token("slow", "google", &expired_body("slow-user"))
        .await;
    app.put_token("other", "google", &expired_body("other-user"))
        .await;
    for i in 0..5 {
        app.put_token(&format!("reader-{i}"), "google", &token_body("reader"))
            .await;
    }

    let slow = {
        let api = app.api();
        tokio::spawn(async move { api.access_token("slow", "google").await.status() })
    };
    provider.wait_for_calls(1).await;

    for round in 0..4 {
        for i in 0..5 {
            let user = format!("reader-{i}");
            assert_eq!(
                app.access_token(&user, "google").await.status(),
                200,
                "round {round}"
            );
            assert_eq!(app.get_token(&user, "google").await.status(), 200);
        }
    }
    let other = app.access_token("other", "google").await;
    assert_eq!(other.status(), 200);
    assert!(
        !slow.is_finished(),
        "the other users finished before the slow refresh"
    );

    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(provider.token_calls(), 2);
}

#[tokio::test]
async fn invalid_grant_is_409_and_the_row_is_kept_for_reauthorization() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::InvalidGrant);
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &expired_body("dead"))
        .await;

    let response = app.access_token("alice", "google").await;
    assert_problem(response, 409, "reauthorization_required").await;
    assert_eq!(app.row_count().await, 1);
    let (status, failures, error) = row(&app, "alice").await;
    assert_eq!(status, TokenStatus::ReauthorizationRequired);
    assert_eq!(failures, 1);
    assert_eq!(error.as_deref(), Some("invalid_grant"));
    assert_eq!(
        stored(&app, "alice").await["status"],
        "reauthorization_required"
    );

    // A dead row is not sent to the provider again.
    let again = app.access_token("alice", "google").await;
    assert_problem(again, 409, "reauthorization_required").await;
    let forced = app.force_refresh("alice", "google").await;
    assert_problem(forced, 409, "reauthorization_required").await;
    assert_eq!(provider.token_calls(), 1);

    // A new consent (PUT) brings it back.
    app.put_token("alice", "google", &token_body("again")).await;
    assert_eq!(row(&app, "alice").await.0, TokenStatus::Active);
}

#[tokio::test]
async fn invalid_grant_for_a_replaced_refresh_token_does_not_mark_the_new_grant() {
    let provider = FakeProvider::start().await;
    provider.set_mode_for(
        "stale",
        Mode::Slow(Duration::from_millis(1500), &Mode::InvalidGrant),
    );
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &expired_body("stale"))
        .await;

    let pending = {
        let api = app.api();
        tokio::spawn(async move {
            let response = api.access_token("alice", "google").await;
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };
    provider.wait_for_calls(1).await;
    // While the provider is rejecting the old refresh token, the grant is replaced.
    let fresh = token_body("fresh-consent");
    assert_eq!(app.put_token("alice", "google", &fresh).await.status(), 204);

    // The refresh's outcome belonged to the replaced grant: the caller gets the new one.
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["accessToken"], fresh["accessToken"]);
    let (status, _, _) = row(&app, "alice").await;
    assert_eq!(
        status,
        TokenStatus::Active,
        "the new grant must not be marked dead"
    );
    assert_eq!(
        stored(&app, "alice").await["refreshToken"],
        fresh["refreshToken"]
    );
}

#[tokio::test]
async fn a_failed_refresh_token_no_longer_stored_marks_nothing() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::Rotate);
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &expired_body("rotated-away"))
        .await;
    let old_ct: Vec<u8> = sqlx::query_scalar("select refresh_token_ct from integration_tokens")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(app.access_token("alice", "google").await.status(), 200);

    // A replica that lost the race reports invalid_grant for the refresh token it had read.
    let alice = GrantKey::new(
        UserId::parse("alice").unwrap(),
        ProviderName::parse("google").unwrap(),
    );
    let marked = token_store::store::mark_reauthorization_required(
        &app.db,
        &alice,
        &old_ct,
        "invalid_grant",
    )
    .await
    .unwrap();
    assert!(!marked);
    assert_eq!(row(&app, "alice").await.0, TokenStatus::Active);
}

#[tokio::test]
async fn a_rotated_refresh_token_is_stored_and_the_old_one_never_sent_again() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::Rotate);
    let app = TestApp::spawn_with_provider(&provider).await;
    let body = expired_body("rotation");
    app.put_token("alice", "google", &body).await;

    assert_eq!(app.access_token("alice", "google").await.status(), 200);
    assert_eq!(
        stored(&app, "alice").await["refreshToken"],
        provider.refresh_token(1)
    );

    // Expire it again and force two more refreshes.
    sqlx::query("update integration_tokens set expires_at = now() - interval '1 minute'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(app.access_token("alice", "google").await.status(), 200);
    let forced = app.force_refresh("alice", "google").await;
    assert_eq!(forced.status(), 200);
    let forced: Value = forced.json().await.unwrap();
    assert_eq!(forced["accessToken"], provider.access_token(3));

    assert_eq!(
        provider.refresh_tokens_seen(),
        vec![
            body["refreshToken"].as_str().unwrap().to_owned(),
            provider.refresh_token(1),
            provider.refresh_token(2),
        ]
    );
    assert_eq!(
        stored(&app, "alice").await["refreshToken"],
        provider.refresh_token(3)
    );
}

#[tokio::test]
async fn a_provider_500_serves_the_still_valid_token_and_cools_down() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::ServerError);
    let app = TestApp::spawn_with_provider(&provider).await;
    let body = expiring_body("cooldown");
    app.put_token("alice", "google", &body).await;

    for _ in 0..3 {
        let response = app.access_token("alice", "google").await;
        assert_eq!(response.status(), 200);
        let got: Value = response.json().await.unwrap();
        assert_eq!(got["accessToken"], body["accessToken"]);
    }
    assert_eq!(
        provider.token_calls(),
        1,
        "no second call inside the cool-down"
    );
    let (status, failures, error) = row(&app, "alice").await;
    assert_eq!(
        (status, failures, error.as_deref()),
        (TokenStatus::Active, 1, Some("http_500"))
    );
    assert_eq!(
        app.metric(
            "token_store_refreshes_total",
            &[("outcome", RefreshOutcome::Transient.as_str())]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_provider_500_for_an_expired_token_is_503_with_retry_after() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::ServerError);
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &expired_body("down"))
        .await;

    for _ in 0..2 {
        let response = app.access_token("alice", "google").await;
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry_after), "{retry_after}");
        assert_problem(response, 503, "provider_unavailable").await;
    }
    assert_eq!(provider.token_calls(), 1);
    // The row is kept.
    assert_eq!(row(&app, "alice").await.0, TokenStatus::Active);
}

#[tokio::test]
async fn a_429_is_503_honouring_the_providers_retry_after() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::TooManyRequests {
        retry_after_seconds: 120,
    });
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &expired_body("throttled"))
        .await;

    let response = app.access_token("alice", "google").await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((100..=120).contains(&retry_after), "{retry_after}");
    assert_problem(response, 503, "provider_unavailable").await;
    let again = app.access_token("alice", "google").await;
    assert_problem(again, 503, "provider_unavailable").await;
    assert_eq!(provider.token_calls(), 1);
}

#[tokio::test]
async fn a_provider_timeout_is_503_and_recorded() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::Slow(Duration::from_secs(4), &Mode::Success));
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &expired_body("timeout"))
        .await;

    let response = app.access_token("alice", "google").await;
    assert_problem(response, 503, "provider_unavailable").await;
    let (_, failures, error) = row(&app, "alice").await;
    assert_eq!((failures, error.as_deref()), (1, Some("timeout")));
}

#[tokio::test]
async fn missing_scopes_are_listed_exactly() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    let mut body = token_body("scopes");
    body["scopes"] = json!(["openid", "email"]);
    app.put_token("alice", "google", &body).await;

    let wanted = json!({
        "scopes": ["email", "https://www.googleapis.com/auth/calendar", "openid", "drive"]
    });
    let response = app.access_token_with("alice", "google", &wanted).await;
    let problem = assert_problem(response, 403, "scope_expansion_required").await;
    assert_eq!(
        problem["missingScopes"],
        json!(["https://www.googleapis.com/auth/calendar", "drive"])
    );
    assert_eq!(provider.token_calls(), 0);
}

#[tokio::test]
async fn access_token_of_an_unknown_pair_is_404() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    let response = app.access_token("nobody", "google").await;
    assert_problem(response, 404, "token_not_found").await;
}

#[tokio::test]
async fn access_token_rejects_bad_bodies() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &token_body("b")).await;
    for body in [
        json!({ "scopes": "openid" }),
        json!({ "minValiditySeconds": -1 }),
        json!({ "minValiditySeconds": 100_000 }),
        json!({ "scopes": ["has space"] }),
    ] {
        let response = app.access_token_with("alice", "google", &body).await;
        assert_eq!(response.status(), 422, "{body}");
        assert_problem(response, 422, "invalid_request").await;
    }
    // No body at all is fine.
    let bare = app.access_token("alice", "google").await;
    assert_eq!(bare.status(), 200);
}

#[tokio::test]
async fn a_refresh_for_an_unconfigured_provider_is_422() {
    let app = TestApp::spawn().await;
    app.put_token("alice", "google", &expired_body("unconfigured"))
        .await;
    let response = app.access_token("alice", "google").await;
    assert_problem(response, 422, "provider_not_configured").await;
    let forced = app.force_refresh("alice", "google").await;
    assert_problem(forced, 422, "provider_not_configured").await;
    assert_eq!(row(&app, "alice").await.0, TokenStatus::Active);
}
