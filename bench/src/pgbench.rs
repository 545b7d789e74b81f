//! PostgreSQL's own limit for the service's lookup: `pgbench` running the same `select`
//! (same columns, same `(user_id, provider)` predicate, prepared) on the same table.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::Command;

use crate::load::Latency;
use crate::setup::lookup_columns;

pub struct PgbenchRun {
    pub tps: f64,
    pub transactions: u64,
    pub latency: Latency,
}

/// `pgbench -n -M prepared -T <duration> -c <clients> -j min(clients, 2)`, every
/// transaction logged (`-l`) to compute percentiles. `-T` counts whole seconds, so the
/// duration is rounded up to at least one.
pub async fn run(
    database_url: &str,
    users: u64,
    clients: usize,
    duration: Duration,
    work_dir: &Path,
) -> anyhow::Result<PgbenchRun> {
    let dir = work_dir.join(format!("pgbench-c{clients}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("lookup.sql");
    std::fs::write(
        &script,
        format!(
            "\\set n random(1, {users})\n\
             select {} from integration_tokens \
             where user_id = 'user-' || :n and provider = 'google';\n",
            lookup_columns()
        ),
    )?;
    let seconds = duration.as_secs_f64().ceil().max(1.0) as u64;
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={}", dir.join("log").display()))
        .arg(format!("-T{seconds}"))
        .arg(format!("-c{clients}"))
        .arg(format!("-j{}", clients.min(2)))
        .arg("-f")
        .arg(&script)
        .arg(database_url)
        .output()
        .await
        .context("running pgbench (install postgresql-client)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {stdout}"))?;
    let latencies = logged_latencies(&dir)?;
    Ok(PgbenchRun {
        tps,
        transactions: latencies.len() as u64,
        latency: Latency::of(latencies.into_iter()),
    })
}

/// Per-transaction logs: `client_id transaction_no time_us script_no epoch epoch_us`.
fn logged_latencies(dir: &Path) -> anyhow::Result<Vec<u32>> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("log."));
        if !is_log {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                latencies.push(us);
            }
        }
    }
    Ok(latencies)
}
