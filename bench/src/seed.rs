//! Seeds users through the API, as callers would: `PUT` with a valid token, many at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::stream::{self, StreamExt};
use serde_json::json;

use crate::report::Seed;
use crate::service::API_KEY;
use crate::setup::user_id;

/// Stores a token valid for two hours (well beyond the refresh buffer) for each of `users`.
pub async fn seed(service: SocketAddr, users: &[u64], concurrency: usize) -> anyhow::Result<Seed> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let expires_at = chrono::Utc::now().timestamp_millis() + 2 * 3600 * 1000;
    let started = Instant::now();
    let failures = stream::iter(users.iter().copied())
        .map(|user| {
            let http = &http;
            async move {
                let body = json!({
                    "accessToken": format!("ya29.bench-access-{user}-{}", uuid::Uuid::new_v4().simple()),
                    "refreshToken": format!("1//bench-refresh-{user}-{}", uuid::Uuid::new_v4().simple()),
                    "expiresAt": expires_at,
                    "scopes": ["openid", "https://www.googleapis.com/auth/gmail.readonly"],
                });
                let response = http
                    .put(format!("http://{service}/v1/users/{}/tokens/google", user_id(user)))
                    .bearer_auth(API_KEY)
                    .json(&body)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 204 => None,
                    Ok(r) => Some(format!("{user}: {}", r.status())),
                    Err(e) => Some(format!("{user}: {e}")),
                }
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|failure| async move { failure })
        .collect::<Vec<_>>()
        .await;
    if !failures.is_empty() {
        bail!(
            "{} of {} PUTs failed, first: {}",
            failures.len(),
            users.len(),
            failures[0]
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Seed {
        users: users.len() as u64,
        concurrency,
        seconds,
        per_second: users.len() as f64 / seconds,
    })
}
