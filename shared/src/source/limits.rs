//! A deadline and a minimum throughput for reading one part of a source.
//!
//! A source that sends nothing, or one byte every now and then, would hold
//! a worker slot (and, once a block was sent, a MooseFS chunk write lock)
//! for as long as it likes. [`LimitedReader`] ends such a read with an
//! error instead: the writer then closes the chunk it was writing (its lock
//! released with `WRITE_CHUNK_END`, as after any source error), the attempt
//! is recorded as abandoned and the part is retried with backoff.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Limits on reading one part of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLimits {
    /// The whole part (opening the source included) must be read within
    /// this; zero: no deadline.
    pub deadline: Duration,
    /// In every `window`, at least `min_bytes_per_sec × window` bytes must
    /// arrive; zero: no minimum.
    pub min_bytes_per_sec: u64,
    /// The window the throughput is measured over; the first one is also
    /// the grace period of a new connection.
    pub window: Duration,
}

impl Default for PartLimits {
    /// One hour per part; at least 64 KiB/s, measured over 30 s windows.
    fn default() -> Self {
        PartLimits {
            deadline: Duration::from_secs(3600),
            min_bytes_per_sec: 64 << 10,
            window: Duration::from_secs(30),
        }
    }
}

/// Why a part read was cut short.
#[derive(Debug, thiserror::Error)]
pub enum PartReadLimitError {
    #[error("part deadline of {deadline:?} passed after {bytes} bytes")]
    Deadline { deadline: Duration, bytes: u64 },
    #[error(
        "source too slow: {bytes} bytes in the last {window:?}, below the minimum of {min_bytes_per_sec} bytes/s"
    )]
    TooSlow {
        bytes: u64,
        window: Duration,
        min_bytes_per_sec: u64,
    },
}

impl PartReadLimitError {
    /// Whether an I/O error of a source read is one of these.
    pub fn is_in(e: &std::io::Error) -> bool {
        e.get_ref()
            .is_some_and(|inner| inner.is::<PartReadLimitError>())
    }
}

/// A reader that fails with a [`PartReadLimitError`] (as an
/// [`std::io::ErrorKind::TimedOut`] error) when the part's deadline passes
/// or a window brings fewer bytes than the minimum.
pub struct LimitedReader<R> {
    inner: R,
    limits: PartLimits,
    /// When the deadline passes (`None`: no deadline).
    deadline: Option<Pin<Box<Sleep>>>,
    /// The end of the current throughput window (`None`: no minimum).
    window_end: Option<Pin<Box<Sleep>>>,
    window_bytes: u64,
    total_bytes: u64,
}

impl<R> LimitedReader<R> {
    /// Limits counted from `started` (when the source was first asked).
    pub fn new(inner: R, limits: PartLimits, started: Instant) -> Self {
        let deadline = (!limits.deadline.is_zero())
            .then(|| Box::pin(tokio::time::sleep_until(started + limits.deadline)));
        let window_end = (limits.min_bytes_per_sec > 0 && !limits.window.is_zero())
            .then(|| Box::pin(tokio::time::sleep_until(started + limits.window)));
        LimitedReader {
            inner,
            limits,
            deadline,
            window_end,
            window_bytes: 0,
            total_bytes: 0,
        }
    }

    /// An error if a limit is exceeded now; otherwise the timers are armed
    /// to wake the task when one may be.
    fn check(&mut self, cx: &mut Context<'_>) -> Option<PartReadLimitError> {
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Some(PartReadLimitError::Deadline {
                    deadline: self.limits.deadline,
                    bytes: self.total_bytes,
                });
            }
        }
        let window = self.limits.window;
        let wanted = self
            .limits
            .min_bytes_per_sec
            .saturating_mul(window.as_millis() as u64)
            / 1000;
        while let Some(end) = self.window_end.as_mut() {
            if end.as_mut().poll(cx).is_pending() {
                break;
            }
            if self.window_bytes < wanted {
                return Some(PartReadLimitError::TooSlow {
                    bytes: self.window_bytes,
                    window,
                    min_bytes_per_sec: self.limits.min_bytes_per_sec,
                });
            }
            // A new window from now (polled again to register the waker).
            self.window_bytes = 0;
            end.as_mut().reset(Instant::now() + window);
        }
        None
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LimitedReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            this.window_bytes += n;
            this.total_bytes += n;
        }
        // Bytes that arrived are passed on; the limits are checked on every
        // poll, so a source that keeps the reader waiting is cut off by the
        // timers, one that trickles by the next check.
        if let Some(e) = this.check(cx) {
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, e)));
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A stream of `(delay, bytes)` pieces.
    fn trickle(pieces: Vec<(u64, usize)>) -> impl AsyncRead + Unpin {
        let stream = futures::stream::iter(pieces).then(|(ms, n)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; n]))
        });
        tokio_util::io::StreamReader::new(Box::pin(stream))
    }
    use futures::StreamExt;

    async fn read_all(r: impl AsyncRead + Unpin, limits: PartLimits) -> std::io::Result<usize> {
        let mut out = Vec::new();
        let mut r = LimitedReader::new(r, limits, Instant::now());
        r.read_to_end(&mut out).await.map(|_| out.len())
    }

    fn limits(deadline: u64, min: u64, window: u64) -> PartLimits {
        PartLimits {
            deadline: Duration::from_secs(deadline),
            min_bytes_per_sec: min,
            window: Duration::from_secs(window),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_source_is_read_whole() {
        // 100 bytes/s for 10 s: above a minimum of 50 bytes/s.
        let pieces = vec![(100, 10); 100];
        assert_eq!(
            read_all(trickle(pieces), limits(20, 50, 2)).await.unwrap(),
            1000
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_after_a_fast_start_is_cut_at_the_first_slow_window() {
        let mut pieces = vec![(0, 1 << 20)];
        pieces.extend(vec![(25_000, 1); 10]);
        let started = Instant::now();
        let e = read_all(trickle(pieces), limits(3600, 1024, 5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(PartReadLimitError::is_in(&e), "{e}");
        assert!(e.to_string().contains("too slow"), "{e}");
        // The second window [5 s, 10 s) brought nothing.
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_source_is_cut_at_the_deadline() {
        let pieces = vec![(0, 10), (60_000, 10)];
        let started = Instant::now();
        let e = read_all(trickle(pieces), limits(7, 0, 0))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("deadline"), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        // No limits: it is simply read.
        assert_eq!(
            read_all(trickle(vec![(0, 10), (60_000, 10)]), limits(0, 0, 0))
                .await
                .unwrap(),
            20
        );
    }
}
