//! A session's completion: one transaction holds the session row `FOR
//! UPDATE` from reading the parts until the state says completed (or
//! failed); every check runs before anything at the destination changes,
//! then the verified file is renamed into place. Also the end of a session
//! as failed or aborted.

use std::time::Duration;

use uuid::Uuid;

use super::Ingest;
use crate::store::{Part, Session, SessionDone, SessionLock, SessionState, StoreError};
use moosefs::{MfsError, Name};

/// How a completion attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Completed { final_inode: u32 },
    NotReady,
    AlreadyFinished,
    Failed(String),
}

impl Completion {
    /// The session state this completion ends in, if it ends the session.
    fn final_state(&self) -> Option<SessionState> {
        match self {
            Completion::Completed { .. } => Some(SessionState::Completed),
            Completion::Failed(_) => Some(SessionState::Failed),
            Completion::NotReady | Completion::AlreadyFinished => None,
        }
    }
}

/// Whether a completion transaction that does not finish its session
/// still commits: yes when it also recorded the session's last part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeepWrites {
    Yes,
    No,
}

/// What the MooseFS side of a completion decided, before it is recorded.
pub(super) enum Finish {
    Completed(PlacedFile),
    Failed(String),
}

/// A session's file as a completion put it in place.
#[derive(Debug)]
pub(super) struct PlacedFile {
    pub(super) md5: Option<String>,
    pub(super) crc: u32,
    pub(super) final_inode: u32,
    /// A foreign file at the destination was replaced (`overwrite`).
    pub(super) replaced: bool,
}

impl PlacedFile {
    /// What the completion transaction records of it.
    pub(super) fn done<'a>(&'a self, session: &'a Session) -> SessionDone<'a> {
        SessionDone {
            session,
            md5: self.md5.as_deref(),
            crc32c: self.crc,
            final_inode: self.final_inode,
            replaced: self.replaced,
        }
    }
}

/// What a completion found at its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtDest {
    Nothing,
    Directory,
    /// The session's committed single part itself (renamed by a run that
    /// did not commit).
    ThisFile(u32),
    /// A file an earlier run of this session's completion put there
    /// (recorded inode, the session's length and CRC-32C): replaced.
    Ours,
    /// Anything else: replaced only with `overwrite`.
    Foreign,
}

/// A completion check that did not pass: why the session fails.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct CheckFailed(pub(super) String);

/// Why the data's MD5 (if known) is not the one the upload asked for.
pub(super) fn md5_mismatch(session: &Session, actual: Option<&str>) -> Option<String> {
    match (&session.expected_md5, actual) {
        (Some(expected), Some(actual)) if expected != actual => Some(format!(
            "md5 mismatch: expected {expected}, the data has {actual}"
        )),
        _ => None,
    }
}

/// The size and CRC-32C checks of a completion, before anything moves: the
/// committed parts add up to the session's size and their combined CRC-32C
/// is the expected one (if one was given). The whole-file CRC-32C, or why
/// the session fails.
fn verify_parts(session: &Session, parts: &[Part]) -> Result<u32, CheckFailed> {
    let total: i64 = parts.iter().map(|p| p.size).sum();
    if total != session.size {
        return Err(CheckFailed(format!(
            "size mismatch: the parts hold {total} bytes, the upload has {}",
            session.size
        )));
    }
    // Whole-file CRC-32C from the parts' CRCs, no data read.
    let crc = match parts {
        [one] => one.crc32c.unwrap_or(0) as u32,
        _ => parts.iter().fold(0u32, |crc, p| {
            crc32c::crc32c_combine(crc, p.crc32c.unwrap_or(0) as u32, p.size as usize)
        }),
    };
    match session.expected_crc32c {
        Some(expected) if expected as u32 != crc => Err(CheckFailed(format!(
            "crc32c mismatch: expected {:08x}, the data has {crc:08x}",
            expected as u32
        ))),
        _ => Ok(crc),
    }
}

/// Why a completion could not run (it is retried later; nothing was committed).
#[derive(Debug, thiserror::Error)]
pub enum CompletionError {
    #[error("MooseFS: {0}")]
    Mfs(#[from] MfsError),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The task reading a part into the assembled file failed.
    #[error("{0}")]
    PartReader(#[from] tokio::task::JoinError),
    /// The assembled file's length is not the session's size.
    #[error("assembled file has {length} bytes, expected {expected}")]
    AssembledLength { length: u64, expected: i64 },
    /// A group commit met a session of several parts.
    #[error("session {session} has {parts} parts, not one")]
    NotSinglePart { session: Uuid, parts: i32 },
    /// A committed part row has no staging path.
    #[error("committed part without a staging path")]
    MissingStagingPath,
    /// A committed part's staging path is the root.
    #[error("empty staging path")]
    EmptyStagingPath,
    #[error("the completion's MooseFS work did not finish within its deadline of {0:?}")]
    Deadline(Duration),
}

impl From<sqlx::Error> for CompletionError {
    fn from(e: sqlx::Error) -> Self {
        CompletionError::Store(StoreError::from(e))
    }
}

impl Ingest {
    /// Takes the destination locks of `sessions` in `lock` (see
    /// [`SessionLock::lock_destinations`]): completions to one destination
    /// run one after the other, each seeing what the one before it left.
    /// Whether the destinations are all different.
    pub(super) async fn lock_destinations<'s>(
        &self,
        lock: &mut SessionLock,
        sessions: impl Iterator<Item = &'s Session>,
    ) -> Result<bool, CompletionError> {
        let mut dests = Vec::new();
        for session in sessions {
            dests.push(self.cfg.dest_path(&session.dest)?.to_string());
        }
        lock.lock_destinations(&dests).await?;
        let count = dests.len();
        dests.sort_unstable();
        dests.dedup();
        Ok(dests.len() == count)
    }

    /// Ends an open session as failed or aborted; its parts' staging inodes
    /// are recorded as abandoned. Returns false if it was not open.
    #[tracing::instrument(level = "info", skip(self, why), fields(session = %id, state = %new_state))]
    pub async fn end_session(
        &self,
        id: Uuid,
        new_state: SessionState,
        why: &str,
    ) -> Result<bool, StoreError> {
        let (mut lock, session) = self.store.lock_session(id).await?;
        let Some(session) = session.filter(|s| s.state == SessionState::Open) else {
            lock.rollback().await?;
            return Ok(false);
        };
        lock.end(&session, new_state, why).await?;
        lock.abandon_parts(id).await?;
        lock.commit().await?;
        crate::metrics::session_finished(new_state.as_str(), session.created_at);
        Ok(true)
    }

    /// Completes a session if every part is committed: one transaction holds
    /// the session row `FOR UPDATE` from reading the parts until the state
    /// says completed. The MooseFS work is idempotent (safe to re-run after a
    /// crash before the commit).
    #[tracing::instrument(name = "completion", level = "info", skip(self), fields(session = %id))]
    pub async fn complete(&self, id: Uuid) -> Result<Completion, CompletionError> {
        let (lock, session) = self.store.lock_session(id).await?;
        self.complete_locked(lock, session, None, KeepWrites::No)
            .await
    }

    /// The completion inside a transaction that holds the session row
    /// `FOR UPDATE` (`session` as read under that lock); it commits or rolls
    /// back that transaction (commits it also when the session does not
    /// finish if `keep` says the transaction holds other writes that must
    /// stand). `parts`: the session's parts if this transaction already read
    /// (or wrote) all of them.
    pub(super) async fn complete_locked(
        &self,
        mut lock: SessionLock,
        session: Option<Session>,
        parts: Option<Vec<Part>>,
        keep: KeepWrites,
    ) -> Result<Completion, CompletionError> {
        let started = std::time::Instant::now();
        let created_at = session.as_ref().map(|s| s.created_at);
        let completion = match self.complete_in_lock(&mut lock, session, parts).await {
            Ok(c) => c,
            Err(e) => {
                self.completion_failed();
                return Err(e);
            }
        };
        match (completion.final_state(), created_at) {
            (Some(state), Some(created_at)) => {
                lock.commit().await?;
                if state == SessionState::Completed {
                    crate::metrics::metrics().completion_succeeded(started.elapsed());
                }
                crate::metrics::session_finished(state.as_str(), created_at);
            }
            _ if keep == KeepWrites::Yes => lock.commit().await?,
            _ => lock.rollback().await?,
        }
        Ok(completion)
    }

    /// Counts a completion that failed (it is retried).
    pub(super) fn completion_failed(&self) {
        crate::metrics::metrics().completion_failed();
        // A cached directory may be gone: look paths up afresh next time.
        self.dirs.forget();
    }

    /// The completion's work inside a transaction that holds the session
    /// row `FOR UPDATE`; the caller commits it (`Completed`, `Failed`) or
    /// rolls it back (`NotReady`, `AlreadyFinished`: nothing was written).
    async fn complete_in_lock(
        &self,
        lock: &mut SessionLock,
        session: Option<Session>,
        known_parts: Option<Vec<Part>>,
    ) -> Result<Completion, CompletionError> {
        let Some(session) = session else {
            return Ok(Completion::AlreadyFinished);
        };
        if session.state != SessionState::Open {
            return Ok(Completion::AlreadyFinished);
        }
        let id = session.id;
        let parts = match known_parts {
            Some(parts) if parts.len() == session.part_count as usize => parts,
            _ => lock.parts(id).await?,
        };
        let mut inodes = Vec::with_capacity(parts.len());
        for p in &parts {
            match (p.committed_token, p.staging_inode) {
                (Some(_), Some(inode)) => inodes.push(inode as u32),
                _ => return Ok(Completion::NotReady),
            }
        }
        self.lock_destinations(lock, std::iter::once(&session))
            .await?;
        let finish = self.finish_file(&session, &parts, &inodes).await?;
        self.record_finish(lock, &session, parts.len(), finish)
            .await
    }

    /// The MooseFS side of a completion, nothing recorded yet, bounded by
    /// the completion deadline (it runs under the session row lock): see
    /// [`Ingest::finish_file_unbounded`].
    #[tracing::instrument(name = "finish", level = "info", skip_all, fields(session = %session.id))]
    pub(super) async fn finish_file(
        &self,
        session: &Session,
        parts: &[Part],
        inodes: &[u32],
    ) -> Result<Finish, CompletionError> {
        let deadline = self.cfg.completion_deadline;
        tokio::time::timeout(deadline, self.finish_file_unbounded(session, parts, inodes))
            .await
            .map_err(|_| CompletionError::Deadline(deadline))?
    }

    /// Every check that can fail runs before anything at the destination
    /// changes: the size and the whole-file CRC-32C (combined from the
    /// parts'), what is at the destination (a directory, a foreign file
    /// without `overwrite`), the MD5 (a single part's from its write, an
    /// assembly's read from the assembled staging file). Only then is the
    /// verified file renamed into place. Recognises a file a crashed run of
    /// this session already put in place (see [`Ingest::what_is_at_dest`]).
    async fn finish_file_unbounded(
        &self,
        session: &Session,
        parts: &[Part],
        inodes: &[u32],
    ) -> Result<Finish, CompletionError> {
        let dest = self.cfg.dest_path(&session.dest)?;
        let (parent_path, dest_name) = dest.split_last().expect("dest is not the root");
        let parent = match self.dirs.ensure(&self.mfs, &parent_path).await {
            Ok(p) => p,
            Err(MfsError::NotDirectory(_)) => {
                let why = format!("a parent of {} is a file", session.dest);
                return Ok(Finish::Failed(why));
            }
            Err(e) => return Err(e.into()),
        };
        let crc = match verify_parts(session, parts) {
            Ok(crc) => crc,
            Err(CheckFailed(why)) => return Ok(Finish::Failed(why)),
        };
        let single_md5 = match parts {
            [one] => one.md5.clone(),
            _ => None,
        };
        // A single part's MD5 is known from its write: checked before
        // anything else (an assembly's after it is built, below).
        if let Some(why) = md5_mismatch(session, single_md5.as_deref()) {
            return Ok(Finish::Failed(why));
        }
        let replaced = match self
            .what_is_at_dest(session, inodes, crc, parent, dest_name)
            .await?
        {
            AtDest::Directory => {
                let why = format!("destination {} is a directory", session.dest);
                return Ok(Finish::Failed(why));
            }
            AtDest::ThisFile(final_inode) => {
                return Ok(Finish::Completed(PlacedFile {
                    md5: single_md5,
                    crc,
                    final_inode,
                    replaced: false,
                }))
            }
            AtDest::Foreign if !session.overwrite => {
                let why = format!(
                    "destination {} exists (set \"overwrite\": true to replace it)",
                    session.dest
                );
                return Ok(Finish::Failed(why));
            }
            AtDest::Foreign => true,
            AtDest::Nothing | AtDest::Ours => false,
        };
        let file = match self.verified_final_file(session, parts, inodes).await? {
            Ok(file) => file,
            Err(CheckFailed(why)) => return Ok(Finish::Failed(why)),
        };
        if parts.len() > 1 {
            // A single part's inode was recorded before the lock.
            self.store
                .record_placements(&[(session.id, file.inode)])
                .await?;
        }
        self.mfs
            .rename(file.dir, &file.name, parent, dest_name)
            .await?;
        Ok(Finish::Completed(PlacedFile {
            md5: file.md5,
            crc,
            final_inode: file.inode,
            replaced,
        }))
    }

    /// What is at a session's destination. A file is this session's own
    /// only by inode identity: the committed single part itself
    /// ([`AtDest::ThisFile`]), or an inode a run of this session's
    /// completion recorded before renaming it there (a run that crashed
    /// before its commit) whose length and whole-file CRC-32C are the
    /// session's ([`AtDest::Ours`]; the read happens only in that case).
    /// Anything else, a file with the right length and CRC included, is
    /// [`AtDest::Foreign`]: a 32-bit CRC is forgeable.
    async fn what_is_at_dest(
        &self,
        session: &Session,
        inodes: &[u32],
        crc: u32,
        parent: u32,
        dest_name: &Name,
    ) -> Result<AtDest, CompletionError> {
        let (inode, attr) = match self.mfs.lookup(parent, dest_name).await {
            Ok(found) => found,
            Err(MfsError::NotFound(_)) => return Ok(AtDest::Nothing),
            Err(e) => return Err(e.into()),
        };
        if attr.is_dir() {
            return Ok(AtDest::Directory);
        }
        if attr.length != session.size as u64 {
            return Ok(AtDest::Foreign);
        }
        if inodes.len() == 1 && inode == inodes[0] {
            return Ok(AtDest::ThisFile(inode));
        }
        if self.store.placed(session.id, inode).await? && self.crc32c_of(inode).await? == crc {
            return Ok(AtDest::Ours);
        }
        Ok(AtDest::Foreign)
    }

    /// Records what [`Ingest::finish_file`] decided, in the transaction
    /// holding the session row.
    async fn record_finish(
        &self,
        lock: &mut SessionLock,
        session: &Session,
        part_count: usize,
        finish: Finish,
    ) -> Result<Completion, CompletionError> {
        match finish {
            Finish::Completed(placed) => {
                lock.complete(placed.done(session)).await?;
                // A single part IS the final file; the parts of an assembly are garbage.
                if part_count > 1 {
                    lock.abandon_parts(session.id).await?;
                }
                Ok(Completion::Completed {
                    final_inode: placed.final_inode,
                })
            }
            Finish::Failed(why) => self.finish_failed(lock, session, why).await,
        }
    }

    pub(super) async fn finish_failed(
        &self,
        lock: &mut SessionLock,
        session: &Session,
        why: String,
    ) -> Result<Completion, CompletionError> {
        lock.end(session, SessionState::Failed, &why).await?;
        lock.abandon_parts(session.id).await?;
        Ok(Completion::Failed(why))
    }
}
