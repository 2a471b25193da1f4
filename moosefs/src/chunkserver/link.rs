//! A TCP link to one chunkserver: block reads with a CRC check per packet,
//! the per-replica CRC table used to verify what was written, and the pool
//! of idle links kept for reuse.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::codec::{Frame, FrameReader, Packet};
use crate::config::ChunkserverTimeouts;
use crate::decode;
use crate::error::{MfsError, Result};
use crate::proto::{msg, Status};

/// Largest packet we accept from a chunkserver (a block plus headers).
const MAX_CS_PAYLOAD: usize = 128 * 1024;

/// A chunkserver failure, with the server it happened on.
pub(super) fn cs_error(server: SocketAddrV4, detail: impl Into<String>) -> MfsError {
    MfsError::Chunkserver {
        server: SocketAddr::V4(server),
        detail: detail.into(),
    }
}

/// An open TCP link to one chunkserver.
pub struct CsLink {
    pub server: SocketAddrV4,
    pub(super) reader: FrameReader<OwnedReadHalf>,
    pub(super) writer: OwnedWriteHalf,
}

impl CsLink {
    pub async fn connect(server: SocketAddrV4, limit: Duration) -> Result<Self> {
        let stream = match timeout(limit, TcpStream::connect(server)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(cs_error(server, format!("connect failed: {e}"))),
            Err(_) => {
                return Err(cs_error(
                    server,
                    format!("connect timed out after {limit:?}"),
                ))
            }
        };
        stream
            .set_nodelay(true)
            .map_err(|e| cs_error(server, e.to_string()))?;
        let (rd, writer) = stream.into_split();
        Ok(CsLink {
            server,
            reader: FrameReader::new(rd, MAX_CS_PAYLOAD),
            writer,
        })
    }

    async fn send(&mut self, packet: &[u8], limit: Duration) -> Result<()> {
        send_bytes(&mut self.writer, packet, self.server, limit).await
    }

    /// Next frame that is not a NOP.
    async fn recv(&mut self, limit: Duration, what: &str) -> Result<Frame> {
        let deadline = Instant::now() + limit;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.reader.read_frame()).await {
                Err(_) => return Err(cs_error(self.server, format!("no {what} within {limit:?}"))),
                Ok(Err(e)) => return Err(cs_error(self.server, format!("read failed: {e}"))),
                Ok(Ok(None)) => {
                    return Err(cs_error(
                        self.server,
                        format!("connection closed while waiting for {what}"),
                    ))
                }
                Ok(Ok(Some(f))) => f,
            };
            if frame.kind != msg::ANTOAN_NOP {
                return Ok(frame);
            }
        }
    }

    /// Reads `size` bytes at chunk offset `offset` of a chunk replica into
    /// `sink`, checking every packet's CRC. Returns the bytes delivered.
    pub async fn read_chunk_range<W: AsyncWrite + Unpin>(
        &mut self,
        chunk_id: u64,
        version: u32,
        offset: u32,
        size: u32,
        timeouts: &ChunkserverTimeouts,
        sink: &mut W,
    ) -> Result<u64> {
        let packet = Packet::new(msg::CLTOCS_READ, 21)
            .u8(1)
            .u64(chunk_id)
            .u32(version)
            .u32(offset)
            .u32(size)
            .finish();
        self.send(&packet, timeouts.read).await?;
        let mut expected_pos = offset as u64;
        let end = offset as u64 + size as u64;
        loop {
            let frame = self.recv(timeouts.read, "read data").await?;
            match frame.kind {
                msg::CSTOCL_READ_DATA => {
                    let packet = decode::read_data(frame.payload)?;
                    let (id, block, crc) = (packet.chunk_id, packet.block, packet.crc);
                    let pos = packet.position();
                    let data = packet.data;
                    let len = data.len();
                    if id != chunk_id || pos != expected_pos || pos + len as u64 > end {
                        return Err(cs_error(
                            self.server,
                            format!(
                                "unexpected READ_DATA (chunk {id:016X}, position {pos}, {len} bytes); expected chunk {chunk_id:016X} position {expected_pos}"
                            ),
                        ));
                    }
                    if crc32fast::hash(&data) != crc {
                        return Err(cs_error(
                            self.server,
                            format!("CRC mismatch in block {block} of chunk {chunk_id:016X}"),
                        ));
                    }
                    sink.write_all(&data).await.map_err(MfsError::Sink)?;
                    expected_pos += len as u64;
                }
                msg::CSTOCL_READ_STATUS => {
                    let (_id, status) = decode::read_status(frame.payload)?;
                    if status != Status::OK {
                        return Err(cs_error(self.server, format!("read status {status}")));
                    }
                    if expected_pos != end {
                        return Err(cs_error(
                            self.server,
                            format!("read ended at chunk offset {expected_pos}, expected {end}"),
                        ));
                    }
                    return Ok(size as u64);
                }
                other => {
                    return Err(cs_error(
                        self.server,
                        format!("unexpected packet type {other} during a read"),
                    ))
                }
            }
        }
    }

    /// The replica's block count and CRC table (what `mfsfileinfo -c` digests).
    /// One question at a time: pipelining the two questions on one
    /// connection crashed all three 3.0.117 chunkservers here (general
    /// protection fault), so never send the second before the first answer.
    pub async fn crc_table(
        &mut self,
        chunk_id: u64,
        version: u32,
        limit: Duration,
    ) -> Result<ReplicaCrcTable> {
        let crcs = self.checksum_tab(chunk_id, version, limit).await?;
        let blocks = self.block_count(chunk_id, version, limit).await?;
        Ok(ReplicaCrcTable { blocks, crcs })
    }

    /// The replica's 1024 block CRCs (entries past its block count are not
    /// data): `ANTOCS_GET_CHUNK_CHECKSUM_TAB`.
    pub async fn checksum_tab(
        &mut self,
        chunk_id: u64,
        version: u32,
        limit: Duration,
    ) -> Result<Vec<u32>> {
        let question = ChunkQuestion {
            ask: msg::ANTOCS_GET_CHUNK_CHECKSUM_TAB,
            answer: msg::CSTOAN_CHUNK_CHECKSUM_TAB,
            name: "GET_CHUNK_CHECKSUM_TAB",
            what: "checksum table",
        };
        let payload = self
            .ask_about_chunk(question, chunk_id, version, limit)
            .await?;
        decode::checksum_tab(payload)?
            .map_err(|status| cs_error(self.server, format!("checksum table: {status}")))
    }

    /// The number of blocks in the replica's chunk file:
    /// `ANTOCS_GET_CHUNK_BLOCKS`.
    pub async fn block_count(
        &mut self,
        chunk_id: u64,
        version: u32,
        limit: Duration,
    ) -> Result<u16> {
        let question = ChunkQuestion {
            ask: msg::ANTOCS_GET_CHUNK_BLOCKS,
            answer: msg::CSTOAN_CHUNK_BLOCKS,
            name: "GET_CHUNK_BLOCKS",
            what: "block count",
        };
        let payload = self
            .ask_about_chunk(question, chunk_id, version, limit)
            .await?;
        decode::chunk_blocks(payload)?
            .map_err(|status| cs_error(self.server, format!("block count: {status}")))
    }

    /// Sends one `chunk_id:u64 version:u32` question and returns the payload
    /// of its answer, which must be of the expected type.
    async fn ask_about_chunk(
        &mut self,
        question: ChunkQuestion,
        chunk_id: u64,
        version: u32,
        limit: Duration,
    ) -> Result<Bytes> {
        let ask = Packet::new(question.ask, 12)
            .u64(chunk_id)
            .u32(version)
            .finish();
        self.send(&ask, limit).await?;
        let frame = self.recv(limit, question.what).await?;
        if frame.kind != question.answer {
            return Err(cs_error(
                self.server,
                format!("answer type {} to {}", frame.kind, question.name),
            ));
        }
        Ok(frame.payload)
    }
}

/// A question about one chunk replica: its packet type, the answer's type,
/// and names for errors.
struct ChunkQuestion {
    ask: u32,
    answer: u32,
    name: &'static str,
    what: &'static str,
}

/// Writes `bytes` within `limit`.
pub(super) async fn send_bytes(
    writer: &mut OwnedWriteHalf,
    bytes: &[u8],
    server: SocketAddrV4,
    limit: Duration,
) -> Result<()> {
    match timeout(limit, writer.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(cs_error(server, format!("send failed: {e}"))),
        Err(_) => Err(cs_error(server, format!("send blocked for {limit:?}"))),
    }
}

/// Idle chunkserver connections kept for reuse. A chunkserver closes a
/// connection that stays idle for about 5 s, so links older than
/// [`CsPool::MAX_IDLE`] are dropped instead of reused.
#[derive(Default)]
pub struct CsPool {
    idle: Mutex<std::collections::HashMap<SocketAddrV4, Vec<(CsLink, Instant)>>>,
}

impl CsPool {
    pub const MAX_IDLE: Duration = Duration::from_millis(1500);
    const PER_SERVER: usize = 16;

    /// An idle link to `server` if one is fresh enough (second value true),
    /// else a new connection.
    pub async fn get(&self, server: SocketAddrV4, connect: Duration) -> Result<(CsLink, bool)> {
        let reused = {
            let mut idle = self.idle.lock().expect("pool");
            let list = idle.entry(server).or_default();
            list.retain(|(_, since)| since.elapsed() < Self::MAX_IDLE);
            list.pop()
        };
        match reused {
            Some((link, _)) => Ok((link, true)),
            None => Ok((CsLink::connect(server, connect).await?, false)),
        }
    }

    /// Returns a link whose last exchange completed cleanly.
    pub fn put(&self, link: CsLink) {
        if link.reader.has_buffered() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool");
        let list = idle.entry(link.server).or_default();
        if list.len() < Self::PER_SERVER {
            list.push((link, Instant::now()));
        }
    }

    /// Runs `op` on a pooled link, once more on a fresh connection if a
    /// reused link failed (the server may have closed it meanwhile).
    pub async fn with_link<T, F>(
        &self,
        server: SocketAddrV4,
        connect: Duration,
        mut op: F,
    ) -> Result<T>
    where
        F: for<'a> FnMut(&'a mut CsLink) -> futures::future::BoxFuture<'a, Result<T>>,
    {
        let (mut link, reused) = self.get(server, connect).await?;
        match op(&mut link).await {
            Ok(v) => {
                self.put(link);
                Ok(v)
            }
            Err(_) if reused => {
                let mut fresh = CsLink::connect(server, connect).await?;
                let v = op(&mut fresh).await?;
                self.put(fresh);
                Ok(v)
            }
            Err(e) => Err(e),
        }
    }
}

/// One replica's stored block CRCs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaCrcTable {
    /// Blocks in the chunk file.
    pub blocks: u16,
    /// 1024 CRCs; unwritten blocks read as the all-zero block's CRC.
    pub crcs: Vec<u32>,
}

impl ReplicaCrcTable {
    /// The CRCs of the blocks in the chunk file; `None` if the block count
    /// exceeds the table (the decoders refuse such answers, but the fields
    /// are public).
    pub fn data_crcs(&self) -> Option<&[u32]> {
        self.crcs.get(..self.blocks as usize)
    }

    /// Whether two replicas hold the same blocks with the same CRCs. Entries
    /// past the block count are not data (chunkservers leave them unset). A
    /// table whose block count exceeds its CRCs matches nothing.
    pub fn same_data(&self, other: &ReplicaCrcTable) -> bool {
        match (self.data_crcs(), other.data_crcs()) {
            (Some(a), Some(b)) => self.blocks == other.blocks && a == b,
            _ => false,
        }
    }

    /// The digest `mfsfileinfo -c` prints: MD5 of the first `blocks` CRCs
    /// (of every CRC there is if the block count exceeds the table).
    pub fn digest(&self) -> String {
        use md5::{Digest, Md5};
        let mut h = Md5::new();
        for crc in self.data_crcs().unwrap_or(&self.crcs) {
            h.update(crc.to_be_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02X}")).collect()
    }
}
