//! The figures of one run: serialised as JSON, printed as markdown tables, checked against
//! the targets the service is held to.

use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::load::Latency;
use crate::sys::{CpuPerOp, Machine};

#[derive(Serialize)]
pub struct Results {
    pub machine: Machine,
    pub parameters: Parameters,
    pub seed: Seed,
    /// `EXPLAIN (ANALYZE, BUFFERS)` of the service's lookup.
    pub lookup_plan: Vec<String>,
    pub reads: Vec<ReadsAt>,
    /// The database with both warm-read instances idle: what its count of the row cache's
    /// trials includes besides their reads.
    pub idle_database: IdleDatabase,
    pub kms: Kms,
    /// Each storm request is the first request of its connection.
    pub storm: Storm,
    /// The same storm over connections that have answered one read before.
    pub storm_reused: Storm,
    pub memory: Memory,
    pub targets: Vec<Target>,
    /// The warm reads' chart (`chart.rs`), SVG.
    pub chart: PathBuf,
}

#[derive(Serialize)]
pub struct Parameters {
    pub smoke: bool,
    pub users: u64,
    pub duration_s: f64,
    pub trials: usize,
    pub concurrency: Vec<usize>,
    pub provider_delay_ms: u64,
    pub storm_requests: usize,
    pub storm_instances: usize,
    pub background_concurrency: usize,
    /// The background load's rate as a share of the measured warm-read throughput at
    /// concurrency 16 (0: closed loop).
    pub background_share: f64,
    pub background_users: u64,
    pub cache_max_entries: u64,
    pub cache_ttl_seconds: u64,
    /// `[row_cache] max_entries` and `ttl_seconds` of the instances with the row cache on.
    pub row_cache_max_entries: u64,
    pub row_cache_ttl_seconds: u64,
    /// How long after each warm-read trial with the row cache on the database's count was
    /// read (`setup::STATS_FLUSH`; 0 with `--smoke`, whose count is then incomplete).
    pub stats_flush_s: f64,
    pub bound_max_entries: u64,
    /// `database.max_connections` of the service; `None`: its default.
    pub pool_size: Option<u32>,
    /// `TOKIO_WORKER_THREADS` of each instance; 0: one per CPU.
    pub service_worker_threads: usize,
    /// `RUST_LOG` of the service; `None`: its default (info).
    pub rust_log: Option<String>,
    pub load_generator: &'static str,
}

#[derive(Serialize)]
pub struct Seed {
    pub users: u64,
    pub concurrency: usize,
    pub seconds: f64,
    pub per_second: f64,
}

#[derive(Serialize)]
pub struct ReadsAt {
    pub concurrency: usize,
    /// The service as deployed: `[row_cache] enabled = true`.
    pub service_row_cache_on: Reads,
    /// Another instance of the same binary with the same configuration but
    /// `[row_cache] enabled = false`: every read asks the database.
    pub service_row_cache_off: Reads,
    /// The same stack and load generator with a handler that does no work (`floor.rs`).
    pub http_floor: Reads,
    pub pgbench: Reads,
    /// Service tps / pgbench tps, row cache on.
    pub ratio_row_cache_on: f64,
    /// Service tps / pgbench tps, row cache off.
    pub ratio_row_cache_off: f64,
    /// HTTP floor tps / pgbench tps: the most either ratio could be on this machine.
    pub floor_ratio: f64,
    /// What the reads with the row cache on cost the database, over all their trials.
    pub statements: Statements,
    /// Every trial's throughput; the figures above are each the median trial's.
    pub trials_tps: TrialsTps,
}

#[derive(Serialize)]
pub struct TrialsTps {
    pub service_row_cache_on: Vec<f64>,
    pub service_row_cache_off: Vec<f64>,
    pub http_floor: Vec<f64>,
    pub pgbench: Vec<f64>,
}

/// Database statements of the warm reads with the row cache on, counted two ways.
#[derive(Serialize, Default)]
pub struct Statements {
    /// Requests of every trial with the row cache on at this concurrency.
    pub requests: u64,
    /// The read path's statements, as the service counts them
    /// (`token_store_lookup_batch_size_count`): row cache misses and bypasses, batched.
    pub service_selects: f64,
    pub service_selects_per_read: f64,
    /// `token_store_row_cache_requests_total` by outcome.
    pub row_cache_hits: f64,
    pub row_cache_misses: f64,
    pub row_cache_bypasses: f64,
    /// Transactions committed or rolled back in the bench's database
    /// (`pg_stat_database`) from just before each trial to `stats_flush_s` after it:
    /// everything the database ran in that time, the reads' statements and whatever the
    /// instances do when idle (each replica's heartbeat, `NOTIFY` a few times a second,
    /// and its keeper).
    pub database_transactions: i64,
    /// The windows' total length.
    pub database_window_s: f64,
    pub database_per_read: f64,
    /// Less the idle rate ([`IdleDatabase`]) over the windows: the reads' own.
    pub database_per_read_net: f64,
}

impl Statements {
    /// Works out the rates once every trial is added.
    pub fn finish(&mut self, idle: &IdleDatabase) {
        let requests = self.requests.max(1) as f64;
        self.service_selects_per_read = self.service_selects / requests;
        let transactions = self.database_transactions as f64;
        self.database_per_read = transactions / requests;
        self.database_per_read_net =
            (transactions - idle.per_s * self.database_window_s) / requests;
    }
}

/// The bench's database while both warm-read instances are idle.
#[derive(Serialize)]
pub struct IdleDatabase {
    pub window_s: f64,
    pub transactions: i64,
    pub per_s: f64,
}

#[derive(Serialize)]
pub struct Reads {
    pub tps: f64,
    pub requests: u64,
    pub errors: u64,
    pub latency: Latency,
    /// CPU per request (per transaction for pgbench), by process.
    pub cpu: CpuPerOp,
    /// How busy other work kept the machine just before (should be near 0).
    pub other_load_before_percent: f64,
}

#[derive(Serialize)]
pub struct Kms {
    pub distinct_keys: i64,
    /// First pass over every user after a restart (empty unwrap cache).
    pub cold: Pass,
    /// Second pass, right after.
    pub warm: Pass,
    pub refresh: Refresh,
}

#[derive(Serialize)]
pub struct Pass {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub decrypts: f64,
    pub decrypts_per_key: f64,
    pub cache_hits: f64,
    pub cache_misses: f64,
}

#[derive(Serialize)]
pub struct Refresh {
    pub tokens: u64,
    pub succeeded: u64,
    pub kms_calls: f64,
    pub kms_calls_per_refresh: f64,
    pub provider_calls: u64,
}

#[derive(Serialize)]
pub struct Storm {
    pub instances: usize,
    pub requests: usize,
    pub succeeded: u64,
    pub provider_calls: u64,
    pub seconds: f64,
    /// CPU the storm cost on top of the background load (whose rate is measured before).
    pub cpu: StormCpu,
    pub latency: Latency,
    pub background: Background,
    /// How busy other work kept the machine just before (should be near 0).
    pub other_load_before_percent: f64,
}

#[derive(Serialize)]
pub struct StormCpu {
    /// All instances together (`storm::cost` says how it is counted).
    pub service_ms: f64,
    /// `service_ms` per storm request.
    pub service_us_per_request: f64,
    pub load_generator_ms: f64,
    /// PostgreSQL and everything else.
    pub rest_ms: f64,
    /// Background requests answered in the baseline window and in the storm's: the
    /// background's share of the storm window is the baseline's CPU scaled by their ratio.
    pub background_requests_baseline: u64,
    pub background_requests_during: u64,
}

#[derive(Serialize)]
pub struct Background {
    pub concurrency: usize,
    /// Paced at this many requests per second (latency counted from when each was due);
    /// `None`: closed loop.
    pub rate_per_s: Option<f64>,
    pub users: u64,
    pub errors: u64,
    /// Requests that ended before the storm began.
    pub before: Latency,
    /// Requests that overlapped the storm.
    pub during: Latency,
    /// during.p99 / before.p99.
    pub p99_ratio: f64,
}

#[derive(Serialize)]
pub struct Memory {
    pub cache_max_entries: u64,
    /// Distinct data keys of the users read (one per grant).
    pub keys: u64,
    /// The instance without the row cache, before and after its first pass over every
    /// user: the data keys alone.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_key: f64,
    /// RSS with 100,000 cached keys: measured if `keys` reached it, else
    /// `rss_before + 100,000 × bytes_per_key`.
    pub rss_100k_keys_mib: f64,
    pub rss_100k_keys_measured: bool,
    /// The KMS passes' instance, with the row cache, before the cold pass and after the
    /// warm pass: every grant's data key and row cached.
    pub grants_rss_before_kib: u64,
    pub grants_rss_after_kib: u64,
    /// `token_store_row_cache_entries` after the warm pass (`None`: not exported).
    pub rows_cached: Option<f64>,
    pub bytes_per_grant: f64,
    /// The growth above `grants_rss_before` with 100,000 grants' keys and rows cached:
    /// measured if `keys` reached it, else `100,000 × bytes_per_grant`.
    pub growth_100k_grants_mib: f64,
    pub rss_100k_grants_mib: f64,
    pub bound: Bound,
}

/// Resident memory of an instance before and after passes over the users, KiB.
pub struct Rss {
    pub before_kib: u64,
    pub after_kib: u64,
}

impl Rss {
    /// The growth for `count` things cached, extrapolated to 100,000 of them unless
    /// measured: (bytes per thing, bytes with 100,000 above before).
    fn per_and_100k(&self, count: u64) -> (f64, f64) {
        let grown = self.after_kib.saturating_sub(self.before_kib) as f64 * 1024.0;
        let per = grown / count.max(1) as f64;
        (
            per,
            if count >= 100_000 {
                grown
            } else {
                per * 100_000.0
            },
        )
    }
}

impl Memory {
    pub fn new(
        cache_max_entries: u64,
        keys: u64,
        keys_rss: &Rss,
        grants_rss: &Rss,
        rows_cached: Option<f64>,
        bound: Bound,
    ) -> Self {
        let mib = |bytes: f64| bytes / 1024.0 / 1024.0;
        let kib = |kib: u64| kib as f64 * 1024.0;
        let (bytes_per_key, keys_100k) = keys_rss.per_and_100k(keys);
        let (bytes_per_grant, grants_100k) = grants_rss.per_and_100k(keys);
        Self {
            cache_max_entries,
            keys,
            rss_before_kib: keys_rss.before_kib,
            rss_after_kib: keys_rss.after_kib,
            bytes_per_key,
            rss_100k_keys_mib: mib(kib(keys_rss.before_kib) + keys_100k),
            rss_100k_keys_measured: keys >= 100_000,
            grants_rss_before_kib: grants_rss.before_kib,
            grants_rss_after_kib: grants_rss.after_kib,
            rows_cached,
            bytes_per_grant,
            growth_100k_grants_mib: mib(grants_100k),
            rss_100k_grants_mib: mib(kib(grants_rss.before_kib) + grants_100k),
            bound,
        }
    }
}

#[derive(Serialize)]
pub struct Bound {
    pub max_entries: u64,
    pub distinct_keys: u64,
    pub first_pass_misses: f64,
    pub second_pass_misses: f64,
    pub second_pass_hits: f64,
    /// `token_store_unwrap_cache_entries`, if the service exports it.
    pub entries_gauge: Option<f64>,
    pub rss_before_kib: u64,
    pub rss_after_first_pass_kib: u64,
    pub rss_after_second_pass_kib: u64,
}

#[derive(Serialize)]
pub struct Target {
    pub name: String,
    pub value: String,
    pub target: String,
    pub met: bool,
}

impl Results {
    /// Checks the figures against the targets the service is held to.
    pub fn check_targets(&mut self) {
        let mut targets = Vec::new();
        let mut check = |name: &str, value: String, target: &str, met: bool| {
            targets.push(Target {
                name: name.to_owned(),
                value,
                target: target.to_owned(),
                met,
            });
        };
        let at16 = self.reads.iter().find(|r| r.concurrency == 16);
        if let Some(at16) = at16 {
            let (on, off) = (&at16.service_row_cache_on, &at16.service_row_cache_off);
            check(
                "warm reads, c=16, row cache on: service / pgbench tps",
                format!(
                    "{:.2} (row cache off: {:.2}, HTTP floor: {:.2})",
                    at16.ratio_row_cache_on, at16.ratio_row_cache_off, at16.floor_ratio
                ),
                ">= 1.0 (goal 1.5)",
                at16.ratio_row_cache_on >= 1.0,
            );
            check(
                "warm reads, c=16, row cache on: p99",
                format!("{:.2} ms", on.latency.p99_ms),
                "<= 1 ms",
                on.latency.p99_ms <= 1.0,
            );
            let st = &at16.statements;
            check(
                "warm reads, c=16, row cache on: database statements per read",
                format!(
                    "{:.4} (the database's count: {:.4}, {:.4} net of idle)",
                    st.service_selects_per_read, st.database_per_read, st.database_per_read_net
                ),
                "<= 0.01",
                st.service_selects_per_read <= 0.01 && st.database_per_read_net <= 0.01,
            );
            check(
                "warm reads, c=16, row cache off: service / pgbench tps",
                format!("{:.2}", at16.ratio_row_cache_off),
                ">= 0.7",
                at16.ratio_row_cache_off >= 0.7,
            );
            check(
                "warm reads, c=16, row cache off: p99",
                format!("{:.2} ms", off.latency.p99_ms),
                "<= 5 ms",
                off.latency.p99_ms <= 5.0,
            );
        }
        let kms = &self.kms;
        check(
            "cold pass: KMS Decrypts per distinct data key",
            format!("{:.3}", kms.cold.decrypts_per_key),
            "<= 1",
            kms.cold.decrypts_per_key <= 1.0,
        );
        check(
            "warm pass: KMS Decrypts per distinct data key",
            format!("{:.3}", kms.warm.decrypts_per_key),
            "0",
            kms.warm.decrypts == 0.0,
        );
        check(
            "KMS calls per refresh (young data key)",
            format!("{:.3}", kms.refresh.kms_calls_per_refresh),
            "0",
            kms.refresh.kms_calls == 0.0 && kms.refresh.succeeded == kms.refresh.tokens,
        );
        let storm = &self.storm;
        check(
            "refresh storm: provider calls",
            storm.provider_calls.to_string(),
            "1",
            storm.provider_calls == 1,
        );
        check(
            "refresh storm: requests succeeded",
            format!("{} / {}", storm.succeeded, storm.requests),
            "all",
            storm.succeeded == storm.requests as u64,
        );
        check(
            "refresh storm: background p99 during / before",
            format!(
                "{:.2} ({:.2} / {:.2} ms)",
                storm.background.p99_ratio,
                storm.background.during.p99_ms,
                storm.background.before.p99_ms
            ),
            "<= 2",
            storm.background.p99_ratio <= 2.0,
        );
        let reused = &self.storm_reused;
        check(
            "refresh storm on reused connections: provider calls, requests succeeded",
            format!(
                "{}, {} / {}",
                reused.provider_calls, reused.succeeded, reused.requests
            ),
            "1, all",
            reused.provider_calls == 1 && reused.succeeded == reused.requests as u64,
        );
        if let Some(at16) = at16 {
            let warm = at16.service_row_cache_on.cpu.service_us;
            for (name, storm) in [
                ("refresh storm: service CPU per request", storm),
                (
                    "refresh storm on reused connections: service CPU per request",
                    reused,
                ),
            ] {
                check(
                    name,
                    format!(
                        "{:.0} µs (warm read, c=16, row cache on: {warm:.0} µs)",
                        storm.cpu.service_us_per_request
                    ),
                    "<= 2 × warm read",
                    storm.cpu.service_us_per_request <= 2.0 * warm,
                );
            }
        }
        let memory = &self.memory;
        check(
            "memory: 100,000 grants' data keys and rows cached, above the RSS before",
            format!(
                "{:.1} MiB ({})",
                memory.growth_100k_grants_mib,
                if memory.rss_100k_keys_measured {
                    "measured"
                } else {
                    "extrapolated"
                }
            ),
            "<= 100 MiB",
            memory.growth_100k_grants_mib <= 100.0,
        );
        let bound = &memory.bound;
        let (value, met) = match bound.entries_gauge {
            Some(entries) => (
                format!("{entries} entries"),
                entries <= bound.max_entries as f64,
            ),
            // Without an entry gauge: a cache holding every key would hit on every key of
            // the second pass.
            None => (
                format!(
                    "second pass hit {} of {} keys (no entry gauge)",
                    bound.second_pass_hits, bound.distinct_keys
                ),
                bound.second_pass_hits <= bound.max_entries as f64,
            ),
        };
        check(
            &format!(
                "unwrap cache bounded by max entries ({})",
                bound.max_entries
            ),
            value,
            &format!("<= {}", bound.max_entries),
            met,
        );
        self.targets = targets;
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let p = &self.parameters;
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {} GiB, Linux {}, {}.\n\
             Run: {} users, {} s per measurement (warm reads: median of {} alternated trials), provider delay {} ms, unwrap cache of {} entries for {} s, row cache (where on) of {} entries for {} s, service worker threads: {}, load generator: {}.\n",
            m.cpus,
            m.cpu_model,
            m.memory_total_gib,
            m.kernel,
            m.postgres.split(" on ").next().unwrap_or(&m.postgres),
            p.users,
            p.duration_s,
            p.trials,
            p.provider_delay_ms,
            p.cache_max_entries,
            p.cache_ttl_seconds,
            p.row_cache_max_entries,
            p.row_cache_ttl_seconds,
            if p.service_worker_threads == 0 {
                "one per CPU".to_owned()
            } else {
                p.service_worker_threads.to_string()
            },
            p.load_generator,
        );
        let _ = writeln!(
            out,
            "Seeding: {} users through `PUT` at concurrency {} in {:.1} s ({:.0}/s).\n",
            self.seed.users, self.seed.concurrency, self.seed.seconds, self.seed.per_second
        );

        let _ = writeln!(
            out,
            "**Warm reads** (`POST .../access-token`, random users): the service with its row cache on and off, against `pgbench` (same `select`, prepared) and against the HTTP floor\n"
        );
        let _ = writeln!(
            out,
            "| concurrency | service tps, row cache on | on / pgbench | service tps, row cache off | off / pgbench | pgbench tps | HTTP floor tps | floor / pgbench |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.reads {
            let _ = writeln!(
                out,
                "| {} | {:.0} | **{:.2}** | {:.0} | **{:.2}** | {:.0} | {:.0} | {:.2} |",
                r.concurrency,
                r.service_row_cache_on.tps,
                r.ratio_row_cache_on,
                r.service_row_cache_off.tps,
                r.ratio_row_cache_off,
                r.pgbench.tps,
                r.http_floor.tps,
                r.floor_ratio,
            );
        }
        let _ = writeln!(out, "\nLatency, p50 / p99 / p99.9 ms\n");
        let _ = writeln!(
            out,
            "| concurrency | service, row cache on | service, row cache off | pgbench | HTTP floor |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
        let latency = |r: &Reads| {
            let l = &r.latency;
            format!("{:.2} / {:.2} / {:.2}", l.p50_ms, l.p99_ms, l.p999_ms)
        };
        for r in &self.reads {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.concurrency,
                latency(&r.service_row_cache_on),
                latency(&r.service_row_cache_off),
                latency(&r.pgbench),
                latency(&r.http_floor),
            );
        }
        let _ = writeln!(
            out,
            "\nCPU µs per request: the server (service or floor) + the load generator + the rest (PostgreSQL); pgbench: the whole machine per transaction\n"
        );
        let _ = writeln!(
            out,
            "| concurrency | service, row cache on | service, row cache off | pgbench | HTTP floor |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
        let cpu = |r: &Reads| {
            let c = &r.cpu;
            format!(
                "{:.0} + {:.0} + {:.0} = {:.0}",
                c.service_us, c.load_generator_us, c.rest_us, c.total_us
            )
        };
        for r in &self.reads {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} |",
                r.concurrency,
                cpu(&r.service_row_cache_on),
                cpu(&r.service_row_cache_off),
                r.pgbench.cpu.total_us,
                cpu(&r.http_floor),
            );
        }
        let idle = &self.idle_database;
        let _ = writeln!(
            out,
            "\nDatabase statements of the reads with the row cache on, all trials: as the service counts its read path's statements, and as the database counts its transactions from just before each trial to {:.0} s after it (its statistics lag), which includes what both instances do when idle (heartbeats, keepers: {:.1} transactions/s, measured over {:.1} s with no load; *net* takes that out)\n",
            p.stats_flush_s, idle.per_s, idle.window_s,
        );
        let _ = writeln!(
            out,
            "| concurrency | reads | row cache hits / misses / bypasses | read-path statements | per read | database transactions | in s | per read | net per read |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.reads {
            let st = &r.statements;
            let _ = writeln!(
                out,
                "| {} | {} | {} / {} / {} | {} | {:.4} | {} | {:.1} | {:.4} | {:.4} |",
                r.concurrency,
                st.requests,
                st.row_cache_hits,
                st.row_cache_misses,
                st.row_cache_bypasses,
                st.service_selects,
                st.service_selects_per_read,
                st.database_transactions,
                st.database_window_s,
                st.database_per_read,
                st.database_per_read_net,
            );
        }

        let _ = writeln!(out, "\nChart of these figures: `{}`.", self.chart.display());

        let other_load = self
            .reads
            .iter()
            .flat_map(|r| {
                [
                    &r.service_row_cache_on,
                    &r.service_row_cache_off,
                    &r.pgbench,
                    &r.http_floor,
                ]
            })
            .map(|r| r.other_load_before_percent)
            .fold(self.storm.other_load_before_percent, f64::max);
        let _ = writeln!(
            out,
            "\nOther work kept the machine at most {other_load:.0} % busy just before each measurement."
        );

        let k = &self.kms;
        let _ = writeln!(
            out,
            "\n**KMS economy** ({} distinct data keys; service restarted first)\n",
            k.distinct_keys
        );
        let _ = writeln!(out, "| pass | requests | errors | Decrypts | Decrypts per key | cache hits | cache misses | seconds |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for (name, pass) in [("cold", &k.cold), ("warm", &k.warm)] {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {:.3} | {} | {} | {:.1} |",
                pass.requests,
                pass.errors,
                pass.decrypts,
                pass.decrypts_per_key,
                pass.cache_hits,
                pass.cache_misses,
                pass.seconds
            );
        }
        let r = &k.refresh;
        let _ = writeln!(
            out,
            "\nRefresh of {} expired tokens: {} succeeded, {} KMS calls ({:.3} per refresh), {} provider calls.\n",
            r.tokens, r.succeeded, r.kms_calls, r.kms_calls_per_refresh, r.provider_calls
        );

        let s = &self.storm;
        let b = &s.background;
        let _ = writeln!(
            out,
            "**Refresh storm**: {} concurrent requests for one expired token over {} instances, provider delay {} ms; background load on {} other users over {} connections, {}\n",
            s.requests,
            s.instances,
            p.provider_delay_ms,
            b.users,
            b.concurrency,
            b.rate_per_s.map_or_else(
                || "closed loop".to_owned(),
                |r| format!("paced at {r:.0} requests/s ({:.0} % of the c=16 throughput)", p.background_share * 100.0)
            ),
        );
        let _ = writeln!(out, "| provider calls | succeeded | storm p50 ms | storm p99 ms | storm max ms | background p99 before ms | background p99 during ms | ratio |");
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| {} | {} / {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            s.provider_calls,
            s.succeeded,
            s.requests,
            s.latency.p50_ms,
            s.latency.p99_ms,
            s.latency.max_ms,
            b.before.p99_ms,
            b.during.p99_ms,
            b.p99_ratio
        );

        let _ = writeln!(
            out,
            "\nThe storm cost {:.0} ms of service CPU (all instances), {:.0} ms of load-generator CPU and {:.0} ms elsewhere (PostgreSQL) on top of the background load, in {:.0} ms on {} CPUs; the background's share taken out is the baseline's CPU × {} / {} (background requests answered during the storm / in the {} s before it).",
            s.cpu.service_ms,
            s.cpu.load_generator_ms,
            s.cpu.rest_ms,
            s.seconds * 1000.0,
            self.machine.cpus,
            s.cpu.background_requests_during,
            s.cpu.background_requests_baseline,
            p.duration_s,
        );
        let warm = self.reads.iter().find(|r| r.concurrency == 16).map_or_else(
            || "not measured at c=16".to_owned(),
            |r| format!("{:.0} µs", r.service_row_cache_on.cpu.service_us),
        );
        let _ = writeln!(
            out,
            "Service CPU per storm request: **{:.0} µs** (a warm read, c=16, row cache on: {warm}).",
            s.cpu.service_us_per_request,
        );
        let r = &self.storm_reused;
        let _ = writeln!(
            out,
            "\nThe same storm over connections that have each answered one read before (as a load balancer's long-lived connections have): {} provider call(s), {} / {} succeeded, p50 {:.1} ms, p99 {:.1} ms, background p99 {:.2} → {:.2} ms; service CPU **{:.0} µs** per storm request ({:.0} ms in all), load generator {:.0} ms, elsewhere {:.0} ms.",
            r.provider_calls,
            r.succeeded,
            r.requests,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.background.before.p99_ms,
            r.background.during.p99_ms,
            r.cpu.service_us_per_request,
            r.cpu.service_ms,
            r.cpu.load_generator_ms,
            r.cpu.rest_ms,
        );

        let mem = &self.memory;
        let bound = &mem.bound;
        let _ = writeln!(
            out,
            "\n**Memory** (VmRSS of the service, after a first pass over every user)\n"
        );
        let _ = writeln!(
            out,
            "| cached | grants | RSS before | RSS after | bytes per grant | with 100,000 grants: above before | RSS |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        let extrapolated = if mem.rss_100k_keys_measured {
            "measured"
        } else {
            "extrapolated"
        };
        let mib = |kib: u64| kib as f64 / 1024.0;
        let _ = writeln!(
            out,
            "| data keys (an instance without the row cache) | {} | {:.1} MiB | {:.1} MiB | {:.0} | {:.1} MiB | {:.1} MiB ({extrapolated}) |",
            mem.keys,
            mib(mem.rss_before_kib),
            mib(mem.rss_after_kib),
            mem.bytes_per_key,
            mem.rss_100k_keys_mib - mib(mem.rss_before_kib),
            mem.rss_100k_keys_mib,
        );
        let _ = writeln!(
            out,
            "| data keys and rows ({} rows cached) | {} | {:.1} MiB | {:.1} MiB | {:.0} | {:.1} MiB | {:.1} MiB ({extrapolated}) |",
            mem.rows_cached
                .map_or_else(|| "row count not exported".to_owned(), |n| n.to_string()),
            mem.keys,
            mib(mem.grants_rss_before_kib),
            mib(mem.grants_rss_after_kib),
            mem.bytes_per_grant,
            mem.growth_100k_grants_mib,
            mem.rss_100k_grants_mib,
        );
        let _ = writeln!(
            out,
            "\nBound: `cache_max_entries = {}`, {} distinct keys read twice: misses {} then {} (hits {}); entry gauge: {}; RSS {:.1}, then {:.1} and {:.1} MiB after the passes.\n",
            bound.max_entries,
            bound.distinct_keys,
            bound.first_pass_misses,
            bound.second_pass_misses,
            bound.second_pass_hits,
            bound.entries_gauge.map_or_else(|| "not exported".to_owned(), |g| g.to_string()),
            bound.rss_before_kib as f64 / 1024.0,
            bound.rss_after_first_pass_kib as f64 / 1024.0,
            bound.rss_after_second_pass_kib as f64 / 1024.0,
        );

        let _ = writeln!(out, "**Targets**\n");
        let _ = writeln!(out, "| target | value | wanted | met |");
        let _ = writeln!(out, "|---|---:|---:|:---:|");
        for t in &self.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.name,
                t.value,
                t.target,
                if t.met { "yes" } else { "**no**" }
            );
        }
        out
    }
}
