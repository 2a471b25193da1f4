//! Part attempts of a pushed upload: a fencing token, a fresh staging inode
//! written from the request body and verified, the commit (or the inode
//! recorded as abandoned). Each step holds the session row `FOR SHARE`
//! ([`shared::store::Store::share_session`]), so a freeze or an end of the
//! upload never interleaves with it.

use moosefs::{MfsError, MfsPath, WriteOptions};
use shared::domain::FencingToken;
use shared::store::{PushedInode, PushedPart, SessionLock, SessionState};
use tokio::io::AsyncRead;
use uuid::Uuid;

use super::{db_statement, Pipeline, PipelineError};
use crate::index;

/// A staging file written from a request body, verified, not committed yet.
#[derive(Debug, Clone)]
pub struct WrittenPart {
    pub token: FencingToken,
    pub inode: u32,
    pub path: String,
    pub size: u64,
    /// The bytes' MD5: always known for a written part; `None` for a
    /// snapshot of a file whose MD5 its completion did not compute (see
    /// [`Pipeline::snapshot_part`]).
    pub md5: Option<String>,
    pub crc32c: u32,
    /// The bytes' checksum in the upload's algorithm (base64), set by the
    /// endpoint from what it hashed while they streamed; `None` for a
    /// snapshot (migration 0009).
    pub checksum: Option<String>,
}

impl WrittenPart {
    /// This attempt's inode, as a part `part_number` nothing will reference.
    pub(super) fn abandoned(&self, part_number: i32) -> PushedInode<'_> {
        PushedInode {
            inode: i64::from(self.inode),
            path: &self.path,
            part_number,
            token: self.token,
        }
    }
}

/// How a part commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartCommitted {
    /// The part row now names this attempt's inode.
    Committed,
    /// A newer attempt of the same part committed first: this one is abandoned.
    Superseded,
    /// The upload is no longer receiving (completed, aborted): abandoned.
    UploadClosed,
}

impl PartCommitted {
    /// Why the attempt's own inode is abandoned, if it is.
    fn abandon_reason(self) -> Option<&'static str> {
        match self {
            PartCommitted::Committed => None,
            PartCommitted::Superseded => Some("s3 part superseded by a newer attempt"),
            PartCommitted::UploadClosed => Some("s3 part committed after its upload ended"),
        }
    }
}

/// A committed part as [`Pipeline::freeze`] shows it to the S3 checks.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommittedPart {
    pub part_number: i32,
    pub token: FencingToken,
    pub size: i64,
    /// `None` only for a part that is a snapshot of a file whose MD5 is
    /// unknown (CopyObject), never for a part of a multipart upload.
    pub md5: Option<String>,
    pub crc32c: i64,
    pub staging_inode: i64,
    pub staging_path: String,
    pub committed_at: chrono::DateTime<chrono::Utc>,
    /// The part's checksum in its upload's algorithm (base64; `None` for a
    /// snapshot, and for parts committed before migration 0009).
    pub checksum: Option<String>,
}

impl CommittedPart {
    /// The part as the session's committed part row.
    pub(super) fn pushed(&self) -> PushedPart<'_> {
        PushedPart {
            token: self.token,
            size: self.size,
            staging_inode: self.staging_inode,
            staging_path: &self.staging_path,
            md5: self.md5.as_deref(),
            crc32c: self.crc32c,
        }
    }

    /// The part's inode, as one nothing will reference.
    pub(super) fn abandoned(&self) -> PushedInode<'_> {
        PushedInode {
            inode: self.staging_inode,
            path: &self.staging_path,
            part_number: self.part_number,
            token: self.token,
        }
    }
}

impl Pipeline {
    /// Starts an attempt of part `part_number` of a receiving upload: its
    /// fencing token. `None` if the upload is not receiving.
    pub async fn start_part(
        &self,
        upload: Uuid,
        part_number: i32,
    ) -> Result<Option<FencingToken>, PipelineError> {
        let (mut lock, receiving) = self.share_upload(upload).await?;
        if !receiving {
            return Ok(None);
        }
        let token = index::next_part_token(lock.conn(), upload, part_number).await?;
        lock.commit().await.map_err(db_statement)?;
        Ok(Some(token))
    }

    /// The staging directory (made with the upload's goal) and the staging
    /// file of attempt `token` of part `part_number`: where a written part
    /// and a copy's snapshot part both go.
    pub(super) async fn staging_target(
        &self,
        upload: Uuid,
        part_number: i32,
        token: FencingToken,
    ) -> Result<(u32, MfsPath), PipelineError> {
        let cfg = &self.ingest.cfg;
        let dir = self
            .ingest
            .dirs
            .ensure_with_goal(
                &self.ingest.mfs,
                &cfg.staging_dir(self.goal),
                Some(self.goal),
            )
            .await?;
        Ok((dir, cfg.staging_file(self.goal, upload, part_number, token)))
    }

    /// Writes `body` (exactly `declared` bytes) into a fresh staging inode
    /// of the attempt: returns only when every replica acknowledged every
    /// block and the replicas' CRCs matched (the MooseFS writer's
    /// guarantee). A failed write's inode is recorded as abandoned.
    pub async fn write_part(
        &self,
        upload: Uuid,
        part_number: i32,
        token: FencingToken,
        declared: u64,
        body: impl AsyncRead + Unpin,
    ) -> Result<WrittenPart, PipelineError> {
        let _budget = self.ingest.write_budget.reserve(declared).await;
        let (dir, staging) = self.staging_target(upload, part_number, token).await?;
        let name = staging.file_name().expect("staging file has a name");
        let path = staging.to_string();
        let file = match self.ingest.mfs.create(dir, name, 0o644).await {
            Ok(f) => f,
            Err(e) => {
                self.ingest.dirs.forget();
                return Err(e.into());
            }
        };
        let opts = WriteOptions {
            required_copies: Some(self.goal),
            compute_md5: true,
            verify: true,
            ..self.ingest.mfs.config().write.clone()
        };
        shared::metrics::metrics().part_started();
        let written = match self.ingest.mfs.write_new_file(&file, body, &opts).await {
            Ok(outcome) if outcome.length == declared => Ok(outcome),
            Ok(outcome) => Err(PipelineError::BodyLength {
                got: outcome.length,
                declared,
            }),
            Err(MfsError::Source(e)) => Err(PipelineError::Body(e.to_string())),
            Err(e) => Err(e.into()),
        };
        match written {
            Ok(outcome) => Ok(WrittenPart {
                token,
                inode: file.inode,
                path,
                size: outcome.length,
                md5: outcome.md5_hex(),
                crc32c: outcome.crc32c,
                checksum: None,
            }),
            Err(e) => {
                self.abandon(
                    upload,
                    part_number,
                    token,
                    file.inode,
                    &path,
                    "s3 part write failed",
                )
                .await;
                Err(e)
            }
        }
    }

    /// Records a written staging inode nothing will reference as abandoned
    /// (the collector deletes it). Best effort: the staging sweep records
    /// what this misses once the session has ended.
    pub async fn abandon(
        &self,
        upload: Uuid,
        part_number: i32,
        token: FencingToken,
        inode: u32,
        path: &str,
        reason: &'static str,
    ) {
        shared::metrics::metrics().part_abandoned(shared::metrics::AbandonReason::AttemptFailed);
        if let Err(e) = self
            .ingest
            .store
            .abandon_attempt(upload, part_number, token, inode, path, reason)
            .await
        {
            tracing::warn!(%upload, part_number, inode, error = %e,
                "recording an abandoned S3 part inode failed; the staging sweep will");
        }
    }

    /// Commits a written part: the session row `FOR SHARE` (a freeze takes
    /// it `FOR UPDATE`, so the two never interleave), the state checked,
    /// the part row updated only if this attempt's token is newer than the
    /// committed one; the inode it replaces is recorded as abandoned.
    pub async fn commit_part(
        &self,
        upload: Uuid,
        part_number: i32,
        part: &WrittenPart,
    ) -> Result<PartCommitted, PipelineError> {
        let (mut lock, receiving) = self.share_upload(upload).await?;
        let outcome = commit_locked(&mut lock, receiving, upload, part_number, part).await?;
        lock.commit().await.map_err(db_statement)?;
        count_commit(outcome, part);
        Ok(outcome)
    }

    /// The upload's session row held `FOR SHARE` until the lock ends, and
    /// whether the upload is receiving parts.
    async fn share_upload(&self, upload: Uuid) -> Result<(SessionLock, bool), PipelineError> {
        let (lock, session_state) = self
            .ingest
            .store
            .share_session(upload)
            .await
            .map_err(db_statement)?;
        Ok((lock, session_state == Some(SessionState::Receiving)))
    }

    /// The committed parts of a receiving upload, ascending.
    pub async fn committed_parts(&self, upload: Uuid) -> Result<Vec<CommittedPart>, PipelineError> {
        Ok(index::committed_parts(self.pool(), upload).await?)
    }
}

/// In a transaction holding the upload's session row (`receiving`: the
/// upload takes parts), commits `part` as the attempt of part
/// `part_number` ([`commit_if_newest`]), or records its inode as abandoned
/// when it is not committed. The caller commits the transaction.
pub(super) async fn commit_locked(
    lock: &mut SessionLock,
    receiving: bool,
    upload: Uuid,
    part_number: i32,
    part: &WrittenPart,
) -> Result<PartCommitted, PipelineError> {
    let outcome = if receiving {
        commit_if_newest(lock, upload, part_number, part).await?
    } else {
        PartCommitted::UploadClosed
    };
    if let Some(reason) = outcome.abandon_reason() {
        lock.abandon_pushed(upload, &[part.abandoned(part_number)], reason)
            .await
            .map_err(db_statement)?;
    }
    Ok(outcome)
}

/// Makes `part` the committed attempt of its part unless a newer attempt
/// committed first; the attempt it replaces is recorded as abandoned.
async fn commit_if_newest(
    lock: &mut SessionLock,
    upload: Uuid,
    part_number: i32,
    part: &WrittenPart,
) -> Result<PartCommitted, PipelineError> {
    let current = index::lock_part(lock.conn(), upload, part_number).await?;
    if current.committed_token.is_some_and(|c| c >= part.token) {
        return Ok(PartCommitted::Superseded);
    }
    if let (Some(token), Some(inode), Some(path)) = (
        current.committed_token,
        current.staging_inode,
        &current.staging_path,
    ) {
        let replaced = PushedInode {
            inode,
            path,
            part_number,
            token,
        };
        lock.abandon_pushed(upload, &[replaced], "s3 part replaced by a newer attempt")
            .await
            .map_err(db_statement)?;
    }
    index::record_part_commit(lock.conn(), upload, part_number, part).await?;
    Ok(PartCommitted::Committed)
}

pub(super) fn count_commit(outcome: PartCommitted, part: &WrittenPart) {
    let m = shared::metrics::metrics();
    match outcome {
        PartCommitted::Committed => {
            m.part_committed(part.size);
        }
        PartCommitted::Superseded => {
            m.part_abandoned(shared::metrics::AbandonReason::Superseded);
        }
        PartCommitted::UploadClosed => {
            m.part_abandoned(shared::metrics::AbandonReason::SessionClosed);
        }
    }
}
