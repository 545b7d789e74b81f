//! The HTTP server: accepts TCP connections and serves the router on them over HTTP/1.1,
//! within bounds ([`ServerLimits`], `[server]` in the configuration).
//!
//! - **HTTP/1.1 only.** No h2c (cleartext HTTP/2): nothing in front of the service speaks
//!   it (the AWS ALB talks HTTP/1.1 to its targets), and each protocol served is attack
//!   surface (h2's stream and frame floods). A client that opens with the HTTP/2 preface
//!   gets the connection closed.
//! - **Header read timeout.** From the first byte of a request to the end of its headers;
//!   a client that sends its headers a byte at a time (slowloris) is cut off.
//! - **Idle timeout.** A connection with no request in flight and no byte of a next one
//!   is closed after it. A connection that never sent anything counts as idle.
//! - **Request deadline.** [`bound_request`] answers 503 `request_timeout` when a request,
//!   reading its body included, takes longer. A connection still busy with one request
//!   for the deadline plus the header read timeout (a client that does not read its
//!   response) is dropped.
//! - **Connection cap.** At `max_connections` open connections the server stops
//!   accepting (the kernel's backlog holds the rest) until one closes, with a warning at
//!   most every [`WARNING_INTERVAL`]. A failing `accept` (`EMFILE`) backs off, never spins.
//! - **Graceful shutdown.** When `shutdown` completes: stop accepting (the listener is
//!   closed), close idle connections at once, let requests in flight finish (their
//!   responses say `connection: close`), and after `shutdown_timeout` drop what remains.
//!
//! hyper's own `header_read_timeout` is not used: its clock starts when a connection goes
//! idle, not at the first byte of the next request, so it also closes idle keep-alive
//! connections (pinned by a test below). The ALB needs them kept longer than its own idle
//! timeout. Each connection's [`Tracker`] tells which phase it is in, and its task applies
//! that phase's deadline. hyper-util's `GracefulShutdown` is not used either: it has no
//! deadline, and it never closes a connection that has not sent a request yet.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{header, StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{sleep, sleep_until, Instant};
use tower::ServiceExt;

use super::ApiError;
use crate::config::ServerLimits;

/// The most often the "at the cap" and "accept failed" warnings are logged.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// The first and the longest pause after a failed `accept` (it doubles while it fails).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Connections the kernel holds for [`serve`] to accept (at the cap, or in a burst); it
/// caps this at `net.core.somaxconn` (4096 by default since Linux 5.4). tokio's own `bind`
/// asks for 128, which a burst of new connections overflows: their SYNs are then dropped
/// and retried a second later.
pub const BACKLOG: u32 = 1024;

/// A listener on `address`, as `tokio::net::TcpListener::bind` makes one but with
/// [`BACKLOG`].
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Serves `router` on `listener` until `shutdown` completes, then drains the connections
/// within `limits.shutdown_timeout`. `connections` counts the open connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    connections: IntGauge,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = pin!(shutdown);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut at_cap = RateLimited::default();
    let mut accept_failed = RateLimited::default();
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        if permit.is_none() {
            match permits.clone().try_acquire_owned() {
                Ok(acquired) => permit = Some(acquired),
                Err(_) if at_cap.ready() => tracing::warn!(
                    max_connections = limits.max_connections,
                    "at the connection cap: accepting no more until a connection closes"
                ),
                Err(_) => {}
            }
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = tasks.join_next() => report(done),
            acquired = permits.clone().acquire_owned(), if permit.is_none() => {
                permit = Some(acquired.expect("the semaphore is never closed"));
            }
            accepted = listener.accept(), if permit.is_some() => match accepted {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    connections.inc();
                    let open = Open {
                        gauge: connections.clone(),
                        _permit: permit.take(),
                    };
                    let connection =
                        serve_connection(stream, router.clone(), limits, stopping.clone());
                    tasks.spawn(async move {
                        connection.await;
                        drop(open);
                    });
                }
                // That one connection went away before it was accepted.
                Err(err) if is_connection_error(&err) => {}
                // Out of file descriptors or memory: retrying at once would spin.
                Err(err) => {
                    if accept_failed.ready() {
                        tracing::warn!(
                            error = %err,
                            backoff_ms = backoff.as_millis() as u64,
                            "accepting a connection failed; pausing"
                        );
                    }
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    tracing::info!(
        connections = tasks.len(),
        "stopped accepting; finishing the requests in flight"
    );
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while let Some(done) = tasks.join_next().await {
            report(done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "shutdown deadline passed: dropping the connections left"
        );
        tasks.shutdown().await;
    }
}

/// An open connection: counted by the gauge and holding one of the cap's permits.
struct Open {
    gauge: IntGauge,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn report(done: Result<(), JoinError>) {
    if let Err(err) = done {
        if err.is_panic() {
            tracing::error!(error = %err, "a connection's task panicked");
        }
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// True at most once per [`WARNING_INTERVAL`].
#[derive(Default)]
struct RateLimited(Option<Instant>);

impl RateLimited {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        match self.0 {
            Some(last) if now.duration_since(last) < WARNING_INTERVAL => false,
            _ => {
                self.0 = Some(now);
                true
            }
        }
    }
}

/// Serves one connection until it closes, its phase's deadline passes, or the server
/// stops (then it may finish what is in flight; [`serve`] drops it at its own deadline).
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: ServerLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let tracker = Tracker::new();
    let io = TokioIo::new(TrackedStream {
        stream,
        tracker: tracker.clone(),
    });
    let service = ConnectionService {
        router,
        tracker: tracker.clone(),
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Off (hyper's default would be 30 s): see the module docs. The tracker's phases
        // apply the header read and idle timeouts instead.
        .header_read_timeout(None::<Duration>)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut stop = pin!(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    let mut stopped = false;
    // Since when the connection has been asked to close (idle, or the server stopping).
    let mut closing: Option<Instant> = None;
    let mut timer = pin!(sleep_until(Instant::now() + limits.idle_timeout));
    loop {
        // The phase changes while hyper runs (a byte read, a response sent), so the
        // deadline is recomputed after each poll of the connection.
        let event = poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Finished(result));
            }
            if !stopped && stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            let (deadline, expiry) = tracker.deadline(&limits, closing);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            timer.as_mut().poll(cx).map(|()| Event::Expired(expiry))
        })
        .await;
        match event {
            Event::Finished(Ok(())) => return,
            Event::Finished(Err(err)) => {
                tracing::debug!(error = %err, "connection ended with an error");
                return;
            }
            Event::Stop | Event::Expired(Expiry::CloseIdle) => {
                stopped |= matches!(event, Event::Stop);
                if !tracker.touched() {
                    // Nothing was ever read, so nothing is owed: hyper would keep waiting
                    // for a first request, so the connection is dropped here.
                    return;
                }
                // hyper closes an idle connection at once (after flushing), and one with
                // a request in flight after its response.
                conn.as_mut().graceful_shutdown();
                closing.get_or_insert_with(Instant::now);
            }
            Event::Expired(Expiry::Drop(reason)) => {
                tracing::debug!(reason, "dropping a connection");
                return;
            }
        }
    }
}

enum Event {
    Finished(Result<(), hyper::Error>),
    Stop,
    Expired(Expiry),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Ask the connection to close (it may still flush its last response).
    CloseIdle,
    /// Drop it: it has had its time.
    Drop(&'static str),
}

/// What a connection is doing, updated from within hyper's poll (by the stream's reads,
/// the service's calls and the response bodies' ends).
#[derive(Clone)]
struct Tracker(Arc<Mutex<ConnectionState>>);

struct ConnectionState {
    phase: Phase,
    /// A byte has been read.
    touched: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight and no byte of a next one, since then.
    Idle(Instant),
    /// Bytes of a request have arrived since then; its headers are not complete. (Bytes
    /// of a next request that arrived with the previous one, pipelined, are only noticed
    /// at the next read: such a connection gets the idle timeout first.)
    Head(Instant),
    /// Requests whose responses are not finished, the first since then.
    Busy { requests: usize, since: Instant },
}

impl Tracker {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(ConnectionState {
            phase: Phase::Idle(Instant::now()),
            touched: false,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ConnectionState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn touched(&self) -> bool {
        self.state().touched
    }

    fn read_some(&self) {
        let mut state = self.state();
        state.touched = true;
        if let Phase::Idle(_) = state.phase {
            state.phase = Phase::Head(Instant::now());
        }
    }

    fn request_started(&self) -> RequestGuard {
        let mut state = self.state();
        state.phase = match state.phase {
            Phase::Busy { requests, since } => Phase::Busy {
                requests: requests + 1,
                since,
            },
            Phase::Idle(_) | Phase::Head(_) => Phase::Busy {
                requests: 1,
                since: Instant::now(),
            },
        };
        RequestGuard(self.clone())
    }

    fn request_ended(&self) {
        let mut state = self.state();
        if let Phase::Busy { requests, since } = state.phase {
            state.phase = if requests > 1 {
                Phase::Busy {
                    requests: requests - 1,
                    since,
                }
            } else {
                Phase::Idle(Instant::now())
            };
        }
    }

    /// When the current phase's time is up, and what to do then.
    fn deadline(&self, limits: &ServerLimits, closing: Option<Instant>) -> (Instant, Expiry) {
        match (self.state().phase, closing) {
            (Phase::Idle(since), None) => (since + limits.idle_timeout, Expiry::CloseIdle),
            // Asked to close while idle: time to flush the last response, no more.
            (Phase::Idle(since), Some(at)) => (
                since.max(at) + limits.header_read_timeout,
                Expiry::Drop("did not close when asked to"),
            ),
            (Phase::Head(since), _) => (
                since + limits.header_read_timeout,
                Expiry::Drop("header read timeout"),
            ),
            // The request deadline ends the handler; what is left is writing the response.
            (Phase::Busy { since, .. }, _) => (
                since + limits.request_timeout + limits.header_read_timeout,
                Expiry::Drop("response not taken in time"),
            ),
        }
    }
}

/// Held from a request's call until its response body is finished or dropped.
struct RequestGuard(Tracker);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The socket, telling the tracker when bytes arrive.
struct TrackedStream {
    stream: TcpStream,
    tracker: Tracker,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.tracker.read_some();
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router, as hyper calls it on one connection, with each request tracked.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    tracker: Tracker,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnectionService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let guard = self.tracker.request_started();
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(request).await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _request: guard,
            }))
        })
    }
}

/// A response body that ends its request's [`Phase::Busy`] when it is finished (hyper
/// drops it after its last frame) or dropped.
struct TrackedBody {
    body: Body,
    _request: RequestGuard,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The router's outermost own layer (inside the request span and the metrics): refuses an
/// HTTP/1.1 request without exactly one valid `Host` (RFC 9112 §3.2), then runs the request,
/// reading its body included, under the deadline (then 503 `request_timeout`).
pub(super) async fn bound_request(
    State(deadline): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    if request.version() == Version::HTTP_11 && !has_one_valid_host(&request) {
        return ApiError::invalid(
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request needs exactly one valid Host header",
        )
        .into_response();
    }
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}

fn has_one_valid_host(request: &Request) -> bool {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => host
            .to_str()
            .is_ok_and(|host| host.parse::<Authority>().is_ok()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Why the module applies its own header read timeout: hyper's (in the locked 1.12)
    /// also runs while a keep-alive connection waits idle for its next request, so with it
    /// an idle connection would last the header read timeout, not the idle timeout.
    #[tokio::test]
    async fn hypers_header_read_timeout_also_closes_idle_keep_alive_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_| async {
                Ok::<_, Infallible>(hyper::Response::new(Body::from("ok")))
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(300))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = vec![0; 1024];
        let n = client.read(&mut response).await.unwrap();
        assert!(response[..n].starts_with(b"HTTP/1.1 200"));
        // Now idle, keep-alive: the connection is closed after about 300 ms.
        let idle = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(5), client.read(&mut response))
            .await
            .expect("hyper closed the idle connection");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        assert!(idle.elapsed() >= Duration::from_millis(250));
        server.await.unwrap();
    }

    fn limits() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(3),
            max_connections: 1,
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    /// `deadline` is `at + after`, `at` having been taken between `before` and now.
    fn assert_within(deadline: Instant, before: Instant, after: Duration) {
        assert!(deadline >= before + after && deadline <= Instant::now() + after);
    }

    #[test]
    fn each_phase_has_its_deadline() {
        let limits = limits();
        let before = Instant::now();
        let tracker = Tracker::new();
        assert!(!tracker.touched());
        let (idle, expiry) = tracker.deadline(&limits, None);
        assert_within(idle, before, limits.idle_timeout);
        assert_eq!(expiry, Expiry::CloseIdle);

        let before = Instant::now();
        tracker.read_some();
        assert!(tracker.touched());
        let head = tracker.deadline(&limits, None);
        assert_within(head.0, before, limits.header_read_timeout);
        assert_eq!(head.1, Expiry::Drop("header read timeout"));
        // More bytes of the same head do not extend it.
        std::thread::sleep(Duration::from_millis(5));
        tracker.read_some();
        assert_eq!(tracker.deadline(&limits, None), head);

        let before = Instant::now();
        let first = tracker.request_started();
        let second = tracker.request_started();
        let (busy, _) = tracker.deadline(&limits, None);
        assert_within(
            busy,
            before,
            limits.request_timeout + limits.header_read_timeout,
        );
        drop(first);
        assert_eq!(
            tracker.deadline(&limits, None).0,
            busy,
            "one still in flight"
        );

        let before = Instant::now();
        drop(second);
        let (idle, expiry) = tracker.deadline(&limits, None);
        assert_within(idle, before, limits.idle_timeout);
        assert_eq!(expiry, Expiry::CloseIdle);
        // Asked to close: a grace counted from the request or the last response, the later.
        let (grace, _) = tracker.deadline(&limits, Some(before - Duration::from_secs(60)));
        assert_within(grace, before, limits.header_read_timeout);
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            tracker.deadline(&limits, Some(later)).0,
            later + limits.header_read_timeout
        );
    }

    #[test]
    fn the_rate_limited_warning_fires_once_per_interval() {
        let mut limited = RateLimited::default();
        assert!(limited.ready());
        assert!(!limited.ready());
        limited.0 = Some(Instant::now() - WARNING_INTERVAL);
        assert!(limited.ready());
        assert!(!limited.ready());
    }
}
