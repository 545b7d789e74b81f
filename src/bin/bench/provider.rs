//! A fake Google token endpoint on loopback: answers every refresh grant with a new access
//! token after a fixed delay (a real provider takes a few hundred milliseconds), and counts
//! the calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

pub const CLIENT_ID: &str = "bench-client.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "GOCSPX-bench-client-secret";

pub struct FakeProvider {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    delay: Duration,
    calls: AtomicU64,
}

impl FakeProvider {
    pub async fn start(delay: Duration) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            delay,
            calls: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/token", post(token))
            .route("/revoke", post(|| async {}))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { addr, shared })
    }

    /// Refresh grants answered so far.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }
}

async fn token(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let n = shared.calls.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(shared.delay).await;
    Json(json!({
        "access_token": format!("ya29.bench-refreshed-{n}"),
        "expires_in": 3599,
        "token_type": "Bearer",
    }))
}
