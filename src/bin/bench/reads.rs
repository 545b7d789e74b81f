//! Warm reads against the service, then against the HTTP floor (the same stack doing no
//! work), then the same lookup straight against PostgreSQL.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::floor::Floor;
use crate::load::{self, Until};
use crate::pgbench;
use crate::report::{Reads, ReadsAt};
use crate::service::{Service, API_KEY};
use crate::sys::{self, CpuMeter};

/// At each concurrency: `duration` of random-user `access-token` calls on `service` (one
/// keep-alive connection per worker), the same on the HTTP floor, then `pgbench` for as long.
pub async fn compare(
    service: &Service,
    database_url: &str,
    users: u64,
    concurrencies: &[usize],
    duration: Duration,
    work_dir: &Path,
    patience: Duration,
) -> anyhow::Result<Vec<ReadsAt>> {
    let floor = Floor::start().await?;
    let mut results = Vec::new();
    for &concurrency in concurrencies {
        let service_reads = closed_loop(
            service.addr,
            service.pid(),
            users,
            concurrency,
            duration,
            patience,
        )
        .await?;
        log!(
            "reads c={concurrency}: service {:.0} tps, p99 {:.2} ms, {} errors",
            service_reads.tps,
            service_reads.latency.p99_ms,
            service_reads.errors
        );
        let floor_reads = closed_loop(
            floor.addr,
            floor.pid(),
            users,
            concurrency,
            duration,
            patience,
        )
        .await?;
        log!(
            "reads c={concurrency}: HTTP floor {:.0} tps, p99 {:.2} ms",
            floor_reads.tps,
            floor_reads.latency.p99_ms
        );

        let busy_before = sys::wait_until_quiet(patience).await?;
        let meter = CpuMeter::start(vec![service.pid()])?;
        let pg = pgbench::run(database_url, users, concurrency, duration, work_dir).await?;
        let cpu = meter.per_op(pg.transactions)?;
        log!(
            "reads c={concurrency}: pgbench {:.0} tps, p99 {:.2} ms",
            pg.tps,
            pg.latency.p99_ms
        );
        results.push(ReadsAt {
            concurrency,
            ratio: service_reads.tps / pg.tps,
            floor_ratio: floor_reads.tps / pg.tps,
            service: service_reads,
            http_floor: floor_reads,
            pgbench: Reads {
                tps: pg.tps,
                requests: pg.transactions,
                errors: 0,
                latency: pg.latency,
                cpu,
                other_load_before_percent: busy_before * 100.0,
            },
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
