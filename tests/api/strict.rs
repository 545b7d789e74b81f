//! Strict input everywhere, permissions before validation, and metric labels that no
//! caller can multiply.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use test_support::provider::{FakeProvider, Mode};
use test_support::{
    assert_problem, token_body, Api, TestApp, FULL_KEY, READ_KEY, RW_KEY, WRITE_KEY,
};
use token_store::revoke::RevocationOutcome;

#[tokio::test]
async fn a_put_with_an_unknown_field_is_422_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let mut body = token_body("snake");
    let refresh = body
        .as_object_mut()
        .unwrap()
        .remove("refreshToken")
        .unwrap();
    body["refresh_token"] = refresh;
    let response = app.put_token("alice", "google", &body).await;
    let problem = assert_problem(response, 422, "invalid_request").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("refresh_token"),
        "{problem}"
    );
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test]
async fn unmatched_routes_and_wrong_methods_are_problem_json() {
    let app = TestApp::spawn().await;
    let missing = app
        .http
        .get(format!("{}/v1/nothing/here", app.address))
        .bearer_auth(FULL_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(missing, 404, "invalid_request").await;

    let wrong = app
        .http
        .patch(app.token_url("alice", "google"))
        .bearer_auth(FULL_KEY)
        .send()
        .await
        .unwrap();
    let allow = wrong.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("PUT") && allow.contains("DELETE"), "{allow}");
    assert_problem(wrong, 405, "invalid_request").await;
}

#[tokio::test]
async fn two_authorization_headers_are_400() {
    let app = TestApp::spawn().await;
    app.put_token("alice", "google", &token_body("two")).await;
    let response = app
        .http
        .get(app.token_url("alice", "google"))
        .header("authorization", format!("Bearer {FULL_KEY}"))
        .header("authorization", "Bearer not-a-key")
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "invalid_request").await;
}

/// Sends one raw HTTP/1.1 request (no URL normalisation on the way) and returns the
/// status and the body.
async fn raw_request(app: &TestApp, request_line: &str, body: &str) -> (u16, String) {
    let addr = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{request_line}\r\nHost: {addr}\r\nAuthorization: Bearer {FULL_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    (status, response)
}

#[tokio::test]
async fn dot_and_dot_dot_are_not_user_ids() {
    let app = TestApp::spawn().await;
    let body = token_body("dots").to_string();
    for user in [".", ".."] {
        let put = format!("PUT /v1/users/{user}/tokens/google HTTP/1.1");
        let (status, response) = raw_request(&app, &put, &body).await;
        assert_eq!(status, 422, "{response}");
        assert!(response.contains("\"invalid_request\""), "{response}");
    }
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test]
async fn the_permission_is_checked_before_any_input_is_validated() {
    let app = TestApp::spawn().await;
    let bad_user = "u".repeat(200);
    let bad_user_url = app.token_url(&bad_user, "google");
    // A reader writing garbage to an invalid user learns only that it may not write.
    let put = app
        .http
        .put(&bad_user_url)
        .bearer_auth(READ_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(put, 403, "forbidden").await;
    let refresh = app
        .with_key(READ_KEY)
        .force_refresh(&bad_user, "google")
        .await;
    assert_problem(refresh, 403, "forbidden").await;
    // With the permission, the same input is a 422.
    let put = app
        .with_key(RW_KEY)
        .put_token(&bad_user, "google", &token_body("x"))
        .await;
    assert_problem(put, 422, "invalid_request").await;
}

#[tokio::test]
async fn refresh_needs_refresh_and_deletes_need_revoke() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::Success);
    let app = TestApp::spawn_with_provider(&provider).await;
    app.put_token("alice", "google", &token_body("perm")).await;
    let refresh = app
        .with_key(READ_KEY)
        .force_refresh("alice", "google")
        .await;
    assert_problem(refresh, 403, "forbidden").await;
    assert_eq!(provider.token_calls(), 0);
    let writer = app.with_key(WRITE_KEY);
    for delete in [
        writer.delete_token("alice", "google").await,
        writer.delete_user("alice").await,
    ] {
        assert_problem(delete, 403, "forbidden").await;
    }
    assert_eq!(app.row_count().await, 1);
    assert!(provider.revoked().is_empty());
}

#[tokio::test]
async fn provider_names_and_methods_of_callers_never_become_metric_labels() {
    let app = TestApp::spawn().await;
    for n in 0..5 {
        let provider = format!("invented-{n}");
        app.put_token("alice", &provider, &token_body("label"))
            .await;
        app.force_refresh("alice", &provider).await;
        app.access_token_with("alice", &provider, &json!({"minValiditySeconds": 86400}))
            .await;
        app.delete_token("alice", &provider).await;
    }
    let odd_method = reqwest::Method::from_bytes(b"INVENTEDMETHOD").unwrap();
    app.http
        .request(odd_method, app.token_url("alice", "google"))
        .bearer_auth(FULL_KEY)
        .send()
        .await
        .unwrap();

    let metrics = app.metrics().await.text().await.unwrap();
    assert!(!metrics.contains("invented"), "{metrics}");
    assert!(!metrics.contains("INVENTEDMETHOD"), "{metrics}");
    assert!(metrics.contains(r#"provider="unconfigured""#), "{metrics}");
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
    let refreshes: Value = json!(
        app.metric(
            "token_store_refreshes_total",
            &[
                ("provider", "unconfigured"),
                ("outcome", RevocationOutcome::NotConfigured.as_str())
            ]
        )
        .await
    );
    assert_eq!(refreshes, json!(10.0));
}

#[tokio::test]
async fn with_a_metrics_listener_metrics_are_served_there_only() {
    let app = TestApp::spawn_configured(|config| {
        config.server.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let main = app.metrics().await;
    assert_problem(main, 404, "invalid_request").await;
    let metrics = app.metrics_address.as_deref().expect("a metrics listener");
    let scraped = app.metrics_on_metrics_listener().await;
    assert_eq!(scraped.status(), 200);
    assert!(scraped
        .text()
        .await
        .unwrap()
        .contains("token_store_http_requests_total"));
    let other = Api::new(app.http.clone(), metrics, Some(FULL_KEY))
        .get_token("alice", "google")
        .await;
    assert_eq!(
        other.status(),
        404,
        "the metrics listener serves nothing else"
    );
}

#[tokio::test]
async fn what_the_contract_calls_valid_is_accepted() {
    let app = TestApp::spawn().await;
    // JSON Schema counts 1.0 as an integer, and a JavaScript caller may send one.
    let mut body = token_body("whole");
    let expires = body["expiresAt"].as_i64().unwrap();
    body["expiresAt"] = json!(expires as f64);
    assert_eq!(app.put_token("alice", "google", &body).await.status(), 204);
    let read: Value = app.get_token("alice", "google").await.json().await.unwrap();
    assert_eq!(read["expiresAt"], json!(expires));
    body["expiresAt"] = json!(expires as f64 + 0.5);
    let fraction = app.put_token("alice", "google", &body).await;
    assert_problem(fraction, 422, "invalid_request").await;
    // The contract's largest expiresAt is stored.
    body["expiresAt"] = json!(8_210_266_876_799_999_i64);
    assert_eq!(app.put_token("alice", "google", &body).await.status(), 204);
    body["expiresAt"] = json!(8_210_266_876_800_000_i64);
    let beyond = app.put_token("alice", "google", &body).await;
    assert_problem(beyond, 422, "invalid_request").await;
    // An access-token body of `null` is no body.
    let access = app
        .http
        .post(format!("{}/access-token", app.token_url("alice", "google")))
        .bearer_auth(FULL_KEY)
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(access.status(), 200);
}

#[tokio::test]
async fn bodies_must_be_json_objects() {
    let app = TestApp::spawn().await;
    app.put_token("alice", "google", &token_body("object"))
        .await;
    let access = app
        .http
        .post(format!("{}/access-token", app.token_url("alice", "google")))
        .bearer_auth(FULL_KEY)
        .header("content-type", "application/json")
        .body("[null, null]")
        .send()
        .await
        .unwrap();
    assert_problem(access, 422, "invalid_request").await;
    let body = token_body("array");
    let as_array = json!([
        body["accessToken"],
        body["refreshToken"],
        body["expiresAt"],
        body["scopes"]
    ]);
    let put = app.put_token("bob", "google", &as_array).await;
    assert_problem(put, 422, "invalid_request").await;
    assert_eq!(app.row_count().await, 1);
}
