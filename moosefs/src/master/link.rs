//! The connection actor of a master session. One supervisor task owns the
//! TCP link: requests reach it through a channel and are written in order,
//! with keep-alive NOPs and the sustained-inodes list in between; a reader
//! task hands each answer to the waiting caller by message id. When the link
//! drops, every request that may already have been sent fails with
//! [`MfsError::Disconnected`] (the caller decides whether to repeat it) and
//! the supervisor reconnects with a bounded, growing delay, resuming the
//! session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::handshake::{open_session, register_packet, MasterLink, SessionInfo};
use crate::codec::{FrameReader, Packet, ProtocolError};
use crate::config::MasterConfig;
use crate::error::{MfsError, Result};
use crate::observe::Observer;
use crate::proto::{msg, register};

/// Whether requests can go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkState {
    Up,
    Reconnecting,
    Closed,
}

type AnswerSender = oneshot::Sender<Result<Bytes>>;

/// A request waiting for its answer.
pub(super) struct Pending {
    pub(super) answer_kind: u32,
    pub(super) reply: AnswerSender,
    /// Handed to a connection: if that connection drops, the master may or
    /// may not have executed it, so the caller must decide.
    pub(super) sent: bool,
}

/// What the session hands to the connection actor.
pub(super) enum Outgoing {
    Request {
        msgid: u32,
        packet: Bytes,
    },
    /// Fire-and-forget packet (no msgid, no answer).
    #[cfg(feature = "test-hooks")]
    Notice(Bytes),
    /// Drop the TCP connection without closing the session.
    #[cfg(feature = "test-hooks")]
    DropLink,
    Close(oneshot::Sender<()>),
}

/// State the session handles and the connection actor share.
pub(super) struct Shared {
    pub(super) cfg: MasterConfig,
    pub(super) next_msgid: AtomicU32,
    pub(super) pending: Mutex<HashMap<u32, Pending>>,
    pub(super) state: watch::Sender<LinkState>,
    pub(super) session: Mutex<SessionInfo>,
    /// Inodes this session created (hence opened) and still writes, with a use count.
    pub(super) open_inodes: Mutex<HashMap<u32, u32>>,
    pub(super) open_inodes_changed: Notify,
    pub(super) reconnects: AtomicU64,
    /// Set by `close`; stops reconnect attempts.
    pub(super) closing: AtomicBool,
    pub(super) observer: Arc<dyn Observer>,
}

impl Shared {
    /// Fails requests (only those already sent, if `sent_only`).
    pub(super) fn fail_pending(&self, sent_only: bool, err: impl Fn() -> MfsError) {
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

    pub(super) fn mark_sent(&self, msgid: u32) -> bool {
        match self.pending.lock().expect("pending lock").get_mut(&msgid) {
            Some(p) => {
                p.sent = true;
                true
            }
            None => false,
        }
    }

    pub(super) fn fail_one(&self, msgid: u32, err: MfsError) {
        if let Some(p) = self.pending.lock().expect("pending lock").remove(&msgid) {
            let _ = p.reply.send(Err(err));
        }
    }

    pub(super) fn sustained_list(&self) -> Bytes {
        let inodes = self.open_inodes.lock().expect("open inodes lock");
        let mut p = Packet::new(msg::CLTOMA_FUSE_SUSTAINED_INODES, inodes.len() * 4);
        for inode in inodes.keys() {
            p = p.u32(*inode);
        }
        p.finish()
    }
}

/// Why a connection's life ended.
enum LinkEnd {
    Lost(String),
    Closed,
}

/// The connection actor: serves one link after another until the session
/// is closed, then fails whatever is left.
pub(super) async fn supervise(
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
            #[cfg(feature = "test-hooks")]
            Outgoing::Notice(_) | Outgoing::DropLink => {}
        }
    }
}

/// Re-establishes the link. Returns `None` when the client was closed meanwhile.
async fn reconnect(shared: &Arc<Shared>) -> Option<MasterLink> {
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

/// Writes requests, keep-alive NOPs and the sustained-inodes list to one
/// link until it fails or the session is closed.
async fn serve_link(
    shared: &Arc<Shared>,
    rx: &mut mpsc::Receiver<Outgoing>,
    mut writer: OwnedWriteHalf,
    mut reader_task: JoinHandle<String>,
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
            out = rx.recv() => match take_outgoing(shared, out, &mut writer, &mut reader_task).await {
                Next::Send(packet, request) => (packet, request),
                Next::Skip => continue,
                Next::End(end) => break end,
            },
            _ = tokio::time::sleep_until(keepalive_at) => {
                (Packet::new(msg::ANTOAN_NOP, 4).u32(0).finish(), None)
            }
            _ = sustained_tick.tick() => (shared.sustained_list(), None),
            _ = shared.open_inodes_changed.notified() => (shared.sustained_list(), None),
        };
        let failure = match timeout(write_limit, writer.write_all(&packet)).await {
            Ok(Ok(())) => {
                last_write = Instant::now();
                continue;
            }
            Ok(Err(e)) => format!("write failed: {e}"),
            Err(_) => format!("write blocked for {write_limit:?}"),
        };
        if let Some(msgid) = request {
            shared.fail_one(msgid, MfsError::Disconnected);
        }
        break LinkEnd::Lost(failure);
    };
    reader_task.abort();
    end
}

/// What [`serve_link`] does with one message from the session.
enum Next {
    /// Write this packet (carrying the request with this message id, if any).
    Send(Bytes, Option<u32>),
    /// Nothing to write: the request's caller gave up (timeout).
    Skip,
    /// The link's life ends.
    End(LinkEnd),
}

async fn take_outgoing(
    shared: &Shared,
    out: Option<Outgoing>,
    writer: &mut OwnedWriteHalf,
    reader_task: &mut JoinHandle<String>,
) -> Next {
    match out {
        None => Next::End(LinkEnd::Closed),
        Some(Outgoing::Request { msgid, packet }) => {
            if shared.mark_sent(msgid) {
                Next::Send(packet, Some(msgid))
            } else {
                Next::Skip
            }
        }
        #[cfg(feature = "test-hooks")]
        Some(Outgoing::DropLink) => Next::End(LinkEnd::Lost("link dropped on request".into())),
        #[cfg(feature = "test-hooks")]
        Some(Outgoing::Notice(packet)) => Next::Send(packet, None),
        Some(Outgoing::Close(done)) => {
            close_session(shared, writer, reader_task).await;
            let _ = done.send(());
            Next::End(LinkEnd::Closed)
        }
    }
}

/// Sends CLOSESESSION (the master releases everything it keeps for the
/// session) and waits briefly for the master to answer and close.
async fn close_session(
    shared: &Shared,
    writer: &mut OwnedWriteHalf,
    reader_task: &mut JoinHandle<String>,
) {
    let session = *shared.session.lock().expect("session lock");
    shared.open_inodes.lock().expect("open inodes lock").clear();
    let packet = register_packet(register::CLOSESESSION, 12)
        .u32(session.session_id)
        .u64(session.meta_id)
        .finish();
    let write_limit = shared.cfg.read_idle_timeout;
    if let Ok(Ok(())) = timeout(write_limit, writer.write_all(&packet)).await {
        // The master answers with one status byte and closes.
        let _ = timeout(Duration::from_secs(2), reader_task).await;
    }
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
