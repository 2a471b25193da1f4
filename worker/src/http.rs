//! The worker's small HTTP listener: `/healthz` and `/metrics` (the
//! Prometheus text exposition of `shared::metrics`, contract in
//! `docs/operations.md`).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::http::header;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Binds `addr` and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, shared::metrics::CONTENT_TYPE)],
                    shared::metrics::render(),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics and health listening");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    }))
}
