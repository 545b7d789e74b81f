//! The `token-store` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use token_store::config::Config;
use token_store::rewrap::{rewrap_all, RewrapOptions};
use token_store::startup::{self, Application};
use token_store::{store, telemetry};

/// mimalloc rather than the system allocator: the request path makes many small, short-lived
/// allocations on several threads, and glibc's malloc was the largest single cost in the
/// read path's profile (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "token-store",
    version,
    about = "Keeps third-party OAuth tokens sealed and fresh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        /// Configuration file (TOML); TOKEN_STORE_* variables override it.
        #[arg(long, env = "TOKEN_STORE_CONFIG")]
        config: PathBuf,
    },
    /// Apply the database migrations, then exit.
    Migrate {
        #[arg(long, env = "TOKEN_STORE_CONFIG")]
        config: PathBuf,
    },
    /// Re-wrap every row's data key under another KMS key (KMS ReEncrypt), in batches;
    /// resumable and idempotent.
    Rewrap {
        #[arg(long, env = "TOKEN_STORE_CONFIG")]
        config: PathBuf,
        /// The KMS key (id, ARN or alias) to wrap every data key under.
        #[arg(long)]
        to_key: String,
        /// Rows per batch.
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
    },
    /// Print the SHA-256 (hex) of an API key read from standard input, for `[[clients]]`.
    HashKey,
    /// Print the HTTP contract (OpenAPI 3.1 JSON), as committed in `openapi.json`.
    Openapi,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "token-store failed");
            eprintln!("token-store: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            telemetry::init(config.server.log_format);
            no_huge_pages();
            Application::build(config).await?.run_until_stopped().await
        }
        Command::Migrate { config } => {
            let config = Config::load(&config)?;
            telemetry::init(config.server.log_format);
            let db = startup::connect_for_migrations(&config.database).await?;
            store::migrate(&db).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Rewrap {
            config,
            to_key,
            batch_size,
        } => {
            let config = Config::load(&config)?;
            telemetry::init(config.server.log_format);
            let vault = startup::job_vault(&config, to_key.clone()).await?;
            let options = RewrapOptions {
                batch_size: batch_size.clamp(1, 10_000),
                ..RewrapOptions::default()
            };
            let report = rewrap_all(&vault, &to_key, options, |line| {
                println!("{line}");
            })
            .await?;
            println!(
                "rewrap done: {} rewrapped, {} raced with the service and retried, {} remaining",
                report.rewrapped, report.raced, report.remaining
            );
            anyhow::ensure!(
                report.remaining == 0,
                "{} rows are still under another key (written concurrently); run rewrap again",
                report.remaining
            );
            Ok(())
        }
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            println!(
                "{}",
                token_store::auth::key_hash_hex(key.trim_end_matches(['\r', '\n']))
            );
            Ok(())
        }
        Command::Openapi => {
            print!("{}", token_store::http::openapi::json());
            Ok(())
        }
    }
}

/// Backs the heap with 4 KiB pages rather than transparent huge pages. mimalloc asks the
/// kernel for huge pages, and each first touch of one zeroes 2 MiB: when a refresh storm
/// holds hundreds of requests at once, the heap's growth cost 50 to 100 µs of CPU per storm
/// request in zeroing alone (docs/benchmarks.md), where 4 KiB pages zero only what is used.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %err, "could not switch transparent huge pages off");
    }
}
