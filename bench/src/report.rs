//! The figures of one run: serialised as JSON, printed as markdown tables, checked against
//! the targets the service is held to.

use std::fmt::Write;

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
    pub kms: Kms,
    pub storm: Storm,
    pub memory: Memory,
    pub targets: Vec<Target>,
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
    pub service: Reads,
    /// The same stack and load generator with a handler that does no work (`floor.rs`).
    pub http_floor: Reads,
    pub pgbench: Reads,
    /// Service tps / pgbench tps.
    pub ratio: f64,
    /// HTTP floor tps / pgbench tps: the most the ratio could be on this machine.
    pub floor_ratio: f64,
    /// Every trial's throughput; the figures above are each the median trial's.
    pub trials_tps: TrialsTps,
}

#[derive(Serialize)]
pub struct TrialsTps {
    pub service: Vec<f64>,
    pub http_floor: Vec<f64>,
    pub pgbench: Vec<f64>,
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
    /// All instances together.
    pub service_ms: f64,
    pub load_generator_ms: f64,
    /// PostgreSQL and everything else.
    pub rest_ms: f64,
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
    /// Data keys put in the cache by the cold pass.
    pub keys: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_key: f64,
    /// RSS with 100,000 cached keys: measured if `keys` reached it, else
    /// `rss_before + 100,000 × bytes_per_key`.
    pub rss_100k_keys_mib: f64,
    pub rss_100k_keys_measured: bool,
    pub bound: Bound,
}

impl Memory {
    pub fn new(
        cache_max_entries: u64,
        keys: u64,
        rss_before_kib: u64,
        rss_after_kib: u64,
        bound: Bound,
    ) -> Self {
        let grown_bytes = rss_after_kib.saturating_sub(rss_before_kib) as f64 * 1024.0;
        let bytes_per_key = grown_bytes / keys.max(1) as f64;
        let measured = keys >= 100_000;
        let rss_100k_bytes = if measured {
            rss_after_kib as f64 * 1024.0
        } else {
            rss_before_kib as f64 * 1024.0 + bytes_per_key * 100_000.0
        };
        Self {
            cache_max_entries,
            keys,
            rss_before_kib,
            rss_after_kib,
            bytes_per_key,
            rss_100k_keys_mib: rss_100k_bytes / 1024.0 / 1024.0,
            rss_100k_keys_measured: measured,
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
        if let Some(at16) = self.reads.iter().find(|r| r.concurrency == 16) {
            check(
                "warm reads, c=16: service / pgbench tps",
                format!("{:.2} (HTTP floor: {:.2})", at16.ratio, at16.floor_ratio),
                ">= 0.7",
                at16.ratio >= 0.7,
            );
            check(
                "warm reads, c=16: p99",
                format!("{:.2} ms", at16.service.latency.p99_ms),
                "<= 5 ms",
                at16.service.latency.p99_ms <= 5.0,
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
        let bound = &self.memory.bound;
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
             Run: {} users, {} s per measurement (warm reads: median of {} alternated trials), provider delay {} ms, unwrap cache of {} entries for {} s, service worker threads: {}, load generator: {}.\n",
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

        let _ = writeln!(out, "**Warm reads** (`POST .../access-token`, random users) against `pgbench` (same `select`, prepared)\n");
        let _ = writeln!(
            out,
            "| concurrency | service tps | p50 ms | p99 ms | p99.9 ms | pgbench tps | p50 ms | p99 ms | p99.9 ms | ratio | CPU µs/req service + loadgen + rest | CPU µs/tx pgbench | HTTP floor tps | floor / pgbench |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.reads {
            let (s, g) = (&r.service, &r.pgbench);
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | **{:.2}** | {:.0} + {:.0} + {:.0} = {:.0} | {:.0} | {:.0} | {:.2} |",
                r.concurrency,
                s.tps,
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.latency.p999_ms,
                g.tps,
                g.latency.p50_ms,
                g.latency.p99_ms,
                g.latency.p999_ms,
                r.ratio,
                s.cpu.service_us,
                s.cpu.load_generator_us,
                s.cpu.rest_us,
                s.cpu.total_us,
                g.cpu.total_us,
                r.http_floor.tps,
                r.floor_ratio,
            );
        }

        let other_load = self
            .reads
            .iter()
            .flat_map(|r| [&r.service, &r.pgbench])
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
            "\nThe storm cost {:.0} ms of service CPU (all instances), {:.0} ms of load-generator CPU and {:.0} ms elsewhere (PostgreSQL) on top of the background load, in {:.0} ms on {} CPUs.",
            s.cpu.service_ms,
            s.cpu.load_generator_ms,
            s.cpu.rest_ms,
            s.seconds * 1000.0,
            self.machine.cpus
        );

        let mem = &self.memory;
        let bound = &mem.bound;
        let _ = writeln!(out, "\n**Memory** (VmRSS of the service)\n");
        let _ = writeln!(
            out,
            "| cached keys | RSS before | RSS after | bytes per key | RSS with 100,000 keys |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| {} | {:.1} MiB | {:.1} MiB | {:.0} | {:.1} MiB ({}) |",
            mem.keys,
            mem.rss_before_kib as f64 / 1024.0,
            mem.rss_after_kib as f64 / 1024.0,
            mem.bytes_per_key,
            mem.rss_100k_keys_mib,
            if mem.rss_100k_keys_measured {
                "measured"
            } else {
                "extrapolated"
            },
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
