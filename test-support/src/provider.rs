//! A fake OAuth provider: a real HTTP server on loopback that behaves like Google's token
//! and revoke endpoints. It checks the client's credentials, parses the form, answers per
//! [`Mode`] and counts its calls. [`Mode::Raw`] answers whatever a test wants (a misbehaving
//! provider); [`Mode::Slow`] answers after a delay (a real provider takes a few hundred
//! milliseconds, which the benchmark imitates).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::json;
use token_store::config::ProviderSettings;

/// The OAuth client the server accepts, and [`FakeProvider::settings`] configures.
pub const CLIENT_ID: &str = "test-client.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "GOCSPX-test-client-secret";

#[derive(Debug, Clone)]
pub enum Mode {
    /// A new access token, the refresh token kept (Google's usual answer).
    Success,
    /// A new access token and a new refresh token (Microsoft's answer).
    Rotate,
    /// 400 `invalid_grant`.
    InvalidGrant,
    /// 500.
    ServerError,
    /// 429 with `Retry-After`.
    TooManyRequests { retry_after_seconds: u64 },
    /// Waits, then answers as the inner mode.
    Slow(Duration, &'static Mode),
    /// Exactly this answer.
    Raw(Arc<RawAnswer>),
}

/// An answer of a test's choosing: status, headers and body as given.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Sent in 16 KiB chunks without `Content-Length` (`Transfer-Encoding: chunked`).
    pub chunked: bool,
}

impl Mode {
    /// `body` as JSON with `status`, sent with its `Content-Length`.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self::raw_json(status, body, false)
    }

    /// `body` as JSON with `status`, sent in chunks without `Content-Length`.
    pub fn chunked_json(status: u16, body: &serde_json::Value) -> Self {
        Self::raw_json(status, body, true)
    }

    fn raw_json(status: u16, body: &serde_json::Value, chunked: bool) -> Self {
        Self::Raw(Arc::new(RawAnswer {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.to_string().into_bytes(),
            chunked,
        }))
    }
}

#[derive(Default)]
struct Shared {
    default_mode: Mutex<Option<Mode>>,
    /// Modes for refresh tokens containing a substring.
    modes_for: Mutex<Vec<(String, Mode)>>,
    token_calls: AtomicUsize,
    issued: AtomicUsize,
    refresh_tokens_seen: Mutex<Vec<String>>,
    revoked: Mutex<Vec<String>>,
    revoke_status: Mutex<Option<u16>>,
    prefix: String,
}

/// The server, serving on the runtime that started it until that runtime ends.
pub struct FakeProvider {
    /// `http://127.0.0.1:<port>`; the endpoints are `/token` and `/revoke`.
    pub url: String,
    shared: Arc<Shared>,
}

impl FakeProvider {
    /// Listens on a free loopback port; answers [`Mode::Success`] until told otherwise.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            prefix: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            ..Shared::default()
        });
        let app = Router::new()
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, shared }
    }

    /// Settings that point a provider at this server.
    pub fn settings(&self) -> ProviderSettings {
        ProviderSettings {
            kind: None,
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned().into(),
            token_endpoint: Some(format!("{}/token", self.url)),
            revoke_endpoint: Some(format!("{}/revoke", self.url)),
            client_auth: None,
            rotates_refresh_tokens: false,
            keep_alive_after: Duration::from_secs(7 * 24 * 3600),
            revoke_superseded: true,
        }
    }

    /// The same settings as a configuration file's `[providers.<name>]` table, for a
    /// binary under test.
    pub fn toml(&self, name: &str) -> String {
        format!(
            "[providers.{name}]\n\
             client_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\n\
             token_endpoint = \"{url}/token\"\n\
             revoke_endpoint = \"{url}/revoke\"\n",
            url = self.url
        )
    }

    /// How the token endpoint answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.default_mode.lock().unwrap() = Some(mode);
    }

    /// How the token endpoint answers a refresh token containing `refresh_token_part`
    /// (before the mode [`set_mode`](Self::set_mode) gave).
    pub fn set_mode_for(&self, refresh_token_part: &str, mode: Mode) {
        self.shared
            .modes_for
            .lock()
            .unwrap()
            .push((refresh_token_part.to_owned(), mode));
    }

    /// The revoke endpoint answers `status` from now on.
    pub fn fail_revocations(&self, status: u16) {
        *self.shared.revoke_status.lock().unwrap() = Some(status);
    }

    /// Calls of the token endpoint so far, whatever they were answered.
    pub fn token_calls(&self) -> usize {
        self.shared.token_calls.load(Ordering::SeqCst)
    }

    /// The refresh tokens the token endpoint was sent, in order.
    pub fn refresh_tokens_seen(&self) -> Vec<String> {
        self.shared.refresh_tokens_seen.lock().unwrap().clone()
    }

    /// The tokens the revoke endpoint was sent, in order.
    pub fn revoked(&self) -> Vec<String> {
        self.shared.revoked.lock().unwrap().clone()
    }

    /// Waits (bounded) until the token endpoint has been called `n` times.
    pub async fn wait_for_calls(&self, n: usize) {
        for _ in 0..200 {
            if self.token_calls() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the provider saw {} calls, expected {n}",
            self.token_calls()
        );
    }

    /// The access token the n-th (1-based) successful answer carries.
    pub fn access_token(&self, n: usize) -> String {
        format!("ya29.fresh-{}-{n}", self.shared.prefix)
    }

    /// The refresh token the n-th (1-based) successful [`Mode::Rotate`] answer carries.
    pub fn refresh_token(&self, n: usize) -> String {
        format!("1//rotated-{}-{n}", self.shared.prefix)
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": "test provider says no" })),
    )
        .into_response()
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    shared.token_calls.fetch_add(1, Ordering::SeqCst);
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let Some(refresh_token) = form.get("refresh_token").cloned() else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    shared
        .refresh_tokens_seen
        .lock()
        .unwrap()
        .push(refresh_token.clone());
    let mode = shared
        .modes_for
        .lock()
        .unwrap()
        .iter()
        .find(|(part, _)| refresh_token.contains(part.as_str()))
        .map(|(_, mode)| mode.clone())
        .or_else(|| shared.default_mode.lock().unwrap().clone())
        .unwrap_or(Mode::Success);
    answer(&shared, mode).await
}

async fn answer(shared: &Shared, mut mode: Mode) -> Response {
    if let Mode::Slow(delay, then) = mode {
        tokio::time::sleep(delay).await;
        mode = then.clone();
    }
    match mode {
        Mode::Success | Mode::Rotate => {
            let n = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
            let mut body = json!({
                "access_token": format!("ya29.fresh-{}-{n}", shared.prefix),
                "expires_in": 3599,
                "token_type": "Bearer",
            });
            if matches!(mode, Mode::Rotate) {
                body["refresh_token"] = json!(format!("1//rotated-{}-{n}", shared.prefix));
            }
            Json(body).into_response()
        }
        Mode::InvalidGrant => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
        Mode::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "backend error").into_response(),
        Mode::TooManyRequests {
            retry_after_seconds,
        } => {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", retry_after_seconds.into());
            (
                StatusCode::TOO_MANY_REQUESTS,
                headers,
                Json(json!({ "error": "rate_limited" })),
            )
                .into_response()
        }
        Mode::Raw(raw) => raw_answer(&raw),
        Mode::Slow(..) => unreachable!("nested Slow"),
    }
}

fn raw_answer(raw: &RawAnswer) -> Response {
    let body = if raw.chunked {
        let chunks: Vec<Result<Bytes, Infallible>> = raw
            .body
            .chunks(16 * 1024)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    } else {
        Body::from(raw.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(raw.status).unwrap();
    for (name, value) in &raw.headers {
        response.headers_mut().append(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    response
}

async fn revoke(
    State(shared): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(status) = *shared.revoke_status.lock().unwrap() {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    match form.get("token") {
        Some(token) => {
            shared.revoked.lock().unwrap().push(token.clone());
            StatusCode::OK.into_response()
        }
        None => oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
    }
}
