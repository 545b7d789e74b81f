//! `bench`: how token-store's read path compares with PostgreSQL's own limit, what it costs
//! in KMS calls, how it behaves in a refresh storm and how much memory its unwrap cache
//! takes, in one run.
//!
//! It starts the real `token-store serve` (the binary next to this one) against a fresh
//! PostgreSQL database, a fresh LocalStack KMS key and the fake OAuth provider of
//! `test-support` (in process, answering after a delay), seeds users through the API, then
//! measures:
//!
//! 1. warm reads (`POST .../access-token`) at several concurrencies, on an instance with its
//!    row cache on and one with it off, and `pgbench` running the same lookup on the same
//!    table: PostgreSQL's own limit; and the database statements a warm read costs with the
//!    row cache on;
//! 2. KMS economy: Decrypts per distinct data key on a cold then a warm pass after a restart,
//!    the resident memory the cached keys and rows take, and KMS calls per refresh;
//! 3. a refresh storm over several instances, with a background load;
//! 4. that the unwrap cache stays within its maximum entry count.
//!
//! It prints markdown tables, checks the figures against the targets the service should reach
//! (`report.rs`), writes the same figures as JSON and draws the warm reads as an SVG chart
//! (`chart.rs`). Latency percentiles come from HDR histograms (`hdrhistogram`).
//! `scripts/bench.sh` builds it in release mode and runs it; `--smoke` is a seconds-long run
//! for the test suite (`bench/tests/smoke.rs`). Its own work (load generation) runs on one
//! thread, so it takes at most one core.

/// Progress on standard error.
macro_rules! log {
    ($($arg:tt)*) => { eprintln!("[bench] {}", format!($($arg)*)) };
}

mod bound;
mod chart;
mod floor;
mod keeper;
mod kms;
mod load;
mod pgbench;
mod reads;
mod report;
mod seed;
mod service;
mod setup;
mod storm;
mod sys;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sqlx::PgPool;
use test_support::{FakeProvider, Mode, TestDatabase, TestKmsKey};

use crate::report::{Kms, Memory, Parameters, Results};
use crate::service::{Launcher, RowCache, Service, ServiceConfig, API_KEY};

#[derive(Parser, Debug)]
#[command(
    about = "Benchmarks token-store: warm reads against PostgreSQL's own limit, KMS calls, a refresh storm, the unwrap cache's memory"
)]
struct Args {
    /// Users seeded (one Google token each).
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Seconds per measurement (pgbench rounds up to whole seconds).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm reads: trials of the service with its row cache off, pgbench, the service with
    /// its row cache on and the HTTP floor, alternated; each is reported by its median trial.
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// Where the JSON results go; service configurations and logs go next to it.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Where the warm reads' chart (SVG) goes. Default: `docs/benchmarks-reads.svg` of the
    /// repository this bench was built from; with `--smoke`, `benchmarks-reads.svg` in the
    /// work directory (next to the results).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// A tiny, seconds-long run (20 users, 0.3 s measurements at concurrency 2, 4 and 8, a
    /// 30-request storm) that checks the benchmark works, not the service's speed. Drops its
    /// database at the end (a full run keeps it).
    #[arg(long)]
    smoke: bool,
    /// Database to (re)create for the run.
    #[arg(long, default_value = "token_store_bench")]
    database: String,
    /// PostgreSQL server, without a database name (the tests read the same variable).
    #[arg(
        long,
        env = test_support::env::DATABASE_SERVER_URL_VAR,
        default_value = test_support::env::DEFAULT_DATABASE_SERVER_URL
    )]
    database_server: String,
    /// LocalStack (KMS). The run's key is scheduled for deletion at the end.
    #[arg(
        long,
        env = "AWS_ENDPOINT_URL",
        default_value = test_support::env::DEFAULT_KMS_ENDPOINT
    )]
    kms_endpoint: String,
    /// Concurrencies of the warm-read measurement.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    concurrency: Vec<usize>,
    /// Delay of the fake provider's token endpoint.
    #[arg(long, default_value_t = 200)]
    provider_delay_ms: u64,
    #[arg(long, default_value_t = 1_000)]
    storm_requests: usize,
    #[arg(long, default_value_t = 3)]
    storm_instances: usize,
    #[arg(long, default_value_t = 8)]
    background_concurrency: usize,
    /// Pace the storm's background load at this share of the warm-read throughput measured
    /// at concurrency 16 (or the highest measured); 0 runs it as a closed loop, which
    /// saturates the machine so that any extra work shows as queueing.
    #[arg(long, default_value_t = 0.25)]
    background_share: f64,
    /// The background load of the storm reads this many users (each instance's cache is
    /// warmed on them first).
    #[arg(long, default_value_t = 1_000)]
    background_users: u64,
    #[arg(long, default_value_t = 32)]
    seed_concurrency: usize,
    /// Tokens expired and refreshed to count KMS calls per refresh.
    #[arg(long, default_value_t = 100)]
    refresh_tokens: u64,
    /// `kms.cache_max_entries` of the measured instances (default: 100,000, or every
    /// seeded user's key if there are more).
    #[arg(long)]
    cache_max_entries: Option<u64>,
    /// `kms.cache_ttl_seconds` of every instance. Longer than the service's default (300 s)
    /// so that no key expires during a run: seeding 100,000 users alone takes 5 minutes
    /// here, and an expired key would turn warm reads into KMS calls.
    #[arg(long, default_value_t = 3_600)]
    cache_ttl_seconds: u64,
    /// `[row_cache] ttl_seconds` of the instances with the row cache on. Longer than the
    /// service's default (300 s) for the same reason as `--cache-ttl-seconds`: the warm-up
    /// pass fills every row within a second, so with 300 s they would all expire at once
    /// in the middle of the warm reads and turn a trial's reads into statements.
    /// `[row_cache] max_entries` follows `--cache-max-entries`.
    #[arg(long, default_value_t = 3_600)]
    row_cache_ttl_seconds: u64,
    /// `kms.cache_max_entries` of the instance that checks the bound.
    #[arg(long, default_value_t = 1_000)]
    bound_max_entries: u64,
    /// `database.max_connections` of the service (default: the service's own default).
    #[arg(long)]
    pool_size: Option<u32>,
    /// Tokio worker threads of each service instance (`TOKIO_WORKER_THREADS`); 0: tokio's
    /// default, one per CPU. One by default: on a machine where PostgreSQL and the load
    /// generator share the CPUs with the service, a second worker thread only adds
    /// cross-thread wake-ups (docs/benchmarks.md).
    #[arg(long, default_value_t = 1)]
    service_worker_threads: usize,
    /// The `token-store` binary (default: the one next to this executable).
    #[arg(long)]
    service_bin: Option<PathBuf>,
    /// Longest wait, in seconds, before each measurement for other work (a build, another
    /// benchmark) to leave the machine quiet.
    #[arg(long, default_value_t = 600)]
    quiet_patience: u64,
    /// Keep the services' logs (`<name>.log` next to the results); they are big.
    #[arg(long)]
    keep_service_logs: bool,
    /// Measure the keeper instead (`keeper.rs`): its cost over `--keeper-grants` grants
    /// with nothing due, then how long it takes to refresh `--keeper-due` grants due at
    /// once. On `--database`, as the other measurements (kept afterwards unless `--smoke`).
    #[arg(long)]
    keeper: bool,
    #[arg(long, default_value_t = 100_000)]
    keeper_grants: u64,
    #[arg(long, default_value_t = 10_000)]
    keeper_due: u64,
    /// Seconds watched with nothing due.
    #[arg(long, default_value_t = 60)]
    keeper_idle_seconds: u64,
}

impl Args {
    fn apply_smoke(&mut self) {
        if self.smoke {
            self.users = 20;
            self.duration = 0.3;
            // Few PostgreSQL connections: the test suite's databases share the server.
            self.concurrency = vec![2, 4, 8];
            self.trials = 1;
            self.storm_requests = 30;
            self.background_concurrency = 2;
            self.background_users = 10;
            self.refresh_tokens = 5;
            self.bound_max_entries = 5;
            // The test suite runs beside it: nothing to wait for.
            self.quiet_patience = 0;
        }
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some(floor::SERVE_FLAG) {
        return floor::serve();
    }
    let mut args = Args::parse();
    args.apply_smoke();
    // Before any thread exists; the services inherit them.
    test_support::set_aws_defaults();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.keeper {
        let cost = runtime.block_on(async {
            tokio::select! {
                cost = run_keeper(&args) => cost,
                () = interrupted() => anyhow::bail!("interrupted"),
            }
        })?;
        println!("{}", cost.markdown());
        std::fs::write(&args.out, serde_json::to_string_pretty(&cost)? + "\n")
            .with_context(|| format!("writing {}", args.out.display()))?;
        log!("results written to {}", args.out.display());
        return Ok(());
    }
    // On Ctrl-C or SIGTERM the run is dropped, and with it the services it started.
    let results = runtime.block_on(async {
        tokio::select! {
            results = run(&args) => results,
            () = interrupted() => anyhow::bail!("interrupted"),
        }
    })?;
    println!("{}", results.markdown());
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(&args.out, json + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    log!("results written to {}", args.out.display());
    let p = &results.parameters;
    let caption = format!(
        "Warm reads: {} users, median of {} trials of {} s",
        p.users, p.trials, p.duration_s
    );
    chart::write(&results.chart, &caption, &chart::warm_reads(&results.reads))?;
    log!("chart written to {}", results.chart.display());
    Ok(())
}

async fn interrupted() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        Some(()) = async { terminate.as_mut()?.recv().await } => {},
    }
}

async fn run(args: &Args) -> anyhow::Result<Results> {
    let binary = service::binary(args.service_bin.clone())?;
    let work_dir = work_dir(args)?;
    let duration = Duration::from_secs_f64(args.duration);
    let patience = Duration::from_secs(args.quiet_patience);
    let n = args.users;
    anyhow::ensure!(n >= 2, "--users must be at least 2");
    // Users 1..=n are read; n + 1 is the storm's; n + 2 warms connections up; n + 3 is the
    // storm's on reused connections.
    let readers: Vec<u64> = (1..=n).collect();
    let storm_user = n + 1;
    let warm_up_user = n + 2;
    let reused_storm_user = n + 3;
    let cache_max_entries = args.cache_max_entries.unwrap_or(100_000.max(n + 3));
    // The smoke run's count of database statements is incomplete rather than 11 s longer
    // per trial.
    let stats_flush = if args.smoke {
        Duration::ZERO
    } else {
        setup::STATS_FLUSH
    };
    let chart_path = chart_path(args, &work_dir)?;

    log!("database {} on {}", args.database, args.database_server);
    // Dropped at the end of a smoke run (however it ends); a full run leaves it for a look.
    let mut database = TestDatabase::recreate(&args.database_server, &args.database).await?;
    if !args.smoke {
        database.keep();
    }
    let database_url = database.url().to_owned();
    // Scheduled for deletion when the run ends, however it ends.
    let kms_key = TestKmsKey::create_at(&args.kms_endpoint, "token-store benchmark key").await?;
    let provider = FakeProvider::start().await;
    let delay = Duration::from_millis(args.provider_delay_ms);
    provider.set_mode(Mode::Slow(delay, &Mode::Success));
    let config = ServiceConfig {
        database_url: database_url.clone(),
        kms_key_id: kms_key.arn().to_owned(),
        kms_endpoint: args.kms_endpoint.clone(),
        provider: provider.toml("google"),
        cache_max_entries,
        cache_ttl_seconds: args.cache_ttl_seconds,
        pool_size: args.pool_size,
        worker_threads: Some(args.service_worker_threads).filter(|&n| n > 0),
        row_cache: RowCache {
            enabled: true,
            max_entries: cache_max_entries,
            ttl_seconds: args.row_cache_ttl_seconds,
        },
    };
    let launcher = Launcher {
        binary,
        dir: work_dir.clone(),
        keep_logs: args.keep_service_logs,
    };
    log!("starting {}", launcher.binary.display());
    let service = launcher.start("a", &config).await?;
    let without_row_cache = ServiceConfig {
        row_cache: RowCache {
            enabled: false,
            ..config.row_cache
        },
        ..config.clone()
    };
    let service_off = launcher
        .start("a-row-cache-off", &without_row_cache)
        .await?;
    let db = PgPool::connect(&database_url).await?;
    let machine = sys::Machine::describe(setup::postgres_version(&db).await?);

    log!(
        "seeding {} users at concurrency {}",
        n + 3,
        args.seed_concurrency
    );
    let all_users: Vec<u64> = (1..=n + 3).collect();
    let seed = seed::seed(service.addr, &all_users, args.seed_concurrency).await?;
    log!("seeded in {:.1} s ({:.0}/s)", seed.seconds, seed.per_second);
    let lookup_plan = setup::lookup_plan(&db, 1).await?;

    log!("warm-up pass over every user, on both instances");
    service.wait_for_row_cache(warm_up_user).await?;
    let mut connections = load::connect(&[service.addr], 16, API_KEY).await?;
    load::pass(&mut connections, &readers).await;
    // The instance without the row cache has served nothing yet: its pass shows what the
    // data keys alone take.
    let mut connections = load::connect(&[service_off.addr], 32, API_KEY).await?;
    let keys_rss = kms::keys_memory(&service_off, &mut connections, &readers, warm_up_user).await?;
    drop(connections);
    let mut transactions =
        setup::Transactions::connect(&args.database_server, &args.database).await?;
    let (reads, idle_database) = reads::compare(
        &reads::Instances {
            row_cache_on: &service,
            row_cache_off: &service_off,
        },
        &database_url,
        &mut transactions,
        &reads::Plan {
            users: n,
            concurrencies: &args.concurrency,
            duration,
            trials: args.trials,
            work_dir: &work_dir,
            patience,
            stats_flush,
        },
    )
    .await?;
    transactions.close().await?;
    service_off.stop().await?;

    log!("KMS economy: restarting the service (empty cache), cold pass then warm pass");
    service.stop().await?;
    let service = launcher.start("a-restarted", &config).await?;
    let mut connections = load::connect(&[service.addr], 32, API_KEY).await?;
    let passes = kms::passes(&service, &mut connections, &db, &readers, warm_up_user).await?;
    log!(
        "cold: {} Decrypts, warm: {} Decrypts for {} keys",
        passes.cold.decrypts,
        passes.warm.decrypts,
        passes.distinct_keys
    );
    let refreshed: Vec<u64> = (1..=args.refresh_tokens.min(n)).collect();
    log!("refreshing {} expired tokens", refreshed.len());
    let refresh = kms::refresh(
        &service,
        &mut connections[..8.min(refreshed.len())],
        &db,
        &provider,
        &refreshed,
    )
    .await?;
    drop(connections);

    log!(
        "refresh storm: {} requests over {} instances",
        args.storm_requests,
        args.storm_instances
    );
    let background_users: Vec<u64> = (1..=args.background_users.min(n)).collect();
    let mut siblings = Vec::new();
    for i in 1..args.storm_instances.max(1) {
        let sibling = launcher.start(&format!("storm-{i}"), &config).await?;
        let mut connections = load::connect(&[sibling.addr], 16, API_KEY).await?;
        load::pass(&mut connections, &background_users).await;
        siblings.push(sibling);
    }
    let mut targets = vec![service.addr];
    targets.extend(siblings.iter().map(|s| s.addr));
    let plan = storm::StormPlan {
        targets,
        storm_user,
        requests: args.storm_requests,
        background_concurrency: args.background_concurrency,
        background_rate: background_rate(&reads, args.background_share),
        background_users: background_users.len() as u64,
        service_pids: std::iter::once(&service)
            .chain(&siblings)
            .map(Service::pid)
            .collect(),
        baseline: duration,
        patience,
        reused_connections: false,
    };
    let storm = storm::run(&plan, &db, &provider).await?;
    log!(
        "storm: {} provider calls, {} of {} succeeded",
        storm.provider_calls,
        storm.succeeded,
        storm.requests
    );
    log!("the same storm on connections that have answered a read before");
    let reused_plan = storm::StormPlan {
        storm_user: reused_storm_user,
        reused_connections: true,
        ..plan
    };
    let storm_reused = storm::run(&reused_plan, &db, &provider).await?;
    log!(
        "storm on reused connections: {} provider calls, {} of {} succeeded",
        storm_reused.provider_calls,
        storm_reused.succeeded,
        storm_reused.requests
    );
    for sibling in siblings {
        sibling.stop().await?;
    }

    log!("cache bound: max {} entries", args.bound_max_entries);
    let bounded = launcher
        .start(
            "bounded",
            &ServiceConfig {
                cache_max_entries: args.bound_max_entries,
                ..config.clone()
            },
        )
        .await?;
    let bound_users: Vec<u64> = (1..=(2 * args.bound_max_entries).min(n)).collect();
    let bound = bound::check(&bounded, args.bound_max_entries, &bound_users).await?;
    bounded.stop().await?;
    service.stop().await?;
    db.close().await;
    drop((database, kms_key));

    let keys = passes.distinct_keys.max(0) as u64;
    let mut results = Results {
        machine,
        parameters: Parameters {
            smoke: args.smoke,
            users: n,
            duration_s: args.duration,
            trials: args.trials,
            concurrency: args.concurrency.clone(),
            provider_delay_ms: args.provider_delay_ms,
            storm_requests: args.storm_requests,
            storm_instances: args.storm_instances,
            background_concurrency: args.background_concurrency,
            background_share: args.background_share,
            background_users: background_users.len() as u64,
            cache_max_entries,
            cache_ttl_seconds: args.cache_ttl_seconds,
            row_cache_max_entries: cache_max_entries,
            row_cache_ttl_seconds: args.row_cache_ttl_seconds,
            stats_flush_s: stats_flush.as_secs_f64(),
            bound_max_entries: args.bound_max_entries,
            pool_size: args.pool_size,
            service_worker_threads: args.service_worker_threads,
            rust_log: std::env::var("RUST_LOG").ok(),
            load_generator:
                "built in: Rust, tokio single thread, raw HTTP/1.1, one keep-alive connection per worker",
        },
        seed,
        lookup_plan,
        reads,
        idle_database,
        memory: Memory::new(
            cache_max_entries,
            keys,
            &keys_rss,
            &passes.rss,
            passes.rows_cached,
            bound,
        ),
        kms: Kms {
            distinct_keys: passes.distinct_keys,
            cold: passes.cold,
            warm: passes.warm,
            refresh,
        },
        storm,
        storm_reused,
        targets: Vec::new(),
        chart: chart_path,
    };
    results.check_targets();
    Ok(results)
}

/// The keeper's cost: one replica with the keeper's defaults (see `keeper.rs`).
async fn run_keeper(args: &Args) -> anyhow::Result<keeper::KeeperCost> {
    let binary = service::binary(args.service_bin.clone())?;
    let work_dir = work_dir(args)?;
    let name = args.database.as_str();
    let mut database = TestDatabase::recreate(&args.database_server, name).await?;
    if !args.smoke {
        database.keep();
    }
    let kms_key =
        TestKmsKey::create_at(&args.kms_endpoint, "token-store keeper benchmark key").await?;
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::Slow(
        Duration::from_millis(args.provider_delay_ms),
        &Mode::Success,
    ));
    let config = ServiceConfig {
        database_url: database.url().to_owned(),
        kms_key_id: kms_key.arn().to_owned(),
        kms_endpoint: args.kms_endpoint.clone(),
        provider: provider.toml("google"),
        cache_max_entries: 100_000,
        cache_ttl_seconds: args.cache_ttl_seconds,
        pool_size: args.pool_size,
        worker_threads: Some(args.service_worker_threads).filter(|&n| n > 0),
        row_cache: RowCache {
            enabled: true,
            max_entries: 100_000,
            ttl_seconds: args.row_cache_ttl_seconds,
        },
    };
    let launcher = Launcher {
        binary,
        dir: work_dir,
        keep_logs: args.keep_service_logs,
    };
    let service = launcher.start("keeper", &config).await?;
    let db = PgPool::connect(database.url()).await?;
    let due_users: Vec<u64> = (1..=args.keeper_due.max(1)).collect();
    log!("seeding {} grants through the API", due_users.len());
    seed::seed(service.addr, &due_users, args.seed_concurrency).await?;
    let defaults = token_store::config::KeeperConfig::default();
    let cost = keeper::measure(&keeper::KeeperPlan {
        service: &service,
        db: &db,
        database: name,
        provider: &provider,
        grants: args.keeper_grants,
        due_users: &due_users,
        idle: Duration::from_secs(args.keeper_idle_seconds),
        provider_delay_ms: args.provider_delay_ms,
        concurrency: defaults.concurrency_per_provider,
    })
    .await?;
    service.stop().await?;
    db.close().await;
    drop((database, kms_key));
    Ok(cost)
}

/// Where the services' configurations and logs go: `bench-work/` next to the results.
fn work_dir(args: &Args) -> anyhow::Result<PathBuf> {
    let dir = args
        .out
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
        .join("bench-work");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `--chart`; else, with `--smoke`, the work directory; else `docs/benchmarks-reads.svg`
/// of the repository this bench was built from.
fn chart_path(args: &Args, work_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.chart {
        return Ok(path.clone());
    }
    if args.smoke {
        return Ok(work_dir.join("benchmarks-reads.svg"));
    }
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate has no parent directory")?;
    Ok(repository.join("docs").join("benchmarks-reads.svg"))
}

/// `share` of the warm-read throughput with the row cache on (as the storm's instances run)
/// at concurrency 16 (else the best measured); `None` for a closed loop.
fn background_rate(reads: &[report::ReadsAt], share: f64) -> Option<f64> {
    if share <= 0.0 {
        return None;
    }
    let capacity = reads
        .iter()
        .find(|r| r.concurrency == 16)
        .map(|r| r.service_row_cache_on.tps)
        .or_else(|| {
            reads
                .iter()
                .map(|r| r.service_row_cache_on.tps)
                .reduce(f64::max)
        })?;
    Some(share * capacity)
}
