//! The HTTP/1 serving loop every endpoint of the system shares (the
//! coordinator's API, the S3 endpoint): the protections that belong to the
//! connection rather than to a request, so that each endpoint keeps only
//! its own per-request limits (body size, request timeout, shedding) and
//! the error documents it answers with.
//!
//! - **Header-read timeout** (hyper's `header_read_timeout`, with a Tokio
//!   timer): a client has this long to send a request's head, counted from
//!   the first read of it: on a new connection, and on a kept-alive one from
//!   the end of the previous response. A client dripping its headers a byte
//!   at a time (slowloris) is cut off then. Only HTTP/1 is served: the
//!   HTTP/2 preface sniffing of the auto builder has no such timeout.
//! - **Connection limit**: past it new connections wait in the listen backlog.
//! - **Graceful shutdown**: stop accepting, let in-flight requests finish
//!   (kept-alive idle connections are closed), and cut whatever is still
//!   running after the drain bound.
//!
//! [`ConcurrencyLimit`] is the shedding both endpoints put in front of
//! their requests: a request past the limit is refused at once (each
//! endpoint answers in its own terms) rather than queued.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{self, HttpServerConnExec};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The limits of [`serve_connections`] (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time to send a request's head.
    pub header_timeout: Duration,
    /// Connections open at the same time.
    pub max_connections: usize,
    /// Time in-flight requests get to finish at shutdown.
    pub drain: Duration,
}

impl ConnectionLimits {
    pub fn new(header_timeout: Duration, max_connections: usize, drain: Duration) -> Self {
        ConnectionLimits {
            header_timeout,
            max_connections,
            drain,
        }
    }
}

/// At most so many requests handled at the same time; one more is shed.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
}

impl ConcurrencyLimit {
    pub fn new(concurrency: usize) -> ConcurrencyLimit {
        ConcurrencyLimit {
            slots: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// A slot for one request, held until the permit is dropped; `None`
    /// when every slot is taken (the request is to be shed).
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Serves `service` on every connection `listener` accepts until
/// `shutdown` is cancelled, then drains (bounded by `limits.drain`).
/// Connection errors are logged, not returned; `what` names the
/// connections in the log lines ("HTTP", "S3").
pub async fn serve_connections<S, B>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    what: &'static str,
) -> std::io::Result<()>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    TokioExecutor: HttpServerConnExec<S::Future, B>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept(&listener, what) => accepted,
        };
        let Some((stream, peer)) = accepted else {
            continue;
        };
        while tasks.try_join_next().is_some() {}
        set_nodelay(&stream, peer);
        let connection = builder
            .serve_connection(TokioIo::new(stream), service.clone())
            .into_owned();
        let connection = graceful.watch(connection);
        tasks.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "{what} connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "{what} server stopped accepting; draining in-flight requests"
    );
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tasks.len(),
            drain = ?limits.drain,
            "{what} requests still running after the drain bound were cut"
        );
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The next connection; `None` after a failed accept (EMFILE and friends),
/// having waited a little rather than spin.
async fn accept(listener: &TcpListener, what: &str) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(e) => {
            tracing::warn!(error = %e, "accepting an {what} connection failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

fn set_nodelay(stream: &TcpStream, peer: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
    }
}
