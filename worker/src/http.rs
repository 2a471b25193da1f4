//! The worker's small HTTP listener: `/healthz` and `/metrics` (the
//! Prometheus text exposition of `shared::metrics`, contract in
//! `docs/operations.md`).

use std::net::SocketAddr;

use axum::http::header;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binds `addr`; returns the listener and the address it really has.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "metrics and health listening");
    Ok((listener, local))
}

/// Serves the listener until `shutdown`.
pub fn serve(listener: TcpListener, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
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
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    })
}
