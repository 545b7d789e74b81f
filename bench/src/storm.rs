//! The refresh storm: many concurrent `access-token` requests for one expired token, spread
//! over several instances, while a background load reads other users.
//!
//! The background load runs on its own thread (its own single-threaded runtime), so that
//! the storm's client-side work does not delay its timings.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use test_support::FakeProvider;

use crate::load::{self, Latency, Run, Until};
use crate::report::{Background, Storm, StormCpu};
use crate::service::API_KEY;
use crate::setup;
use crate::sys::{self, CpuMeter};

pub struct StormPlan {
    pub targets: Vec<SocketAddr>,
    pub storm_user: u64,
    pub requests: usize,
    pub background_concurrency: usize,
    /// Requests per second of the background load, all connections together; `None`: as
    /// fast as they can (closed loop, which saturates the machine).
    pub background_rate: Option<f64>,
    /// The background load reads random users in `1..=background_users`.
    pub background_users: u64,
    /// The processes of the instances, to measure what the storm costs them.
    pub service_pids: Vec<u32>,
    /// How long the background load runs alone before the storm.
    pub baseline: Duration,
    /// Longest wait for other work to leave the machine quiet.
    pub patience: Duration,
}

pub async fn run(plan: &StormPlan, db: &PgPool, provider: &FakeProvider) -> anyhow::Result<Storm> {
    // Every storm connection is open before anything is measured.
    let mut storm_connections = load::connect(&plan.targets, plan.requests, API_KEY).await?;
    setup::expire(db, &[plan.storm_user]).await?;
    let provider_before = provider.token_calls() as u64;
    let busy_before = sys::wait_until_quiet(plan.patience).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let background = {
        let (targets, stop) = (plan.targets.clone(), stop.clone());
        let (concurrency, users) = (plan.background_concurrency, plan.background_users);
        let rate = plan.background_rate;
        std::thread::spawn(move || -> anyhow::Result<Run> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut connections = load::connect(&targets, concurrency, API_KEY).await?;
                let _ = started_tx.send(());
                let until = Until::Flag(&stop);
                let run = match rate {
                    Some(rate) => load::paced_loop(&mut connections, users, rate, until).await,
                    None => load::closed_loop(&mut connections, users, until).await,
                };
                Ok::<_, anyhow::Error>(run)
            })
        })
    };
    started_rx
        .await
        .context("the background load did not start")?;
    let baseline_cpu = CpuMeter::start(plan.service_pids.clone())?;
    tokio::time::sleep(plan.baseline).await;
    let baseline_cpu = baseline_cpu.total()?;
    let storm_cpu = CpuMeter::start(plan.service_pids.clone())?;

    let storm = load::burst(&mut storm_connections, plan.storm_user).await;
    let storm_end = storm.started + storm.elapsed;
    let storm_cpu = storm_cpu.total()?;
    // What the storm cost on top of the background load, which ran all along.
    let scale = storm.elapsed.as_secs_f64() / plan.baseline.as_secs_f64();
    let extra_ms = |during: Duration, before: Duration| {
        (during.as_secs_f64() - before.as_secs_f64() * scale).max(0.0) * 1000.0
    };
    let cpu = StormCpu {
        service_ms: extra_ms(storm_cpu.service, baseline_cpu.service),
        load_generator_ms: extra_ms(storm_cpu.load_generator, baseline_cpu.load_generator),
        rest_ms: extra_ms(storm_cpu.rest, baseline_cpu.rest),
    };
    // A little more background after the storm, so that requests it delayed finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let background = background
        .join()
        .map_err(|_| anyhow::anyhow!("the background thread panicked"))??;

    let offset = |at: Instant| at.saturating_duration_since(background.started).as_micros() as u64;
    let (storm_from, storm_to) = (offset(storm.started), offset(storm_end));
    let end = |s: &load::Sample| s.start_us + u64::from(s.latency_us);
    let before = Latency::of(
        background
            .samples
            .iter()
            .filter(|s| end(s) < storm_from)
            .map(|s| s.latency_us),
    );
    let during = Latency::of(
        background
            .samples
            .iter()
            .filter(|s| s.start_us <= storm_to && end(s) >= storm_from)
            .map(|s| s.latency_us),
    );
    Ok(Storm {
        instances: plan.targets.len(),
        requests: plan.requests,
        succeeded: storm.ok,
        provider_calls: provider.token_calls() as u64 - provider_before,
        seconds: storm.elapsed.as_secs_f64(),
        cpu,
        latency: storm.latency(),
        background: Background {
            concurrency: plan.background_concurrency,
            rate_per_s: plan.background_rate,
            users: plan.background_users,
            errors: background.errors,
            p99_ratio: during.p99_ms / before.p99_ms.max(f64::MIN_POSITIVE),
            before,
            during,
        },
        other_load_before_percent: busy_before * 100.0,
    })
}
