use serde_json::Value;

use test_support::{assert_problem, token_body, TestApp, FULL_KEY, READ_KEY, RW_KEY};

#[tokio::test]
async fn a_request_without_a_key_is_401() {
    let app = TestApp::spawn().await;
    let response = app.without_key().get_token("u", "google").await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_problem(response, 401, "unauthorized").await;

    let basic = app
        .http
        .get(app.token_url("u", "google"))
        .header("authorization", format!("Basic {FULL_KEY}"))
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401, "unauthorized").await;
}

#[tokio::test]
async fn an_unknown_key_is_401() {
    let app = TestApp::spawn().await;
    let response = app
        .with_key("not-a-configured-key")
        .get_token("u", "google")
        .await;
    assert_problem(response, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_key_without_the_permission_is_403_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let put = app
        .with_key(READ_KEY)
        .put_token("u", "google", &token_body("forbidden"))
        .await;
    assert_problem(put, 403, "forbidden").await;
    assert_eq!(app.row_count().await, 0);

    app.put_token("u", "google", &token_body("kept")).await;
    let delete = app.with_key(READ_KEY).delete_token("u", "google").await;
    assert_problem(delete, 403, "forbidden").await;
    assert_eq!(app.row_count().await, 1);
}

#[tokio::test]
async fn the_refresh_token_is_withheld_without_read_refresh_token() {
    let app = TestApp::spawn().await;
    let body = token_body("withheld");
    app.put_token("u", "google", &body).await;

    for key in [RW_KEY, READ_KEY] {
        let got: Value = app
            .with_key(key)
            .get_token("u", "google")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(got["accessToken"], body["accessToken"]);
        assert!(got.get("refreshToken").is_none(), "{got}");
    }
    let full: Value = app.get_token("u", "google").await.json().await.unwrap();
    assert_eq!(full["refreshToken"], body["refreshToken"]);
}
