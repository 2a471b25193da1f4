//! Serving the S3 service over HTTP/1 with our own protection, since s3s
//! has none against body-size, rate or back-pressure abuse:
//!
//! - **Header-read timeout** (hyper's `header_read_timeout`): a client
//!   dripping its request head is cut off.
//! - **Body limit**: a declared length (`Content-Length`, or
//!   `x-amz-decoded-content-length` of an aws-chunked body) above the limit
//!   is refused at once with `413 EntityTooLarge`; every body is also read
//!   through a counting limit, so an undeclared (chunked) body cannot exceed it.
//! - **Request timeout**: the whole request up to its response head, body
//!   included; past it `400 RequestTimeout` (an unfinished part attempt is
//!   abandoned: its session or a newer attempt decides, as for any attempt).
//! - **Concurrency limit**: past it a request is shed at once with
//!   `503 SlowDown`, which every S3 SDK backs off from and retries.
//! - **Connection limit**: past it new connections wait in the listen backlog.
//! - **Graceful shutdown**: stop accepting, let in-flight requests finish up
//!   to the drain bound.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::service::S3Service;
use s3s::{s3_error, S3Error};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The server's limits (see the module doc).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    /// Largest request body on the wire, bytes.
    pub max_body: u64,
    pub concurrency: usize,
    pub max_connections: usize,
    pub drain: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(3600),
            // A 5 GiB part plus the aws-chunked framing of its 64 KiB chunks.
            max_body: (5 << 30) + (64 << 20),
            concurrency: 64,
            max_connections: 1024,
            drain: Duration::from_secs(30),
        }
    }
}

type HttpResponse = http::Response<s3s::Body>;

fn refuse(e: S3Error, reason: &str) -> HttpResponse {
    crate::metrics::metrics()
        .shed
        .with_label_values(&[reason])
        .inc();
    let mut response = e.to_http_response().unwrap_or_else(|_| {
        let mut r = HttpResponse::new(s3s::Body::empty());
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    });
    // The body may not have been read: the client must not reuse the connection.
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// The length a request declares for its object bytes.
fn declared_length(req: &http::Request<Incoming>) -> Option<u64> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    header("x-amz-decoded-content-length").or_else(|| header("content-length"))
}

async fn handle(
    s3: S3Service,
    slots: Arc<Semaphore>,
    limits: Arc<ServerLimits>,
    req: http::Request<Incoming>,
) -> HttpResponse {
    let Ok(permit) = slots.try_acquire_owned() else {
        return refuse(
            s3_error!(SlowDown, "too many requests at once; retry"),
            "concurrency",
        );
    };
    if declared_length(&req).is_some_and(|n| n > limits.max_body) {
        return refuse(
            s3_error!(
                EntityTooLarge,
                "the body is larger than the limit of {} bytes",
                limits.max_body
            ),
            "body_size",
        );
    }
    let max_body = usize::try_from(limits.max_body).unwrap_or(usize::MAX);
    let req = req.map(|body| s3s::Body::http_body(http_body_util::Limited::new(body, max_body)));
    let response = match tokio::time::timeout(limits.request_timeout, s3.call(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::warn!(error = ?e, "S3 request failed outside an operation");
            refuse(s3_error!(InternalError), "error")
        }
        Err(_) => refuse(
            s3_error!(
                RequestTimeout,
                "the request took longer than {:?}",
                limits.request_timeout
            ),
            "timeout",
        ),
    };
    drop(permit);
    response
}

/// Serves `s3` on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    s3: S3Service,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let drain = limits.drain;
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let slots = Arc::new(Semaphore::new(limits.concurrency));
    let limits = Arc::new(limits);
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an S3 connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let (s3, slots, limits) = (s3.clone(), slots.clone(), limits.clone());
        let service = hyper::service::service_fn(move |req| {
            let (s3, slots, limits) = (s3.clone(), slots.clone(), limits.clone());
            async move { Ok::<_, Infallible>(handle(s3, slots, limits, req).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tasks.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "S3 connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tasks.len(),
            "S3 requests still running after the drain bound were cut"
        );
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
