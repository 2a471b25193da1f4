//! The life of a pushed upload as a session: opened `receiving` (with the
//! endpoint's upload row), frozen into committed parts (`open`), completed
//! by the pipeline's own locked completion, or ended (failed, aborted) with
//! its parts' inodes abandoned.

use std::collections::HashMap;

use shared::ingest::Completion;
use shared::store::{
    NewPushed, NewPushedSession, PushedInode, PushedPart, Session, SessionLock, SessionState,
};
use uuid::Uuid;

use super::{db_statement, CommittedPart, Pipeline, PipelineError};
use crate::index;

/// An upload to open: where to, and what the endpoint records with it.
#[derive(Debug, Clone, Copy)]
pub struct NewUpload<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub multipart: bool,
    pub content_type: Option<&'a str>,
    pub metadata: Option<&'a s3s::dto::Metadata>,
    /// The access key that opened it.
    pub who: &'a str,
    /// A multipart upload's `x-amz-checksum-algorithm` and
    /// `x-amz-checksum-type` (migration 0009; `None`: it named none).
    pub checksum_algorithm: Option<&'a str>,
    pub checksum_type: Option<&'a str>,
    /// The object's tags once completed (a JSON array, migration 0010).
    pub tags: &'a serde_json::Value,
}

/// What the S3 checks chose to freeze: part numbers in order and the ETag
/// the upload will have, plus what a repeated Complete is compared with.
#[derive(Debug, Clone)]
pub struct FreezePlan {
    pub part_numbers: Vec<i32>,
    pub etag: String,
    pub listed: serde_json::Value,
    /// The object's stored `x-amz-checksum-*` values (a JSON object).
    pub checksums: serde_json::Value,
}

/// How a freeze ended.
#[derive(Debug)]
pub enum Frozen<E> {
    /// The parts are committed `upload_parts` rows now; complete next.
    /// `checksums`: the object's, as the plan chose them.
    Now {
        etag: String,
        checksums: serde_json::Value,
    },
    /// An earlier Complete froze it already (with `listed` as its list).
    Before {
        etag: String,
        listed: serde_json::Value,
        state: SessionState,
    },
    /// No such upload, or it was aborted or failed.
    Gone,
    /// The S3 checks refused the list (nothing changed).
    Refused(E),
}

/// A completed upload's file.
#[derive(Debug, Clone)]
pub struct Placed {
    pub inode: u32,
    pub size: i64,
    pub finished_at: chrono::DateTime<chrono::Utc>,
}

/// How a completion ended.
#[derive(Debug)]
pub enum Completed {
    Placed(Placed),
    /// The pipeline refused it (e.g. a parent of the key is a file); the
    /// session failed with this reason.
    Failed(String),
}

impl Pipeline {
    /// Opens an S3 upload: its session (state `receiving`) and the
    /// endpoint's upload row, in one transaction. A multipart upload is
    /// refused ([`PipelineError::TooManyOpenUploads`], nothing written) when
    /// its access key already has the endpoint's bound of uploads receiving
    /// parts (PutObjects in flight count among them).
    pub async fn open_upload(&self, upload: &NewUpload<'_>) -> Result<Uuid, PipelineError> {
        let id = Uuid::new_v4();
        let dest = self.dest(upload.bucket, upload.key)?;
        let max_receiving = if upload.multipart {
            self.max_open_uploads
        } else {
            None
        };
        let created = self
            .ingest
            .store
            .create_pushed_session(&NewPushedSession {
                id,
                request_id: &format!("s3:{id}"),
                source: &format!("s3-push:{}", upload.who),
                dest: &dest,
                goal: self.goal,
                max_receiving,
            })
            .await
            .map_err(db_statement)?;
        let mut lock = match created {
            NewPushed::Created(lock) => lock,
            NewPushed::TooMany { receiving } => {
                return Err(PipelineError::TooManyOpenUploads {
                    open: receiving,
                    limit: max_receiving.unwrap_or_default(),
                })
            }
        };
        index::insert_upload(lock.conn(), id, upload).await?;
        lock.commit().await.map_err(db_statement)?;
        shared::metrics::metrics().pushed_session_created();
        Ok(id)
    }

    /// Whether an upload is still receiving parts (not frozen, not ended).
    pub async fn is_receiving(&self, upload: Uuid) -> Result<bool, PipelineError> {
        self.ingest
            .store
            .is_receiving(upload)
            .await
            .map_err(db_statement)
    }

    /// Freezes an upload for completion, in one transaction holding the
    /// session row `FOR UPDATE`: `check` sees the committed parts as they
    /// are under that lock and chooses; the chosen parts become the
    /// session's committed `upload_parts` rows (in order, offsets from their
    /// sizes), every other committed part's inode is recorded as abandoned,
    /// and the session becomes `open` with its size and part count. From
    /// then on a part commit of this upload finds it closed.
    pub async fn freeze<E>(
        &self,
        upload: Uuid,
        check: impl FnOnce(&[CommittedPart]) -> Result<FreezePlan, E>,
    ) -> Result<Frozen<E>, PipelineError> {
        let (mut lock, session) = self.ingest.store.lock_session(upload).await?;
        let Some(session) = session else {
            return Ok(Frozen::Gone);
        };
        if session.state != SessionState::Receiving {
            return frozen_before(lock, upload, session).await;
        }
        let parts = index::committed_parts(lock.conn(), upload).await?;
        let plan = match check(&parts) {
            Ok(plan) => plan,
            Err(e) => {
                lock.rollback().await?;
                return Ok(Frozen::Refused(e));
            }
        };
        let by_number: HashMap<i32, &CommittedPart> =
            parts.iter().map(|p| (p.part_number, p)).collect();
        let chosen: Vec<PushedPart> = plan
            .part_numbers
            .iter()
            .map(|n| by_number[n].pushed())
            .collect();
        lock.freeze_pushed(upload, &chosen, &self.worker)
            .await
            .map_err(db_statement)?;
        let unlisted: Vec<PushedInode> = parts
            .iter()
            .filter(|p| !plan.part_numbers.contains(&p.part_number))
            .map(CommittedPart::abandoned)
            .collect();
        lock.abandon_pushed(
            upload,
            &unlisted,
            "s3 part not listed in CompleteMultipartUpload",
        )
        .await
        .map_err(db_statement)?;
        index::record_frozen_list(
            lock.conn(),
            upload,
            &plan.etag,
            &plan.listed,
            &plan.checksums,
        )
        .await?;
        lock.commit().await?;
        Ok(Frozen::Now {
            etag: plan.etag,
            checksums: plan.checksums,
        })
    }

    /// Runs the pipeline's completion of a frozen upload (its one locked
    /// transaction, which also writes the object row: migration 0007) and
    /// reads what it put in place.
    pub async fn complete(&self, upload: Uuid) -> Result<Completed, PipelineError> {
        match self.ingest.complete(upload).await? {
            Completion::Failed(why) => return Ok(Completed::Failed(why)),
            Completion::Completed { .. } | Completion::AlreadyFinished => {}
            Completion::NotReady => {
                return Err(PipelineError::Config(format!(
                    "upload {upload} was frozen with an uncommitted part"
                )))
            }
        }
        let session = self.ingest.store.session(upload).await?;
        match session {
            Some(s) if s.state == SessionState::Completed => Ok(Completed::Placed(Placed {
                inode: s.final_inode.unwrap_or_default() as u32,
                size: s.size,
                finished_at: s.finished_at.unwrap_or(s.updated_at),
            })),
            Some(s) if s.state == SessionState::Failed => Ok(Completed::Failed(
                s.error.unwrap_or_else(|| "the upload failed".into()),
            )),
            Some(s) => Err(PipelineError::Config(format!(
                "upload {upload} is {} after its completion",
                s.state
            ))),
            None => Err(PipelineError::Config(format!("upload {upload} vanished"))),
        }
    }

    /// Fails a receiving upload (e.g. its only part's digest was wrong):
    /// `upload.failed` event, its parts' inodes abandoned.
    pub async fn fail_upload(&self, upload: Uuid, why: &str) -> Result<bool, PipelineError> {
        self.end_upload(upload, SessionState::Failed, why, "s3 upload failed")
            .await
    }

    /// Aborts a receiving upload (AbortMultipartUpload): state `aborted`,
    /// `upload.aborted` event, every committed part's inode abandoned.
    /// False if it was not receiving.
    pub async fn abort_upload(&self, upload: Uuid) -> Result<bool, PipelineError> {
        self.end_upload(
            upload,
            SessionState::Aborted,
            "aborted by AbortMultipartUpload",
            "s3 upload aborted",
        )
        .await
    }

    async fn end_upload(
        &self,
        upload: Uuid,
        new_state: SessionState,
        why: &str,
        abandon_reason: &'static str,
    ) -> Result<bool, PipelineError> {
        let (mut lock, session) = self.ingest.store.lock_session(upload).await?;
        let Some(session) = session.filter(|s| s.state == SessionState::Receiving) else {
            lock.rollback().await?;
            return Ok(false);
        };
        lock.end_pushed(&session, new_state, why, abandon_reason)
            .await
            .map_err(db_statement)?;
        lock.commit().await?;
        shared::metrics::session_finished(new_state.as_str(), session.created_at);
        Ok(true)
    }
}

/// The answer to a freeze of an upload no longer receiving: frozen by an
/// earlier Complete (then with the list it was frozen with), or gone.
async fn frozen_before<E>(
    mut lock: SessionLock,
    upload: Uuid,
    session: Session,
) -> Result<Frozen<E>, PipelineError> {
    let frozen = index::frozen_list(lock.conn(), upload).await?;
    lock.rollback().await?;
    Ok(match frozen {
        Some((Some(etag), Some(listed)))
            if session.state == SessionState::Open || session.state == SessionState::Completed =>
        {
            Frozen::Before {
                etag,
                listed,
                state: session.state,
            }
        }
        _ => Frozen::Gone,
    })
}
