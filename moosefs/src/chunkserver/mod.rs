//! The chunkserver link: one write session along a replica chain
//! (`CLTOCS_WRITE` → pipelined `WRITE_DATA` → every status, including the
//! chain set-up status with write id 0 → `WRITE_FINISH`), block reads with CRC
//! checks, and the per-replica CRC table used to verify what was written.
//!
//! The rule that makes replicas identical lives in [`WriteSession::run`]:
//! `WRITE_FINISH` is sent only after the writeid-0 status and one OK status
//! per data packet, matched in order; anything else abandons the connection
//! without `WRITE_FINISH`.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout, Instant};

use super::codec::{Frame, FrameReader, Packet};
use super::decode;
use super::error::{MfsError, Result};
use super::proto::{msg, Status, BLOCK_SIZE};

/// Largest packet we accept from a chunkserver (a block plus headers).
const MAX_CS_PAYLOAD: usize = 128 * 1024;
/// Bytes before the data in a `CLTOCS_WRITE_DATA` packet: frame header +
/// `chunkid:u64 writeid:u32 blocknum:u16 offset:u16 size:u32 crc:u32`.
pub const WRITE_DATA_HEADER: usize = 8 + 24;

/// Timing of chunkserver links.
#[derive(Debug, Clone)]
pub struct ChunkserverTimeouts {
    pub connect: Duration,
    /// Longest wait for the next expected status while data is unacknowledged.
    pub status: Duration,
    /// Send a NOP when the link was idle this long (the chain gives up after 5 s).
    pub nop_every: Duration,
    /// Longest wait for one read packet or one small answer.
    pub read: Duration,
    /// Unacknowledged `WRITE_DATA` packets allowed in flight.
    pub window: usize,
}

impl Default for ChunkserverTimeouts {
    fn default() -> Self {
        ChunkserverTimeouts {
            connect: Duration::from_secs(3),
            status: Duration::from_secs(20),
            nop_every: Duration::from_secs(1),
            read: Duration::from_secs(20),
            window: 64,
        }
    }
}

fn cs_error(server: SocketAddrV4, detail: impl Into<String>) -> MfsError {
    MfsError::Chunkserver {
        server: SocketAddr::V4(server),
        detail: detail.into(),
    }
}

/// An open TCP link to one chunkserver.
pub struct CsLink {
    pub server: SocketAddrV4,
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
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
        let ask = Packet::new(msg::ANTOCS_GET_CHUNK_CHECKSUM_TAB, 12)
            .u64(chunk_id)
            .u32(version)
            .finish();
        self.send(&ask, limit).await?;
        let frame = self.recv(limit, "checksum table").await?;
        if frame.kind != msg::CSTOAN_CHUNK_CHECKSUM_TAB {
            return Err(cs_error(
                self.server,
                format!("answer type {} to GET_CHUNK_CHECKSUM_TAB", frame.kind),
            ));
        }
        decode::checksum_tab(frame.payload)?
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
        let ask = Packet::new(msg::ANTOCS_GET_CHUNK_BLOCKS, 12)
            .u64(chunk_id)
            .u32(version)
            .finish();
        self.send(&ask, limit).await?;
        let frame = self.recv(limit, "block count").await?;
        if frame.kind != msg::CSTOAN_CHUNK_BLOCKS {
            return Err(cs_error(
                self.server,
                format!("answer type {} to GET_CHUNK_BLOCKS", frame.kind),
            ));
        }
        decode::chunk_blocks(frame.payload)?
            .map_err(|status| cs_error(self.server, format!("block count: {status}")))
    }
}

async fn send_bytes(
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

/// One data packet of a chunk write, kept until the chain acknowledged it.
#[derive(Clone)]
pub struct PendingBlock {
    pub write_id: u32,
    /// Whole `CLTOCS_WRITE_DATA` packet, header included.
    pub packet: Bytes,
    pub block: u16,
    pub offset: u16,
    pub size: u32,
}

impl PendingBlock {
    /// Builds a packet around `buf`, which holds [`WRITE_DATA_HEADER`] bytes
    /// of room followed by the data.
    pub fn seal(
        mut buf: BytesMut,
        chunk_id: u64,
        write_id: u32,
        block: u16,
        offset: u16,
        crc: u32,
    ) -> Self {
        let size = (buf.len() - WRITE_DATA_HEADER) as u32;
        let mut h = &mut buf[..WRITE_DATA_HEADER];
        h.put_u32(msg::CLTOCS_WRITE_DATA);
        h.put_u32(24 + size);
        h.put_u64(chunk_id);
        h.put_u32(write_id);
        h.put_u16(block);
        h.put_u16(offset);
        h.put_u32(size);
        h.put_u32(crc);
        PendingBlock {
            write_id,
            packet: buf.freeze(),
            block,
            offset,
            size,
        }
    }

    /// The same block addressed to another chunk id (after copy-on-write).
    pub fn readdress(&self, chunk_id: u64) -> Self {
        let mut buf = BytesMut::from(&self.packet[..]);
        buf[8..16].copy_from_slice(&chunk_id.to_be_bytes());
        PendingBlock {
            packet: buf.freeze(),
            ..self.clone()
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.packet[WRITE_DATA_HEADER..]
    }

    /// CRC-32 of the data, as sent.
    pub fn crc(&self) -> u32 {
        u32::from_be_bytes(self.packet[28..32].try_into().expect("4 bytes"))
    }
}

/// A block the whole chain acknowledged: where it went and its CRCs, kept
/// for verification after the data buffer is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckedBlock {
    pub block: u16,
    pub offset: u16,
    pub size: u32,
    /// CRC-32 of the data sent.
    pub crc: u32,
    /// CRC-32 of the whole 64 KiB block if everything around the data is zeros.
    pub zero_padded_crc: u32,
}

impl AckedBlock {
    fn of(b: &PendingBlock) -> Self {
        let crc = b.crc();
        let zero_padded_crc = if b.size == BLOCK_SIZE {
            crc
        } else {
            static ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];
            let mut h = crc32fast::Hasher::new();
            h.update(&ZEROS[..b.offset as usize]);
            h.update(b.data());
            h.update(&ZEROS[..(BLOCK_SIZE - b.offset as u32 - b.size) as usize]);
            h.finalize()
        };
        AckedBlock {
            block: b.block,
            offset: b.offset,
            size: b.size,
            crc,
            zero_padded_crc,
        }
    }

    /// Chunk-relative end of the data.
    pub fn end(&self) -> u64 {
        self.block as u64 * BLOCK_SIZE as u64 + self.offset as u64 + self.size as u64
    }
}

/// Where one chunk write session goes.
pub struct WriteTarget<'a> {
    pub chunk_id: u64,
    pub version: u32,
    /// Chain in the master's order: element 0 is the head we connect to.
    pub chain: &'a [SocketAddrV4],
}

/// State carried across attempts of one chunk write: blocks sent but not yet
/// acknowledged by the whole chain, and the source of new blocks.
pub struct WriteSession {
    /// Sent (or to be re-sent) blocks in order, not yet acknowledged.
    pub unacked: Mutex<VecDeque<PendingBlock>>,
    /// What the whole chain acknowledged (the data itself is released).
    pub acked: Mutex<Vec<AckedBlock>>,
    source: tokio::sync::Mutex<mpsc::Receiver<RawBlock>>,
    source_done: AtomicBool,
    next_write_id: std::sync::atomic::AtomicU32,
}

/// A block read from the source, not yet addressed to a chunk: a buffer with
/// [`WRITE_DATA_HEADER`] bytes of room followed by the data.
pub struct RawBlock {
    pub buf: BytesMut,
    pub block: u16,
    pub offset: u16,
    pub crc: u32,
}

/// Test hook: what the session observed, in order (used by the fake-chunkserver test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    SentData(u32),
    GotStatus(u32),
    SentFinish,
}

impl WriteSession {
    pub fn new(source: mpsc::Receiver<RawBlock>) -> Self {
        WriteSession {
            unacked: Mutex::new(VecDeque::new()),
            acked: Mutex::new(Vec::new()),
            source: tokio::sync::Mutex::new(source),
            source_done: AtomicBool::new(false),
            next_write_id: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// Whether every block of the source was acknowledged.
    pub fn is_complete(&self) -> bool {
        self.source_done.load(Ordering::Acquire) && self.unacked.lock().expect("unacked").is_empty()
    }

    /// Runs one chain session: re-sends unacknowledged blocks, streams new
    /// ones, and returns once every status (writeid 0 and one per block) is
    /// OK and `WRITE_FINISH` went out. On error nothing is finished and the
    /// unacknowledged blocks stay queued for the next attempt.
    pub async fn run(
        &self,
        target: &WriteTarget<'_>,
        timeouts: &ChunkserverTimeouts,
        events: Option<&Mutex<Vec<SessionEvent>>>,
        observer: &dyn super::observe::Observer,
        pool: &CsPool,
    ) -> Result<()> {
        observer.chain_length(target.chain.len());
        let result = self
            .run_chain(target, timeouts, events, observer, pool)
            .await;
        if let Err(MfsError::Chunkserver {
            server: SocketAddr::V4(server),
            ..
        }) = &result
        {
            observer.chunkserver_error(*server);
        }
        result
    }

    async fn run_chain(
        &self,
        target: &WriteTarget<'_>,
        timeouts: &ChunkserverTimeouts,
        events: Option<&Mutex<Vec<SessionEvent>>>,
        observer: &dyn super::observe::Observer,
        pool: &CsPool,
    ) -> Result<()> {
        let head = *target
            .chain
            .first()
            .ok_or_else(|| MfsError::InvalidArgument("empty write chain".into()))?;
        let (link, _) = pool.get(head, timeouts.connect).await?;
        let CsLink {
            server,
            mut reader,
            mut writer,
        } = link;

        {
            // Blocks that survived a failed attempt may belong to an old chunk id.
            let mut unacked = self.unacked.lock().expect("unacked");
            for b in unacked.iter_mut() {
                if b.packet[8..16] != target.chunk_id.to_be_bytes() {
                    *b = b.readdress(target.chunk_id);
                }
            }
        }

        let mut hello = Packet::new(msg::CLTOCS_WRITE, 13 + 6 * target.chain.len())
            .u8(1)
            .u64(target.chunk_id)
            .u32(target.version);
        for next in &target.chain[1..] {
            hello = hello.u32(u32::from(*next.ip())).u16(next.port());
        }
        let hello = hello.finish();

        let acked_signal = Notify::new();
        let done_signal = Notify::new();
        let record = |e: SessionEvent| {
            if let Some(ev) = events {
                ev.lock().expect("events").push(e);
            }
        };

        let send_side = async {
            let send = send_bytes;
            let limit = timeouts.status;
            send(&mut writer, &hello, server, limit).await?;
            let nop = [0u8; 8];
            let resend: Vec<PendingBlock> = self
                .unacked
                .lock()
                .expect("unacked")
                .iter()
                .cloned()
                .collect();
            for b in resend {
                record(SessionEvent::SentData(b.write_id));
                send(&mut writer, &b.packet, server, limit).await?;
            }
            let mut last_send = Instant::now();
            let mut source = self.source.lock().await;
            while !self.source_done.load(Ordering::Acquire) {
                let in_flight = self.unacked.lock().expect("unacked").len();
                let idle_until = last_send + timeouts.nop_every;
                if in_flight >= timeouts.window {
                    tokio::select! {
                        _ = acked_signal.notified() => {}
                        _ = tokio::time::sleep_until(idle_until) => {
                            send(&mut writer, &nop, server, limit).await?;
                            last_send = Instant::now();
                        }
                    }
                    continue;
                }
                tokio::select! {
                    next = source.recv() => match next {
                        Some(raw) => {
                            let write_id = self.next_write_id.fetch_add(1, Ordering::Relaxed);
                            let block = PendingBlock::seal(
                                raw.buf, target.chunk_id, write_id, raw.block, raw.offset, raw.crc,
                            );
                            self.unacked
                                .lock()
                                .expect("unacked")
                                .push_back(block.clone());
                            record(SessionEvent::SentData(write_id));
                            send(&mut writer, &block.packet, server, limit).await?;
                            last_send = Instant::now();
                        }
                        None => {
                            self.source_done.store(true, Ordering::Release);
                            done_signal.notify_one();
                        }
                    },
                    _ = tokio::time::sleep_until(idle_until) => {
                        send(&mut writer, &nop, server, limit).await?;
                        last_send = Instant::now();
                    }
                }
            }
            drop(source);
            // Everything is sent; keep the chain alive until every status is in.
            loop {
                if self.is_complete() {
                    break;
                }
                tokio::select! {
                    _ = acked_signal.notified() => {}
                    _ = tokio::time::sleep_until(last_send + timeouts.nop_every) => {
                        send(&mut writer, &nop, server, limit).await?;
                        last_send = Instant::now();
                    }
                }
            }
            Ok::<(), MfsError>(())
        };

        let receive_side = async {
            let mut chain_ready = false;
            let mut progress_deadline = Instant::now() + timeouts.status;
            loop {
                if chain_ready && self.is_complete() {
                    acked_signal.notify_one();
                    return Ok::<(), MfsError>(());
                }
                let waiting_for_status =
                    !chain_ready || !self.unacked.lock().expect("unacked").is_empty();
                let frame = if waiting_for_status {
                    // NOP echoes do not count as progress: only statuses do.
                    match tokio::time::timeout_at(progress_deadline, reader.read_frame()).await {
                        Ok(r) => r,
                        Err(_) => {
                            return Err(cs_error(
                                server,
                                format!("no write status within {:?}", timeouts.status),
                            ))
                        }
                    }
                } else {
                    progress_deadline = Instant::now() + timeouts.status;
                    tokio::select! {
                        r = reader.read_frame() => r,
                        _ = done_signal.notified() => continue,
                        _ = tokio::time::sleep(timeouts.nop_every) => continue,
                    }
                };
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        return Err(cs_error(
                            server,
                            "chain closed the connection before acknowledging every block",
                        ))
                    }
                    Err(e) => return Err(cs_error(server, format!("read failed: {e}"))),
                };
                match frame.kind {
                    msg::ANTOAN_NOP => continue,
                    msg::CSTOCL_WRITE_STATUS => {}
                    other => {
                        return Err(cs_error(
                            server,
                            format!("unexpected packet type {other} during a write"),
                        ))
                    }
                }
                let (chunk_id, write_id, status) = decode::write_status(frame.payload)?;
                record(SessionEvent::GotStatus(write_id));
                observer.write_status(status);
                progress_deadline = Instant::now() + timeouts.status;
                if chunk_id != target.chunk_id {
                    return Err(cs_error(
                        server,
                        format!(
                            "status for chunk {chunk_id:016X}, writing {:016X}",
                            target.chunk_id
                        ),
                    ));
                }
                if status != Status::OK {
                    return Err(cs_error(
                        server,
                        format!("write status {status} for write id {write_id}"),
                    ));
                }
                if !chain_ready {
                    if write_id != 0 {
                        return Err(cs_error(
                            server,
                            format!("first status has write id {write_id}, expected the chain status (0)"),
                        ));
                    }
                    chain_ready = true;
                    continue;
                }
                let acked = {
                    let mut unacked = self.unacked.lock().expect("unacked");
                    match unacked.front() {
                        Some(b) if b.write_id == write_id => unacked.pop_front(),
                        Some(b) => {
                            return Err(cs_error(
                                server,
                                format!("status for write id {write_id}, expected {}", b.write_id),
                            ))
                        }
                        None => {
                            return Err(cs_error(
                                server,
                                format!("status for write id {write_id} with nothing outstanding"),
                            ))
                        }
                    }
                };
                if let Some(b) = acked {
                    observer.bytes_written(b.size as u64);
                    let record = AckedBlock::of(&b);
                    self.acked.lock().expect("acked").push(record);
                }
                acked_signal.notify_one();
            }
        };

        tokio::try_join!(send_side, receive_side)?;
        // Every status is in: only now end the session on the chain.
        let finish = Packet::new(msg::CLTOCS_WRITE_FINISH, 12)
            .u64(target.chunk_id)
            .u32(target.version)
            .finish();
        record(SessionEvent::SentFinish);
        match timeout(timeouts.status, writer.write_all(&finish)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(cs_error(
                    server,
                    format!("sending WRITE_FINISH failed: {e}"),
                ))
            }
            Err(_) => return Err(cs_error(server, "sending WRITE_FINISH blocked")),
        }
        // The chain is idle again: the connection can carry the next session.
        pool.put(CsLink {
            server,
            reader,
            writer,
        });
        Ok(())
    }
}
