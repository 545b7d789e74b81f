//! A refresh racing a delete or a replace of the same grant ends in a defined answer: the
//! delete wins (404, nothing resurrected), the replacement is served; never a 500.

use std::time::Duration;

use serde_json::Value;

use test_support::provider::{FakeProvider, Mode};
use test_support::{assert_problem, expired_body, token_body, TestApp};

/// Starts `POST .../{route}` for alice in the background, once the provider is slow.
async fn start_refresh(
    app: &TestApp,
    provider: &FakeProvider,
    route: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    provider.set_mode(Mode::Slow(Duration::from_millis(800), &Mode::Success));
    let api = app.api();
    let route = route.to_owned();
    let pending = tokio::spawn(async move {
        match route.as_str() {
            "access-token" => api.access_token("alice", "google").await,
            "refresh" => api.force_refresh("alice", "google").await,
            other => unreachable!("no route {other}"),
        }
    });
    provider.wait_for_calls(1).await;
    pending
}

#[tokio::test]
async fn a_refresh_racing_a_delete_ends_in_404_and_nothing_is_resurrected() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    for route in ["access-token", "refresh"] {
        app.put_token("alice", "google", &expired_body(route)).await;
        let pending = start_refresh(&app, &provider, route).await;
        let deleted = app.delete_token("alice", "google").await;
        assert_eq!(deleted.status(), 204);
        assert_problem(pending.await.unwrap(), 404, "token_not_found").await;
        let read = app.get_token("alice", "google").await;
        assert_problem(read, 404, "token_not_found").await;
        assert_eq!(
            app.row_count().await,
            0,
            "{route}: the refresh resurrected the grant"
        );
    }
}

#[tokio::test]
async fn a_successful_refresh_racing_a_new_consent_serves_and_keeps_the_new_consent() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    for route in ["access-token", "refresh"] {
        app.put_token("alice", "google", &expired_body(route)).await;
        let pending = start_refresh(&app, &provider, route).await;
        let fresh = token_body("new-consent");
        assert_eq!(app.put_token("alice", "google", &fresh).await.status(), 204);

        let answered = pending.await.unwrap();
        assert_eq!(answered.status(), 200, "{route}");
        let answered: Value = answered.json().await.unwrap();
        assert_eq!(answered["accessToken"], fresh["accessToken"], "{route}");
        let stored: Value = app.get_token("alice", "google").await.json().await.unwrap();
        assert_eq!(stored["accessToken"], fresh["accessToken"], "{route}");
        assert_eq!(stored["refreshToken"], fresh["refreshToken"], "{route}");
    }
    // The new consent was valid for an hour: nobody refreshed it.
    assert_eq!(provider.token_calls(), 2);
}

#[tokio::test]
async fn a_dead_grant_is_refused_even_while_its_access_token_is_valid() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::InvalidGrant);
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &token_body("valid-for-an-hour"))
        .await;
    let forced = app.force_refresh("alice", "google").await;
    assert_problem(forced, 409, "reauthorization_required").await;
    let access = app.access_token("alice", "google").await;
    assert_problem(access, 409, "reauthorization_required").await;
    assert_eq!(provider.token_calls(), 1);
}
