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
//! - **Send stall** (optional, [`StallLimit`]): a connection whose socket
//!   has refused every write for this long — the client stopped reading a
//!   response — is cut, dropping the response and whatever its body holds
//!   (a request slot, an open file). Hyper does not poll a body whose
//!   socket is not writable, so no timer inside the body could fire: the
//!   socket is wrapped ([`StallIo`]) to note when a write first found it
//!   full and when one next made progress, and a watchdog beside the
//!   connection's future drops it. A client that reads slowly but steadily
//!   is never cut, nor one waiting for a response the server is still
//!   computing (no write is pending then).
//!
//! [`ConcurrencyLimit`] is the shedding both endpoints put in front of
//! their requests: a request past the limit is refused at once (each
//! endpoint answers in its own terms) rather than queued.

use std::error::Error as StdError;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{self, HttpServerConnExec};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The limits of [`serve_connections`] (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a request's head.
    pub header_timeout: Duration,
    /// Connections open at the same time.
    pub max_connections: usize,
    /// Time in-flight requests get to finish at shutdown.
    pub drain: Duration,
    /// Cut a connection whose client stopped reading (none: never).
    pub stall: Option<StallLimit>,
}

impl ConnectionLimits {
    pub fn new(header_timeout: Duration, max_connections: usize, drain: Duration) -> Self {
        ConnectionLimits {
            header_timeout,
            max_connections,
            drain,
            stall: None,
        }
    }

    /// Cuts a connection once its writes have been stalled for `after`,
    /// calling `on_cut` (a metric) each time.
    pub fn with_stall_limit(mut self, after: Duration, on_cut: fn()) -> Self {
        self.stall = Some(StallLimit { after, on_cut });
        self
    }
}

/// How long a connection's writes may stay stalled (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct StallLimit {
    pub after: Duration,
    /// Called when a connection is cut (counts it).
    pub on_cut: fn(),
}

/// When a connection's pending write first found its socket full (none
/// while writes make progress), shared by the socket wrapper and the
/// watchdog.
#[derive(Debug)]
pub struct StallClock {
    origin: Instant,
    /// Milliseconds since `origin` plus one when the stall began; 0: none.
    since: AtomicU64,
}

impl StallClock {
    pub fn new() -> Arc<StallClock> {
        Arc::new(StallClock {
            origin: Instant::now(),
            since: AtomicU64::new(0),
        })
    }

    fn note<T>(&self, poll: &Poll<std::io::Result<T>>, progressed: impl Fn(&T) -> bool) {
        match poll {
            Poll::Pending => {
                let now = self.origin.elapsed().as_millis() as u64 + 1;
                let _ = self
                    .since
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            }
            Poll::Ready(Ok(v)) if progressed(v) => self.since.store(0, Ordering::Relaxed),
            Poll::Ready(_) => {}
        }
    }

    /// How long writes have been stalled (none: not stalled).
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }

    /// Returns once writes have been stalled for `after` (checked every
    /// quarter of it, at least every second).
    pub async fn stalled(&self, after: Duration) {
        let tick = (after / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            if self.stalled_for().is_some_and(|d| d >= after) {
                return;
            }
        }
    }
}

/// A socket whose writes are timed by a [`StallClock`]: a write that finds
/// it full starts the clock, one that writes something stops it.
#[derive(Debug)]
pub struct StallIo<T> {
    inner: T,
    clock: Arc<StallClock>,
}

impl<T> StallIo<T> {
    pub fn new(inner: T, clock: Arc<StallClock>) -> Self {
        StallIo { inner, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.clock.note(&poll, |n| *n > 0);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.clock.note(&poll, |n| *n > 0);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.clock.note(&poll, |_| true);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
        let clock = StallClock::new();
        let stream = StallIo::new(stream, clock.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service.clone())
            .into_owned();
        let connection = graceful.watch(connection);
        let stall = limits.stall;
        tasks.spawn(async move {
            let watchdog = async {
                match stall {
                    Some(limit) => clock.stalled(limit.after).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "{what} connection ended with an error");
                    }
                }
                () = watchdog => {
                    let limit = stall.expect("the watchdog fires only with a limit");
                    tracing::warn!(%peer, after = ?limit.after,
                        "{what} client stopped reading its response; connection cut");
                    (limit.on_cut)();
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_full_socket_starts_the_stall_clock_and_progress_stops_it() {
        let (client, server) = tokio::io::duplex(1024);
        let clock = StallClock::new();
        let mut io = StallIo::new(server, clock.clone());
        let mut client = client;
        io.write_all(&[7; 1024]).await.unwrap();
        assert_eq!(clock.stalled_for(), None, "writes that fit are no stall");
        // The peer reads nothing: the next write waits, and the clock runs.
        let blocked = tokio::time::timeout(Duration::from_millis(50), io.write_all(&[8; 10])).await;
        assert!(blocked.is_err());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let stalled = clock.stalled_for().expect("a stalled write");
        assert!(stalled >= Duration::from_millis(70), "{stalled:?}");
        assert!(
            tokio::time::timeout(
                Duration::from_secs(2),
                clock.stalled(Duration::from_millis(100))
            )
            .await
            .is_ok(),
            "the watchdog fires past the limit"
        );
        // The peer reads: the next write makes progress and stops the clock.
        let mut buf = [0; 512];
        client.read_exact(&mut buf).await.unwrap();
        io.write_all(&[9; 10]).await.unwrap();
        assert_eq!(clock.stalled_for(), None);
        assert!(
            tokio::time::timeout(
                Duration::from_millis(200),
                clock.stalled(Duration::from_millis(50))
            )
            .await
            .is_err(),
            "no stall, no cut"
        );
    }
}
