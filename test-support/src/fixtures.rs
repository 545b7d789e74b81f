//! Request bodies and response checks the tests share.

use serde_json::{json, Value};

/// A `PUT` body, valid for an hour, with unique, recognisable secrets (`tag` is in both
/// tokens, so a leak names its test).
pub fn token_body(tag: &str) -> Value {
    json!({
        "accessToken": format!("ya29.access-{tag}-{}", uuid::Uuid::new_v4().simple()),
        "refreshToken": format!("1//refresh-{tag}-{}", uuid::Uuid::new_v4().simple()),
        "expiresAt": chrono::Utc::now().timestamp_millis() + 3_600_000,
        "scopes": ["openid", "https://www.googleapis.com/auth/gmail.readonly"],
    })
}

/// A [`token_body`] whose access token expired a minute ago.
pub fn expired_body(tag: &str) -> Value {
    let mut body = token_body(tag);
    body["expiresAt"] = json!(chrono::Utc::now().timestamp_millis() - 60_000);
    body
}

/// A [`token_body`] still valid for a minute: inside the refresh buffer (5 minutes).
pub fn expiring_body(tag: &str) -> Value {
    let mut body = token_body(tag);
    body["expiresAt"] = json!(chrono::Utc::now().timestamp_millis() + 60_000);
    body
}

/// Asserts an `application/problem+json` answer with `status` and `code`; its body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    body
}
