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

use super::parts::{commit_locked, count_commit};
use super::{db_statement, CommittedPart, PartCommitted, Pipeline, PipelineError, WrittenPart};
use crate::index;
use shared::domain::FencingToken;

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

/// How [`Pipeline::commit_and_freeze`] ended.
#[derive(Debug)]
pub enum CommitAndFreeze<E> {
    /// The part is committed; the freeze ended so.
    Frozen(Frozen<E>),
    /// The attempt was not committed (its inode is recorded as abandoned).
    NotCommitted(PartCommitted),
}

/// Whether a refused freeze commits its transaction (it holds a part
/// commit) or rolls it back (nothing else was written).
#[derive(Debug, Clone, Copy)]
enum KeepOnRefusal {
    Yes,
    No,
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
        let (lock, id) = self.open_in_transaction(upload).await?;
        lock.commit().await.map_err(db_statement)?;
        shared::metrics::metrics().pushed_session_created();
        Ok(id)
    }

    /// The fencing token of the first attempt of a part.
    pub const FIRST_ATTEMPT: FencingToken = FencingToken(1);

    /// Opens single-part upload `id` (PutObject) and starts the first
    /// attempt of its only part, in one transaction: the session (state
    /// `receiving`), the endpoint's upload row and part 1's attempt count
    /// (so the attempt's fencing token is [`Pipeline::FIRST_ATTEMPT`]). The
    /// transaction that creates the session row holds it locked
    /// (exclusively, until it commits), so counting the attempt here is
    /// what [`Pipeline::start_part`] does under its `FOR SHARE`.
    ///
    /// The attempt's staging file may be created (by the caller) while
    /// this runs, before the session row is committed: its name is known
    /// (the session's new id, part 1, token 1) and nothing else can ever
    /// use that name. A staging file whose session row is not there (yet,
    /// or ever: this transaction failed, the process or PostgreSQL
    /// crashed) is one of "no known session", which the staging sweep
    /// leaves alone for its orphan grace (`INGEST_ORPHAN_GRACE_SECS`, 24 h
    /// by default) and then records for the collector ([`shared::gc`]).
    /// That grace must stay far above the time a staging file can wait for
    /// its session row (this transaction, each statement bounded by the
    /// pool's `statement_timeout`, 120 s by default): a sweep that recorded
    /// a file whose session row then committed would have the collector
    /// delete a part about to be committed. The attempt is committed only
    /// after this transaction, under the session row's lock.
    ///
    /// The commit does not wait for the WAL flush (`synchronous_commit =
    /// off`, this transaction only): nothing is answered on the strength of
    /// it. The next transactions of the upload (the part commit and freeze,
    /// then the completion) are synchronous and their commit records follow
    /// this one's in the WAL, so once either has returned this one is
    /// durable too; if PostgreSQL loses it before, the staging file is one
    /// of no known session (above) and the client, never answered, retries.
    pub async fn open_single(&self, id: Uuid, upload: &NewUpload<'_>) -> Result<(), PipelineError> {
        let mut lock = self.create_session(id, upload).await?;
        let token = index::insert_single_upload(lock.conn(), id, upload).await?;
        if token != Self::FIRST_ATTEMPT {
            return Err(PipelineError::Config(format!(
                "upload {id}: the first attempt of its part got token {}",
                token.0
            )));
        }
        lock.commit().await.map_err(db_statement)?;
        shared::metrics::metrics().pushed_session_created();
        Ok(())
    }

    /// The session and upload rows of a new upload, in a transaction
    /// returned open.
    async fn open_in_transaction(
        &self,
        upload: &NewUpload<'_>,
    ) -> Result<(SessionLock, Uuid), PipelineError> {
        let id = Uuid::new_v4();
        let mut lock = self.create_session(id, upload).await?;
        index::insert_upload(lock.conn(), id, upload).await?;
        Ok((lock, id))
    }

    /// The session row of a new upload (its bound of receiving uploads
    /// checked), in a transaction returned open.
    async fn create_session(
        &self,
        id: Uuid,
        upload: &NewUpload<'_>,
    ) -> Result<SessionLock, PipelineError> {
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
        let lock = match created {
            NewPushed::Created(lock) => lock,
            NewPushed::TooMany { receiving } => {
                return Err(PipelineError::TooManyOpenUploads {
                    open: receiving,
                    limit: max_receiving.unwrap_or_default(),
                })
            }
        };
        Ok(lock)
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
        let (lock, session) = self.ingest.store.lock_session(upload).await?;
        let Some(session) = session else {
            return Ok(Frozen::Gone);
        };
        if session.state != SessionState::Receiving {
            return frozen_before(lock, upload, session).await;
        }
        self.freeze_locked(lock, upload, check, KeepOnRefusal::No)
            .await
    }

    /// Commits the written attempt of part `part_number` of a single-part
    /// upload (PutObject) and freezes the upload, in one transaction holding
    /// the session row `FOR UPDATE`: what [`Pipeline::commit_part`] and then
    /// [`Pipeline::freeze`] do, with one lock and one commit. An attempt that
    /// is not committed (superseded, upload closed) has its inode recorded
    /// as abandoned and nothing is frozen; a refused freeze still commits
    /// the part (its inode is then the upload's, abandoned when it ends).
    pub async fn commit_and_freeze<E>(
        &self,
        upload: Uuid,
        part_number: i32,
        part: &WrittenPart,
        check: impl FnOnce(&[CommittedPart]) -> Result<FreezePlan, E>,
    ) -> Result<CommitAndFreeze<E>, PipelineError> {
        let (mut lock, session) = self.ingest.store.lock_session(upload).await?;
        let receiving = session.is_some_and(|s| s.state == SessionState::Receiving);
        let outcome = commit_locked(&mut lock, receiving, upload, part_number, part).await?;
        if outcome != PartCommitted::Committed {
            lock.commit().await.map_err(db_statement)?;
            count_commit(outcome, part);
            return Ok(CommitAndFreeze::NotCommitted(outcome));
        }
        let frozen = self
            .freeze_locked(lock, upload, check, KeepOnRefusal::Yes)
            .await?;
        count_commit(outcome, part);
        Ok(CommitAndFreeze::Frozen(frozen))
    }

    /// The freeze of a receiving upload whose session row `lock` holds
    /// `FOR UPDATE`; commits (or, refused, rolls back unless `keep` says the
    /// transaction holds other writes that must stand).
    async fn freeze_locked<E>(
        &self,
        mut lock: SessionLock,
        upload: Uuid,
        check: impl FnOnce(&[CommittedPart]) -> Result<FreezePlan, E>,
        keep: KeepOnRefusal,
    ) -> Result<Frozen<E>, PipelineError> {
        let parts = index::committed_parts(lock.conn(), upload).await?;
        let plan = match check(&parts) {
            Ok(plan) => plan,
            Err(e) => {
                match keep {
                    KeepOnRefusal::Yes => lock.commit().await?,
                    KeepOnRefusal::No => lock.rollback().await?,
                }
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
        let completion = self.ingest.complete(upload).await?;
        self.completed(upload, completion).await
    }

    /// [`Pipeline::complete`] for a caller that needs only to know whether
    /// the object is in place (or why it failed): a completion this call
    /// ran says so itself, without reading the session again.
    pub async fn complete_in_place(
        &self,
        upload: Uuid,
    ) -> Result<Result<(), String>, PipelineError> {
        let completion = self.ingest.complete(upload).await?;
        if let Completion::Completed { .. } = completion {
            return Ok(Ok(()));
        }
        Ok(match self.completed(upload, completion).await? {
            Completed::Placed(_) => Ok(()),
            Completed::Failed(why) => Err(why),
        })
    }

    /// What a completion of `upload` that ended in `completion` put in
    /// place, as the session row says.
    async fn completed(
        &self,
        upload: Uuid,
        completion: Completion,
    ) -> Result<Completed, PipelineError> {
        match completion {
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
