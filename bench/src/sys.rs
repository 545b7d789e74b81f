//! What Linux's `/proc` says about memory, CPU time and the machine.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// `VmRSS` of a process, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// User + system CPU time of a process (all its threads).
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// CPU time of a process's live threads to the nanosecond (the scheduler's
/// `sum_exec_runtime`, the first field of `/proc/<pid>/task/<tid>/schedstat`), for windows
/// so short that `/proc/<pid>/stat`'s 10 ms ticks would decide the figure. A thread that
/// exits takes its time with it (tokio's blocking-pool threads do after 10 s idle), so
/// across such an exit the figure is low by what that thread had spent.
pub fn threads_cpu(pid: u32) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread that has just exited has no schedstat any more.
        let Ok(schedstat) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns: u64 = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed {}", path.display()))?;
        total += Duration::from_nanos(ns);
    }
    Ok(total)
}

/// User + system CPU time of this process.
pub fn own_cpu() -> anyhow::Result<Duration> {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat")?)
}

fn stat_cpu(stat: &str) -> anyhow::Result<Duration> {
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks_to_duration(ticks))
}

/// CPU time spent busy by the whole machine (all cores), from `/proc/stat`.
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Ok(ticks_to_duration(busy))
}

/// Linux reports CPU times in USER_HZ ticks, 100 per second on every mainstream
/// architecture (`getconf CLK_TCK`).
fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// CPU time of the service, this benchmark process and the rest of the machine
/// (PostgreSQL, pgbench, LocalStack) over a measurement.
pub struct CpuMeter {
    service_pids: Vec<u32>,
    start: [Duration; 3],
}

impl CpuMeter {
    pub fn start(service_pids: Vec<u32>) -> anyhow::Result<Self> {
        let start = Self::now(&service_pids)?;
        Ok(Self {
            service_pids,
            start,
        })
    }

    fn now(service_pids: &[u32]) -> anyhow::Result<[Duration; 3]> {
        let mut service = Duration::ZERO;
        for pid in service_pids {
            service += process_cpu(*pid)?;
        }
        Ok([service, own_cpu()?, machine_busy()?])
    }

    /// CPU time since the start of the load generator and of the rest of the machine, the
    /// service's processes excluded (short windows count those with [`threads_cpu`]).
    pub fn total(&self) -> anyhow::Result<CpuTime> {
        let end = Self::now(&self.service_pids)?;
        let used = |i: usize| end[i].saturating_sub(self.start[i]);
        let (service, load_generator, machine) = (used(0), used(1), used(2));
        Ok(CpuTime {
            load_generator,
            rest: machine.saturating_sub(service + load_generator),
        })
    }

    /// Microseconds of CPU per operation, split by whom.
    pub fn per_op(&self, operations: u64) -> anyhow::Result<CpuPerOp> {
        let end = Self::now(&self.service_pids)?;
        let used = |i: usize| end[i].saturating_sub(self.start[i]);
        let per = |d: Duration| d.as_secs_f64() * 1e6 / operations.max(1) as f64;
        let (service, client, machine) = (used(0), used(1), used(2));
        Ok(CpuPerOp {
            service_us: per(service),
            load_generator_us: per(client),
            rest_us: per(machine.saturating_sub(service + client)),
            total_us: per(machine),
        })
    }
}

pub struct CpuTime {
    pub load_generator: Duration,
    pub rest: Duration,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPerOp {
    /// The token-store process(es).
    pub service_us: f64,
    /// This process (the load generator; pgbench is a separate process, counted in rest).
    pub load_generator_us: f64,
    /// Everything else: PostgreSQL backends (and pgbench, LocalStack).
    pub rest_us: f64,
    pub total_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_total_gib: f64,
    pub kernel: String,
    pub postgres: String,
}

impl Machine {
    pub fn describe(postgres_version: String) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_total_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            postgres: postgres_version,
        }
    }
}

/// Share of the machine's CPU (0 to 1) busy over `window`.
pub async fn busy_share(window: Duration) -> anyhow::Result<f64> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let before = machine_busy()?;
    tokio::time::sleep(window).await;
    let busy = machine_busy()?.saturating_sub(before);
    Ok(busy.as_secs_f64() / (window.as_secs_f64() * cpus))
}

/// Waits (at most `patience`) until other work (a compiler, another benchmark) leaves the
/// machine at most 10 % busy, so that it does not skew a measurement. The busy share seen
/// last.
pub async fn wait_until_quiet(patience: Duration) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let mut warned = false;
    let window = if patience.is_zero() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    loop {
        let busy = busy_share(window).await?;
        if busy <= 0.10 || started.elapsed() >= patience {
            if busy > 0.10 {
                eprintln!(
                    "[bench] WARNING: the machine is {:.0} % busy with other work; figures will be skewed",
                    busy * 100.0
                );
            }
            return Ok(busy);
        }
        if !warned {
            eprintln!(
                "[bench] the machine is {:.0} % busy with other work; waiting up to {} s for it to calm down",
                busy * 100.0,
                patience.as_secs()
            );
            warned = true;
        }
    }
}
