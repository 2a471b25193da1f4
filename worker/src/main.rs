//! The mfs-ingest worker binary: `worker run` consumes part jobs (the
//! ingestion pipeline, [`worker::app`]), `worker mfs …` is a MooseFS command
//! line built on the same native client, `worker s3 …` the S3 endpoint.

mod bench;
mod mfs_cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use worker::app::App;
use worker::config::Config;

#[derive(Parser)]
#[command(
    name = "worker",
    version,
    about = "mfs-ingest worker: streams part jobs into MooseFS; `mfs` is a MooseFS CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume part jobs from RabbitMQ and write them to MooseFS.
    Run(Box<Config>),
    /// MooseFS file operations over the native protocol (no FUSE mount).
    Mfs(mfs_cli::MfsArgs),
    /// The S3-compatible endpoint (`serve`) and its access keys (`keys`).
    S3(s3::cli::S3Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The CLI stays quiet; the service logs what it does.
    let default_filter = match cli.command {
        Command::Run(_) => "info,lapin=warn",
        Command::Mfs(_) => "warn",
        Command::S3(_) => "info",
    };
    shared::process::init_logging(default_filter);
    // The CLI moves data between sockets and hashes it: one thread does that
    // with no cross-thread wake-ups. The service too by default (--threads):
    // its parts wait on the network far more than they compute, and on a
    // small machine shared with MooseFS and the services one thread per
    // worker costs less CPU per part (measured: -13%); scale with processes.
    let runtime = match &cli.command {
        Command::Mfs(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Command::Run(args) if args.threads <= 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        // The S3 endpoint hashes request bodies (MD5, CRCs) while other
        // requests wait on the network: two threads.
        Command::S3(_) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build(),
    };
    shared::process::exit_code_of(runtime, async {
        match cli.command {
            Command::Run(config) => run(*config).await,
            Command::Mfs(args) => mfs_cli::run(args).await,
            Command::S3(args) => s3::cli::run(args).await,
        }
    })
}

/// Builds the worker, stops it on SIGTERM/SIGINT.
async fn run(config: Config) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    shared::process::cancel_on_signals(app.shutdown_token());
    app.run_until_stopped().await;
    Ok(())
}
