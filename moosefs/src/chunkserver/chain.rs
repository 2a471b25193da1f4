//! One chunk write session along a replica chain: `CLTOCS_WRITE` (the
//! chain's addresses) → pipelined `WRITE_DATA` packets → one status per
//! packet plus the chain set-up status (write id 0) → `WRITE_FINISH`.
//!
//! The rule that makes replicas identical lives here: `WRITE_FINISH` is sent
//! only after the writeid-0 status and one OK status per data packet,
//! matched in order; anything else abandons the connection without
//! `WRITE_FINISH`, and the blocks not acknowledged stay queued for the next
//! attempt (a fresh lock and chain). A [`ChainRun`] is one attempt: its
//! sending half streams blocks (at most `window` unacknowledged, NOPs while
//! idle), its receiving half matches statuses.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout, Instant};

use super::link::{cs_error, send_bytes, CsLink, CsPool};
use crate::codec::{FrameReader, Packet};
use crate::config::ChunkserverTimeouts;
use crate::decode;
use crate::error::{MfsError, Result};
use crate::observe::Observer;
use crate::proto::{msg, Status, BLOCK_SIZE};

/// Bytes before the data in a `CLTOCS_WRITE_DATA` packet: frame header +
/// `chunkid:u64 writeid:u32 blocknum:u16 offset:u16 size:u32 crc:u32`.
pub const WRITE_DATA_HEADER: usize = 8 + 24;

/// A `NOP` packet: keeps the chain from giving up on an idle link (5 s).
const NOP: [u8; 8] = [0u8; 8];

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
    next_write_id: AtomicU32,
    /// What the session did, in order, when asked for (test hooks only).
    #[cfg(feature = "test-hooks")]
    events: Option<Mutex<Vec<SessionEvent>>>,
}

/// A block read from the source, not yet addressed to a chunk: a buffer with
/// [`WRITE_DATA_HEADER`] bytes of room followed by the data.
pub struct RawBlock {
    pub buf: BytesMut,
    pub block: u16,
    pub offset: u16,
    pub crc: u32,
}

/// What a session did on the wire, in order: recorded only by a session made
/// with `WriteSession::with_event_log` (feature `test-hooks`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
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
            next_write_id: AtomicU32::new(1),
            #[cfg(feature = "test-hooks")]
            events: None,
        }
    }

    /// Whether every block of the source was acknowledged.
    pub fn is_complete(&self) -> bool {
        self.source_done.load(Ordering::Acquire) && self.unacked.lock().expect("unacked").is_empty()
    }

    fn record(&self, event: SessionEvent) {
        #[cfg(feature = "test-hooks")]
        if let Some(events) = &self.events {
            events.lock().expect("events").push(event);
        }
        #[cfg(not(feature = "test-hooks"))]
        let _ = event;
    }

    /// Runs one chain session: re-sends unacknowledged blocks, streams new
    /// ones, and returns once every status (writeid 0 and one per block) is
    /// OK and `WRITE_FINISH` went out. On error nothing is finished and the
    /// unacknowledged blocks stay queued for the next attempt.
    pub async fn run(
        &self,
        target: &WriteTarget<'_>,
        timeouts: &ChunkserverTimeouts,
        observer: &dyn Observer,
        pool: &CsPool,
    ) -> Result<()> {
        observer.chain_length(target.chain.len());
        let head = *target
            .chain
            .first()
            .ok_or_else(|| MfsError::InvalidArgument("empty write chain".into()))?;
        let run = ChainRun {
            session: self,
            target,
            timeouts,
            observer,
            server: head,
            acked_signal: Notify::new(),
            done_signal: Notify::new(),
        };
        let result = run.write_through(pool).await;
        if let Err(MfsError::Chunkserver {
            server: SocketAddr::V4(server),
            ..
        }) = &result
        {
            observer.chunkserver_error(*server);
        }
        result
    }

    /// Blocks that survived a failed attempt may belong to an old chunk id.
    fn readdress_unacked(&self, chunk_id: u64) {
        let mut unacked = self.unacked.lock().expect("unacked");
        for b in unacked.iter_mut() {
            if b.packet[8..16] != chunk_id.to_be_bytes() {
                *b = b.readdress(chunk_id);
            }
        }
    }
}

/// Test hooks (feature `test-hooks`): a session that records what it did.
#[cfg(feature = "test-hooks")]
impl WriteSession {
    /// A session recording every data packet sent, status received and
    /// `WRITE_FINISH`, for [`WriteSession::events`].
    pub fn with_event_log(source: mpsc::Receiver<RawBlock>) -> Self {
        WriteSession {
            events: Some(Mutex::new(Vec::new())),
            ..WriteSession::new(source)
        }
    }

    /// What the session did so far, in order (empty without an event log).
    pub fn events(&self) -> Vec<SessionEvent> {
        self.events
            .as_ref()
            .map(|e| e.lock().expect("events").clone())
            .unwrap_or_default()
    }
}

/// One attempt of a chunk write on one connection to the chain's head: what
/// its sending half and its receiving half share.
struct ChainRun<'r, 't> {
    session: &'r WriteSession,
    target: &'r WriteTarget<'t>,
    timeouts: &'r ChunkserverTimeouts,
    observer: &'r dyn Observer,
    /// The head of the chain, the server this connection goes to.
    server: SocketAddrV4,
    /// A status acknowledged a block (the window has room again).
    acked_signal: Notify,
    /// The source ran dry: every block is sent.
    done_signal: Notify,
}

impl ChainRun<'_, '_> {
    /// The attempt on a connection to the head (pooled if one is idle):
    /// both halves until every status is in, then `WRITE_FINISH`, and the
    /// connection goes back to the pool.
    async fn write_through(&self, pool: &CsPool) -> Result<()> {
        let (target, timeouts, server) = (self.target, self.timeouts, self.server);
        let (link, _) = pool.get(server, timeouts.connect).await?;
        let CsLink {
            mut reader,
            mut writer,
            ..
        } = link;
        self.session.readdress_unacked(target.chunk_id);
        tokio::try_join!(
            self.send_blocks(&mut writer),
            self.receive_statuses(&mut reader)
        )?;
        // Every status is in: only now end the session on the chain.
        let finish = Packet::new(msg::CLTOCS_WRITE_FINISH, 12)
            .u64(target.chunk_id)
            .u32(target.version)
            .finish();
        self.session.record(SessionEvent::SentFinish);
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

    /// Sends `bytes` to the head; returns when they went out.
    async fn send(&self, writer: &mut OwnedWriteHalf, bytes: &[u8]) -> Result<Instant> {
        send_bytes(writer, bytes, self.server, self.timeouts.status).await?;
        Ok(Instant::now())
    }

    /// `CLTOCS_WRITE` naming the chain behind the head.
    fn hello(&self) -> Bytes {
        let target = self.target;
        let mut hello = Packet::new(msg::CLTOCS_WRITE, 13 + 6 * target.chain.len())
            .u8(1)
            .u64(target.chunk_id)
            .u32(target.version);
        for next in &target.chain[1..] {
            hello = hello.u32(u32::from(*next.ip())).u16(next.port());
        }
        hello.finish()
    }

    /// The sending half: the chain request, the blocks a failed attempt left
    /// unacknowledged, the source's new blocks, then NOPs until every status
    /// is in.
    async fn send_blocks(&self, writer: &mut OwnedWriteHalf) -> Result<()> {
        self.send(writer, &self.hello()).await?;
        let resend: Vec<PendingBlock> = self
            .session
            .unacked
            .lock()
            .expect("unacked")
            .iter()
            .cloned()
            .collect();
        for b in resend {
            self.session.record(SessionEvent::SentData(b.write_id));
            self.send(writer, &b.packet).await?;
        }
        let last_send = self.stream_new_blocks(writer, Instant::now()).await?;
        self.keep_alive_until_acked(writer, last_send).await
    }

    /// Sends the source's blocks as they come, at most `window` of them
    /// unacknowledged, a NOP whenever the link was idle for `nop_every`.
    /// Returns when the source ended, with the time of the last send.
    async fn stream_new_blocks(
        &self,
        writer: &mut OwnedWriteHalf,
        mut last_send: Instant,
    ) -> Result<Instant> {
        let session = self.session;
        let mut source = session.source.lock().await;
        while !session.source_done.load(Ordering::Acquire) {
            let in_flight = session.unacked.lock().expect("unacked").len();
            let idle_until = last_send + self.timeouts.nop_every;
            if in_flight >= self.timeouts.window {
                tokio::select! {
                    _ = self.acked_signal.notified() => {}
                    _ = tokio::time::sleep_until(idle_until) => {
                        last_send = self.send(writer, &NOP).await?;
                    }
                }
                continue;
            }
            tokio::select! {
                next = source.recv() => match next {
                    Some(raw) => {
                        let write_id = session.next_write_id.fetch_add(1, Ordering::Relaxed);
                        let block = PendingBlock::seal(
                            raw.buf, self.target.chunk_id, write_id, raw.block, raw.offset, raw.crc,
                        );
                        session
                            .unacked
                            .lock()
                            .expect("unacked")
                            .push_back(block.clone());
                        session.record(SessionEvent::SentData(write_id));
                        last_send = self.send(writer, &block.packet).await?;
                    }
                    None => {
                        session.source_done.store(true, Ordering::Release);
                        self.done_signal.notify_one();
                    }
                },
                _ = tokio::time::sleep_until(idle_until) => {
                    last_send = self.send(writer, &NOP).await?;
                }
            }
        }
        Ok(last_send)
    }

    /// Everything is sent: keeps the chain alive until every status is in.
    async fn keep_alive_until_acked(
        &self,
        writer: &mut OwnedWriteHalf,
        mut last_send: Instant,
    ) -> Result<()> {
        while !self.session.is_complete() {
            tokio::select! {
                _ = self.acked_signal.notified() => {}
                _ = tokio::time::sleep_until(last_send + self.timeouts.nop_every) => {
                    last_send = self.send(writer, &NOP).await?;
                }
            }
        }
        Ok(())
    }

    /// The receiving half: reads statuses until the chain status and one
    /// status per block are in, each within `timeouts.status` of the last
    /// (NOP echoes are not progress).
    async fn receive_statuses(&self, reader: &mut FrameReader<OwnedReadHalf>) -> Result<()> {
        let (server, timeouts) = (self.server, self.timeouts);
        let mut chain_ready = false;
        let mut progress_deadline = Instant::now() + timeouts.status;
        loop {
            if chain_ready && self.session.is_complete() {
                self.acked_signal.notify_one();
                return Ok(());
            }
            let waiting_for_status =
                !chain_ready || !self.session.unacked.lock().expect("unacked").is_empty();
            let frame = if waiting_for_status {
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
                    _ = self.done_signal.notified() => continue,
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
            self.accept_status(frame.payload, &mut chain_ready)?;
            progress_deadline = Instant::now() + timeouts.status;
        }
    }

    /// One `CSTOCL_WRITE_STATUS`: the first must be the chain's (write id
    /// 0), every later one OK for the oldest unacknowledged block.
    fn accept_status(&self, payload: Bytes, chain_ready: &mut bool) -> Result<()> {
        let server = self.server;
        let (chunk_id, write_id, status) = decode::write_status(payload)?;
        self.session.record(SessionEvent::GotStatus(write_id));
        self.observer.write_status(status);
        if chunk_id != self.target.chunk_id {
            return Err(cs_error(
                server,
                format!(
                    "status for chunk {chunk_id:016X}, writing {:016X}",
                    self.target.chunk_id
                ),
            ));
        }
        if status != Status::OK {
            return Err(cs_error(
                server,
                format!("write status {status} for write id {write_id}"),
            ));
        }
        if !*chain_ready {
            if write_id != 0 {
                return Err(cs_error(
                    server,
                    format!("first status has write id {write_id}, expected the chain status (0)"),
                ));
            }
            *chain_ready = true;
            return Ok(());
        }
        let acked = {
            let mut unacked = self.session.unacked.lock().expect("unacked");
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
            self.observer.bytes_written(b.size as u64);
            let record = AckedBlock::of(&b);
            self.session.acked.lock().expect("acked").push(record);
        }
        self.acked_signal.notify_one();
        Ok(())
    }
}
