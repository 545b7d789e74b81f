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
use crate::sys::{self, CpuMeter, CpuTime};

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
    /// Each storm connection first answers one read of a background user, as the
    /// long-lived connections of a load balancer have; otherwise the storm is the first
    /// request of every connection.
    pub reused_connections: bool,
}

pub async fn run(plan: &StormPlan, db: &PgPool, provider: &FakeProvider) -> anyhow::Result<Storm> {
    // Every storm connection is open before anything is measured.
    let mut storm_connections = load::connect(&plan.targets, plan.requests, API_KEY).await?;
    if plan.reused_connections {
        let first = load::burst(&mut storm_connections, 1).await;
        anyhow::ensure!(
            first.errors == 0,
            "{} of the storm connections' first reads failed",
            first.errors
        );
    }
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
    let pids = &plan.service_pids;
    let baseline_from = Instant::now();
    let baseline_cpu = CpuMeter::start(pids.clone())?;
    let service_at_baseline = services_cpu(pids)?;
    tokio::time::sleep(plan.baseline).await;
    let baseline_cpu = baseline_cpu.total()?;
    let service_at_storm = services_cpu(pids)?;
    let baseline_service = service_at_storm.saturating_sub(service_at_baseline);
    let storm_cpu = CpuMeter::start(pids.clone())?;

    let storm = load::burst(&mut storm_connections, plan.storm_user).await;
    let storm_end = storm.started + storm.elapsed;
    let storm_cpu = storm_cpu.total()?;
    let storm_service = services_cpu(pids)?.saturating_sub(service_at_storm);
    // A little more background after the storm, so that requests it delayed finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let background = background
        .join()
        .map_err(|_| anyhow::anyhow!("the background thread panicked"))??;

    let offset = |at: Instant| at.saturating_duration_since(background.started).as_micros() as u64;
    let (storm_from, storm_to) = (offset(storm.started), offset(storm_end));
    let end = |s: &load::Sample| s.start_us + u64::from(s.latency_us);
    let answered_between = |from: u64, to: u64| {
        background
            .samples
            .iter()
            .filter(|s| (from..to).contains(&end(s)))
            .count() as u64
    };
    let background_baseline = answered_between(offset(baseline_from), storm_from);
    let background_during = answered_between(storm_from, storm_to);
    let cpu = cost(
        plan.requests,
        &StormCpuWindows {
            storm_service,
            storm: storm_cpu,
            baseline_service,
            baseline: baseline_cpu,
            background_baseline,
            background_during,
        },
    );
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

/// The CPU of the two windows the storm's cost is worked out from: the baseline (the
/// background load alone, for `plan.baseline`) and the storm (from its first request to its
/// last answer, the background load still running).
struct StormCpuWindows {
    /// The instances' CPU to the nanosecond (`sys::threads_cpu`).
    storm_service: Duration,
    /// By whom, in `/proc`'s 10 ms ticks.
    storm: CpuTime,
    baseline_service: Duration,
    baseline: CpuTime,
    /// Background requests answered in each window.
    background_baseline: u64,
    background_during: u64,
}

/// What the storm cost on top of the background load: each window's CPU less the
/// background's expected share of it, which is the baseline's CPU scaled by the
/// background requests answered during the storm against those answered in the
/// baseline. Scaling by requests rather than by time: the storm delays the paced
/// background, whose late requests skip their slots, so in the storm window the
/// background does less than its rate; taking out its share by time would credit the
/// storm with less than it cost. What the instances do without requests (heartbeats,
/// the keeper: a few statements a second) is small beside either.
///
/// The service's figure uses the threads' own nanosecond counters: the storm lasts a few
/// hundred milliseconds, in which `/proc`'s 10 ms ticks of each instance would move it by
/// tens of microseconds per request. The load generator and the rest of the machine are
/// ticks (there is no such counter for the machine).
fn cost(requests: usize, w: &StormCpuWindows) -> StormCpu {
    let scale = w.background_during as f64 / w.background_baseline.max(1) as f64;
    let extra_ms = |during: Duration, before: Duration| {
        (during.as_secs_f64() - before.as_secs_f64() * scale).max(0.0) * 1000.0
    };
    let service_ms = extra_ms(w.storm_service, w.baseline_service);
    StormCpu {
        service_ms,
        service_us_per_request: service_ms * 1000.0 / requests.max(1) as f64,
        load_generator_ms: extra_ms(w.storm.load_generator, w.baseline.load_generator),
        rest_ms: extra_ms(w.storm.rest, w.baseline.rest),
        background_requests_baseline: w.background_baseline,
        background_requests_during: w.background_during,
    }
}

/// CPU of every instance's threads, to the nanosecond.
fn services_cpu(pids: &[u32]) -> anyhow::Result<Duration> {
    pids.iter().map(|&pid| sys::threads_cpu(pid)).sum()
}
