//! The mfs-ingest coordinator binary: `migrate` applies the migrations;
//! `serve` runs the HTTP API (with `/metrics`), the ingest-request consumer,
//! the outbox relay, the reconciler / garbage collector and the backlog
//! gauges until SIGTERM ([`coordinator::app`]); `submit` publishes requests.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use coordinator::app::{App, Config};
use shared::config::mask_url;
use shared::store::Store;

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "mfs-ingest coordinator: upload sessions, part jobs, completion"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply database migrations.
    Migrate {
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/mfs_ingest"
        )]
        database_url: String,
    },
    /// Run the HTTP API, request consumer, outbox relay, reconciler and GC.
    Serve(Box<Config>),
    /// Publish ingest requests for local files (and wait for their events).
    Submit(coordinator::submit::SubmitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::process::init_logging("info,lapin=warn,sqlx=warn");
    shared::process::exit_code_of(tokio::runtime::Runtime::new(), async {
        match cli.command {
            Command::Migrate { database_url } => migrate(&database_url).await,
            Command::Serve(config) => serve(*config).await,
            Command::Submit(args) => coordinator::submit::submit(args).await,
        }
    })
}

async fn migrate(database_url: &str) -> Result<()> {
    let store = Store::connect(database_url, 2)
        .await
        .with_context(|| format!("connecting to {}", mask_url(database_url)))?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
}

/// Builds the app, stops it on SIGTERM/SIGINT.
async fn serve(config: Config) -> Result<()> {
    let app = App::build(config).await?;
    shared::process::cancel_on_signals(app.shutdown_token());
    app.run_until_stopped().await?;
    Ok(())
}
