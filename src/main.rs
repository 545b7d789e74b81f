//! The `token-store` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use token_store::config::Config;
use token_store::startup::{self, Application};
use token_store::{store, telemetry};

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
    /// Print the SHA-256 (hex) of an API key read from standard input, for `[[clients]]`.
    HashKey,
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
            Application::build(config).await?.run_until_stopped().await
        }
        Command::Migrate { config } => {
            let config = Config::load(&config)?;
            telemetry::init(config.server.log_format);
            let db = startup::connect(&config.database).await?;
            store::migrate(&db).await?;
            tracing::info!("migrations applied");
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
    }
}
