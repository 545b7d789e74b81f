//! A webhook receiver: a real HTTP server on loopback that verifies each delivery's
//! Standard Webhooks signature with the `standardwebhooks` crate (the one the service signs
//! with) and keeps what it accepted. It can be down (answering 503) for a while, or hang.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use serde_json::Value;
use standardwebhooks::Webhook;
use token_store::config::WebhookEndpoint;

/// A delivery the receiver accepted: its `webhook-id` and body.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub body: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverMode {
    /// Verifies and answers 204.
    Up,
    /// Answers 503 without looking.
    Down,
    /// Holds the request and never answers.
    Hang,
}

struct Shared {
    verifier: Webhook,
    mode: AtomicU8,
    received: Mutex<Vec<Received>>,
    refused_signatures: AtomicUsize,
    requests: AtomicUsize,
}

pub struct WebhookReceiver {
    /// `http://127.0.0.1:<port>/hooks`.
    pub url: String,
    /// The signing secret, `whsec_` and base64.
    pub secret: String,
    shared: Arc<Shared>,
}

impl WebhookReceiver {
    /// Listens on a free loopback port, up.
    pub async fn start() -> Self {
        let key: [u8; 24] = rand_bytes();
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        let shared = Arc::new(Shared {
            verifier: Webhook::new(&secret).expect("a valid secret"),
            mode: AtomicU8::new(0),
            received: Mutex::new(Vec::new()),
            refused_signatures: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/hooks", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            secret,
            shared,
        }
    }

    /// The endpoint's configuration for the service.
    pub fn endpoint(&self) -> WebhookEndpoint {
        WebhookEndpoint {
            url: self.url.clone(),
            secret: self.secret.clone().into(),
        }
    }

    pub fn set_mode(&self, mode: ReceiverMode) {
        let code = match mode {
            ReceiverMode::Up => 0,
            ReceiverMode::Down => 1,
            ReceiverMode::Hang => 2,
        };
        self.shared.mode.store(code, Ordering::SeqCst);
    }

    /// What was accepted, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Requests of any kind.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Deliveries whose signature did not verify.
    pub fn refused_signatures(&self) -> usize {
        self.shared.refused_signatures.load(Ordering::SeqCst)
    }

    /// Waits until `done` holds for what was received, for at most `limit`.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if done(&self.received()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done(&self.received())
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    match shared.mode.load(Ordering::SeqCst) {
        1 => return StatusCode::SERVICE_UNAVAILABLE,
        2 => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        _ => {}
    }
    if shared.verifier.verify(&body, &headers).is_err() {
        shared.refused_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let Ok(body) = serde_json::from_slice(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    shared.received.lock().unwrap().push(Received { id, body });
    StatusCode::NO_CONTENT
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(16) {
        let random = uuid::Uuid::new_v4().into_bytes();
        chunk.copy_from_slice(&random[..chunk.len()]);
    }
    out
}
