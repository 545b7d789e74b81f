//! The HTTP floor: what this machine can serve through the same stack and the same load
//! generator when a request does no work at all. A separate process (this binary, started
//! with [`SERVE_FLAG`]) runs axum on tokio's default multi-threaded runtime, as `token-store`
//! does, and answers `POST .../access-token` with a fixed body of the service's shape, no
//! database, no logging. The service cannot beat it; comparing the two with `pgbench` shows
//! how much of the gap to PostgreSQL is HTTP itself.

use std::net::SocketAddr;
use std::process::Stdio;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The first argument that makes `bench` the floor server instead of the benchmark.
pub const SERVE_FLAG: &str = "--serve-http-floor";

/// An access-token answer the size of the service's (a Google token, two scopes).
const BODY: &str = concat!(
    r#"{"accessToken":"ya29.a0AfB_byDt-floor-0000000000000000000000000000000000000000000000000"#,
    r#"00000000000000000000000000000000000000000000000000000000000000000000000000000000000000","#,
    r#""expiresAt":1795000000000,"scopes":["openid","https://www.googleapis.com/auth/gmail.readonly"],"#,
    r#""tokenType":"Bearer"}"#
);

/// The floor server, killed when dropped.
pub struct Floor {
    pub addr: SocketAddr,
    child: Child,
}

impl Floor {
    pub async fn start() -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(SERVE_FLAG)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the HTTP floor server")?;
        let stdout = child.stdout.take().context("the floor server's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await?;
        let addr = line
            .trim()
            .parse()
            .with_context(|| format!("the floor server said {line:?}, not its address"))?;
        Ok(Self { addr, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// Runs the floor server until killed: prints its address, then serves.
pub fn serve() -> anyhow::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    use axum::routing::post;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = axum::Router::new().route(
            "/v1/users/{userId}/tokens/{provider}/access-token",
            post(|| async { ([(CONTENT_TYPE, "application/json")], BODY) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}
