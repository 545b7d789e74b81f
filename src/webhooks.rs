//! Delivery of grant events (the outbox the vault writes) to the configured webhook
//! endpoints, signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) with the `standardwebhooks` crate.
//!
//! Each replica runs a worker. It claims due deliveries for a while (`for update skip
//! locked`: one replica at a time per delivery; a replica that dies mid-send leaves a claim
//! that expires, and another replica sends again with the same `webhook-id`), never one
//! whose grant has an earlier event still waiting for the same endpoint (in order per
//! grant), and sends them. A delivery is kept until the endpoint answers 2xx; a failed
//! attempt is tried again after an exponential backoff with jitter, and after
//! `max_attempts` it is marked failed, counted, and stays listable.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use rand::Rng;
use secrecy::ExposeSecret;
use standardwebhooks::{
    Webhook, HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP,
};

use crate::config::WebhooksConfig;
use crate::keeper::every;
use crate::metrics::Metrics;
use crate::store::ClaimedDelivery;
use crate::vault::Vault;

/// Deliveries claimed at once, and sent at once.
const BATCH: u32 = 50;
const SENDING_AT_ONCE: usize = 16;

/// One endpoint: where to send, and the key that signs.
struct Endpoint {
    url: reqwest::Url,
    signer: Webhook,
}

pub struct Deliverer {
    vault: Vault,
    metrics: Metrics,
    settings: WebhooksConfig,
    names: Vec<String>,
    endpoints: HashMap<String, Endpoint>,
    http: reqwest::Client,
}

impl Deliverer {
    /// `None` when no endpoint is configured. The configuration was checked at start-up
    /// ([`WebhooksConfig::check`]).
    pub fn new(
        vault: Vault,
        metrics: Metrics,
        settings: WebhooksConfig,
    ) -> anyhow::Result<Option<Self>> {
        if settings.endpoints.is_empty() {
            return Ok(None);
        }
        settings.check()?;
        let mut endpoints = HashMap::new();
        for (name, endpoint) in &settings.endpoints {
            let signer = Webhook::new(endpoint.secret.expose_secret())
                .map_err(|_| anyhow::anyhow!("webhook endpoint {name}: bad secret"))?;
            let url = reqwest::Url::parse(&endpoint.url)?;
            endpoints.insert(name.clone(), Endpoint { url, signer });
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("token-store/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Self {
            vault,
            metrics,
            names: settings.endpoint_names(),
            settings,
            endpoints,
            http,
        }))
    }

    /// Sends due deliveries every `interval` until `shutdown`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        every(self.settings.interval, shutdown, || self.tick()).await;
    }

    /// Claims and sends due deliveries, batch after batch, until none is due.
    async fn tick(&self) {
        loop {
            let claimed = self
                .vault
                .claim_deliveries(&self.names, self.settings.claim, BATCH)
                .await;
            let batch = match claimed {
                Ok(batch) if !batch.is_empty() => batch,
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "could not claim webhook deliveries");
                    return;
                }
            };
            futures::stream::iter(batch)
                .for_each_concurrent(SENDING_AT_ONCE, |delivery| self.deliver(delivery))
                .await;
        }
    }

    async fn deliver(&self, delivery: ClaimedDelivery) {
        let Some(endpoint) = self.endpoints.get(&delivery.endpoint) else {
            return;
        };
        let result = self.send(endpoint, &delivery).await;
        let recorded = match result {
            Ok(()) => {
                self.count(&delivery, "delivered");
                self.vault.mark_delivered(&delivery).await
            }
            Err(error) => {
                let attempts = u32::try_from(delivery.attempts).unwrap_or(u32::MAX);
                let retry_at = (attempts < self.settings.max_attempts).then(|| {
                    let wait = backoff(
                        attempts,
                        self.settings.backoff_base,
                        self.settings.backoff_max,
                    );
                    Utc::now() + chrono::TimeDelta::from_std(wait).unwrap_or_default()
                });
                let outcome = if retry_at.is_some() {
                    "retry"
                } else {
                    "failed"
                };
                tracing::warn!(
                    endpoint = %delivery.endpoint,
                    event_id = %delivery.event_id,
                    attempts,
                    error = %error,
                    outcome,
                    "a webhook delivery failed"
                );
                self.count(&delivery, outcome);
                self.vault
                    .mark_attempt_failed(&delivery, &error, retry_at)
                    .await
            }
        };
        if let Err(err) = recorded {
            // The claim expires and the delivery is sent again: at least once.
            tracing::warn!(error = %err, "could not record a webhook delivery's outcome");
        }
    }

    /// Sends one delivery; `Err` is a short, secret-free reason.
    async fn send(&self, endpoint: &Endpoint, delivery: &ClaimedDelivery) -> Result<(), String> {
        let body = serde_json::to_vec(&delivery.payload.0).map_err(|_| "encoding".to_owned())?;
        let timestamp = Utc::now().timestamp();
        let signature = endpoint
            .signer
            .sign(&delivery.event_id, timestamp, &body)
            .map_err(|_| "signing".to_owned())?;
        let response = self
            .http
            .post(endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_WEBHOOK_ID, &delivery.event_id)
            .header(HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string())
            .header(HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .map_err(|err| {
                if err.is_timeout() {
                    "timeout".to_owned()
                } else if err.is_connect() {
                    "connect".to_owned()
                } else {
                    "transport".to_owned()
                }
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("http_{}", status.as_u16()))
        }
    }

    fn count(&self, delivery: &ClaimedDelivery, outcome: &str) {
        self.metrics
            .webhook_deliveries
            .with_label_values(&[&delivery.endpoint, outcome])
            .inc();
    }
}

/// The wait after the `attempts`-th failed attempt: `base` doubled per earlier attempt, at
/// most `max`, then between half and all of that at random (so that deliveries failing
/// together do not come back together).
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let full = base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(max);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max_with_jitter() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for (attempts, full) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let full = Duration::from_secs(full);
            for _ in 0..50 {
                let wait = backoff(attempts, base, max);
                assert!(wait <= full && wait >= full / 2, "{attempts}: {wait:?}");
            }
        }
    }
}
