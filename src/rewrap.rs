//! `token-store rewrap --to-key KEY`: re-wraps every row's data key under another KMS key
//! with `ReEncrypt`, so an old key can be retired.
//!
//! - The plaintext data key never leaves KMS, and the encryption context is the row's end
//!   to end; the sealed token fields are untouched (the data key is the same).
//! - Batches by id, each row written `where version = read`: a row the service writes
//!   meanwhile is left to it and taken again by the next pass.
//! - Resumable and idempotent: progress is the table itself (rows already under the target
//!   key are skipped), so a stopped run just starts again.

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::vault::Vault;

#[derive(Debug, Clone, Copy)]
pub struct RewrapOptions {
    pub batch_size: i64,
    /// ReEncrypt calls in flight at once.
    pub concurrency: usize,
    /// Passes over the table before giving up on rows that keep changing.
    pub max_passes: u32,
}

impl Default for RewrapOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            concurrency: 8,
            max_passes: 5,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RewrapReport {
    pub rewrapped: u64,
    /// Rows written by the service while being rewrapped (retried in a later pass).
    pub raced: u64,
    /// Rows still not under the target key at the end.
    pub remaining: i64,
}

/// Rewraps until no row is left under another key, or `max_passes` passes ran.
/// `progress` receives one line per batch.
pub async fn rewrap_all(
    vault: &Vault,
    to_key: &str,
    options: RewrapOptions,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<RewrapReport> {
    let target = vault.key_arn(to_key).await?;
    let mut report = RewrapReport::default();
    for pass in 1..=options.max_passes {
        let total = vault.count_not_under_key(&target).await?;
        if total == 0 {
            break;
        }
        progress(&format!(
            "pass {pass}: {total} rows to rewrap under {target}"
        ));
        let mut after_id = 0;
        let mut done_in_pass = 0u64;
        loop {
            let rows = vault
                .rows_not_under_key(&target, after_id, options.batch_size)
                .await?;
            let Some(last) = rows.last() else { break };
            after_id = last.id;
            let outcomes: Vec<bool> = stream::iter(rows)
                .map(|row| {
                    let target = &target;
                    async move { vault.rewrap(&row, target).await }
                })
                .buffer_unordered(options.concurrency.max(1))
                .try_collect()
                .await?;
            let written = outcomes.iter().filter(|w| **w).count() as u64;
            report.rewrapped += written;
            report.raced += outcomes.len() as u64 - written;
            done_in_pass += outcomes.len() as u64;
            progress(&format!(
                "pass {pass}: {done_in_pass}/{total} rows processed, {} rewrapped in all",
                report.rewrapped
            ));
        }
    }
    report.remaining = vault.count_not_under_key(&target).await?;
    Ok(report)
}
