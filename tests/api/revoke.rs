//! Revocation: deleting a grant (or a user) sends its refresh token to the provider's
//! revocation endpoint, then deletes the row, whatever the provider answers.

use test_support::provider::FakeProvider;
use test_support::{token_body, TestApp};
use token_store::revoke::RevocationOutcome;

#[tokio::test]
async fn revoke_sends_the_token_to_the_provider_then_deletes_the_row() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    let body = token_body("revoke");
    app.put_token("alice", "google", &body).await;

    let response = app.delete_token("alice", "google").await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        provider.revoked(),
        vec![body["refreshToken"].as_str().unwrap().to_owned()]
    );
    assert_eq!(app.row_count().await, 0);
    assert_eq!(
        app.metric(
            "token_store_revocations_total",
            &[("outcome", RevocationOutcome::Revoked.as_str())]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_failing_revoke_endpoint_still_deletes_and_is_counted() {
    let provider = FakeProvider::start().await;
    provider.fail_revocations(503);
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &token_body("revoke-fails"))
        .await;

    let response = app.delete_token("alice", "google").await;
    assert_eq!(response.status(), 204);
    assert_eq!(app.row_count().await, 0);
    assert_eq!(
        app.metric(
            "token_store_revocations_total",
            &[
                ("provider", "google"),
                ("outcome", RevocationOutcome::Failed.as_str())
            ]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn erasing_a_user_revokes_each_grant() {
    let provider = FakeProvider::start().await;
    let first = TestApp::spawn_with_provider(&provider).await;
    let mut microsoft = provider.settings();
    microsoft.kind = Some(token_store::config::ProviderKind::Oauth2);
    microsoft.rotates_refresh_tokens = true;
    let app = first
        .sibling_with(|config| {
            config.providers.insert("microsoft".into(), microsoft);
        })
        .await;

    let google = token_body("g");
    let ms = token_body("m");
    app.put_token("alice", "google", &google).await;
    app.put_token("alice", "microsoft", &ms).await;
    app.put_token("bob", "google", &token_body("b")).await;

    let response = app.delete_user("alice").await;
    assert_eq!(response.status(), 204);
    let mut revoked = provider.revoked();
    revoked.sort();
    let mut expected = vec![
        google["refreshToken"].as_str().unwrap().to_owned(),
        ms["refreshToken"].as_str().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(revoked, expected);
    assert_eq!(app.row_count().await, 1);
}
