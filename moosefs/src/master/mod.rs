//! The session with the MooseFS master: registration (optionally with a
//! password, `handshake`), many concurrent requests over one TCP connection
//! matched by message id, keep-alive NOPs, the sustained-inodes list, and
//! reconnection with session resume (rcode RECONNECT, falling back to a new
//! session) in the connection actor (`link`). [`MasterSession`] is the
//! handle callers hold.

mod handshake;
mod link;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{timeout, Instant};

pub(crate) use handshake::connect_tcp;
use handshake::open_session;
pub use handshake::{parse_new_session, reconnect_status, SessionInfo};
use link::{supervise, LinkState, Outgoing, Pending, Shared};

use crate::codec::{Packet, ProtocolError};
use crate::config::MasterConfig;
use crate::error::{MfsError, Result};
use crate::observe::{NoObserver, Observer};
use crate::proto::Status;

/// A registered session with the master; cheap to clone.
#[derive(Clone)]
pub struct MasterSession {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Outgoing>,
}

impl MasterSession {
    /// Connects, registers a new session and starts the supervisor.
    pub async fn connect(cfg: MasterConfig) -> Result<Self> {
        Self::connect_observed(cfg, Arc::new(NoObserver)).await
    }

    /// [`MasterSession::connect`] reporting to `observer`.
    pub async fn connect_observed(cfg: MasterConfig, observer: Arc<dyn Observer>) -> Result<Self> {
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
            closing: AtomicBool::new(false),
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

    /// Sends one request and returns the answer payload after the msgid,
    /// reporting its latency and outcome to the observer. `build` gets a
    /// packet that already holds the msgid.
    pub(crate) async fn request(
        &self,
        kind: u32,
        what: &'static str,
        build: impl FnOnce(Packet) -> Packet,
    ) -> Result<Bytes> {
        let started = Instant::now();
        let limit = self.shared.cfg.request_timeout;
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

    /// Waits for the link, registers the request under a fresh msgid, hands
    /// it to the connection actor and waits at most `limit` for the answer.
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

    /// Closes the session cleanly (CLOSESESSION), releasing everything the
    /// master keeps for it. Idempotent.
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Outgoing::Close(done_tx)).await.is_ok() {
            let _ = timeout(Duration::from_secs(5), done_rx).await;
        }
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

/// Test hooks (feature `test-hooks`): look at and drive what is otherwise
/// internal to the session.
#[cfg(feature = "test-hooks")]
impl MasterSession {
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

    /// Drops the TCP connection without closing the session, as a network
    /// failure would (for tests of the reconnect path).
    pub async fn simulate_link_failure(&self) {
        let _ = self.tx.send(Outgoing::DropLink).await;
    }
}

/// A 1-byte answer is a status.
pub(crate) fn answer_status(answer: &Bytes) -> Option<Status> {
    (answer.len() == 1).then(|| Status(answer[0]))
}
