//! The worker service as one value, from its [`Config`] (the `worker run` settings):
//! [`App::build`] (connects, prepares the per-worker metrics, binds the
//! metrics/health listener) and [`App::run_until_stopped`] (consumes part
//! jobs until its shutdown token is cancelled, then lets in-flight parts
//! finish). The binary wires SIGTERM/SIGINT to that token; tests start it
//! in-process on port 0 and cancel it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shared::config::ConfigError;
use shared::ingest::{Ingest, WriteBudget};
use shared::metrics::metrics;
use shared::queue::PARTS_QUEUE;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::run::WorkerCtx;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting the worker: {0}")]
    Connect(ConfigError),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// A worker connected to its services, its metrics listener bound, not yet
/// consuming.
pub struct App {
    ctx: Arc<WorkerCtx>,
    amqp_url: String,
    concurrency: u16,
    shutdown_grace: Duration,
    listener: TcpListener,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl App {
    /// Connects to PostgreSQL and MooseFS, sets this worker's gauges and
    /// binds the metrics and health listener.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let worker_id = config.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
            format!("{}-{}", host.trim(), std::process::id())
        });
        tracing::info!(
            worker_id,
            concurrency = config.concurrency,
            http_addr = %config.http_addr,
            config = %config.services.describe(),
            part_limits = %config.part_limits.describe(),
            "starting worker"
        );
        shared::metrics::set_build_info(shared::metrics::Component::Worker);
        metrics().worker_started(&worker_id, config.concurrency.into());
        let ingest = connect(&config, &worker_id).await?;
        let ctx = Arc::new(WorkerCtx::new(&config, ingest, worker_id));
        let (listener, addr) =
            crate::http::bind(config.http_addr)
                .await
                .map_err(|error| StartError::Listen {
                    addr: config.http_addr,
                    error,
                })?;
        Ok(App {
            ctx,
            amqp_url: config.services.amqp_url,
            concurrency: config.concurrency,
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            listener,
            addr,
            shutdown: CancellationToken::new(),
        })
    }

    /// The address `/metrics` and `/healthz` are served on (the real port
    /// when bound to 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This worker's name in leases and part rows.
    pub fn worker_id(&self) -> &str {
        &self.ctx.worker_id
    }

    /// Cancelling this token stops consumption; in-flight parts get the
    /// shutdown grace to finish, then [`App::run_until_stopped`] returns.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves the metrics listener and consumes part jobs until stopped.
    pub async fn run_until_stopped(self) {
        let http = crate::http::serve(self.listener, self.shutdown.clone());
        let handler_ctx = self.ctx.clone();
        shared::queue::consume_until(
            &self.amqp_url,
            &format!("worker-{}", self.ctx.worker_id),
            PARTS_QUEUE,
            self.concurrency,
            self.shutdown.clone(),
            self.shutdown_grace,
            move |delivery| {
                let ctx = handler_ctx.clone();
                async move { crate::run::handle(&ctx, delivery).await }
            },
        )
        .await;
        tracing::info!("worker stopped consuming; closing");
        self.ctx.ingest.mfs.close().await;
        let _ = http.await;
    }
}

/// The pipeline with this worker's part limits and write budget.
async fn connect(config: &Config, worker_id: &str) -> Result<Ingest, StartError> {
    let mut ingest = config
        .services
        .ingest(
            &format!("mfs-ingest worker {worker_id}"),
            config.concurrency as u32 + 2,
        )
        .await
        .map_err(StartError::Connect)?;
    Arc::make_mut(&mut ingest.cfg).sources.part_limits = config.part_limits.limits();
    if config.max_in_flight_mib > 0 {
        ingest.write_budget = WriteBudget::mib(config.max_in_flight_mib);
    }
    Ok(ingest)
}
