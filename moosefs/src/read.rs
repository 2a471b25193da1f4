//! Streaming reads: a byte range of a file, chunk by chunk, from any replica
//! (falling over to the next one on failure, resuming where the data
//! stopped) or from one named replica, so callers can read every copy and
//! compare.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::client::{MfsClient, OpenedFile};
use crate::error::{MfsError, Result};
use crate::observe::ClientStats;
use crate::proto::{Status, CHUNK_SIZE};
use crate::retry::{retry, AttemptError, RetryPolicy};

/// Which replica to read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaChoice {
    /// The master's preferred order, falling over to the others.
    #[default]
    Any,
    /// Only this chunkserver; an error if it holds no copy.
    Only(SocketAddrV4),
}

/// Counts bytes that reached the sink, so a failed read resumes after them.
struct CountingSink<'a, W> {
    inner: &'a mut W,
    written: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingSink<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let res = std::pin::Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = res {
            this.written += n as u64;
        }
        res
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

impl MfsClient {
    /// Copies `len` bytes (clipped to the file's end; `None` = to the end)
    /// starting at `offset` into `sink`. Returns the bytes copied.
    pub async fn read_to<W: AsyncWrite + Unpin>(
        &self,
        inode: u32,
        offset: u64,
        len: Option<u64>,
        sink: &mut W,
        replica: ReplicaChoice,
    ) -> Result<u64> {
        let attr = self.getattr(inode).await?;
        if attr.is_dir() {
            return Err(MfsError::IsDirectory(format!("inode {inode}")));
        }
        self.read_span(inode, attr.length, offset, len, sink, replica)
            .await
    }

    /// [`MfsClient::read_to`] of a file this session holds open, by the
    /// length it had when opened (no GETATTR: the file may have been
    /// unlinked since, and a session whose root is a subfolder cannot ask
    /// the attributes of an unlinked file; READ_CHUNK serves it by inode).
    pub async fn read_opened_to<W: AsyncWrite + Unpin>(
        &self,
        file: &OpenedFile,
        offset: u64,
        len: Option<u64>,
        sink: &mut W,
        replica: ReplicaChoice,
    ) -> Result<u64> {
        self.read_span(file.inode, file.attr.length, offset, len, sink, replica)
            .await
    }

    /// Copies `[offset, offset + len)` clipped to `length` into `sink`.
    async fn read_span<W: AsyncWrite + Unpin>(
        &self,
        inode: u32,
        length: u64,
        offset: u64,
        len: Option<u64>,
        sink: &mut W,
        replica: ReplicaChoice,
    ) -> Result<u64> {
        let end = match len {
            Some(n) => offset.saturating_add(n).min(length),
            None => length,
        };
        let mut pos = offset;
        let policy = RetryPolicy::new(
            Duration::from_millis(50),
            Duration::from_secs(2),
            6,
            Duration::from_secs(60),
        );
        while pos < end {
            let index = (pos / CHUNK_SIZE) as u32;
            let chunk_end = ((index as u64 + 1) * CHUNK_SIZE).min(end);
            let resume_at = AtomicU64::new(pos);
            let shared_sink = tokio::sync::Mutex::new(&mut *sink);
            let (resume_at_ref, sink_ref) = (&resume_at, &shared_sink);
            let res = retry(&policy, move |attempt| async move {
                let start = resume_at_ref.load(Ordering::Relaxed);
                let mut guard = sink_ref.lock().await;
                let mut counting = CountingSink {
                    inner: &mut **guard,
                    written: 0,
                };
                let r = self
                    .read_chunk_piece(
                        inode,
                        index,
                        start,
                        chunk_end,
                        &mut counting,
                        replica,
                        attempt,
                    )
                    .await;
                resume_at_ref.store(start + counting.written, Ordering::Relaxed);
                r
            })
            .await;
            pos = resume_at.load(Ordering::Relaxed);
            if let Err(e) = res {
                if e.permanent {
                    return Err(e.error);
                }
                return Err(MfsError::ReadFailed {
                    inode,
                    attempts: e.attempts,
                    last_error: e.error.to_string(),
                });
            }
        }
        sink.flush().await.map_err(MfsError::Sink)?;
        let copied = pos - offset;
        ClientStats::add(&self.stats.bytes_read, copied);
        Ok(copied)
    }

    /// Reads `[start, end)` (inside one chunk) once.
    #[allow(clippy::too_many_arguments)]
    async fn read_chunk_piece<W: AsyncWrite + Unpin>(
        &self,
        inode: u32,
        index: u32,
        start: u64,
        end: u64,
        sink: &mut CountingSink<'_, W>,
        replica: ReplicaChoice,
        attempt: u32,
    ) -> std::result::Result<(), AttemptError<MfsError>> {
        let transient_or_not = |e: MfsError| {
            if e.is_transient() {
                AttemptError::Transient(e)
            } else {
                AttemptError::Permanent(e)
            }
        };
        let loc = self
            .read_chunk(inode, index)
            .await
            .map_err(transient_or_not)?;
        let size = end - start;
        if loc.chunk_id == 0 {
            // A hole reads as zeros.
            let zeros = vec![0u8; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                sink.write_all(&zeros[..n])
                    .await
                    .map_err(|e| AttemptError::Permanent(MfsError::Sink(e)))?;
                left -= n as u64;
            }
            return Ok(());
        }
        let server = match replica {
            ReplicaChoice::Only(addr) => {
                if !loc.servers.iter().any(|s| s.addr == addr) {
                    return Err(AttemptError::Permanent(MfsError::InvalidArgument(format!(
                        "chunkserver {addr} holds no copy of chunk {:016X}",
                        loc.chunk_id
                    ))));
                }
                addr
            }
            ReplicaChoice::Any => {
                if loc.servers.is_empty() {
                    return Err(AttemptError::Transient(MfsError::status(
                        "read chunk",
                        Status::CHUNKLOST,
                    )));
                }
                // Rotate through the copies on retries.
                loc.servers[(attempt as usize - 1) % loc.servers.len()].addr
            }
        };
        let timeouts = &self.cfg.chunkservers;
        let (mut link, _) = self
            .pool
            .get(server, timeouts.connect)
            .await
            .map_err(AttemptError::Transient)?;
        let in_chunk = (start % CHUNK_SIZE) as u32;
        link.read_chunk_range(
            loc.chunk_id,
            loc.version,
            in_chunk,
            size as u32,
            timeouts,
            sink,
        )
        .await
        .map_err(|e| match e {
            MfsError::Sink(_) => AttemptError::Permanent(e),
            other => AttemptError::Transient(other),
        })?;
        Ok(())
    }

    /// Reads a whole file into memory (for small files and tests).
    pub async fn read_all(&self, inode: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_to(inode, 0, None, &mut out, ReplicaChoice::Any)
            .await?;
        Ok(out)
    }
}
