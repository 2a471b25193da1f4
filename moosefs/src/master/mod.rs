//! The session with the MooseFS master: registration (optionally with a
//! password), many concurrent requests over one TCP connection matched by
//! message id, keep-alive NOPs, the sustained-inodes list, and reconnection
//! with session resume (rcode RECONNECT, falling back to a new session).
//!
//! One supervisor task owns the connection. Requests go to it through a
//! channel; a reader task hands each answer to the waiting caller. When the
//! link drops, every request that may already have been sent fails with
//! [`MfsError::Disconnected`] (the caller decides whether to repeat it) and the
//! supervisor reconnects with a bounded, growing delay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{timeout, Instant};

use super::codec::{FrameReader, Packet, PayloadReader, ProtocolError};
use super::error::{MfsError, Result};
use super::proto::{msg, register, Status, CLIENT_VERSION, REGISTER_BLOB_ACL};

/// Largest answer we accept from the master.
const MAX_MASTER_PAYLOAD: usize = 64 << 20;

/// How to reach and talk to the master.
#[derive(Clone)]
pub struct MasterConfig {
    /// `host:port` of the master's client port (9421).
    pub addr: String,
    /// Exported subfolder to use as the root (`/` = whole tree).
    pub subfolder: String,
    /// Export password, if the export requires one.
    pub password: Option<String>,
    /// Free-form description shown by `mfscli -SMS`.
    pub client_info: String,
    pub connect_timeout: Duration,
    /// Bound on one request's round trip. WRITE_CHUNK may be parked by the
    /// master for 30 s behind a lock, so keep this above 30 s.
    pub request_timeout: Duration,
    /// Send a NOP when nothing was sent for this long (the master drops a
    /// connection that is silent for 10 s).
    pub keepalive_after: Duration,
    /// The master sends a NOP every second; this much silence means the link is dead.
    pub read_idle_timeout: Duration,
    /// How long the supervisor keeps trying to reconnect before requests fail
    /// with [`MfsError::MasterUnreachable`] (it keeps trying afterwards).
    pub reconnect_window: Duration,
    /// How often the list of inodes still open is sent (it releases the rest).
    pub sustained_interval: Duration,
}

impl MasterConfig {
    pub fn new(addr: impl Into<String>) -> Self {
        MasterConfig {
            addr: addr.into(),
            subfolder: "/".into(),
            password: None,
            client_info: format!("mfs-ingest {}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            keepalive_after: Duration::from_secs(2),
            read_idle_timeout: Duration::from_secs(10),
            reconnect_window: Duration::from_secs(30),
            sustained_interval: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for MasterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterConfig")
            .field("addr", &self.addr)
            .field("subfolder", &self.subfolder)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// What the master told us at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    pub master_version: u32,
    pub session_id: u32,
    pub meta_id: u64,
    pub flags: u8,
    pub min_goal: u8,
    pub max_goal: u8,
}

impl SessionInfo {
    /// The master's version as `major.mid.minor`.
    pub fn master_version_string(&self) -> String {
        let v = self.master_version;
        format!("{}.{}.{}", v >> 16, (v >> 8) & 0xFF, (v & 0xFF) / 2)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Up,
    Reconnecting,
    Closed,
}

type AnswerSender = oneshot::Sender<Result<Bytes>>;

struct Pending {
    answer_kind: u32,
    reply: AnswerSender,
    /// Handed to a connection: if that connection drops, the master may or
    /// may not have executed it, so the caller must decide.
    sent: bool,
}

enum Outgoing {
    Request {
        msgid: u32,
        packet: Bytes,
    },
    /// Fire-and-forget packet (no msgid, no answer).
    Notice(Bytes),
    /// Drop the TCP connection without closing the session.
    DropLink,
    Close(oneshot::Sender<()>),
}

struct Shared {
    cfg: MasterConfig,
    next_msgid: AtomicU32,
    pending: Mutex<HashMap<u32, Pending>>,
    state: watch::Sender<LinkState>,
    session: Mutex<SessionInfo>,
    /// Inodes this session created (hence opened) and still writes, with a use count.
    open_inodes: Mutex<HashMap<u32, u32>>,
    open_inodes_changed: Notify,
    reconnects: AtomicU64,
    /// Set by `close`; stops reconnect attempts.
    closing: std::sync::atomic::AtomicBool,
    observer: Arc<dyn super::observe::Observer>,
}

impl Shared {
    /// Fails requests (only those already sent, if `sent_only`).
    fn fail_pending(&self, sent_only: bool, err: impl Fn() -> MfsError) {
        let failed: Vec<Pending> = {
            let mut pending = self.pending.lock().expect("pending lock");
            let ids: Vec<u32> = pending
                .iter()
                .filter(|(_, p)| p.sent || !sent_only)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for p in failed {
            let _ = p.reply.send(Err(err()));
        }
    }

    fn mark_sent(&self, msgid: u32) -> bool {
        match self.pending.lock().expect("pending lock").get_mut(&msgid) {
            Some(p) => {
                p.sent = true;
                true
            }
            None => false,
        }
    }

    fn fail_one(&self, msgid: u32, err: MfsError) {
        if let Some(p) = self.pending.lock().expect("pending lock").remove(&msgid) {
            let _ = p.reply.send(Err(err));
        }
    }

    fn sustained_list(&self) -> Bytes {
        let inodes = self.open_inodes.lock().expect("open inodes lock");
        let mut p = Packet::new(msg::CLTOMA_FUSE_SUSTAINED_INODES, inodes.len() * 4);
        for inode in inodes.keys() {
            p = p.u32(*inode);
        }
        p.finish()
    }
}

/// A registered session with the master; cheap to clone.
#[derive(Clone)]
pub struct MasterSession {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Outgoing>,
}

impl MasterSession {
    /// Connects, registers a new session and starts the supervisor.
    pub async fn connect(cfg: MasterConfig) -> Result<Self> {
        Self::connect_observed(cfg, Arc::new(super::observe::NoObserver)).await
    }

    /// [`MasterSession::connect`] reporting to `observer`.
    pub async fn connect_observed(
        cfg: MasterConfig,
        observer: Arc<dyn super::observe::Observer>,
    ) -> Result<Self> {
        let (reader, writer, info) = open_session(&cfg, None).await?;
        let (state, _) = watch::channel(LinkState::Up);
        let shared = Arc::new(Shared {
            cfg,
            next_msgid: AtomicU32::new(1),
            pending: Mutex::new(HashMap::new()),
            state,
            session: Mutex::new(info),
            open_inodes: Mutex::new(HashMap::new()),
            open_inodes_changed: Notify::new(),
            reconnects: AtomicU64::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
            observer,
        });
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(supervise(shared.clone(), rx, reader, writer));
        Ok(MasterSession { shared, tx })
    }

    pub fn info(&self) -> SessionInfo {
        *self.shared.session.lock().expect("session lock")
    }

    pub fn config(&self) -> &MasterConfig {
        &self.shared.cfg
    }

    /// How many times the link was re-established.
    pub fn reconnect_count(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Waits until the link is up (bounded by the reconnect window).
    async fn wait_up(&self) -> Result<()> {
        let mut rx = self.shared.state.subscribe();
        let window = self.shared.cfg.reconnect_window;
        let res = timeout(window, async {
            loop {
                match *rx.borrow_and_update() {
                    LinkState::Up => return Ok(()),
                    LinkState::Closed => return Err(MfsError::Closed),
                    LinkState::Reconnecting => {}
                }
                if rx.changed().await.is_err() {
                    return Err(MfsError::Closed);
                }
            }
        })
        .await;
        match res {
            Ok(r) => r,
            Err(_) => Err(MfsError::MasterUnreachable {
                addr: self.shared.cfg.addr.clone(),
                error: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection for {window:?}"),
                ),
            }),
        }
    }

    /// Sends one request and returns the answer payload after the msgid.
    /// `build` gets a packet that already holds the msgid.
    pub(crate) async fn request(
        &self,
        kind: u32,
        what: &'static str,
        build: impl FnOnce(Packet) -> Packet,
    ) -> Result<Bytes> {
        self.request_with_timeout(kind, what, self.shared.cfg.request_timeout, build)
            .await
    }

    pub(crate) async fn request_with_timeout(
        &self,
        kind: u32,
        what: &'static str,
        limit: Duration,
        build: impl FnOnce(Packet) -> Packet,
    ) -> Result<Bytes> {
        let started = Instant::now();
        let result = self.exchange(kind, what, limit, build).await;
        let outcome = match &result {
            Ok(answer) if answer_status(answer).is_some_and(|s| s != Status::OK) => "status",
            Ok(_) => "ok",
            Err(MfsError::Timeout { .. }) => "timeout",
            Err(_) => "disconnected",
        };
        self.shared
            .observer
            .master_request(what, started.elapsed().as_secs_f64(), outcome);
        result
    }

    async fn exchange(
        &self,
        kind: u32,
        what: &'static str,
        limit: Duration,
        build: impl FnOnce(Packet) -> Packet,
    ) -> Result<Bytes> {
        self.wait_up().await?;
        let msgid = loop {
            let id = self.shared.next_msgid.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                break id;
            }
        };
        let packet = build(Packet::new(kind, 64).u32(msgid)).finish();
        let (reply, answer) = oneshot::channel();
        self.shared.pending.lock().expect("pending lock").insert(
            msgid,
            Pending {
                answer_kind: kind + 1,
                reply,
                sent: false,
            },
        );
        if self
            .tx
            .send(Outgoing::Request { msgid, packet })
            .await
            .is_err()
        {
            self.shared.fail_one(msgid, MfsError::Closed);
        }
        match timeout(limit, answer).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(MfsError::Closed),
            Err(_) => {
                self.shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&msgid);
                Err(MfsError::Timeout {
                    after: limit,
                    what: format!("master answer to {what}"),
                })
            }
        }
    }

    /// A request whose success answer is a single status byte.
    pub(crate) async fn request_status(
        &self,
        kind: u32,
        what: &'static str,
        build: impl FnOnce(Packet) -> Packet,
    ) -> Result<()> {
        let answer = self.request(kind, what, build).await?;
        match answer_status(&answer) {
            Some(Status::OK) => Ok(()),
            Some(status) => Err(MfsError::status(what, status)),
            None => Err(ProtocolError::new(format!(
                "{what}: expected a status, got {} bytes",
                answer.len()
            ))
            .into()),
        }
    }

    /// Marks an inode as open by this session (CREATE does so on the master);
    /// the returned guard releases it when dropped.
    pub(crate) fn hold_open(&self, inode: u32) -> OpenInodeGuard {
        *self
            .shared
            .open_inodes
            .lock()
            .expect("open inodes lock")
            .entry(inode)
            .or_insert(0) += 1;
        OpenInodeGuard {
            shared: self.shared.clone(),
            inode,
        }
    }

    /// Inodes this session currently declares as open.
    pub fn open_inodes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .shared
            .open_inodes
            .lock()
            .expect("open inodes lock")
            .keys()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// Sends the sustained-inodes list now (normally done on a timer).
    pub async fn flush_open_inodes(&self) -> Result<()> {
        let list = self.shared.sustained_list();
        self.tx
            .send(Outgoing::Notice(list))
            .await
            .map_err(|_| MfsError::Closed)
    }

    /// Closes the session cleanly (CLOSESESSION), releasing everything the
    /// master keeps for it. Idempotent.
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Outgoing::Close(done_tx)).await.is_ok() {
            let _ = timeout(Duration::from_secs(5), done_rx).await;
        }
    }

    /// Drops the TCP connection without closing the session, as a network
    /// failure would (for tests of the reconnect path).
    pub async fn simulate_link_failure(&self) {
        let _ = self.tx.send(Outgoing::DropLink).await;
    }
}

/// Keeps an inode in the session's open list while alive.
pub struct OpenInodeGuard {
    shared: Arc<Shared>,
    inode: u32,
}

impl OpenInodeGuard {
    pub fn inode(&self) -> u32 {
        self.inode
    }
}

impl Drop for OpenInodeGuard {
    fn drop(&mut self) {
        let mut open = self.shared.open_inodes.lock().expect("open inodes lock");
        if let Some(count) = open.get_mut(&self.inode) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.inode);
                self.shared.open_inodes_changed.notify_one();
            }
        }
    }
}

/// A 1-byte answer is a status.
pub(crate) fn answer_status(answer: &Bytes) -> Option<Status> {
    (answer.len() == 1).then(|| Status(answer[0]))
}

pub(super) async fn connect_tcp(cfg: &MasterConfig) -> Result<TcpStream> {
    let unreachable = |error| MfsError::MasterUnreachable {
        addr: cfg.addr.clone(),
        error,
    };
    let stream = match timeout(cfg.connect_timeout, TcpStream::connect(&cfg.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unreachable(e)),
        Err(_) => {
            return Err(unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", cfg.connect_timeout),
            )))
        }
    };
    stream.set_nodelay(true).map_err(unreachable)?;
    Ok(stream)
}

/// Sends one register packet and reads the (msgid-less) register answer.
async fn register_exchange(
    cfg: &MasterConfig,
    reader: &mut FrameReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    packet: Bytes,
) -> Result<Bytes> {
    let io = |e: std::io::Error| MfsError::MasterUnreachable {
        addr: cfg.addr.clone(),
        error: e,
    };
    timeout(cfg.connect_timeout, writer.write_all(&packet))
        .await
        .map_err(|_| MfsError::Timeout {
            after: cfg.connect_timeout,
            what: "sending register request".into(),
        })?
        .map_err(io)?;
    loop {
        let frame = timeout(cfg.request_timeout, reader.read_frame())
            .await
            .map_err(|_| MfsError::Timeout {
                after: cfg.request_timeout,
                what: "register answer".into(),
            })?
            .map_err(io)?
            .ok_or_else(|| {
                MfsError::SessionRefused("master closed the connection during registration".into())
            })?;
        match frame.kind {
            msg::MATOCL_FUSE_REGISTER => return Ok(frame.payload),
            msg::ANTOAN_NOP => continue,
            other => {
                return Err(ProtocolError::new(format!(
                    "unexpected packet type {other} during registration"
                ))
                .into())
            }
        }
    }
}

fn register_packet(rcode: u8, capacity: usize) -> Packet {
    Packet::new(msg::CLTOMA_FUSE_REGISTER, 65 + capacity)
        .bytes(REGISTER_BLOB_ACL)
        .u8(rcode)
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Opens a connection and registers: resumes `resume` if given, else (or if the
/// master no longer knows it) starts a new session.
async fn open_session(
    cfg: &MasterConfig,
    resume: Option<SessionInfo>,
) -> Result<(FrameReader<OwnedReadHalf>, OwnedWriteHalf, SessionInfo)> {
    let stream = connect_tcp(cfg).await?;
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, MAX_MASTER_PAYLOAD);

    if let Some(old) = resume {
        let packet = register_packet(register::RECONNECT, 16)
            .u32(old.session_id)
            .u32(CLIENT_VERSION)
            .u64(old.meta_id)
            .finish();
        let answer = register_exchange(cfg, &mut reader, &mut wr, packet).await?;
        let status = reconnect_status(&answer)?;
        if status == Status::OK {
            return Ok((reader, wr, old));
        }
        tracing::warn!(%status, session_id = old.session_id, "master did not resume the session; registering a new one");
        // The master closes the connection after a failed reconnect: start over.
        let stream = connect_tcp(cfg).await?;
        let (rd, w) = stream.into_split();
        reader = FrameReader::new(rd, MAX_MASTER_PAYLOAD);
        wr = w;
    }

    let mut digest = None;
    if let Some(password) = &cfg.password {
        let packet = register_packet(register::GETRANDOM, 0).finish();
        let random = register_exchange(cfg, &mut reader, &mut wr, packet).await?;
        if random.len() != 32 {
            return Err(ProtocolError::new(format!(
                "GETRANDOM answer of {} bytes, expected 32",
                random.len()
            ))
            .into());
        }
        let pass_md5 = Md5::digest(password.as_bytes());
        let mut h = Md5::new();
        h.update(&random[0..16]);
        h.update(pass_md5);
        h.update(&random[16..32]);
        digest = Some(h.finalize());
    }
    let info = nul_terminated(&cfg.client_info);
    let path = nul_terminated(&cfg.subfolder);
    let mut packet = register_packet(register::NEWSESSION, 12 + info.len() + path.len() + 16)
        .u32(CLIENT_VERSION)
        .u32(info.len() as u32)
        .bytes(&info)
        .u32(path.len() as u32)
        .bytes(&path);
    if let Some(d) = digest {
        packet = packet.bytes(&d);
    }
    let answer = register_exchange(cfg, &mut reader, &mut wr, packet.finish()).await?;
    let info = parse_new_session(&answer)?;
    Ok((reader, wr, info))
}

/// The status of a RECONNECT answer (1 byte, or 5 with a version before it).
pub fn reconnect_status(answer: &[u8]) -> Result<Status, ProtocolError> {
    match *answer {
        [_, _, _, _, status] | [status] => Ok(Status(status)),
        _ => Err(ProtocolError::new(format!(
            "reconnect answer of {} bytes",
            answer.len()
        ))),
    }
}

/// The NEWSESSION answer: a status (refused), a redirect, or the 49-byte
/// session record.
pub fn parse_new_session(answer: &Bytes) -> Result<SessionInfo> {
    match answer.len() {
        1 => {
            let status = Status(answer[0]);
            let why = match status {
                Status::NOPASSWORD => "the export requires a password".to_string(),
                Status::BADPASSWORD => "wrong password".to_string(),
                Status::EACCES => "this client is not allowed by the master's exports".to_string(),
                other => other.to_string(),
            };
            Err(MfsError::SessionRefused(why))
        }
        4 => Err(MfsError::SessionRefused(
            "master redirected to another leader (not supported)".into(),
        )),
        49 => {
            let mut r = PayloadReader::new(answer.clone());
            let master_version = r.u32()?;
            let session_id = r.u32()?;
            let meta_id = r.u64()?;
            let flags = r.u8()?;
            let _umask = r.u16()?;
            let _rootuid = r.u32()?;
            let _rootgid = r.u32()?;
            let _mapalluid = r.u32()?;
            let _mapallgid = r.u32()?;
            let min_goal = r.u8()?;
            let max_goal = r.u8()?;
            Ok(SessionInfo {
                master_version,
                session_id,
                meta_id,
                flags,
                min_goal,
                max_goal,
            })
        }
        n => Err(ProtocolError::new(format!("register answer of {n} bytes")).into()),
    }
}

/// Why a connection's life ended.
enum LinkEnd {
    Lost(String),
    Closed,
}

async fn supervise(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Outgoing>,
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
) {
    let mut link = Some((reader, writer));
    loop {
        let (reader, writer) = match link.take() {
            Some(l) => l,
            None => match reconnect(&shared).await {
                Some(l) => l,
                None => break,
            },
        };
        shared.state.send_replace(LinkState::Up);
        let reader_task = tokio::spawn(read_answers(shared.clone(), reader));
        let end = serve_link(&shared, &mut rx, writer, reader_task).await;
        // Requests still queued were never sent: they go out on the next link.
        shared.fail_pending(true, || MfsError::Disconnected);
        match end {
            LinkEnd::Closed => break,
            LinkEnd::Lost(why) => {
                tracing::warn!(master = %shared.cfg.addr, %why, "master link lost; reconnecting");
                shared.state.send_replace(LinkState::Reconnecting);
            }
        }
    }
    shared.state.send_replace(LinkState::Closed);
    shared.fail_pending(false, || MfsError::Closed);
    rx.close();
    while let Ok(out) = rx.try_recv() {
        match out {
            Outgoing::Request { msgid, .. } => shared.fail_one(msgid, MfsError::Closed),
            Outgoing::Close(done) => {
                let _ = done.send(());
            }
            Outgoing::Notice(_) | Outgoing::DropLink => {}
        }
    }
}

/// Re-establishes the link. Returns `None` when the client was closed meanwhile.
async fn reconnect(shared: &Arc<Shared>) -> Option<(FrameReader<OwnedReadHalf>, OwnedWriteHalf)> {
    let mut delay = Duration::from_millis(100);
    loop {
        // Queued requests wait for the new link (their callers time out on
        // their own); only a close request ends the attempts.
        if shared.closing.load(Ordering::Acquire) {
            return None;
        }
        let old = *shared.session.lock().expect("session lock");
        match open_session(&shared.cfg, Some(old)).await {
            Ok((reader, writer, info)) => {
                *shared.session.lock().expect("session lock") = info;
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                shared.observer.master_reconnect();
                tracing::info!(master = %shared.cfg.addr, session_id = info.session_id,
                    resumed = info.session_id == old.session_id, "master link re-established");
                return Some((reader, writer));
            }
            Err(e) => {
                tracing::warn!(master = %shared.cfg.addr, error = %e, retry_in = ?delay, "reconnect failed")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn serve_link(
    shared: &Arc<Shared>,
    rx: &mut mpsc::Receiver<Outgoing>,
    mut writer: OwnedWriteHalf,
    mut reader_task: tokio::task::JoinHandle<String>,
) -> LinkEnd {
    let write_limit = shared.cfg.read_idle_timeout;
    let mut last_write = Instant::now();
    let mut sustained_tick = tokio::time::interval(shared.cfg.sustained_interval);
    sustained_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        let keepalive_at = last_write + shared.cfg.keepalive_after;
        let (packet, request) = tokio::select! {
            biased;
            why = &mut reader_task => {
                break LinkEnd::Lost(why.unwrap_or_else(|e| format!("reader task failed: {e}")));
            }
            out = rx.recv() => match out {
                None => break LinkEnd::Closed,
                Some(Outgoing::Request { msgid, packet }) => {
                    if !shared.mark_sent(msgid) {
                        continue; // its caller gave up (timeout)
                    }
                    (packet, Some(msgid))
                }
                Some(Outgoing::DropLink) => break LinkEnd::Lost("link dropped on request".into()),
                Some(Outgoing::Notice(packet)) => (packet, None),
                Some(Outgoing::Close(done)) => {
                    let session = *shared.session.lock().expect("session lock");
                    shared.open_inodes.lock().expect("open inodes lock").clear();
                    let packet = register_packet(register::CLOSESESSION, 12)
                        .u32(session.session_id)
                        .u64(session.meta_id)
                        .finish();
                    if let Ok(Ok(())) = timeout(write_limit, writer.write_all(&packet)).await {
                        // The master answers with one status byte and closes.
                        let _ = timeout(Duration::from_secs(2), &mut reader_task).await;
                    }
                    let _ = done.send(());
                    break LinkEnd::Closed;
                }
            },
            _ = tokio::time::sleep_until(keepalive_at) => {
                (Packet::new(msg::ANTOAN_NOP, 4).u32(0).finish(), None)
            }
            _ = sustained_tick.tick() => (shared.sustained_list(), None),
            _ = shared.open_inodes_changed.notified() => (shared.sustained_list(), None),
        };
        match timeout(write_limit, writer.write_all(&packet)).await {
            Ok(Ok(())) => last_write = Instant::now(),
            Ok(Err(e)) => {
                if let Some(msgid) = request {
                    shared.fail_one(msgid, MfsError::Disconnected);
                }
                break LinkEnd::Lost(format!("write failed: {e}"));
            }
            Err(_) => {
                if let Some(msgid) = request {
                    shared.fail_one(msgid, MfsError::Disconnected);
                }
                break LinkEnd::Lost(format!("write blocked for {write_limit:?}"));
            }
        }
    };
    reader_task.abort();
    end
}

/// Reads answers until the link fails; returns why.
async fn read_answers(shared: Arc<Shared>, mut reader: FrameReader<OwnedReadHalf>) -> String {
    let idle = shared.cfg.read_idle_timeout;
    loop {
        let frame = match timeout(idle, reader.read_frame()).await {
            Err(_) => return format!("master silent for {idle:?}"),
            Ok(Err(e)) => return format!("read failed: {e}"),
            Ok(Ok(None)) => return "master closed the connection".into(),
            Ok(Ok(Some(frame))) => frame,
        };
        if frame.kind == msg::MATOCL_FUSE_REGISTER {
            // Answer to CLOSESESSION.
            return "session closed".into();
        }
        if frame.payload.len() < 4 {
            if frame.kind == msg::ANTOAN_NOP {
                continue;
            }
            return format!(
                "packet type {} without a message id ({} bytes)",
                frame.kind,
                frame.payload.len()
            );
        }
        let msgid = u32::from_be_bytes(frame.payload[0..4].try_into().expect("4 bytes"));
        if msgid == 0 {
            // NOP and unsolicited notices (chunk/length changed, cache invalidation).
            continue;
        }
        let Some(pending) = shared.pending.lock().expect("pending lock").remove(&msgid) else {
            tracing::debug!(
                msgid,
                kind = frame.kind,
                "answer for a request nobody waits for"
            );
            continue;
        };
        let result = if frame.kind == pending.answer_kind {
            Ok(frame.payload.slice(4..))
        } else if frame.kind == msg::ANTOAN_UNKNOWN_COMMAND
            || frame.kind == msg::ANTOAN_BAD_COMMAND_SIZE
        {
            Err(ProtocolError::new(format!(
                "master did not accept request (answer type {})",
                frame.kind
            ))
            .into())
        } else {
            Err(ProtocolError::new(format!(
                "answer type {} to a request expecting {}",
                frame.kind, pending.answer_kind
            ))
            .into())
        };
        let _ = pending.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_answer_of_49_bytes_is_decoded() {
        let hex = [
            "000300ea",
            "0000000a",
            "6b011fb5961c7ef0",
            "08",
            "0000",
            "00000000",
            "00000000",
            "000003e7",
            "000003e7",
            "01",
            "09",
            "00000000",
            "ffffffff",
            "00000000",
        ]
        .concat();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let info = parse_new_session(&Bytes::from(bytes)).unwrap();
        assert_eq!(info.session_id, 10);
        assert_eq!(info.meta_id, 0x6b01_1fb5_961c_7ef0);
        assert_eq!(info.master_version_string(), "3.0.117");
        assert_eq!((info.min_goal, info.max_goal), (1, 9));
    }

    #[test]
    fn password_refusals_are_explained() {
        let err = parse_new_session(&Bytes::from_static(&[37])).unwrap_err();
        assert!(err.to_string().contains("wrong password"), "{err}");
    }
}
