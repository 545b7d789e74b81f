//! The HTTP server's bounds (`src/http/server.rs`), over real sockets on 127.0.0.1: the header
//! read, idle and request timeouts, the connection cap, graceful shutdown with a deadline,
//! HTTP/1.1 only and the `Host` rule. In process where that suffices; the real binary where
//! a signal, the process's memory or its file descriptor limit is involved.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use token_store::config::ServerConfig;
use token_store::startup::Application;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use test_support::{
    app_config, captured_logs, init_process, kms_endpoint, token_body, Api, TestApp, TestDatabase,
    TestKmsKey, FULL_KEY,
};

const BIN: &str = env!("CARGO_BIN_EXE_token-store");
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Short bounds, so that the tests see them act.
fn short(server: ServerConfig) -> ServerConfig {
    ServerConfig {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_connections: 50,
        ..server
    }
}

/// The service in process with the [`short`] bounds.
async fn spawn_short() -> TestApp {
    TestApp::spawn_configured(|config| config.server = short(config.server.clone())).await
}

fn address(app: &TestApp) -> SocketAddr {
    app.address.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the peer closes the connection (end of stream or reset); `None` if it is
/// still open after `limit`. Whatever the server sends meanwhile is discarded.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// One response read off a raw connection: status, head (lowercase) and body.
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if data.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into();
                    let status = head[9..12].parse().unwrap();
                    return RawResponse { status, head, body };
                }
            }
            let n = stream.read(&mut buf).await.expect("reading a response");
            assert!(n > 0, "closed before a whole response: {data:?}");
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

/// A raw connection that has had one `GET /healthz` answered and stays open (keep-alive),
/// and when the answer came.
async fn used_connection(address: SocketAddr) -> (TcpStream, Instant) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(HEALTHZ).await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200);
    assert!(!response.head.contains("connection: close"));
    (stream, Instant::now())
}

async fn healthz(http: &reqwest::Client, base: &str) -> Duration {
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        Api::new(http.clone(), base, None).healthz(),
    )
    .await
    .expect("GET /healthz answered");
    assert_eq!(response.status(), 200);
    started.elapsed()
}

#[tokio::test]
async fn slowloris_connections_are_cut_off_while_requests_are_served() {
    let app = spawn_short().await;
    let address = address(&app);

    // 200 clients (four times the cap) send a request head a byte every 100 ms, forever.
    let mut slow = JoinSet::new();
    for n in 0..200 {
        slow.spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            let head = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{n}: ");
            let mut bytes = head.bytes().chain(std::iter::repeat(b'a'));
            let started = Instant::now();
            let (mut reader, mut writer) = stream.split();
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    read = reader.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return started.elapsed(),
                        Ok(n) => panic!("an answer to half a request: {:?}", &buf[..n]),
                    },
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if writer.write_all(&[bytes.next().unwrap()]).await.is_err() {
                            return started.elapsed();
                        }
                    }
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "a slow client was never cut off"
                );
            }
        });
    }

    // Meanwhile, requests are answered.
    let http = reqwest::Client::new();
    let mut slowest_request = Duration::ZERO;
    for _ in 0..10 {
        slowest_request = slowest_request.max(healthz(&http, &app.address).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slowest_request < Duration::from_secs(10),
        "{slowest_request:?}"
    );

    let mut slowest_cut = Duration::ZERO;
    while let Some(cut) = slow.join_next().await {
        slowest_cut = slowest_cut.max(cut.unwrap());
    }
    println!(
        "slowloris: 200 clients, header read timeout 500 ms, cap 50: the last was cut off \
         {slowest_cut:?} after its first byte; slowest /healthz meanwhile {slowest_request:?}"
    );
    // 200 clients through 50 places, each for 500 ms: about 2 s in theory.
    assert!(slowest_cut < Duration::from_secs(10), "{slowest_cut:?}");
    assert!(healthz(&reqwest::Client::new(), &app.address).await < Duration::from_secs(10));
}

#[tokio::test]
async fn a_request_body_slower_than_the_deadline_gets_503_request_timeout() {
    let app = spawn_short().await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    stream
        .write_all(
            format!(
                "PUT /v1/users/alice/tokens/google HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Authorization: Bearer {FULL_KEY}\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    // The body comes a byte every 200 ms: 20 s for all of it, against a 1 s deadline.
    let (mut reader, mut writer) = stream.split();
    let dribble = async {
        for _ in 0..99 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let mut data = Vec::new();
    let response = async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::select! {
        () = dribble => unreachable!(),
        () = response => {}
        () = tokio::time::sleep(Duration::from_secs(15)) => panic!("no answer, connection open"),
    }
    let closed_after = started.elapsed();
    let text = String::from_utf8_lossy(&data);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert!(head.contains("retry-after:"), "{head}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["code"], "request_timeout", "{body}");
    // The deadline is 1 s; the rest of the body is not waited for: the connection closes.
    println!("a body dribbled past the 1 s deadline: 503 and closed after {closed_after:?}");
    assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test]
async fn h2c_is_refused_and_an_http11_request_needs_one_host() {
    let app = TestApp::spawn().await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let refused = h2c.get(format!("{}/healthz", app.address)).send().await;
    assert!(refused.is_err(), "h2c answered: {refused:?}");

    for request in [
        "GET /healthz HTTP/1.1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: bad host\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, 400, "{request:?}");
        assert!(
            response
                .head
                .contains("content-type: application/problem+json"),
            "{}",
            response.head
        );
        let body: Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(body["code"], "invalid_request", "{body}");
    }
    // HTTP/1.0 may leave it out.
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    assert!(healthz(&app.http, &app.address).await < Duration::from_secs(5));
}

/// The application built here rather than by `TestApp`, to watch its connection gauge.
#[tokio::test]
async fn at_the_cap_the_server_stops_accepting_and_serves_again_as_connections_close() {
    // Built here rather than by `TestApp`: the log capture is set up first.
    init_process();
    let (database, key) = (
        TestDatabase::create("cap").await,
        TestKmsKey::create().await,
    );
    let mut config = app_config(database.url(), key.arn(), &kms_endpoint());
    config.server = ServerConfig {
        max_connections: 20,
        ..short(config.server)
    };
    let app = Application::build(config).await.unwrap();
    let address = app.local_addr();
    let gauge = app.state().metrics.http_connections.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let watcher = {
        let gauge = gauge.clone();
        tokio::spawn(async move {
            let mut most = 0;
            loop {
                most = most.max(gauge.get());
                if most > 20 {
                    return most;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // 40 connections that send nothing: 20 are accepted, 20 wait in the backlog.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(address).await.unwrap());
    }
    let connected = Instant::now();
    while gauge.get() < 20 && connected.elapsed() < Duration::from_millis(800) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gauge.get(), 20);

    // Served once the idle ones time out (1 s), making room: no deadlock at the cap.
    let waited = healthz(&reqwest::Client::new(), &format!("http://{address}")).await;
    println!("at the cap of 20 with 40 idle connections: served after {waited:?}");
    assert!(waited > Duration::from_millis(500), "{waited:?}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    for stream in &mut idle {
        assert!(closed_within(stream, Duration::from_secs(10))
            .await
            .is_some());
    }
    assert!(!watcher.is_finished(), "more than 20 open at once");
    watcher.abort();
    assert!(captured_logs().contains("at the connection cap"));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("stopped")
        .unwrap()
        .unwrap();
    assert_eq!(gauge.get(), 0);
}

/// The real binary, serving with the given `[server]` settings (besides `listen`).
struct Binary {
    child: Child,
    base: String,
    address: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    // Removed after `Drop` has stopped the process.
    _database: TestDatabase,
    _key: TestKmsKey,
}

impl Binary {
    async fn start(server: &str) -> Self {
        let (database, key) = (
            TestDatabase::create("binary").await,
            TestKmsKey::create().await,
        );
        let address: SocketAddr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("token-store.toml");
        std::fs::write(
            &config_path,
            format!(
                r#"
[server]
listen = "{address}"
log_format = "json"
{server}

[database]
url = "{database_url}"

[kms]
key_id = "{key_id}"
endpoint_url = "{endpoint}"

[[clients]]
name = "connections"
key_sha256 = "{hash}"
permissions = ["read", "write"]
"#,
                database_url = database.url(),
                key_id = key.arn(),
                endpoint = kms_endpoint(),
                hash = token_store::auth::key_hash_hex(FULL_KEY),
            ),
        )
        .unwrap();
        let log = dir.path().join("serve.log");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut binary = Self {
            child,
            base: format!("http://{address}"),
            address,
            log,
            _dir: dir,
            _database: database,
            _key: key,
        };
        let api = Api::new(reqwest::Client::new(), &binary.base, None);
        let started = Instant::now();
        while api.try_healthz().await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the service did not start"
            );
            assert!(binary.child.try_wait().unwrap().is_none(), "it exited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        binary
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, in MiB.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// User plus system CPU time so far, in seconds (at 100 ticks a second).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    async fn connections_gauge(&self) -> f64 {
        let text = Api::new(reqwest::Client::new(), &self.base, None)
            .metrics()
            .await
            .text()
            .await
            .unwrap();
        token_store::metrics::sample_sum(&text, "token_store_http_connections", &[])
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_thousand_idle_connections_leave_requests_served_and_are_closed_when_idle() {
    // The default cap (4096); an idle timeout longer than the header read timeout, to see
    // that idle keep-alive connections get the former.
    let service = Binary::start("header_read_timeout_ms = 1000\nidle_timeout_ms = 5000\n").await;
    let before = service.rss_mib();

    let opened = Instant::now();
    let mut fresh = Vec::new();
    for _ in 0..2_000 {
        fresh.push(TcpStream::connect(service.address).await.unwrap());
    }
    let mut used = Vec::new();
    for _ in 0..100 {
        used.push(used_connection(service.address).await);
    }
    let opening = opened.elapsed();
    assert!(opening < Duration::from_secs(4), "opening took {opening:?}");

    // All accepted (and this request's own connection).
    let mut gauge = service.connections_gauge().await;
    while gauge < 2_101.0 && opened.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        gauge = service.connections_gauge().await;
    }
    assert!(gauge >= 2_101.0, "{gauge}");
    let during = service.rss_mib();
    let http = reqwest::Client::new();
    for _ in 0..20 {
        assert!(healthz(&http, &service.base).await < Duration::from_secs(5));
    }
    println!(
        "2,100 idle connections (opened in {opening:?}, gauge {gauge}): RSS {during:.1} MiB, \
         {before:.1} MiB before"
    );

    // All are closed by the idle timeout (5 s), none by the header read timeout (1 s).
    let mut waits = JoinSet::new();
    for (mut stream, since) in fresh.into_iter().map(|s| (s, opened)).chain(used) {
        waits.spawn(async move {
            closed_within(&mut stream, Duration::from_secs(30))
                .await
                .expect("closed by the server");
            since.elapsed()
        });
    }
    let (mut first, mut last) = (Duration::MAX, Duration::ZERO);
    while let Some(idle_for) = waits.join_next().await {
        let idle_for = idle_for.unwrap();
        first = first.min(idle_for);
        last = last.max(idle_for);
    }
    println!("idle connections closed between {first:?} and {last:?} after they went idle");
    assert!(first >= Duration::from_millis(4_500), "{first:?}");
    assert!(last < Duration::from_secs(20), "{last:?}");
    // A new client: the pooled connection of `http` was idle as long, and may be closing.
    let fresh_client = reqwest::Client::new();
    assert!(healthz(&fresh_client, &service.base).await < Duration::from_secs(5));
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_and_stops_within_the_shutdown_deadline() {
    // A header read timeout far beyond the shutdown deadline: only the latter can end the
    // half-sent request.
    let mut service = Binary::start(
        "header_read_timeout_ms = 60000\nidle_timeout_ms = 60000\n\
         request_timeout_ms = 30000\nshutdown_timeout_ms = 3000\n",
    )
    .await;
    let mut half_sent = TcpStream::connect(service.address).await.unwrap();
    half_sent
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never: fin")
        .await
        .unwrap();
    let mut fresh = TcpStream::connect(service.address).await.unwrap();
    let (mut used, _) = used_connection(service.address).await;
    let body = serde_json::to_vec(&token_body("shutdown")).unwrap();
    let (first_half, second_half) = body.split_at(body.len() / 2);
    let mut in_flight = TcpStream::connect(service.address).await.unwrap();
    in_flight
        .write_all(
            format!(
                "PUT /v1/users/alice/tokens/google HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Authorization: Bearer {FULL_KEY}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    in_flight.write_all(first_half).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let kill = Command::new("kill")
        .args(["-TERM", &service.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let signalled = Instant::now();

    // Idle connections are closed at once, long before the deadline.
    for stream in [&mut fresh, &mut used] {
        let closed = closed_within(stream, Duration::from_secs(10)).await;
        assert!(
            closed.is_some_and(|after| after < Duration::from_secs(2)),
            "{closed:?}"
        );
    }
    // No new connections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(service.address).await.is_err());
    // The request in flight finishes, and its connection closes after it.
    in_flight.write_all(second_half).await.unwrap();
    let response = read_response(&mut in_flight).await;
    assert_eq!(response.status, 204, "{}", response.head);
    assert!(
        response.head.contains("connection: close"),
        "{}",
        response.head
    );
    assert!(closed_within(&mut in_flight, Duration::from_secs(5))
        .await
        .is_some());

    // The half-sent request is dropped at the deadline (3 s), and the process exits.
    let cut = closed_within(&mut half_sent, Duration::from_secs(10))
        .await
        .map(|_| signalled.elapsed());
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited = signalled.elapsed();
    println!(
        "SIGTERM with a half-sent request, shutdown deadline 3 s: that connection closed after \
         {cut:?}, the process exited after {exited:?}"
    );
    assert!(status.success(), "{status}");
    let cut = cut.expect("the half-sent request's connection was closed");
    assert!(cut >= Duration::from_millis(2_500), "{cut:?}");
    assert!(exited < Duration::from_secs(6), "{exited:?}");
    assert!(service.logs().contains("shutdown deadline passed"));
}

/// Out of file descriptors, `accept` fails while the backlog stays readable: the server
/// pauses (and warns once) instead of retrying in a loop, and serves again once it can.
#[tokio::test]
async fn accept_errors_back_off_instead_of_spinning() {
    let service = Binary::start("").await;
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", service.pid()))
        .unwrap()
        .count();
    // A soft limit that leaves room for 4 more connections.
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", service.pid()))
        .arg(format!("--nofile={}:", open_fds + 4))
        .status()
        .expect("running prlimit (util-linux)");
    assert!(status.success());
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(TcpStream::connect(service.address).await.unwrap());
    }
    let cpu_before = service.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = service.cpu_seconds() - cpu_before;
    let warnings = service
        .logs()
        .matches("accepting a connection failed")
        .count();
    println!("3 s out of file descriptors: {cpu:.2} s of CPU, {warnings} warning(s)");
    assert!(cpu < 0.5, "{cpu} s of CPU in 3 s: spinning on accept");
    assert_eq!(warnings, 1);

    // Once connections close, there is room again.
    drop(clients);
    let http = reqwest::Client::new();
    assert!(healthz(&http, &service.base).await < Duration::from_secs(5));
}
