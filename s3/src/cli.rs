//! `worker s3 …`: `serve` runs the endpoint; `keys create|list|revoke`
//! manages access keys (a secret is printed once, at creation).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use s3s::service::S3ServiceBuilder;

use crate::keys::{self, KeyAccess, KeyAuth, ServerKey};
use crate::pipeline::{Pipeline, ServiceArgs};
use crate::server::ServerLimits;
use crate::service::Endpoint;

#[derive(Args, Debug)]
pub struct S3Args {
    #[command(subcommand)]
    pub command: S3Command,
}

#[derive(Subcommand, Debug)]
pub enum S3Command {
    /// Serve the S3 endpoint (stateless: run as many as you like).
    Serve(Box<ServeArgs>),
    /// Manage access keys.
    Keys(KeysArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub services: ServiceArgs,
    /// Address the S3 API listens on.
    #[arg(long, env = "S3_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Metrics and health listener.
    #[arg(long, env = "S3_METRICS_ADDR", default_value = "127.0.0.1:9102")]
    pub metrics_addr: SocketAddr,
    /// Directory (below MFS_ROOT) whose subdirectories are the buckets.
    #[arg(long, env = "S3_ROOT", default_value = "s3")]
    pub s3_root: String,
    /// Server key the access keys' secrets are derived from (≥ 32 bytes).
    #[arg(long, env = "S3_KEY_SECRET", hide_env_values = true)]
    pub key_secret: String,
    /// Seconds a client has to send a request's headers.
    #[arg(long, env = "S3_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a request may take up to its response head, body included.
    #[arg(long, env = "S3_REQUEST_TIMEOUT_SECS", default_value_t = 3600)]
    pub request_timeout_secs: u64,
    /// Largest request body on the wire, bytes.
    #[arg(long, env = "S3_MAX_BODY_BYTES", default_value_t = ServerLimits::default().max_body)]
    pub max_body_bytes: u64,
    /// Requests handled at once (503 SlowDown above).
    #[arg(long, env = "S3_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Connections open at once.
    #[arg(long, env = "S3_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// MiB of part bodies written to MooseFS at once (0 = no bound).
    #[arg(long, env = "S3_MAX_IN_FLIGHT_MIB", default_value_t = 0)]
    pub max_in_flight_mib: u32,
    /// Uploads one access key may have in progress: CreateMultipartUpload
    /// past it is refused with 503 SlowDown (0 = no bound).
    #[arg(long, env = "S3_MAX_OPEN_UPLOADS_PER_KEY", default_value_t = crate::pipeline::DEFAULT_MAX_OPEN_UPLOADS)]
    pub max_open_uploads_per_key: u32,
    /// Seconds in-flight requests get to finish at shutdown.
    #[arg(long, env = "S3_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
    /// Seconds a client may take no byte of a response before its
    /// connection is cut (its request slot and open object released).
    #[arg(long, env = "S3_SEND_IDLE_TIMEOUT_SECS", default_value_t = 120)]
    pub send_idle_timeout_secs: u64,
    /// Largest signed aws-chunked chunk accepted, bytes (s3s holds a signed
    /// chunk whole to check its signature; unsigned chunks are streamed).
    #[arg(long, env = "S3_MAX_SIGNED_CHUNK_BYTES", default_value_t = crate::server::DEFAULT_MAX_SIGNED_CHUNK)]
    pub max_signed_chunk_bytes: u64,
}

#[derive(Args, Debug)]
pub struct KeysArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/mfs_ingest"
    )]
    pub database_url: String,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; prints the access key id and the secret (shown once).
    Create {
        /// A bucket the key may use (repeat; '*' = every bucket).
        #[arg(long = "bucket", required = true)]
        buckets: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Server key (the one the endpoint serves with).
        #[arg(long, env = "S3_KEY_SECRET", hide_env_values = true)]
        key_secret: String,
    },
    /// List keys (never secrets), each followed by its session keys (parent, expiry).
    List,
    /// Revoke a key: requests signed with it are refused from now on.
    Revoke { access_key_id: String },
}

pub async fn run(args: S3Args) -> Result<()> {
    match args.command {
        S3Command::Serve(serve) => run_serve(*serve).await,
        S3Command::Keys(keys) => run_keys(keys).await,
    }
}

async fn db(database_url: &str) -> Result<sqlx::PgPool> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .context("connecting to PostgreSQL")?;
    Pipeline::migrate(&pool).await.context("migrating")?;
    Ok(pool)
}

async fn run_keys(args: KeysArgs) -> Result<()> {
    let pool = db(&args.database_url).await?;
    match args.command {
        KeysCommand::Create {
            buckets,
            description,
            key_secret,
        } => {
            let server = ServerKey::new(&key_secret)?;
            let (id, secret) = keys::create(&pool, &server, &buckets, &description).await?;
            println!("access_key_id={id}");
            println!("secret_access_key={secret}");
        }
        KeysCommand::List => {
            let sessions = keys::list_sessions(&pool).await?;
            for k in keys::list(&pool).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    k.access_key_id,
                    k.buckets.join(","),
                    k.created_at.to_rfc3339(),
                    k.revoked_at
                        .map(|t| format!("revoked {}", t.to_rfc3339()))
                        .unwrap_or_else(|| "active".into()),
                    k.description
                );
                // Its session keys (STS AssumeRole), each on a line of its
                // own, in the same columns: the parent instead of buckets.
                let now = chrono::Utc::now();
                for t in sessions
                    .iter()
                    .filter(|t| t.parent_key_id == k.access_key_id)
                {
                    let state = if k.revoked_at.is_some() {
                        "refused: parent revoked".to_string()
                    } else if t.expires_at <= now {
                        format!("expired {}", t.expires_at.to_rfc3339())
                    } else {
                        format!("active until {}", t.expires_at.to_rfc3339())
                    };
                    println!(
                        "{}\tsession of {}\t{}\t{}\tAssumeRole {} as {}",
                        t.access_key_id,
                        t.parent_key_id,
                        t.created_at.to_rfc3339(),
                        state,
                        t.role_arn,
                        t.role_session_name
                    );
                }
            }
        }
        KeysCommand::Revoke { access_key_id } => {
            keys::revoke(&pool, &access_key_id).await?;
            println!("revoked {access_key_id}");
        }
    }
    Ok(())
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    let server_key = ServerKey::new(&args.key_secret)?;
    if args.concurrency == 0 || args.max_connections == 0 {
        bail!("S3_CONCURRENCY and S3_MAX_CONNECTIONS must be at least 1");
    }
    tracing::info!(listen = %args.listen, metrics = %args.metrics_addr, s3_root = args.s3_root,
        config = %args.services.describe(), "starting the S3 endpoint");
    Pipeline::set_build_info();
    let mut pipeline = Pipeline::connect(
        &args.services,
        &args.s3_root,
        &format!("mfs-ingest s3 {}", std::process::id()),
        (args.concurrency as u32).saturating_add(4),
    )
    .await
    .context("starting the S3 endpoint")?;
    pipeline.set_max_open_uploads(args.max_open_uploads_per_key);
    if args.max_in_flight_mib > 0 {
        pipeline.set_write_budget_mib(args.max_in_flight_mib);
    }
    Pipeline::migrate(pipeline.pool())
        .await
        .context("migrating")?;
    shared::metrics::s3_operations(crate::service::OPERATIONS);

    let service = build_service(&pipeline, server_key);

    let shutdown = shared_shutdown();
    let metrics = serve_metrics(args.metrics_addr, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "S3 endpoint listening");
    let limits = ServerLimits {
        header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        max_body: args.max_body_bytes,
        concurrency: args.concurrency,
        max_connections: args.max_connections,
        drain: Duration::from_secs(args.drain_secs),
        send_idle_timeout: Duration::from_secs(args.send_idle_timeout_secs.max(1)),
        max_signed_chunk: args.max_signed_chunk_bytes,
    };
    crate::server::serve(listener, service, limits, shutdown).await?;
    pipeline.close().await;
    let _ = metrics.await;
    Ok(())
}

/// The S3 service: the operations, SigV4 with the keys in PostgreSQL, the
/// per-bucket access check (anonymous requests refused, session tokens
/// checked) and STS AssumeRole (`POST /`, [`crate::sts`]).
pub fn build_service(pipeline: &Pipeline, server_key: ServerKey) -> s3s::service::S3Service {
    let mut builder = S3ServiceBuilder::new(Endpoint::new(pipeline.clone()));
    builder.set_auth(KeyAuth {
        pool: pipeline.pool().clone(),
        server: server_key.clone(),
    });
    builder.set_access(KeyAccess {
        pool: pipeline.pool().clone(),
        server: server_key.clone(),
    });
    builder.set_route(crate::sts::AssumeRoleRoute {
        pool: pipeline.pool().clone(),
        server: server_key,
    });
    builder.build()
}

fn shared_shutdown() -> tokio_util::sync::CancellationToken {
    crate::pipeline::shutdown_on_signals()
}

/// `/metrics` and `/healthz` on their own listener.
async fn serve_metrics(
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    Pipeline::render_metrics(),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    }))
}
