//! The keeper: each replica's background refresh of grants ahead of expiry and of grants
//! whose refresh token has been idle too long, so that callers are served without waiting
//! on a provider and idle expiry never hits.
//!
//! Every write of a grant schedules its next refresh (`next_refresh_at`, see
//! [`crate::vault::Schedule`]). Each tick, the keeper claims a batch of due grants for a
//! while (`for update skip locked`: replicas never claim the same grant at once) and
//! refreshes each through [`Refresher::keep`]: the same advisory lock, re-read and fenced
//! write as an on-demand refresh, so a grant is refreshed once however many replicas and
//! callers want it. Concurrency and rate are bounded per provider, and all providers
//! together take at most half of the lock pool (callers' refreshes need the rest); dead
//! grants and grants cooling down after a failure are not due.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Interval, MissedTickBehavior};

use crate::config::KeeperConfig;
use crate::domain::GrantKey;
use crate::metrics::Metrics;
use crate::refresh::{Refresher, Trigger};
use crate::store::DueGrant;
use crate::vault::Vault;

pub struct Keeper {
    vault: Vault,
    refresher: Refresher,
    metrics: Metrics,
    settings: KeeperConfig,
    /// The providers with an OAuth client: only their grants are claimed.
    providers: Vec<String>,
    limits: HashMap<String, Arc<ProviderLimit>>,
    /// Refreshes at once in this replica, all providers together: each holds a connection
    /// of the lock pool, and callers' refreshes need the rest.
    running: Arc<Semaphore>,
}

/// One provider's bounds in this replica: refreshes at once, and their pace.
struct ProviderLimit {
    running: Semaphore,
    pace: Mutex<Interval>,
}

impl Keeper {
    pub fn new(
        vault: Vault,
        refresher: Refresher,
        metrics: Metrics,
        settings: KeeperConfig,
        providers: Vec<String>,
        lock_connections: u32,
    ) -> Self {
        let limits = providers
            .iter()
            .map(|name| {
                let rate = settings.rate_per_provider.max(1);
                let mut pace = tokio::time::interval(Duration::from_secs(1) / rate);
                pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let limit = ProviderLimit {
                    running: Semaphore::new(settings.concurrency_per_provider.max(1) as usize),
                    pace: Mutex::new(pace),
                };
                (name.clone(), Arc::new(limit))
            })
            .collect();
        Self {
            vault,
            refresher,
            metrics,
            settings,
            providers,
            limits,
            running: Arc::new(Semaphore::new((lock_connections / 2).max(1) as usize)),
        }
    }

    /// Looks for due grants every `interval` until `shutdown`; a refresh under way at
    /// shutdown is dropped with its claim (it expires, and any replica takes it again).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let last_count = std::sync::Mutex::new(None::<Instant>);
        every(self.settings.interval, shutdown, || async {
            let due_count = last_count
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|at| at.elapsed() >= self.settings.count_interval);
            if due_count {
                self.count_grants().await;
                *last_count.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            self.tick().await;
        })
        .await;
    }

    /// Claims and refreshes due grants, batch after batch, until none is due.
    pub async fn tick(&self) {
        loop {
            let claimed = self
                .vault
                .claim_due(
                    &self.providers,
                    self.settings.claim,
                    self.settings.batch_size.max(1),
                )
                .await;
            let due = match claimed {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(error = %err, "the keeper could not claim due grants");
                    return;
                }
            };
            // Claimed most overdue first: the first is the lag.
            let lag = due.first().map_or(0.0, |first| {
                (Utc::now() - first.next_refresh_at)
                    .to_std()
                    .unwrap_or_default()
                    .as_secs_f64()
            });
            self.metrics.keeper_lag.set(lag);
            let full = due.len() == self.settings.batch_size.max(1) as usize;
            let mut refreshes = JoinSet::new();
            for grant in due {
                let Some(limit) = self.limits.get(grant.grant.provider.as_str()).cloned() else {
                    continue;
                };
                let refresher = self.refresher.clone();
                let trigger = self.trigger(&grant);
                let all = self.running.clone();
                refreshes.spawn(async move {
                    let Ok(_running) = limit.running.acquire().await else {
                        return;
                    };
                    let Ok(_all) = all.acquire().await else {
                        return;
                    };
                    limit.pace.lock().await.tick().await;
                    keep(&refresher, &grant.grant, trigger).await;
                });
            }
            while refreshes.join_next().await.is_some() {}
            if !full {
                return;
            }
        }
    }

    /// Ahead of expiry if the access token expires within the (jittered) refresh-ahead
    /// window, else to keep an idle refresh token alive.
    fn trigger(&self, due: &DueGrant) -> Trigger {
        let window = self.settings.refresh_ahead + self.settings.jitter;
        let left = (due.expires_at - Utc::now()).to_std().unwrap_or_default();
        if left <= window {
            Trigger::Ahead
        } else {
            Trigger::KeepAlive
        }
    }

    /// Sets `token_store_grants{state, provider}` from a count of the table.
    async fn count_grants(&self) {
        match self.vault.count_by_state().await {
            Ok(counts) => {
                self.metrics.grants.reset();
                for (state, provider, n) in counts {
                    // Provider names are the operator's (stored grants of unknown providers
                    // are counted under `unconfigured`, as in every metric).
                    let label = if self.limits.contains_key(&provider) {
                        provider.as_str()
                    } else {
                        crate::providers::UNCONFIGURED
                    };
                    self.metrics
                        .grants
                        .with_label_values(&[&state, label])
                        .add(n);
                }
            }
            Err(err) => tracing::warn!(error = %err, "the keeper could not count grants"),
        }
    }
}

/// Runs `work` to its end, then again `interval` later, until `shutdown` (which also
/// stops `work` where it is): the loop of each replica's background workers.
pub async fn every<F, Fut>(interval: Duration, shutdown: impl Future<Output = ()>, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = work() => {}
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One keeper refresh; its outcome is counted by the refresher, failures are logged.
async fn keep(refresher: &Refresher, grant: &GrantKey, trigger: Trigger) {
    if let Err(err) = refresher.keep(grant, trigger).await {
        tracing::info!(
            user_id = %grant.user,
            provider = %grant.provider,
            trigger = trigger.as_str(),
            error = %err,
            "the keeper's refresh did not succeed"
        );
    }
}
