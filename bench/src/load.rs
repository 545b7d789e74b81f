//! A lean HTTP/1.1 load generator: one keep-alive TCP connection per worker, the request
//! written by hand, the response parsed just enough (status line and `content-length`).
//!
//! On two cores the load generator's CPU competes with the service's, so it skips what a
//! general-purpose client does per request (header maps, body streams, a connection pool).
//! It only ever asks for `POST /v1/users/user-{n}/tokens/google/access-token`.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use tokio::net::TcpStream;

/// Largest response read: an access-token answer is a few hundred bytes.
const BUFFER_BYTES: usize = 16 * 1024;

/// One keep-alive connection to one service instance.
pub struct Connection {
    addr: SocketAddr,
    stream: TcpStream,
    key: String,
    request: Vec<u8>,
    buffer: Box<[u8]>,
}

impl Connection {
    pub async fn open(addr: SocketAddr, key: &str) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            stream,
            key: key.to_owned(),
            request: Vec::with_capacity(256),
            buffer: vec![0; BUFFER_BYTES].into_boxed_slice(),
        })
    }

    /// `POST .../user-{user}/tokens/google/access-token` with no body; the status code.
    /// After an I/O error the connection is reopened for the next request.
    pub async fn access_token(&mut self, user: u64) -> io::Result<u16> {
        self.request.clear();
        write!(
            self.request,
            "POST /v1/users/user-{user}/tokens/google/access-token HTTP/1.1\r\n\
             Host: {}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
            self.addr, self.key
        )?;
        let result = self.exchange().await;
        if result.is_err() {
            if let Ok(fresh) = Connection::open(self.addr, &self.key).await {
                *self = fresh;
            }
        }
        result
    }

    async fn exchange(&mut self) -> io::Result<u16> {
        let mut written = 0;
        while written < self.request.len() {
            self.stream.writable().await?;
            match self.stream.try_write(&self.request[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let mut filled = 0;
        loop {
            if let Some(head_end) = find(&self.buffer[..filled], b"\r\n\r\n") {
                let head = &self.buffer[..head_end];
                let status = status_code(head)?;
                let total = head_end + 4 + content_length(head)?;
                if total > self.buffer.len() {
                    return Err(invalid("response too large"));
                }
                while filled < total {
                    filled += self.read_some(filled).await?;
                }
                return Ok(status);
            }
            if filled == self.buffer.len() {
                return Err(invalid("response head too large"));
            }
            filled += self.read_some(filled).await?;
        }
    }

    async fn read_some(&mut self, at: usize) -> io::Result<usize> {
        loop {
            self.stream.readable().await?;
            match self.stream.try_read(&mut self.buffer[at..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn status_code(head: &[u8]) -> io::Result<u16> {
    // "HTTP/1.1 200 OK"
    head.get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("malformed status line"))
}

fn content_length(head: &[u8]) -> io::Result<usize> {
    for line in head.split(|&b| b == b'\n') {
        let line = std::str::from_utf8(line).map_err(|_| invalid("non-UTF-8 header"))?;
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                return value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("bad content-length"));
            }
        }
    }
    Err(invalid(
        "no content-length (chunked responses are not expected)",
    ))
}

/// Opens `count` connections spread round-robin over `targets`.
pub async fn connect(
    targets: &[SocketAddr],
    count: usize,
    key: &str,
) -> io::Result<Vec<Connection>> {
    let mut connections = Vec::with_capacity(count);
    for i in 0..count {
        connections.push(Connection::open(targets[i % targets.len()], key).await?);
    }
    Ok(connections)
}

/// One request: when it started (since the run's start) and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub start_us: u64,
    pub latency_us: u32,
}

/// What a run of requests did.
#[derive(Debug)]
pub struct Run {
    pub ok: u64,
    pub errors: u64,
    pub started: Instant,
    pub elapsed: Duration,
    pub samples: Vec<Sample>,
}

/// What one worker of a run did.
#[derive(Default)]
struct Part {
    ok: u64,
    errors: u64,
    samples: Vec<Sample>,
}

impl Run {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn latency(&self) -> Latency {
        Latency::of(self.samples.iter().map(|s| s.latency_us))
    }

    fn merge(parts: Vec<Part>, started: Instant) -> Run {
        let mut run = Run {
            ok: 0,
            errors: 0,
            started,
            elapsed: started.elapsed(),
            samples: Vec::new(),
        };
        for part in parts {
            run.ok += part.ok;
            run.errors += part.errors;
            run.samples.extend(part.samples);
        }
        run
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `latencies_us` from an HDR histogram with three significant digits
    /// (a reported value is within 0.1 % of the exact one).
    pub fn of(latencies_us: impl Iterator<Item = u32>) -> Self {
        let mut histogram =
            Histogram::<u64>::new(3).expect("three significant digits is a valid precision");
        for latency in latencies_us {
            // An auto-resizing histogram records any `u64`.
            histogram
                .record(u64::from(latency))
                .expect("an auto-resizing histogram records any value");
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: histogram.len() as usize,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// When workers stop asking.
#[derive(Clone, Copy)]
pub enum Until<'a> {
    Deadline(Instant),
    Flag(&'a AtomicBool),
}

impl Until<'_> {
    fn reached(&self) -> bool {
        match self {
            Until::Deadline(at) => Instant::now() >= *at,
            Until::Flag(flag) => flag.load(Ordering::Relaxed),
        }
    }
}

/// Each connection asks for a random user in `1..=users` in a closed loop until `until`.
pub async fn closed_loop(connections: &mut [Connection], users: u64, until: Until<'_>) -> Run {
    let started = Instant::now();
    let workers = connections.iter_mut().map(|conn| async move {
        let mut run = Part::default();
        while !until.reached() {
            let user = rand::thread_rng().gen_range(1..=users);
            record(&mut run, started, conn.access_token(user)).await;
        }
        run
    });
    let parts = join_all(workers).await;
    Run::merge(parts, started)
}

/// Like [`closed_loop`], but the connections together send `rate` requests per second on a
/// fixed schedule (each connection every `connections / rate` seconds, staggered), so the
/// service is busy but not saturated. Latency counts from the send, as everywhere else:
/// tokio's timer wakes up to a millisecond late, which would swamp sub-millisecond answers.
/// A stalled service still shows: the requests in flight during the stall carry it.
pub async fn paced_loop(
    connections: &mut [Connection],
    users: u64,
    rate: f64,
    until: Until<'_>,
) -> Run {
    let started = Instant::now();
    let count = connections.len();
    let interval = Duration::from_secs_f64(count as f64 / rate);
    let workers = connections
        .iter_mut()
        .enumerate()
        .map(|(i, conn)| async move {
            let mut run = Part::default();
            let mut due = started + interval.mul_f64(i as f64 / count as f64);
            while !until.reached() {
                tokio::time::sleep_until(due.into()).await;
                let user = rand::thread_rng().gen_range(1..=users);
                record(&mut run, started, conn.access_token(user)).await;
                due = (due + interval).max(Instant::now());
            }
            run
        });
    let parts = join_all(workers).await;
    Run::merge(parts, started)
}

/// Every user of `users` once, shared out among the connections.
pub async fn pass(connections: &mut [Connection], users: &[u64]) -> Run {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let workers = connections.iter_mut().map(|conn| {
        let next = &next;
        async move {
            let mut run = Part::default();
            while let Some(&user) = users.get(next.fetch_add(1, Ordering::Relaxed)) {
                record(&mut run, started, conn.access_token(user)).await;
            }
            run
        }
    });
    let parts = join_all(workers).await;
    Run::merge(parts, started)
}

/// One request per connection, all sent at once, all for `user`.
pub async fn burst(connections: &mut [Connection], user: u64) -> Run {
    let started = Instant::now();
    let workers = connections.iter_mut().map(|conn| async move {
        let mut run = Part::default();
        record(&mut run, started, conn.access_token(user)).await;
        run
    });
    let parts = join_all(workers).await;
    Run::merge(parts, started)
}

async fn record(
    run: &mut Part,
    run_started: Instant,
    request: impl std::future::Future<Output = io::Result<u16>>,
) {
    let start = Instant::now();
    let status = request.await;
    run.push(run_started, start, status);
}

impl Part {
    /// A request started at `start` has just answered.
    fn push(&mut self, run_started: Instant, start: Instant, status: io::Result<u16>) {
        match status {
            Ok(200) => self.ok += 1,
            _ => self.errors += 1,
        }
        self.samples.push(Sample {
            start_us: start.saturating_duration_since(run_started).as_micros() as u64,
            latency_us: start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
        });
    }
}
