//! Warm reads against the service with its row cache on and with it off, against the HTTP
//! floor (the same stack doing no work), and the same lookup straight against PostgreSQL;
//! and what the reads with the row cache on cost the database.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::floor::Floor;
use crate::load::{self, Until};
use crate::pgbench;
use crate::report::{IdleDatabase, Reads, ReadsAt, Statements, TrialsTps};
use crate::service::{Metrics, Service, API_KEY};
use crate::setup::Transactions;
use crate::sys::{self, CpuMeter};

/// What the warm-read measurement covers.
pub struct Plan<'a> {
    /// Users read at random, `user-1` to `user-{users}`.
    pub users: u64,
    pub concurrencies: &'a [usize],
    /// Of each trial of each of the four.
    pub duration: Duration,
    pub trials: usize,
    /// Where pgbench's scripts and logs go.
    pub work_dir: &'a Path,
    /// Longest wait for the machine to be quiet before each trial.
    pub patience: Duration,
    /// How long after the trials with the row cache on the database's count is read
    /// ([`STATS_FLUSH`](crate::setup::STATS_FLUSH)); with less, it misses what the
    /// database has not flushed yet.
    pub stats_flush: Duration,
}

/// The two instances compared, on the same database, configured alike but for
/// `[row_cache] enabled`. Both have read every user once (their caches are warm).
pub struct Instances<'a> {
    pub row_cache_on: &'a Service,
    pub row_cache_off: &'a Service,
}

/// At each concurrency, `trials` times over: `duration` of random-user `access-token` calls
/// on the instance without the row cache (one keep-alive connection per worker), `pgbench`
/// for as long, then the instance with the row cache, then the HTTP floor. Each is reported
/// by its median trial: alternating them and taking medians keeps a slow spell of this
/// shared machine from deciding a ratio.
///
/// The order serves the database's count of the row cache's trials (see
/// [`Transactions`]): it is read before such a trial, at least `stats_flush` after the
/// other instance's trial (whose reading connection flushes up to 10 s after its last
/// statement) and a tenth of that after pgbench (whose sessions flush as they end), and
/// again `stats_flush` after it, the floor's trial (no database) filling most of that
/// wait. In that window the database runs the cache-on instance's reads and whatever both
/// instances do when idle, which is measured first ([`IdleDatabase`]).
pub async fn compare(
    instances: &Instances<'_>,
    database_url: &str,
    transactions: &mut Transactions,
    plan: &Plan<'_>,
) -> anyhow::Result<(Vec<ReadsAt>, IdleDatabase)> {
    let Plan {
        users,
        concurrencies,
        duration,
        trials,
        work_dir,
        patience,
        stats_flush,
    } = *plan;
    let Instances {
        row_cache_on: on,
        row_cache_off: off,
    } = *instances;
    let idle = idle_database(transactions, stats_flush.max(duration), stats_flush).await?;
    log!(
        "the database with both instances idle: {:.1} transactions/s",
        idle.per_s
    );
    let floor = Floor::start().await?;
    let mut results = Vec::new();
    for &concurrency in concurrencies {
        let (mut ons, mut offs, mut floors, mut pgbenches) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut statements = Statements::default();
        for trial in 1..=trials.max(1) {
            let at = format!("reads c={concurrency} trial {trial}/{trials}");
            let measure =
                |addr, pid| closed_loop(addr, pid, users, concurrency, duration, patience);

            let s = measure(off.addr, off.pid()).await?;
            let off_ended = Instant::now();
            log!(
                "{at}: service, row cache off: {:.0} tps, p99 {:.2} ms, {} errors, CPU per request: service {:.1} µs, machine {:.1} µs",
                s.tps, s.latency.p99_ms, s.errors, s.cpu.service_us, s.cpu.total_us,
            );
            offs.push(s);

            let p = pgbench_reads(
                &[on.pid(), off.pid()],
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
            // pgbench's sessions flush their statistics as they end, a moment after it exits.
            let settled = (off_ended + stats_flush).max(Instant::now() + stats_flush / 10);
            tokio::time::sleep_until(settled.into()).await;
            let (window_from, transactions_before) = (Instant::now(), transactions.count().await?);
            let metrics_before = on.metrics().await?;
            let s = measure(on.addr, on.pid()).await?;
            let on_ended = Instant::now();
            let metrics_after = on.metrics().await?;
            log!(
                "{at}: service, row cache on: {:.0} tps, p99 {:.2} ms, {} errors, CPU per request: service {:.1} µs, machine {:.1} µs",
                s.tps, s.latency.p99_ms, s.errors, s.cpu.service_us, s.cpu.total_us,
            );
            add_statements(&mut statements, &s, &metrics_before, &metrics_after);
            ons.push(s);

            let f = measure(floor.addr, floor.pid()).await?;
            log!(
                "{at}: HTTP floor {:.0} tps, p99 {:.2} ms, CPU per request: server {:.1} µs, machine {:.1} µs",
                f.tps, f.latency.p99_ms, f.cpu.service_us, f.cpu.total_us,
            );
            floors.push(f);

            tokio::time::sleep_until((on_ended + stats_flush).into()).await;
            statements.database_transactions += transactions.count().await? - transactions_before;
            statements.database_window_s += window_from.elapsed().as_secs_f64();
        }
        statements.finish(&idle);
        log!(
            "reads c={concurrency}, row cache on: {:.4} read-path statements per read (service), {:.4} database transactions per read ({:.4} net of idle)",
            statements.service_selects_per_read,
            statements.database_per_read,
            statements.database_per_read_net,
        );
        let trials_tps = TrialsTps {
            service_row_cache_on: ons.iter().map(|r| r.tps).collect(),
            service_row_cache_off: offs.iter().map(|r| r.tps).collect(),
            http_floor: floors.iter().map(|r| r.tps).collect(),
            pgbench: pgbenches.iter().map(|r| r.tps).collect(),
        };
        let (on_reads, off_reads) = (median(ons), median(offs));
        let (floor_reads, pg) = (median(floors), median(pgbenches));
        results.push(ReadsAt {
            concurrency,
            ratio_row_cache_on: on_reads.tps / pg.tps,
            ratio_row_cache_off: off_reads.tps / pg.tps,
            floor_ratio: floor_reads.tps / pg.tps,
            service_row_cache_on: on_reads,
            service_row_cache_off: off_reads,
            http_floor: floor_reads,
            pgbench: pg,
            statements,
            trials_tps,
        });
    }
    Ok((results, idle))
}

/// Adds a trial with the row cache on: its requests, and the read-path statements and row
/// cache outcomes the instance counted between `before` and `after`.
fn add_statements(statements: &mut Statements, run: &Reads, before: &Metrics, after: &Metrics) {
    let delta = |count: &dyn Fn(&Metrics) -> f64| count(after) - count(before);
    statements.requests += run.requests + run.errors;
    statements.service_selects += delta(&Metrics::lookup_statements);
    statements.row_cache_hits += delta(&|m| m.row_cache("hit"));
    statements.row_cache_misses += delta(&|m| m.row_cache("miss"));
    statements.row_cache_bypasses += delta(&|m| m.row_cache("bypass"));
}

/// The database's transactions per second while both instances are idle (heartbeats,
/// keepers), over `window`, after `settle` for what came before to be flushed.
async fn idle_database(
    transactions: &mut Transactions,
    window: Duration,
    settle: Duration,
) -> anyhow::Result<IdleDatabase> {
    tokio::time::sleep(settle).await;
    let (from, before) = (Instant::now(), transactions.count().await?);
    tokio::time::sleep(window).await;
    let counted = transactions.count().await? - before;
    let window_s = from.elapsed().as_secs_f64();
    Ok(IdleDatabase {
        window_s,
        transactions: counted,
        per_s: counted as f64 / window_s,
    })
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

/// `pgbench` on the same lookup, with the CPU the machine spent (`service_pids`, idle
/// meanwhile, are told apart).
async fn pgbench_reads(
    service_pids: &[u32],
    database_url: &str,
    users: u64,
    concurrency: usize,
    duration: Duration,
    work_dir: &Path,
    patience: Duration,
) -> anyhow::Result<Reads> {
    let busy_before = sys::wait_until_quiet(patience).await?;
    let meter = CpuMeter::start(service_pids.to_vec())?;
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
