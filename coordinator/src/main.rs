//! The mfs-ingest coordinator binary: `migrate` applies the migrations;
//! `serve` runs the HTTP API (with `/metrics`), the ingest-request consumer,
//! the outbox relay, the reconciler / garbage collector and the backlog
//! gauges until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use coordinator::api::Auth;
use coordinator::auth::ApiTokens;
use coordinator::server::HttpLimitArgs;
use coordinator::service::{self, Intervals};
use shared::config::{mask_url, ServiceArgs};
use shared::jobs::{Publisher, REQUESTS_QUEUE};
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
    Serve(Box<ServeArgs>),
    /// Publish ingest requests for local files (and wait for their events).
    Submit(coordinator::submit::SubmitArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    services: ServiceArgs,
    /// HTTP API and /metrics.
    #[arg(long, env = "INGEST_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    http_limits: HttpLimitArgs,
    /// Re-publish part jobs uncommitted this many seconds after their publish.
    #[arg(long, env = "INGEST_PART_STALE_SECS", default_value_t = 120)]
    part_stale_secs: u64,
    /// Fail sessions still open after this many seconds.
    #[arg(long, env = "INGEST_SESSION_MAX_AGE_SECS", default_value_t = 86400)]
    session_max_age_secs: u64,
    /// Seconds after a session ended before its staging leftovers are collected.
    #[arg(long, env = "INGEST_STAGING_GRACE_SECS", default_value_t = 60)]
    staging_grace_secs: u64,
    /// Seconds a staging file of no known session (another deployment
    /// sharing MFS_ROOT, a file put there by hand) stays unchanged before
    /// the sweep collects it.
    #[arg(long, env = "INGEST_ORPHAN_GRACE_SECS", default_value_t = 86400)]
    orphan_grace_secs: u64,
    /// Seconds between reconciler / GC rounds.
    #[arg(long, env = "INGEST_MAINTENANCE_SECS", default_value_t = 5)]
    maintenance_secs: u64,
    /// Ingest requests handled at the same time.
    #[arg(long, env = "INGEST_REQUEST_CONCURRENCY", default_value_t = 16)]
    request_concurrency: u16,
}

/// Who may call /v1/*: at least one token, or the explicit --insecure-no-auth.
#[derive(Args)]
struct AuthArgs {
    /// Named API tokens as NAME:SHA256HEX, comma-separated (the SHA-256 of
    /// each token, e.g. `printf %s "$TOKEN" | sha256sum`).
    #[arg(long, env = "INGEST_API_TOKENS", hide_env_values = true)]
    api_tokens: Option<String>,
    /// A file of named API tokens: one NAME:SHA256HEX a line, # comments.
    #[arg(long, env = "INGEST_API_TOKENS_FILE")]
    api_tokens_file: Option<PathBuf>,
    /// One plain bearer token, named "default" (kept for old deployments).
    #[arg(long, env = "INGEST_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Serve /v1/* without authentication (local development only).
    #[arg(long)]
    insecure_no_auth: bool,
}

impl AuthArgs {
    /// The configured tokens; none at all is an error unless the API is
    /// explicitly opened.
    fn auth(&self) -> Result<Auth> {
        let mut tokens = ApiTokens::default();
        if let Some(list) = &self.api_tokens {
            tokens.add_list("INGEST_API_TOKENS", list)?;
        }
        if let Some(path) = &self.api_tokens_file {
            tokens.add_file(path)?;
        }
        if let Some(token) = &self.api_token {
            tokens.add_plain("INGEST_API_TOKEN", "default", token)?;
        }
        match (tokens.is_empty(), self.insecure_no_auth) {
            (false, insecure) => {
                if insecure {
                    tracing::warn!("--insecure-no-auth ignored: API tokens are configured");
                }
                Ok(Auth::Tokens(tokens))
            }
            (true, true) => Ok(Auth::Open),
            (true, false) => anyhow::bail!(
                "no API token configured: set INGEST_API_TOKENS, INGEST_API_TOKENS_FILE or \
                 INGEST_API_TOKEN, or pass --insecure-no-auth to serve the API without authentication"
            ),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::process::init_logging("info,lapin=warn,sqlx=warn");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Migrate { database_url } => migrate(&database_url).await,
            Command::Serve(args) => serve(*args).await,
            Command::Submit(args) => coordinator::submit::submit(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(database_url: &str) -> Result<()> {
    let store = Store::connect(database_url, 2)
        .await
        .with_context(|| format!("connecting to {}", mask_url(database_url)))?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    // Refused settings stop the start before anything is connected.
    let auth = args.auth.auth()?;
    let limits = args.http_limits.limits()?;
    shared::metrics::set_build_info("coordinator");
    let token_names = match &auth {
        Auth::Tokens(tokens) => tokens.names().collect::<Vec<_>>().join(","),
        Auth::Open => "<none>".to_string(),
    };
    tracing::info!(
        http_addr = %args.http_addr,
        api_tokens = %token_names,
        http_limits = ?limits,
        config = %args.services.describe(),
        "starting coordinator"
    );
    if matches!(auth, Auth::Open) {
        tracing::warn!("--insecure-no-auth: the HTTP API accepts requests WITHOUT authentication");
    }
    let ingest = args
        .services
        .ingest(
            "mfs-ingest coordinator",
            args.request_concurrency as u32 + 8,
        )
        .await
        .context("starting the coordinator")?;
    ingest
        .store
        .migrate()
        .await
        .context("applying migrations")?;
    let staging = ingest.cfg.staging_root();
    let staging_inode = ingest
        .mfs
        .mkdir_all(&staging)
        .await
        .context("creating the staging directory")?;
    let (system_dir, _) = ingest
        .mfs
        .resolve(&staging.split_last().expect("staging has a parent").0)
        .await?;
    for inode in [system_dir, staging_inode] {
        ingest.mfs.set_trash_time(inode, 0, false).await?;
    }

    let shutdown = shared::process::shutdown_on_signals();

    let publisher = Arc::new(Publisher::new(
        &args.services.amqp_url,
        "coordinator publisher",
    ));
    let relay = tokio::spawn(service::run_outbox_relay(
        ingest.store.clone(),
        publisher.clone(),
        shutdown.clone(),
    ));
    let intervals = Intervals {
        part_stale_after: Duration::from_secs(args.part_stale_secs),
        session_max_age: Duration::from_secs(args.session_max_age_secs),
        tick: Duration::from_secs(args.maintenance_secs),
        staging_grace: Duration::from_secs(args.staging_grace_secs),
        orphan_grace: Duration::from_secs(args.orphan_grace_secs),
        ..Intervals::default()
    };
    let backlog = tokio::spawn(service::run_backlog_gauges(
        ingest.store.clone(),
        intervals.stats,
        shutdown.clone(),
    ));
    let maintenance = tokio::spawn(service::run_maintenance(
        ingest.clone(),
        intervals,
        shutdown.clone(),
    ));
    let consumer = {
        let ingest = ingest.clone();
        let publisher = publisher.clone();
        let amqp_url = args.services.amqp_url.clone();
        let shutdown = shutdown.clone();
        let prefetch = args.request_concurrency;
        tokio::spawn(async move {
            shared::jobs::consume_until(
                &amqp_url,
                &format!("coordinator-{}", std::process::id()),
                REQUESTS_QUEUE,
                prefetch,
                shutdown,
                Duration::from_secs(30),
                move |delivery| {
                    let ingest = ingest.clone();
                    let publisher = publisher.clone();
                    async move { service::handle_request(&ingest, &publisher, delivery).await }
                },
            )
            .await
        })
    };

    let state = Arc::new(coordinator::api::ApiState::new(
        ingest.clone(),
        auth,
        Arc::new(shared::metrics::render),
        limits.body_limit,
    ));
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    let app = coordinator::server::app(state, &limits);
    coordinator::server::serve(listener, app, limits, shutdown.clone())
        .await
        .context("HTTP server")?;
    let _ = tokio::join!(relay, maintenance, consumer, backlog);
    ingest.mfs.close().await;
    Ok(())
}
