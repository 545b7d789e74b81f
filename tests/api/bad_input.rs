//! Bad input gets a clear 4xx problem and changes nothing.

use serde_json::{json, Value};

use test_support::{assert_problem, token_body, TestApp, FULL_KEY};

async fn snapshot(app: &TestApp) -> Vec<(String, String, i64, Vec<u8>)> {
    sqlx::query_as(
        "select user_id, provider, version, access_token_ct from integration_tokens order by id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// `PUT` with a body as given (not necessarily JSON), which no `TestApp` method sends.
async fn put_raw(
    app: &TestApp,
    user: &str,
    provider: &str,
    body: String,
    json: bool,
) -> reqwest::Response {
    let mut request = app
        .http
        .put(app.token_url(user, provider))
        .bearer_auth(FULL_KEY)
        .body(body);
    if json {
        request = request.header("content-type", "application/json");
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn bad_input_is_a_4xx_problem_and_the_table_is_unchanged() {
    let app = TestApp::spawn().await;
    app.put_token("alice", "google", &token_body("existing"))
        .await;
    let before = snapshot(&app).await;

    let valid = token_body("valid").to_string();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut body = token_body("edited");
        f(&mut body);
        body.to_string()
    };
    let long_user = "a".repeat(129);
    let long_provider = "g".repeat(33);
    let cases: Vec<(&str, &str, &str, String, bool, u16)> = vec![
        (
            "user id with a space",
            "bad%20user",
            "google",
            valid.clone(),
            true,
            422,
        ),
        (
            "user id too long",
            &long_user,
            "google",
            valid.clone(),
            true,
            422,
        ),
        (
            "user id with a slash",
            "a%2Fb",
            "google",
            valid.clone(),
            true,
            422,
        ),
        (
            "provider in capitals",
            "alice",
            "Google",
            valid.clone(),
            true,
            422,
        ),
        (
            "provider too long",
            "alice",
            &long_provider,
            valid.clone(),
            true,
            422,
        ),
        (
            "malformed JSON",
            "alice",
            "google",
            "{\"accessToken\": ".into(),
            true,
            400,
        ),
        (
            "not JSON content",
            "alice",
            "google",
            valid.clone(),
            false,
            415,
        ),
        (
            "missing accessToken",
            "alice",
            "google",
            with(&|b| {
                b.as_object_mut().unwrap().remove("accessToken");
            }),
            true,
            422,
        ),
        (
            "missing expiresAt",
            "alice",
            "google",
            with(&|b| {
                b.as_object_mut().unwrap().remove("expiresAt");
            }),
            true,
            422,
        ),
        (
            "missing scopes",
            "alice",
            "google",
            with(&|b| {
                b.as_object_mut().unwrap().remove("scopes");
            }),
            true,
            422,
        ),
        (
            "expiresAt as a string",
            "alice",
            "google",
            with(&|b| b["expiresAt"] = json!("tomorrow")),
            true,
            422,
        ),
        (
            "scopes as a string",
            "alice",
            "google",
            with(&|b| b["scopes"] = json!("openid email")),
            true,
            422,
        ),
        (
            "negative expiresAt",
            "alice",
            "google",
            with(&|b| b["expiresAt"] = json!(-5)),
            true,
            422,
        ),
        (
            "empty accessToken",
            "alice",
            "google",
            with(&|b| b["accessToken"] = json!("")),
            true,
            422,
        ),
        (
            "oversized accessToken",
            "alice",
            "google",
            with(&|b| b["accessToken"] = json!("x".repeat(17 * 1024))),
            true,
            422,
        ),
        (
            "scope with a space",
            "alice",
            "google",
            with(&|b| b["scopes"] = json!(["has space"])),
            true,
            422,
        ),
        (
            "too many scopes",
            "alice",
            "google",
            with(&|b| b["scopes"] = json!((0..101).map(|i| format!("s{i}")).collect::<Vec<_>>())),
            true,
            422,
        ),
        (
            "oversized body",
            "alice",
            "google",
            with(&|b| b["padding"] = json!("x".repeat(100 * 1024))),
            true,
            413,
        ),
    ];

    for (name, user, provider, body, json, status) in cases {
        let response = put_raw(&app, user, provider, body, json).await;
        assert_eq!(response.status().as_u16(), status, "{name}");
        let body = assert_problem(response, status, "invalid_request").await;
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: {body}"
        );
    }
    assert_eq!(snapshot(&app).await, before);
}

#[tokio::test]
async fn a_wrong_type_error_names_the_field_without_echoing_the_value() {
    let app = TestApp::spawn().await;
    let mut body = token_body("echo");
    body["expiresAt"] = json!("ya29.looks-like-a-secret");
    let response = put_raw(&app, "alice", "google", body.to_string(), true).await;
    let problem = assert_problem(response, 422, "invalid_request").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("expiresAt"), "{detail}");
    assert!(!detail.contains("looks-like-a-secret"), "{detail}");
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test]
async fn invalid_ids_on_reads_and_deletes_are_rejected() {
    let app = TestApp::spawn().await;
    app.put_token("alice", "google", &token_body("kept")).await;
    let response = app.get_token("bad%20user", "google").await;
    assert_problem(response, 422, "invalid_request").await;
    let response = app.delete_user(&"x".repeat(200)).await;
    assert_problem(response, 422, "invalid_request").await;
    assert_eq!(app.row_count().await, 1);
}
