//! The unwrap cache stays within `cache_max_entries`: an instance with a small maximum
//! reads twice as many distinct keys, twice.
//!
//! moka applies the bound in its housekeeping, which runs along with cache operations (at
//! most every few hundred milliseconds), so the count may overshoot for that long; the pause
//! between the passes lets one round of housekeeping happen before the second pass.

use std::time::Duration;

use crate::load;
use crate::report::Bound;
use crate::service::{Service, API_KEY};

pub async fn check(service: &Service, max_entries: u64, users: &[u64]) -> anyhow::Result<Bound> {
    let mut connections = load::connect(&[service.addr], 16, API_KEY).await?;
    let rss_before_kib = service.rss_kib()?;
    let start = service.metrics().await?;
    load::pass(&mut connections, users).await;
    let first = service.metrics().await?;
    let rss_after_first_pass_kib = service.rss_kib()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    load::pass(&mut connections, users).await;
    let second = service.metrics().await?;
    Ok(Bound {
        max_entries,
        distinct_keys: users.len() as u64,
        first_pass_misses: first.cache_misses() - start.cache_misses(),
        second_pass_misses: second.cache_misses() - first.cache_misses(),
        second_pass_hits: second.cache_hits() - first.cache_hits(),
        entries_gauge: second.gauge("token_store_unwrap_cache_entries"),
        rss_before_kib,
        rss_after_first_pass_kib,
        rss_after_second_pass_kib: service.rss_kib()?,
    })
}
