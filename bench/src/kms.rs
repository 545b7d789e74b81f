//! KMS economy: Decrypts per distinct data key on a cold then a warm pass (and the memory
//! the cached keys and rows take), and KMS calls per refresh.

use sqlx::PgPool;
use test_support::FakeProvider;

use crate::load::{self, Connection, Run};
use crate::report::{Pass, Refresh, Rss};
use crate::service::{Metrics, Service};
use crate::setup;

pub struct Passes {
    pub distinct_keys: i64,
    pub cold: Pass,
    pub warm: Pass,
    /// Before the cold pass, and after the warm pass: every data key and row cached.
    pub rss: Rss,
    /// `token_store_row_cache_entries` after the warm pass.
    pub rows_cached: Option<f64>,
}

/// A cold pass then a warm pass over `users`. `service` must have just started, with its
/// row cache on (empty unwrap and row caches). The cold pass caches every user's data key
/// and row, the warm pass whatever row the cold one could not.
pub async fn passes(
    service: &Service,
    connections: &mut [Connection],
    db: &PgPool,
    users: &[u64],
    warm_up_user: u64,
) -> anyhow::Result<Passes> {
    warm_up(connections, warm_up_user).await;
    // Until its first heartbeat comes back, the row cache caches nothing.
    service.wait_for_row_cache(warm_up_user).await?;
    let distinct_keys = setup::distinct_keys(db, users).await?;
    let rss_before_kib = service.rss_kib()?;
    let before = service.metrics().await?;

    let cold = load::pass(connections, users).await;
    let after_cold = service.metrics().await?;

    let warm = load::pass(connections, users).await;
    let after_warm = service.metrics().await?;

    Ok(Passes {
        distinct_keys,
        cold: pass(&cold, &before, &after_cold, distinct_keys),
        warm: pass(&warm, &after_cold, &after_warm, distinct_keys),
        rss: Rss {
            before_kib: rss_before_kib,
            after_kib: service.rss_kib()?,
        },
        rows_cached: after_warm.gauge("token_store_row_cache_entries"),
    })
}

/// The resident memory of `service`, just started without a row cache, before and after a
/// pass over `users`: what their data keys take in the unwrap cache alone.
pub async fn keys_memory(
    service: &Service,
    connections: &mut [Connection],
    users: &[u64],
    warm_up_user: u64,
) -> anyhow::Result<Rss> {
    warm_up(connections, warm_up_user).await;
    let before_kib = service.rss_kib()?;
    load::pass(connections, users).await;
    Ok(Rss {
        before_kib,
        after_kib: service.rss_kib()?,
    })
}

/// Reads `warm_up_user` (not one of the measured users) a few times on every connection,
/// so that pools and buffers exist before memory is measured.
async fn warm_up(connections: &mut [Connection], warm_up_user: u64) {
    let warm_up = vec![warm_up_user; connections.len() * 4];
    load::pass(connections, &warm_up).await;
}

fn pass(run: &Run, from: &Metrics, to: &Metrics, distinct_keys: i64) -> Pass {
    let decrypts = to.kms_decrypts() - from.kms_decrypts();
    Pass {
        requests: run.ok + run.errors,
        errors: run.errors,
        seconds: run.elapsed.as_secs_f64(),
        decrypts,
        decrypts_per_key: decrypts / distinct_keys.max(1) as f64,
        cache_hits: to.cache_hits() - from.cache_hits(),
        cache_misses: to.cache_misses() - from.cache_misses(),
    }
}

/// Expires the tokens of `users` (their data keys are young and cached), then asks for an
/// access token of each: every one is refreshed at the provider; KMS should not be called.
pub async fn refresh(
    service: &Service,
    connections: &mut [Connection],
    db: &PgPool,
    provider: &FakeProvider,
    users: &[u64],
) -> anyhow::Result<Refresh> {
    setup::expire(db, users).await?;
    let before = service.metrics().await?;
    let provider_before = provider.token_calls() as u64;
    let run = load::pass(connections, users).await;
    let after = service.metrics().await?;
    let kms_calls = after.kms_calls() - before.kms_calls();
    Ok(Refresh {
        tokens: users.len() as u64,
        succeeded: run.ok,
        kms_calls,
        kms_calls_per_refresh: kms_calls / users.len().max(1) as f64,
        provider_calls: provider.token_calls() as u64 - provider_before,
    })
}
