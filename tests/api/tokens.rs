use serde_json::Value;

use test_support::{assert_problem, token_body, TestApp};

#[tokio::test]
async fn put_then_get_returns_what_was_stored() {
    let app = TestApp::spawn().await;
    let body = token_body("roundtrip");

    let put = app.put_token("user-1", "google", &body).await;
    assert_eq!(put.status().as_u16(), 204);

    let got = app.get_token("user-1", "google").await;
    assert_eq!(got.status().as_u16(), 200);
    let got: Value = got.json().await.unwrap();
    assert_eq!(got["accessToken"], body["accessToken"]);
    assert_eq!(got["refreshToken"], body["refreshToken"]);
    assert_eq!(got["expiresAt"], body["expiresAt"]);
    assert_eq!(got["scopes"], body["scopes"]);
    assert_eq!(got["provider"], "google");
    assert_eq!(got["status"], "active");
}

#[tokio::test]
async fn put_replaces_the_stored_token() {
    let app = TestApp::spawn().await;
    app.put_token("user-1", "google", &token_body("first"))
        .await;
    let second = token_body("second");
    assert_eq!(
        app.put_token("user-1", "google", &second).await.status(),
        204
    );

    let got: Value = app
        .get_token("user-1", "google")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["accessToken"], second["accessToken"]);
    assert_eq!(app.row_count().await, 1);
    let version: i64 = sqlx::query_scalar("select version from integration_tokens")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(version, 2);
}

#[tokio::test]
async fn a_token_without_refresh_token_reads_back_without_one() {
    let app = TestApp::spawn().await;
    let mut body = token_body("no-refresh");
    body.as_object_mut().unwrap().remove("refreshToken");
    assert_eq!(app.put_token("u", "google", &body).await.status(), 204);
    let got: Value = app.get_token("u", "google").await.json().await.unwrap();
    assert_eq!(got["accessToken"], body["accessToken"]);
    assert!(got.get("refreshToken").is_none(), "{got}");
}

#[tokio::test]
async fn get_of_an_unknown_pair_is_token_not_found() {
    let app = TestApp::spawn().await;
    app.put_token("user-1", "google", &token_body("x")).await;

    let missing_user = app.get_token("user-2", "google").await;
    assert_problem(missing_user, 404, "token_not_found").await;
    let missing_provider = app.get_token("user-1", "microsoft").await;
    assert_problem(missing_provider, 404, "token_not_found").await;
}

#[tokio::test]
async fn delete_removes_one_token_and_delete_all_erases_the_user() {
    let app = TestApp::spawn().await;
    app.put_token("u1", "google", &token_body("a")).await;
    app.put_token("u1", "microsoft", &token_body("b")).await;
    app.put_token("u1", "slack", &token_body("c")).await;
    app.put_token("u2", "google", &token_body("d")).await;

    let deleted = app.delete_token("u1", "google").await;
    assert_eq!(deleted.status().as_u16(), 204);
    assert_problem(app.get_token("u1", "google").await, 404, "token_not_found").await;
    assert_eq!(app.get_token("u1", "microsoft").await.status(), 200);

    let erased = app.delete_user("u1").await;
    assert_eq!(erased.status().as_u16(), 204);
    let left: Vec<String> = sqlx::query_scalar("select user_id from integration_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(left, vec!["u2".to_owned()]);
}

#[tokio::test]
async fn requests_are_counted_by_route_and_status() {
    let app = TestApp::spawn().await;
    app.put_token("u", "google", &token_body("m")).await;
    app.get_token("u", "google").await;
    app.get_token("nobody", "google").await;
    let route = "/v1/users/{userId}/tokens/{provider}";
    let ok = app
        .metric(
            "token_store_http_requests_total",
            &[("route", route), ("method", "GET"), ("status", "200")],
        )
        .await;
    let not_found = app
        .metric(
            "token_store_http_requests_total",
            &[("route", route), ("method", "GET"), ("status", "404")],
        )
        .await;
    assert_eq!((ok, not_found), (1.0, 1.0));
}
