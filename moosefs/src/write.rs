//! Streaming writes: an `AsyncRead` is cut into 64 KiB-aligned blocks (CRC-32
//! each, plus MD5 and CRC-32C of the whole stream) and handed to one task per
//! chunk. Each chunk task takes the write lock, runs chain sessions until
//! every block is acknowledged by every replica (retrying with a fresh
//! location when a chunkserver or the lock fails), ends the lock with the new
//! absolute file length, and then verifies each replica's CRC table against
//! what was sent. Memory stays bounded: at most `window` unacknowledged blocks
//! plus a small queue per chunk in flight.

use std::net::SocketAddrV4;
use std::sync::Arc;

use bytes::BytesMut;
use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::chunkserver::{AckedBlock, RawBlock, WriteSession, WriteTarget, WRITE_DATA_HEADER};
use crate::client::{CreatedFile, MfsClient};
use crate::config::WriteOptions;
use crate::error::{MfsError, Result};
use crate::observe::ClientStats;
use crate::proto::{BLOCK_SIZE, CHUNK_SIZE, MAX_CHUNK_INDEX};
use crate::retry::{retry, AttemptError};
use crate::verify::{ChunkJob, WrittenChunk};

/// What a finished write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Bytes written.
    pub length: u64,
    /// MD5 of the bytes written (if computed).
    pub md5: Option<[u8; 16]>,
    /// CRC-32C (Castagnoli) of the bytes written.
    pub crc32c: u32,
    /// Chunk write sessions that succeeded.
    pub chunks: u32,
}

impl WriteOutcome {
    pub fn md5_hex(&self) -> Option<String> {
        self.md5
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Reads up to `want` bytes into `buf`, stopping early only at end of stream.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    want: usize,
) -> Result<usize> {
    let target = buf.len() + want;
    let start = buf.len();
    while buf.len() < target {
        let mut limited = (&mut *reader).take((target - buf.len()) as u64);
        if limited.read_buf(buf).await.map_err(MfsError::Source)? == 0 {
            break;
        }
    }
    Ok(buf.len() - start)
}

impl MfsClient {
    /// Writes everything `reader` yields into `inode` at `offset`.
    ///
    /// Returns only when every byte is acknowledged by every replica of the
    /// write chain, the master has recorded the new length, and (if
    /// `opts.verify`) every replica's CRCs match what was sent. Any failure
    /// that outlasts the retries is an error; a short or partial write is
    /// never reported as success.
    pub async fn write_stream<R: AsyncRead + Unpin>(
        &self,
        inode: u32,
        offset: u64,
        reader: R,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome> {
        let attr = self.getattr(inode).await?;
        if !attr.is_file() {
            return Err(if attr.is_dir() {
                MfsError::IsDirectory(format!("inode {inode}"))
            } else {
                MfsError::NotAFile(format!("inode {inode}"))
            });
        }
        self.write_at_known_length(inode, attr.length, offset, reader, opts)
            .await
    }

    /// Writes a file this session just created (no attribute round trip).
    pub async fn write_new_file<R: AsyncRead + Unpin>(
        &self,
        file: &CreatedFile,
        reader: R,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome> {
        self.write_at_known_length(file.inode, file.attr.length, 0, reader, opts)
            .await
    }

    async fn write_at_known_length<R: AsyncRead + Unpin>(
        &self,
        inode: u32,
        old_length: u64,
        offset: u64,
        mut reader: R,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome> {
        let required_copies = match opts.required_copies {
            Some(n) => n,
            None => self.get_goal(inode).await?,
        } as usize;
        let job = ChunkJob {
            inode,
            index: 0,
            required_copies,
            old_length,
        };
        let mut writers = ChunkWriters::new(self, job, opts);
        let mut digest = StreamDigest::new(opts.compute_md5);
        let mut pos = offset;
        let mut failure: Option<MfsError> = None;
        loop {
            // A chunk task that failed ends the whole write early.
            if let Some(e) = writers.first_failure() {
                failure = Some(e);
                break;
            }
            let block = match read_block(&mut reader, pos).await {
                Ok(Some(block)) => block,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            digest.update(&block.raw.buf[WRITE_DATA_HEADER..]);
            let (got, want) = (block.got, block.want);
            if !writers.send(block.index, block.raw).await {
                // The chunk task ended early: its error is collected below.
                break;
            }
            pos += got as u64;
            if got < want {
                break;
            }
        }
        let chunks = writers.finish(failure).await?;
        let length = pos - offset;
        ClientStats::add(&self.stats.bytes_written, length);
        Ok(WriteOutcome {
            length,
            md5: digest.md5.map(|h| h.finalize().into()),
            crc32c: digest.crc32c,
            chunks,
        })
    }

    /// Convenience: writes a byte slice at `offset`.
    pub async fn write_bytes(&self, inode: u32, offset: u64, data: &[u8]) -> Result<WriteOutcome> {
        self.write_stream(inode, offset, data, &self.cfg.write)
            .await
    }

    /// Writes the blocks of one chunk arriving on `rx`.
    async fn write_chunk_stream(
        &self,
        job: ChunkJob,
        rx: mpsc::Receiver<RawBlock>,
        opts: &WriteOptions,
    ) -> Result<()> {
        let session = WriteSession::new(rx);
        let session = &session;
        let stats = &self.stats;
        let result = retry(&opts.chunk_retry, move |attempt| async move {
            if attempt > 1 {
                ClientStats::add(&stats.chunk_write_retries, 1);
                self.observer.chunk_write_retry();
            }
            self.write_chunk_attempt(job, session).await
        })
        .await;
        let written = match result {
            Ok(w) => w,
            Err(e) if e.permanent => return Err(e.error),
            Err(e) => {
                return Err(MfsError::WriteFailed {
                    inode: job.inode,
                    chunk_index: job.index,
                    attempts: e.attempts,
                    last_error: e.error.to_string(),
                })
            }
        };
        ClientStats::add(&self.stats.chunk_writes, 1);
        if opts.verify {
            self.verify_chunk(job, &written, session).await?;
        }
        Ok(())
    }

    /// One attempt: lock, chain session, end. Returns the chunk id written.
    async fn write_chunk_attempt(
        &self,
        job: ChunkJob,
        session: &WriteSession,
    ) -> std::result::Result<WrittenChunk, AttemptError<MfsError>> {
        let classify = |e: MfsError| {
            if e.is_transient() {
                AttemptError::Transient(e)
            } else {
                AttemptError::Permanent(e)
            }
        };
        let loc = self
            .write_chunk(job.inode, job.index, 0)
            .await
            .map_err(classify)?;
        if loc.servers.len() < job.required_copies {
            let _ = self
                .write_chunk_end(loc.chunk_id, job.inode, job.index, loc.file_length)
                .await;
            return Err(AttemptError::Transient(MfsError::Chunkserver {
                server: std::net::SocketAddr::V4(
                    loc.servers
                        .first()
                        .map(|s| s.addr)
                        .unwrap_or(SocketAddrV4::new(0.into(), 0)),
                ),
                detail: format!(
                    "master offered a chain of {} chunkservers, {} copies required",
                    loc.servers.len(),
                    job.required_copies
                ),
            }));
        }
        let chain: Vec<SocketAddrV4> = loc.servers.iter().map(|s| s.addr).collect();
        let target = WriteTarget {
            chunk_id: loc.chunk_id,
            version: loc.version,
            chain: &chain,
        };
        if let Err(e) = session
            .run(
                &target,
                &self.cfg.chunkservers,
                self.observer.as_ref(),
                &self.pool,
            )
            .await
        {
            tracing::warn!(inode = job.inode, chunk_index = job.index, chunk_id = loc.chunk_id,
                error = %e, "chunk write session failed; releasing the lock and retrying");
            // Release the lock without growing the file; the data is re-sent.
            let _ = self
                .write_chunk_end(loc.chunk_id, job.inode, job.index, loc.file_length)
                .await;
            return Err(AttemptError::Transient(e));
        }
        let end = job.index as u64 * CHUNK_SIZE + end_offset(&session.acked.lock().expect("acked"));
        let new_length = end.max(loc.file_length);
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .write_chunk_end(loc.chunk_id, job.inode, job.index, new_length)
                .await
            {
                Ok(()) => {
                    return Ok(WrittenChunk {
                        chunk_id: loc.chunk_id,
                        version: loc.version,
                        servers: chain,
                    })
                }
                Err(MfsError::Disconnected) if tries < 4 => continue,
                Err(e) => return Err(classify(e)),
            }
        }
    }
}

/// One block read from the source, for chunk `index`.
struct SourceBlock {
    index: u32,
    raw: RawBlock,
    /// Bytes read; fewer than `want` only at the end of the stream.
    got: usize,
    /// Bytes up to the end of the 64 KiB block.
    want: usize,
}

/// Reads the block that starts at stream position `pos` (up to the next
/// 64 KiB boundary), with its CRC-32; `None` at the end of the stream.
async fn read_block<R: AsyncRead + Unpin>(reader: &mut R, pos: u64) -> Result<Option<SourceBlock>> {
    let index = pos / CHUNK_SIZE;
    if index > MAX_CHUNK_INDEX {
        return Err(MfsError::InvalidArgument(format!(
            "write beyond the largest MooseFS file size (offset {pos})"
        )));
    }
    let in_chunk = (pos % CHUNK_SIZE) as u32;
    let block = (in_chunk / BLOCK_SIZE) as u16;
    let offset = (in_chunk % BLOCK_SIZE) as u16;
    let want = (BLOCK_SIZE - offset as u32) as usize;

    let mut buf = BytesMut::with_capacity(WRITE_DATA_HEADER + want);
    buf.resize(WRITE_DATA_HEADER, 0);
    let got = fill(reader, &mut buf, want).await?;
    if got == 0 {
        return Ok(None);
    }
    let crc = crc32fast::hash(&buf[WRITE_DATA_HEADER..]);
    Ok(Some(SourceBlock {
        index: index as u32,
        raw: RawBlock {
            buf,
            block,
            offset,
            crc,
        },
        got,
        want,
    }))
}

/// MD5 (if asked for) and CRC-32C of the whole stream.
struct StreamDigest {
    md5: Option<Md5>,
    crc32c: u32,
}

impl StreamDigest {
    fn new(compute_md5: bool) -> Self {
        StreamDigest {
            md5: compute_md5.then(Md5::new),
            crc32c: 0,
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.crc32c = crc32c::crc32c_append(self.crc32c, data);
        if let Some(h) = self.md5.as_mut() {
            h.update(data);
        }
    }
}

/// The chunk tasks of one stream: one task per chunk, at most
/// `parallel_chunks` of them running, each fed its blocks through a small
/// queue.
struct ChunkWriters<'a> {
    client: &'a MfsClient,
    /// The facts every chunk shares (`index` is set per chunk).
    job: ChunkJob,
    opts: &'a WriteOptions,
    slots: Arc<Semaphore>,
    tasks: JoinSet<Result<()>>,
    /// The chunk being fed, and its queue.
    current: Option<(u32, mpsc::Sender<RawBlock>)>,
    started: u32,
}

impl<'a> ChunkWriters<'a> {
    fn new(client: &'a MfsClient, job: ChunkJob, opts: &'a WriteOptions) -> Self {
        ChunkWriters {
            client,
            job,
            opts,
            slots: Arc::new(Semaphore::new(opts.parallel_chunks.max(1))),
            tasks: JoinSet::new(),
            current: None,
            started: 0,
        }
    }

    /// The first error among the chunk tasks that already ended.
    fn first_failure(&mut self) -> Option<MfsError> {
        let mut failure = None;
        while let Some(done) = self.tasks.try_join_next() {
            if let Err(e) = flatten(done) {
                failure.get_or_insert(e);
            }
        }
        failure
    }

    /// Hands a block to chunk `index`'s task, starting that task (once a
    /// slot is free) when the stream enters a new chunk. False if the task
    /// already ended.
    async fn send(&mut self, index: u32, raw: RawBlock) -> bool {
        if self.current.as_ref().map(|(i, _)| *i) != Some(index) {
            drop(self.current.take()); // closes the previous chunk's stream
            let permit = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let (tx, rx) = mpsc::channel(16);
            let job = ChunkJob { index, ..self.job };
            let client = self.client.clone();
            let opts = self.opts.clone();
            self.tasks.spawn(async move {
                let res = client.write_chunk_stream(job, rx, &opts).await;
                drop(permit);
                res
            });
            self.current = Some((index, tx));
            self.started += 1;
        }
        let tx = &self.current.as_ref().expect("current chunk").1;
        tx.send(raw).await.is_ok()
    }

    /// Ends the last chunk's stream and waits for every task. Returns the
    /// chunks written, or `failure` if given, else the first task error.
    async fn finish(mut self, mut failure: Option<MfsError>) -> Result<u32> {
        drop(self.current.take());
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = flatten(done) {
                failure.get_or_insert(e);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(self.started),
        }
    }
}

/// Chunk-relative end of the highest block written.
fn end_offset(blocks: &[AckedBlock]) -> u64 {
    blocks.iter().map(AckedBlock::end).max().unwrap_or(0)
}

fn flatten(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match done {
        Ok(r) => r,
        Err(e) => Err(MfsError::InvalidArgument(format!(
            "chunk writer task failed: {e}"
        ))),
    }
}
