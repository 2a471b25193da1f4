//! The coordinator service as one value: [`Config`] (the `coordinator serve`
//! settings), [`App::build`] (checks the settings, connects, migrates,
//! prepares the staging directory and binds the HTTP listener) and
//! [`App::run_until_stopped`] (the ingest-request consumer, the outbox relay,
//! the reconciler / garbage collector, the backlog gauges and the HTTP API
//! until its shutdown token is cancelled). The binary wires SIGTERM/SIGINT
//! to that token; tests start it in-process on port 0 and cancel it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser};
use moosefs::MfsError;
use shared::config::{ConfigError, ServiceArgs};
use shared::ingest::Ingest;
use shared::queue::{Publisher, REQUESTS_QUEUE};
use shared::store::StoreError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, Auth};
use crate::auth::{ApiTokens, TokenConfigError};
use crate::server::{HttpLimitArgs, HttpLimits, LimitError};
use crate::service::{self, Intervals};

/// Settings of `coordinator serve`: flags, or the environment variables
/// named in `--help` (read by clap when the config is parsed, never by the
/// app itself).
#[derive(Parser, Clone)]
pub struct Config {
    #[command(flatten)]
    pub services: ServiceArgs,
    /// HTTP API and /metrics.
    #[arg(long, env = "INGEST_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
    /// Re-publish part jobs uncommitted this many seconds after their publish.
    #[arg(long, env = "INGEST_PART_STALE_SECS", default_value_t = 120)]
    pub part_stale_secs: u64,
    /// Fail sessions still open after this many seconds.
    #[arg(long, env = "INGEST_SESSION_MAX_AGE_SECS", default_value_t = 86400)]
    pub session_max_age_secs: u64,
    /// Abort S3 uploads still receiving parts after this many seconds
    /// without activity (created, or a part committed), as
    /// AbortMultipartUpload does.
    #[arg(long, env = "S3_UPLOAD_EXPIRY_SECS", default_value_t = 7 * 86400)]
    pub s3_upload_expiry_secs: u64,
    /// Seconds after a session ended before its staging leftovers are collected.
    #[arg(long, env = "INGEST_STAGING_GRACE_SECS", default_value_t = 60)]
    pub staging_grace_secs: u64,
    /// Seconds a staging file of no known session (another deployment
    /// sharing MFS_ROOT, a file put there by hand) stays unchanged before
    /// the sweep collects it.
    #[arg(long, env = "INGEST_ORPHAN_GRACE_SECS", default_value_t = 86400)]
    pub orphan_grace_secs: u64,
    /// Seconds between reconciler / GC rounds.
    #[arg(long, env = "INGEST_MAINTENANCE_SECS", default_value_t = 5)]
    pub maintenance_secs: u64,
    /// Ingest requests handled at the same time.
    #[arg(long, env = "INGEST_REQUEST_CONCURRENCY", default_value_t = 16)]
    pub request_concurrency: u16,
}

/// Who may call /v1/*: at least one token, or the explicit --insecure-no-auth.
// No `Debug`: it holds a plain token.
#[derive(Args, Clone)]
pub struct AuthArgs {
    /// Named API tokens as NAME:SHA256HEX, comma-separated (the SHA-256 of
    /// each token, e.g. `printf %s "$TOKEN" | sha256sum`).
    #[arg(long, env = "INGEST_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// A file of named API tokens: one NAME:SHA256HEX a line, # comments.
    #[arg(long, env = "INGEST_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// One plain bearer token, named "default" (kept for old deployments).
    #[arg(long, env = "INGEST_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Serve /v1/* without authentication (local development only).
    #[arg(long)]
    pub insecure_no_auth: bool,
}

impl AuthArgs {
    /// The configured tokens; none at all is an error unless the API is
    /// explicitly opened.
    pub fn auth(&self) -> Result<Auth, StartError> {
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
            (true, false) => Err(StartError::NoToken),
        }
    }
}

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tokens(#[from] TokenConfigError),
    #[error(
        "no API token configured: set INGEST_API_TOKENS, INGEST_API_TOKENS_FILE or \
         INGEST_API_TOKEN, or pass --insecure-no-auth to serve the API without authentication"
    )]
    NoToken,
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error("starting the coordinator: {0}")]
    Connect(ConfigError),
    #[error("applying migrations: {0}")]
    Migrate(StoreError),
    #[error("creating the staging directory: {0}")]
    Staging(MfsError),
    #[error(transparent)]
    MooseFs(#[from] MfsError),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Server(std::io::Error),
}

/// A coordinator connected to its services, its HTTP listener bound, not
/// yet serving.
pub struct App {
    ingest: Ingest,
    auth: Auth,
    limits: HttpLimits,
    intervals: Intervals,
    amqp_url: String,
    request_concurrency: u16,
    listener: TcpListener,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl App {
    /// Checks the settings (refused ones stop the start before anything is
    /// connected), connects to PostgreSQL and MooseFS, applies the
    /// migrations, prepares the staging directory and binds the listener.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let auth = config.auth.auth()?;
        let limits = config.http_limits.limits()?;
        shared::metrics::set_build_info(shared::metrics::Component::Coordinator);
        log_start(&config, &auth, &limits);
        let ingest = config
            .services
            .ingest(
                "mfs-ingest coordinator",
                config.request_concurrency as u32 + 8,
            )
            .await
            .map_err(StartError::Connect)?;
        ingest.store.migrate().await.map_err(StartError::Migrate)?;
        prepare_staging(&ingest).await?;
        let listener =
            TcpListener::bind(config.http_addr)
                .await
                .map_err(|error| StartError::Listen {
                    addr: config.http_addr,
                    error,
                })?;
        let addr = listener.local_addr().map_err(StartError::Server)?;
        Ok(App {
            ingest,
            auth,
            limits,
            intervals: intervals(&config),
            amqp_url: config.services.amqp_url.clone(),
            request_concurrency: config.request_concurrency,
            listener,
            addr,
            shutdown: CancellationToken::new(),
        })
    }

    /// The address the HTTP API listens on (the real port when bound to 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancelling this token stops the app: consumption ends, in-flight
    /// HTTP requests drain, [`App::run_until_stopped`] returns.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The pipeline the app works on (its store and MooseFS client).
    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// Runs every loop and the HTTP API until the shutdown token is
    /// cancelled, then waits for them and closes the MooseFS client.
    pub async fn run_until_stopped(self) -> Result<(), StartError> {
        let App {
            ingest,
            auth,
            limits,
            intervals,
            amqp_url,
            request_concurrency,
            listener,
            addr,
            shutdown,
        } = self;
        let publisher = Arc::new(Publisher::new(&amqp_url, "coordinator publisher"));
        let relay = tokio::spawn(service::run_outbox_relay(
            ingest.store.clone(),
            publisher.clone(),
            shutdown.clone(),
        ));
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
        let consumer = tokio::spawn(consume_requests(
            ingest.clone(),
            publisher,
            amqp_url,
            request_concurrency,
            shutdown.clone(),
        ));
        let state = Arc::new(ApiState::new(
            ingest.clone(),
            auth,
            Arc::new(shared::metrics::render),
            limits.body_limit,
        ));
        tracing::info!(addr = %addr, "HTTP API listening");
        let app = crate::server::app(state, &limits);
        crate::server::serve(listener, app, limits, shutdown)
            .await
            .map_err(StartError::Server)?;
        let _ = tokio::join!(relay, maintenance, consumer, backlog);
        ingest.mfs.close().await;
        Ok(())
    }
}

fn log_start(config: &Config, auth: &Auth, limits: &HttpLimits) {
    let token_names = match auth {
        Auth::Tokens(tokens) => tokens.names().collect::<Vec<_>>().join(","),
        Auth::Open => "<none>".to_string(),
    };
    tracing::info!(
        http_addr = %config.http_addr,
        api_tokens = %token_names,
        http_limits = ?limits,
        config = %config.services.describe(),
        "starting coordinator"
    );
    if matches!(auth, Auth::Open) {
        tracing::warn!("--insecure-no-auth: the HTTP API accepts requests WITHOUT authentication");
    }
}

/// Creates the staging directory; it and its parent keep no trash.
async fn prepare_staging(ingest: &Ingest) -> Result<(), StartError> {
    let staging = ingest.cfg.staging_root();
    let staging_inode = ingest
        .mfs
        .mkdir_all(&staging)
        .await
        .map_err(StartError::Staging)?;
    let (system_dir, _) = ingest
        .mfs
        .resolve(&staging.split_last().expect("staging has a parent").0)
        .await?;
    for inode in [system_dir, staging_inode] {
        ingest.mfs.set_trash_time(inode, 0, false).await?;
    }
    Ok(())
}

fn intervals(config: &Config) -> Intervals {
    Intervals {
        part_stale_after: Duration::from_secs(config.part_stale_secs),
        session_max_age: Duration::from_secs(config.session_max_age_secs),
        s3_upload_expiry: Duration::from_secs(config.s3_upload_expiry_secs),
        tick: Duration::from_secs(config.maintenance_secs),
        staging_grace: Duration::from_secs(config.staging_grace_secs),
        orphan_grace: Duration::from_secs(config.orphan_grace_secs),
        ..Intervals::default()
    }
}

/// Consumes `ingest.requests` until `shutdown`.
async fn consume_requests(
    ingest: Ingest,
    publisher: Arc<Publisher>,
    amqp_url: String,
    prefetch: u16,
    shutdown: CancellationToken,
) {
    shared::queue::consume_until(
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
}
