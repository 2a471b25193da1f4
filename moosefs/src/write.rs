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
use std::time::Duration;

use bytes::BytesMut;
use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::chunkserver::{AckedBlock, RawBlock, WriteSession, WriteTarget, WRITE_DATA_HEADER};
use super::client::{ClientStats, MfsClient};
use super::error::{MfsError, Result};
use super::proto::{BLOCK_SIZE, CHUNK_SIZE, MAX_CHUNK_INDEX};
use crate::retry::{retry, AttemptError, RetryPolicy};

/// How a write behaves.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Compare every replica's CRC table with what was sent (costs ~4 KiB per replica per chunk).
    pub verify: bool,
    /// Copies a write chain must have; `None` = the file's goal.
    pub required_copies: Option<u8>,
    /// Attempts of one chunk write (fresh lock and chain each time).
    pub chunk_retry: RetryPolicy,
    /// Chunks of one stream written at the same time.
    pub parallel_chunks: usize,
    /// Compute the MD5 of the stream (CRC-32C is always computed).
    pub compute_md5: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            verify: true,
            required_copies: None,
            chunk_retry: RetryPolicy::new(
                Duration::from_millis(100),
                Duration::from_secs(5),
                10,
                Duration::from_secs(120),
            ),
            parallel_chunks: 2,
            compute_md5: true,
        }
    }
}

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

/// Where a chunk write landed.
struct WrittenChunk {
    chunk_id: u64,
    version: u32,
    servers: Vec<SocketAddrV4>,
}

/// Facts about the file a chunk task needs.
#[derive(Clone, Copy)]
struct ChunkJob {
    inode: u32,
    index: u32,
    required_copies: usize,
    /// File length before this write started: blocks wholly beyond it held zeros.
    old_length: u64,
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
        file: &super::client::CreatedFile,
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
        let required = match opts.required_copies {
            Some(n) => n,
            None => self.get_goal(inode).await?,
        } as usize;

        let slots = Arc::new(Semaphore::new(opts.parallel_chunks.max(1)));
        let mut chunk_tasks: JoinSet<Result<()>> = JoinSet::new();
        let mut current: Option<(u32, mpsc::Sender<RawBlock>)> = None;
        let mut md5 = opts.compute_md5.then(Md5::new);
        let mut crc32c = 0u32;
        let mut pos = offset;
        let mut chunks = 0u32;
        let mut failure: Option<MfsError> = None;

        loop {
            // A chunk task that failed ends the whole write early.
            while let Some(done) = chunk_tasks.try_join_next() {
                if let Err(e) = flatten(done) {
                    failure.get_or_insert(e);
                }
            }
            if failure.is_some() {
                break;
            }
            let index = pos / CHUNK_SIZE;
            if index > MAX_CHUNK_INDEX {
                failure = Some(MfsError::InvalidArgument(format!(
                    "write beyond the largest MooseFS file size (offset {pos})"
                )));
                break;
            }
            let index = index as u32;
            let in_chunk = (pos % CHUNK_SIZE) as u32;
            let block = (in_chunk / BLOCK_SIZE) as u16;
            let block_offset = (in_chunk % BLOCK_SIZE) as u16;
            let want = (BLOCK_SIZE - block_offset as u32) as usize;

            let mut buf = BytesMut::with_capacity(WRITE_DATA_HEADER + want);
            buf.resize(WRITE_DATA_HEADER, 0);
            let got = match fill(&mut reader, &mut buf, want).await {
                Ok(n) => n,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if got == 0 {
                break;
            }
            let data = &buf[WRITE_DATA_HEADER..];
            let crc = crc32fast::hash(data);
            crc32c = crc32c::crc32c_append(crc32c, data);
            if let Some(h) = md5.as_mut() {
                h.update(data);
            }

            if current.as_ref().map(|(i, _)| *i) != Some(index) {
                drop(current.take()); // closes the previous chunk's stream
                let permit = slots.clone().acquire_owned().await.expect("semaphore open");
                let (tx, rx) = mpsc::channel(16);
                let job = ChunkJob {
                    inode,
                    index,
                    required_copies: required,
                    old_length,
                };
                let client = self.clone();
                let opts = opts.clone();
                chunk_tasks.spawn(async move {
                    let res = client.write_chunk_stream(job, rx, &opts).await;
                    drop(permit);
                    res
                });
                current = Some((index, tx));
                chunks += 1;
            }
            let tx = &current.as_ref().expect("current chunk").1;
            let raw = RawBlock {
                buf,
                block,
                offset: block_offset,
                crc,
            };
            if tx.send(raw).await.is_err() {
                // The chunk task ended early: its error is collected below.
                break;
            }
            pos += got as u64;
            if got < want {
                break;
            }
        }
        drop(current);
        while let Some(done) = chunk_tasks.join_next().await {
            if let Err(e) = flatten(done) {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let length = pos - offset;
        ClientStats::add(&self.stats.bytes_written, length);
        Ok(WriteOutcome {
            length,
            md5: md5.map(|h| h.finalize().into()),
            crc32c,
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
                None,
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

    /// One question to every server of the chain that acknowledged a chunk
    /// (in parallel, on pooled links): their answers, or why there are not
    /// enough of them (an unreadable replica, fewer than `required`).
    async fn ask_replicas<T, F>(
        &self,
        written: &WrittenChunk,
        required: usize,
        ask: F,
    ) -> std::result::Result<Vec<(SocketAddrV4, T)>, String>
    where
        F: for<'a> Fn(
                &'a mut super::chunkserver::CsLink,
            ) -> futures::future::BoxFuture<'a, Result<T>>
            + Copy,
    {
        let connect = self.cfg.chunkservers.connect;
        let answers = futures::future::join_all(
            written
                .servers
                .iter()
                .map(|server| self.pool.with_link(*server, connect, ask)),
        )
        .await;
        let mut tables = Vec::with_capacity(answers.len());
        for (server, answer) in written.servers.iter().zip(answers) {
            match answer {
                Ok(t) => tables.push((*server, t)),
                Err(e) => return Err(format!("replica on {server} unreadable: {e}")),
            }
        }
        if tables.len() < required {
            return Err(format!("{} copies, {required} required", tables.len()));
        }
        Ok(tables)
    }

    /// Checks every replica of a chunk just written against the CRCs sent.
    async fn verify_chunk(
        &self,
        job: ChunkJob,
        written: &WrittenChunk,
        session: &WriteSession,
    ) -> Result<()> {
        let chunk_id = written.chunk_id;
        let mismatch = |detail: String| {
            ClientStats::add(&self.stats.replica_mismatches, 1);
            self.observer.replica_mismatch();
            MfsError::ReplicaMismatch {
                inode: job.inode,
                chunk_index: job.index,
                chunk_id,
                detail,
            }
        };
        let (version, limit) = (written.version, self.cfg.chunkservers.read);
        if job.old_length <= job.index as u64 * CHUNK_SIZE {
            // The chunk held no data before this write (every chunk of a new
            // file): each replica's CRC of every block written must be the
            // CRC sent. One question per replica, not two.
            let tables = self
                .ask_replicas(written, job.required_copies, |link| {
                    Box::pin(link.checksum_tab(chunk_id, version, limit))
                })
                .await
                .map_err(mismatch)?;
            let acked = session.acked.lock().expect("acked");
            fresh_replicas_hold(&tables, &acked, job).map_err(mismatch)?;
            ClientStats::add(&self.stats.chunks_verified, 1);
            return Ok(());
        }
        // A chunk with earlier data: the replicas must agree on every block,
        // and hold what was sent where it was written.
        let tables = self
            .ask_replicas(written, job.required_copies, |link| {
                Box::pin(link.crc_table(chunk_id, version, limit))
            })
            .await
            .map_err(mismatch)?;
        let tables: Vec<(SocketAddrV4, &super::chunkserver::ReplicaCrcTable)> =
            tables.iter().map(|(s, t)| (*s, t)).collect();
        let Some(&(first_server, first)) = tables.first() else {
            return Err(mismatch("no replica to compare".into()));
        };
        for (server, table) in &tables[1..] {
            if !table.same_data(first) {
                return Err(mismatch(format!(
                    "replica {first_server} has {} blocks (digest {}), replica {server} has {} blocks (digest {})",
                    first.blocks,
                    first.digest(),
                    table.blocks,
                    table.digest()
                )));
            }
        }
        let acked = session.acked.lock().expect("acked");
        for b in acked.iter() {
            let Some(expected) = expected_block_crc(b, job) else {
                continue;
            };
            if b.block >= first.blocks {
                return Err(mismatch(format!(
                    "block {} was written but the replicas hold only {} blocks",
                    b.block, first.blocks
                )));
            }
            let stored = first.crcs[b.block as usize];
            if stored != expected {
                return Err(mismatch(format!(
                    "block {}: replicas store CRC {stored:08x}, the client sent {expected:08x}",
                    b.block
                )));
            }
        }
        ClientStats::add(&self.stats.chunks_verified, 1);
        Ok(())
    }
}

/// Chunk-relative end of the highest block written.
fn end_offset(blocks: &[AckedBlock]) -> u64 {
    blocks.iter().map(AckedBlock::end).max().unwrap_or(0)
}

/// The CRC a replica must store for a block we wrote, when it is knowable: a
/// full block's CRC is what we sent; a partial block wholly beyond the file's
/// old end holds zeros around our data.
/// Whether every replica's CRC table (`(server, 1024 CRCs)`) of a chunk that
/// held no data before holds, for every block written, the CRC sent.
fn fresh_replicas_hold(
    tables: &[(SocketAddrV4, Vec<u32>)],
    acked: &[AckedBlock],
    job: ChunkJob,
) -> std::result::Result<(), String> {
    for (server, crcs) in tables {
        for b in acked {
            let Some(expected) = expected_block_crc(b, job) else {
                continue;
            };
            let stored = crcs.get(b.block as usize).copied();
            if stored != Some(expected) {
                return Err(format!(
                    "replica {server} block {}: stores CRC {}, the client sent {expected:08x}",
                    b.block,
                    stored.map_or("nothing".into(), |c| format!("{c:08x}"))
                ));
            }
        }
    }
    Ok(())
}

fn expected_block_crc(b: &AckedBlock, job: ChunkJob) -> Option<u32> {
    if b.size == BLOCK_SIZE {
        return Some(b.crc);
    }
    let block_start = job.index as u64 * CHUNK_SIZE + b.block as u64 * BLOCK_SIZE as u64;
    (block_start >= job.old_length).then_some(b.zero_padded_crc)
}

fn flatten(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match done {
        Ok(r) => r,
        Err(e) => Err(MfsError::InvalidArgument(format!(
            "chunk writer task failed: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: u16, crc: u32) -> AckedBlock {
        AckedBlock {
            block: n,
            offset: 0,
            size: BLOCK_SIZE,
            crc,
            zero_padded_crc: crc,
        }
    }

    #[test]
    fn fresh_chunk_check_finds_a_replica_with_other_data() {
        let job = ChunkJob {
            inode: 7,
            index: 0,
            required_copies: 3,
            old_length: 0,
        };
        let acked = [block(0, 0xAAAA_0000), block(1, 0xBBBB_1111)];
        let mut crcs = vec![0u32; 1024];
        crcs[0] = 0xAAAA_0000;
        crcs[1] = 0xBBBB_1111;
        let server = |n: u8| SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, n), 9422);
        let good: Vec<_> = (1..=3).map(|n| (server(n), crcs.clone())).collect();
        assert_eq!(fresh_replicas_hold(&good, &acked, job), Ok(()));

        let mut bad = good.clone();
        bad[2].1[1] = 0xDEAD_BEEF;
        let why = fresh_replicas_hold(&bad, &acked, job).unwrap_err();
        assert!(why.contains("10.0.0.3:9422 block 1"), "{why}");
        assert!(
            why.contains("deadbeef") && why.contains("bbbb1111"),
            "{why}"
        );

        let short: Vec<_> = vec![(server(1), vec![0xAAAA_0000])];
        let why = fresh_replicas_hold(&short, &acked, job).unwrap_err();
        assert!(why.contains("stores CRC nothing"), "{why}");
    }
}
