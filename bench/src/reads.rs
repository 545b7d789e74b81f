//! Warm reads against the service, then against the HTTP floor (the same stack doing no
//! work), then the same lookup straight against PostgreSQL.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::floor::Floor;
use crate::load::{self, Until};
use crate::pgbench;
use crate::report::{Reads, ReadsAt, TrialsTps};
use crate::service::{Service, API_KEY};
use crate::sys::{self, CpuMeter};

/// What the warm-read measurement covers.
pub struct Plan<'a> {
    /// Users read at random, `user-1` to `user-{users}`.
    pub users: u64,
    pub concurrencies: &'a [usize],
    /// Of each trial of each of the three.
    pub duration: Duration,
    pub trials: usize,
    /// Where pgbench's scripts and logs go.
    pub work_dir: &'a Path,
    /// Longest wait for the machine to be quiet before each trial.
    pub patience: Duration,
}

/// At each concurrency, `trials` times over: `duration` of random-user `access-token` calls
/// on `service` (one keep-alive connection per worker), the same on the HTTP floor, then
/// `pgbench` for as long. Each is reported by its median trial: alternating the three and
/// taking medians keeps a slow spell of this shared machine from deciding a ratio.
pub async fn compare(
    service: &Service,
    database_url: &str,
    plan: &Plan<'_>,
) -> anyhow::Result<Vec<ReadsAt>> {
    let Plan {
        users,
        concurrencies,
        duration,
        trials,
        work_dir,
        patience,
    } = *plan;
    let floor = Floor::start().await?;
    let mut results = Vec::new();
    for &concurrency in concurrencies {
        let (mut services, mut floors, mut pgbenches) = (Vec::new(), Vec::new(), Vec::new());
        for trial in 1..=trials.max(1) {
            let at = format!("reads c={concurrency} trial {trial}/{trials}");
            let measure =
                |addr, pid| closed_loop(addr, pid, users, concurrency, duration, patience);
            let s = measure(service.addr, service.pid()).await?;
            log!(
                "{at}: service {:.0} tps, p99 {:.2} ms, {} errors, CPU per request: service {:.1} µs, machine {:.1} µs",
                s.tps, s.latency.p99_ms, s.errors, s.cpu.service_us, s.cpu.total_us,
            );
            services.push(s);
            let f = measure(floor.addr, floor.pid()).await?;
            log!(
                "{at}: HTTP floor {:.0} tps, p99 {:.2} ms, CPU per request: server {:.1} µs, machine {:.1} µs",
                f.tps, f.latency.p99_ms, f.cpu.service_us, f.cpu.total_us,
            );
            floors.push(f);
            let p = pgbench_reads(
                service,
                database_url,
                users,
                concurrency,
                duration,
                work_dir,
                patience,
            )
            .await?;
            log!(
                "{at}: pgbench {:.0} tps, p99 {:.2} ms",
                p.tps,
                p.latency.p99_ms
            );
            pgbenches.push(p);
        }
        let trials_tps = TrialsTps {
            service: services.iter().map(|r| r.tps).collect(),
            http_floor: floors.iter().map(|r| r.tps).collect(),
            pgbench: pgbenches.iter().map(|r| r.tps).collect(),
        };
        let (service_reads, floor_reads, pg) =
            (median(services), median(floors), median(pgbenches));
        results.push(ReadsAt {
            concurrency,
            ratio: service_reads.tps / pg.tps,
            floor_ratio: floor_reads.tps / pg.tps,
            service: service_reads,
            http_floor: floor_reads,
            pgbench: pg,
            trials_tps,
        });
    }
    Ok(results)
}

/// `duration` of random-user `access-token` calls on `addr`, one keep-alive connection per
/// worker, with the CPU that process `pid` and the rest of the machine spent.
async fn closed_loop(
    addr: std::net::SocketAddr,
    pid: u32,
    users: u64,
    concurrency: usize,
    duration: Duration,
    patience: Duration,
) -> anyhow::Result<Reads> {
    let mut connections = load::connect(&[addr], concurrency, API_KEY).await?;
    let busy_before = sys::wait_until_quiet(patience).await?;
    let meter = CpuMeter::start(vec![pid])?;
    let run = load::closed_loop(
        &mut connections,
        users,
        Until::Deadline(Instant::now() + duration),
    )
    .await;
    let cpu = meter.per_op(run.ok + run.errors)?;
    Ok(Reads {
        tps: run.throughput(),
        requests: run.ok,
        errors: run.errors,
        latency: run.latency(),
        cpu,
        other_load_before_percent: busy_before * 100.0,
    })
}

/// `pgbench` on the same lookup, with the CPU the machine spent.
async fn pgbench_reads(
    service: &Service,
    database_url: &str,
    users: u64,
    concurrency: usize,
    duration: Duration,
    work_dir: &Path,
    patience: Duration,
) -> anyhow::Result<Reads> {
    let busy_before = sys::wait_until_quiet(patience).await?;
    let meter = CpuMeter::start(vec![service.pid()])?;
    let pg = pgbench::run(database_url, users, concurrency, duration, work_dir).await?;
    let cpu = meter.per_op(pg.transactions)?;
    Ok(Reads {
        tps: pg.tps,
        requests: pg.transactions,
        errors: 0,
        latency: pg.latency,
        cpu,
        other_load_before_percent: busy_before * 100.0,
    })
}

/// The trial with the median throughput (the upper one of an even count).
fn median(mut trials: Vec<Reads>) -> Reads {
    trials.sort_by(|a, b| a.tps.total_cmp(&b.tps));
    trials.swap_remove(trials.len() / 2)
}
