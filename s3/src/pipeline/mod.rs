//! The adapter: the ONE module of this crate that calls the shared crate's
//! pipeline (ingest, store, metrics, MooseFS client). Everything else in the
//! crate speaks S3 and calls these functions, so a restructured pipeline core
//! changes this file only.
//!
//! What it adds to the pipeline, in its terms: a session whose parts are
//! *pushed* (an S3 upload). Such a session is created in the state
//! `receiving` (migration 0005) with no `upload_parts` rows; each part
//! attempt takes a fencing token from PostgreSQL (`s3_parts.attempts`),
//! writes a fresh staging inode named like any part attempt's
//! (`<session>-p<part>-t<token>`) from the request body (every replica
//! acknowledged, CRCs verified by the MooseFS writer), and is committed in a
//! transaction that holds the session row `FOR SHARE` and checks the state
//! and the token; a replaced or late inode is recorded in `abandoned_inodes`.
//! [`Pipeline::freeze`] turns the chosen parts into committed `upload_parts`
//! rows (state `open`) in one transaction holding the session row
//! `FOR UPDATE`; [`Pipeline::complete`] then runs the pipeline's own locked
//! completion (`Ingest::complete`: APPEND_SLICE or copy assembly, rename into
//! place, `upload.completed` event, metrics).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use shared::ingest::{Completion, CompletionError, Ingest};
use shared::moosefs::{MfsError, MfsPath, Name, ReplicaChoice, WriteOptions};
use shared::store::{state, SessionLock, Store, StoreError};
use sqlx::PgPool;
use tokio::io::AsyncRead;
use uuid::Uuid;

pub use shared::config::ServiceArgs;

/// The state of a session whose parts are being pushed (migration 0005).
pub const RECEIVING: &str = "receiving";

/// Pipeline failures, as this crate sees them.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("MooseFS: {0}")]
    Mfs(#[from] MfsError),
    #[error("completion: {0}")]
    Completion(#[from] CompletionError),
    #[error("start-up: {0}")]
    Config(String),
    /// The body ended before (or went past) its declared length.
    #[error("the request body has {got} bytes, {declared} were declared")]
    BodyLength { got: u64, declared: u64 },
    /// The body could not be read (client gone, limit, timeout).
    #[error("reading the request body failed: {0}")]
    Body(String),
}

impl PipelineError {
    /// Whether a path a client asked for cannot exist in MooseFS.
    pub fn is_invalid_path(&self) -> bool {
        matches!(self, PipelineError::Mfs(MfsError::InvalidPath { .. }))
    }
}

/// A staging file written from a request body, verified, not committed yet.
#[derive(Debug, Clone)]
pub struct WrittenPart {
    pub token: i32,
    pub inode: u32,
    pub path: String,
    pub size: u64,
    pub md5: String,
    pub crc32c: u32,
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

/// A committed part as [`Pipeline::freeze`] shows it to the S3 checks.
#[derive(Debug, Clone)]
pub struct CommittedPart {
    pub part_number: i32,
    pub token: i32,
    pub size: i64,
    pub md5: String,
    pub crc32c: i64,
    pub staging_inode: i64,
    pub staging_path: String,
    pub committed_at: chrono::DateTime<chrono::Utc>,
}

/// What the S3 checks chose to freeze: part numbers in order and the ETag
/// the upload will have, plus what a repeated Complete is compared with.
#[derive(Debug, Clone)]
pub struct FreezePlan {
    pub part_numbers: Vec<i32>,
    pub etag: String,
    pub listed: serde_json::Value,
}

/// How a freeze ended.
#[derive(Debug)]
pub enum Frozen<E> {
    /// The parts are committed `upload_parts` rows now; complete next.
    Now { etag: String },
    /// An earlier Complete froze it already (with `listed` as its list).
    Before {
        etag: String,
        listed: serde_json::Value,
        state: String,
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

/// A key's destination lock, held by an open transaction the caller may
/// write in ([`KeyLock::conn`]).
pub struct KeyLock {
    lock: SessionLock,
    full: MfsPath,
}

impl KeyLock {
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        self.lock.conn()
    }
}

/// The pipeline handle of the S3 endpoint.
#[derive(Clone)]
pub struct Pipeline {
    ingest: Ingest,
    /// The S3 root relative to the ingest root (session destinations).
    s3_root: MfsPath,
    goal: u8,
    worker: Arc<str>,
}

impl Pipeline {
    /// Connects to PostgreSQL and MooseFS with the pipeline's settings.
    pub async fn connect(
        services: &ServiceArgs,
        s3_root: &str,
        client_info: &str,
        db_connections: u32,
    ) -> Result<Pipeline, PipelineError> {
        let ingest = services
            .ingest(client_info, db_connections)
            .await
            .map_err(|e| PipelineError::Config(e.to_string()))?;
        let s3_root = MfsPath::parse(s3_root)?;
        if s3_root.is_root() {
            return Err(PipelineError::Config(
                "the S3 root must be a directory below the ingest root".into(),
            ));
        }
        if s3_root.components()[0].as_str() == shared::ingest::SYSTEM_DIR {
            return Err(PipelineError::Config(format!(
                "the S3 root may not be inside {}",
                shared::ingest::SYSTEM_DIR
            )));
        }
        let goal = ingest.cfg.default_goal;
        Ok(Pipeline {
            ingest,
            s3_root,
            goal,
            worker: Arc::from(client_info),
        })
    }

    /// PostgreSQL only (the key commands need no MooseFS).
    pub async fn connect_db(services: &ServiceArgs) -> Result<PgPool, PipelineError> {
        let store = Store::connect(&services.database_url, 2).await?;
        Ok(store.pool)
    }

    /// Runs the migrations (the pipeline's, 0005 included).
    pub async fn migrate(pool: &PgPool) -> Result<(), PipelineError> {
        Store { pool: pool.clone() }.migrate().await?;
        Ok(())
    }

    /// Bounds the MiB of part bodies written to MooseFS at once.
    pub fn set_write_budget_mib(&mut self, mib: u32) {
        self.ingest.write_budget = shared::ingest::WriteBudget::mib(mib);
    }

    pub fn pool(&self) -> &PgPool {
        &self.ingest.store.pool
    }

    /// The prometheus registry the pipeline's metrics are in (`/metrics`).
    pub fn registry() -> &'static prometheus::Registry {
        shared::metrics::registry()
    }

    /// The process's metrics in the text exposition format.
    pub fn render_metrics() -> String {
        shared::metrics::render()
    }

    pub fn set_build_info() {
        shared::metrics::set_build_info("s3");
    }

    pub async fn close(&self) {
        self.ingest.mfs.close().await;
    }

    /// A session destination (relative to the ingest root) of an object.
    fn dest(&self, bucket: &str, key: &str) -> Result<String, PipelineError> {
        let path = self.object_rel_path(bucket, key)?;
        Ok(path.to_string().trim_start_matches('/').to_string())
    }

    fn object_rel_path(&self, bucket: &str, key: &str) -> Result<MfsPath, PipelineError> {
        let mut path = self.s3_root.join(&Name::parse(bucket)?);
        for part in key.split('/') {
            path = path.join(&Name::parse(part)?);
        }
        Ok(path)
    }

    /// Checks that a key names a MooseFS path: components of 1..=255 bytes,
    /// no `.`/`..`, no empty component (`a//b`, a leading or trailing `/`).
    pub fn check_key(&self, bucket: &str, key: &str) -> Result<(), PipelineError> {
        self.object_rel_path(bucket, key).map(|_| ())
    }

    fn full_path(&self, rel: &MfsPath) -> MfsPath {
        let mut full = self.ingest.cfg.root.clone();
        for c in rel.components() {
            full = full.join(c);
        }
        full
    }

    /// Makes the S3 root and the bucket directory (goal of the uploads,
    /// trash time 0: replaced and deleted objects free their space at once).
    pub async fn make_bucket_dir(&self, bucket: &str) -> Result<(), PipelineError> {
        let mfs = &self.ingest.mfs;
        let root = self.full_path(&self.s3_root);
        let root_inode = mfs.mkdir_all(&root).await?;
        mfs.set_trash_time(root_inode, 0, false).await?;
        let dir = root.join(&Name::parse(bucket)?);
        let inode = mfs.mkdir_all(&dir).await?;
        mfs.set_goal(inode, self.goal, false).await?;
        mfs.set_trash_time(inode, 0, false).await?;
        Ok(())
    }

    /// Removes a bucket directory and the empty directories left in it.
    pub async fn remove_bucket_dir(&self, bucket: &str) -> Result<(), PipelineError> {
        let dir = self.full_path(&self.s3_root.join(&Name::parse(bucket)?));
        match self.ingest.mfs.remove(&dir, true).await {
            Ok(()) | Err(MfsError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.ingest.dirs.forget();
        Ok(())
    }

    /// Creates the session of an S3 upload in state `receiving`.
    pub async fn open_upload(
        &self,
        tx: &mut sqlx::PgConnection,
        bucket: &str,
        key: &str,
        who: &str,
    ) -> Result<Uuid, PipelineError> {
        let id = Uuid::new_v4();
        let dest = self.dest(bucket, key)?;
        sqlx::query(
            "INSERT INTO upload_sessions
                (id, request_id, source, dest, size, part_size, part_count, goal, overwrite, state)
             VALUES ($1, $2, $3, $4, 0, 1, 1, $5, true, $6)",
        )
        .bind(id)
        .bind(format!("s3:{id}"))
        .bind(format!("s3-push:{who}"))
        .bind(&dest)
        .bind(i16::from(self.goal))
        .bind(RECEIVING)
        .execute(&mut *tx)
        .await?;
        Ok(id)
    }

    /// Starts an attempt of part `part_number` of a receiving upload: its
    /// fencing token. `None` if the upload is not receiving.
    pub async fn start_part(
        &self,
        upload: Uuid,
        part_number: i32,
    ) -> Result<Option<i32>, PipelineError> {
        let mut tx = self.pool().begin().await?;
        let session_state: Option<String> =
            sqlx::query_scalar("SELECT state FROM upload_sessions WHERE id = $1 FOR SHARE")
                .bind(upload)
                .fetch_optional(&mut *tx)
                .await?;
        if session_state.as_deref() != Some(RECEIVING) {
            return Ok(None);
        }
        let token: i32 = sqlx::query_scalar(
            "INSERT INTO s3_parts (upload_id, part_number, attempts) VALUES ($1, $2, 1)
             ON CONFLICT (upload_id, part_number) DO UPDATE SET attempts = s3_parts.attempts + 1
             RETURNING attempts",
        )
        .bind(upload)
        .bind(part_number)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(token))
    }

    /// Writes `body` (exactly `declared` bytes) into a fresh staging inode
    /// of the attempt: returns only when every replica acknowledged every
    /// block and the replicas' CRCs matched (the MooseFS writer's
    /// guarantee). A failed write's inode is recorded as abandoned.
    pub async fn write_part(
        &self,
        upload: Uuid,
        part_number: i32,
        token: i32,
        declared: u64,
        body: impl AsyncRead + Unpin,
    ) -> Result<WrittenPart, PipelineError> {
        let cfg = &self.ingest.cfg;
        let _budget = self.ingest.write_budget.reserve(declared).await;
        let dir = self
            .ingest
            .dirs
            .ensure_with_goal(
                &self.ingest.mfs,
                &cfg.staging_dir(self.goal),
                Some(self.goal),
            )
            .await?;
        let staging = cfg.staging_file(self.goal, upload, part_number, token);
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
        shared::metrics::metrics().parts_started.inc();
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
                md5: outcome.md5_hex().unwrap_or_default(),
                crc32c: outcome.crc32c,
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
        token: i32,
        inode: u32,
        path: &str,
        reason: &'static str,
    ) {
        shared::metrics::metrics()
            .parts_abandoned
            .with_label_values(&["attempt_failed"])
            .inc();
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
        let mut tx = self.pool().begin().await?;
        let session_state: Option<String> =
            sqlx::query_scalar("SELECT state FROM upload_sessions WHERE id = $1 FOR SHARE")
                .bind(upload)
                .fetch_optional(&mut *tx)
                .await?;
        let outcome = if session_state.as_deref() != Some(RECEIVING) {
            record_abandoned(
                &mut tx,
                upload,
                part_number,
                part,
                "s3 part committed after its upload ended",
            )
            .await?;
            PartCommitted::UploadClosed
        } else {
            let current: Option<(Option<i32>, Option<i64>, Option<String>)> = sqlx::query_as(
                "SELECT committed_token, staging_inode, staging_path FROM s3_parts
                  WHERE upload_id = $1 AND part_number = $2 FOR UPDATE",
            )
            .bind(upload)
            .bind(part_number)
            .fetch_optional(&mut *tx)
            .await?;
            match current {
                Some((Some(committed), _, _)) if committed >= part.token => {
                    record_abandoned(
                        &mut tx,
                        upload,
                        part_number,
                        part,
                        "s3 part superseded by a newer attempt",
                    )
                    .await?;
                    PartCommitted::Superseded
                }
                _ => {
                    if let Some((Some(old_token), Some(old_inode), Some(old_path))) = current {
                        sqlx::query(
                            "INSERT INTO abandoned_inodes
                                (inode, path, session_id, part_number, fencing_token, reason)
                             VALUES ($1, $2, $3, $4, $5, 's3 part replaced by a newer attempt')",
                        )
                        .bind(old_inode)
                        .bind(old_path)
                        .bind(upload)
                        .bind(part_number)
                        .bind(old_token)
                        .execute(&mut *tx)
                        .await?;
                    }
                    sqlx::query(
                        "UPDATE s3_parts SET committed_token = $3, staging_inode = $4,
                                staging_path = $5, size = $6, md5 = $7, crc32c = $8,
                                committed_at = clock_timestamp()
                          WHERE upload_id = $1 AND part_number = $2",
                    )
                    .bind(upload)
                    .bind(part_number)
                    .bind(part.token)
                    .bind(i64::from(part.inode))
                    .bind(&part.path)
                    .bind(part.size as i64)
                    .bind(&part.md5)
                    .bind(i64::from(part.crc32c))
                    .execute(&mut *tx)
                    .await?;
                    PartCommitted::Committed
                }
            }
        };
        tx.commit().await?;
        let m = shared::metrics::metrics();
        match outcome {
            PartCommitted::Committed => {
                m.parts_committed.inc();
                m.part_size.observe(part.size as f64);
            }
            PartCommitted::Superseded => {
                m.parts_abandoned.with_label_values(&["superseded"]).inc();
            }
            PartCommitted::UploadClosed => {
                m.parts_abandoned
                    .with_label_values(&["session_closed"])
                    .inc();
            }
        }
        Ok(outcome)
    }

    /// The committed parts of a receiving upload, ascending.
    pub async fn committed_parts(&self, upload: Uuid) -> Result<Vec<CommittedPart>, PipelineError> {
        committed_parts_in(self.pool(), upload).await
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
        if session.state != RECEIVING {
            let frozen: Option<(Option<String>, Option<serde_json::Value>)> =
                sqlx::query_as("SELECT etag, completed_parts FROM s3_uploads WHERE upload_id = $1")
                    .bind(upload)
                    .fetch_optional(lock.conn())
                    .await?;
            lock.rollback().await?;
            return Ok(match frozen {
                Some((Some(etag), Some(listed)))
                    if session.state == state::OPEN || session.state == state::COMPLETED =>
                {
                    Frozen::Before {
                        etag,
                        listed,
                        state: session.state,
                    }
                }
                _ => Frozen::Gone,
            });
        }
        let parts = committed_parts_in(lock.conn(), upload).await?;
        let plan = match check(&parts) {
            Ok(plan) => plan,
            Err(e) => {
                lock.rollback().await?;
                return Ok(Frozen::Refused(e));
            }
        };
        let by_number: std::collections::HashMap<i32, &CommittedPart> =
            parts.iter().map(|p| (p.part_number, p)).collect();
        let chosen: Vec<&CommittedPart> = plan.part_numbers.iter().map(|n| by_number[n]).collect();
        let (mut numbers, mut offsets, mut sizes, mut tokens) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut inodes, mut paths, mut md5s, mut crcs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut offset = 0i64;
        for (index, p) in chosen.iter().enumerate() {
            numbers.push(index as i32);
            offsets.push(offset);
            sizes.push(p.size);
            tokens.push(p.token);
            inodes.push(p.staging_inode);
            paths.push(p.staging_path.clone());
            md5s.push(p.md5.clone());
            crcs.push(p.crc32c);
            offset += p.size;
        }
        let part_size = sizes.iter().copied().max().unwrap_or(1).max(1);
        sqlx::query(
            "INSERT INTO upload_parts
                (session_id, part_number, part_offset, size, attempts, committed_token,
                 staging_inode, staging_path, md5, crc32c, worker, committed_at)
             SELECT $1, n, o, s, t, t, i, p, m, c, $10, clock_timestamp()
               FROM UNNEST($2::int[], $3::bigint[], $4::bigint[], $5::int[], $6::bigint[],
                           $7::text[], $8::text[], $9::bigint[]) AS x(n, o, s, t, i, p, m, c)",
        )
        .bind(upload)
        .bind(&numbers)
        .bind(&offsets)
        .bind(&sizes)
        .bind(&tokens)
        .bind(&inodes)
        .bind(&paths)
        .bind(&md5s)
        .bind(&crcs)
        .bind(&*self.worker)
        .execute(lock.conn())
        .await?;
        sqlx::query(
            "INSERT INTO abandoned_inodes (inode, path, session_id, part_number, fencing_token, reason)
             SELECT staging_inode, staging_path, upload_id, part_number, committed_token,
                    's3 part not listed in CompleteMultipartUpload'
               FROM s3_parts
              WHERE upload_id = $1 AND committed_token IS NOT NULL
                AND NOT (part_number = ANY($2))",
        )
        .bind(upload)
        .bind(&plan.part_numbers)
        .execute(lock.conn())
        .await?;
        sqlx::query(
            "UPDATE upload_sessions SET state = $2, size = $3, part_size = $4, part_count = $5,
                    updated_at = now()
              WHERE id = $1",
        )
        .bind(upload)
        .bind(state::OPEN)
        .bind(offset)
        .bind(part_size)
        .bind(chosen.len() as i32)
        .execute(lock.conn())
        .await?;
        sqlx::query("UPDATE s3_uploads SET etag = $2, completed_parts = $3 WHERE upload_id = $1")
            .bind(upload)
            .bind(&plan.etag)
            .bind(&plan.listed)
            .execute(lock.conn())
            .await?;
        lock.commit().await?;
        Ok(Frozen::Now { etag: plan.etag })
    }

    /// Runs the pipeline's completion of a frozen upload (its one locked
    /// transaction) and reads what it put in place.
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
            Some(s) if s.state == state::COMPLETED => Ok(Completed::Placed(Placed {
                inode: s.final_inode.unwrap_or_default() as u32,
                size: s.size,
                finished_at: s.finished_at.unwrap_or(s.updated_at),
            })),
            Some(s) if s.state == state::FAILED => Ok(Completed::Failed(
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
        self.end_upload(upload, state::FAILED, why).await
    }

    /// Aborts a receiving upload (AbortMultipartUpload): state `aborted`,
    /// `upload.aborted` event, every committed part's inode abandoned.
    /// False if it was not receiving.
    pub async fn abort_upload(&self, upload: Uuid) -> Result<bool, PipelineError> {
        self.end_upload(upload, state::ABORTED, "aborted by AbortMultipartUpload")
            .await
    }

    async fn end_upload(
        &self,
        upload: Uuid,
        new_state: &'static str,
        why: &str,
    ) -> Result<bool, PipelineError> {
        let (mut lock, session) = self.ingest.store.lock_session(upload).await?;
        let Some(session) = session.filter(|s| s.state == RECEIVING) else {
            lock.rollback().await?;
            return Ok(false);
        };
        lock.end(&session, new_state, why).await?;
        sqlx::query(
            "INSERT INTO abandoned_inodes (inode, path, session_id, part_number, fencing_token, reason)
             SELECT staging_inode, staging_path, upload_id, part_number, committed_token, $2
               FROM s3_parts WHERE upload_id = $1 AND committed_token IS NOT NULL",
        )
        .bind(upload)
        .bind(format!("s3 upload {new_state}"))
        .execute(lock.conn())
        .await?;
        lock.commit().await?;
        shared::metrics::session_finished(new_state, session.created_at);
        Ok(true)
    }

    /// Takes the key's destination lock (the advisory lock the pipeline's
    /// completions of that destination take) in a new transaction: a delete
    /// and a completion of one key never interleave.
    pub async fn lock_key(&self, bucket: &str, key: &str) -> Result<KeyLock, PipelineError> {
        let full = self.full_path(&self.object_rel_path(bucket, key)?);
        let lock = self
            .ingest
            .store
            .lock_destinations(&[full.to_string()])
            .await?;
        Ok(KeyLock { lock, full })
    }

    /// Removes a locked key's file if it is still `inode`, commits the
    /// lock's transaction (with whatever the caller wrote in it), then
    /// removes the empty directories above it up to the bucket.
    pub async fn remove_locked_file(&self, lock: KeyLock, inode: i64) -> Result<(), PipelineError> {
        let KeyLock { lock, full } = lock;
        let (parent_path, name) = full.split_last().expect("an object path has a name");
        let mfs = &self.ingest.mfs;
        match mfs.resolve(&parent_path).await {
            Ok((parent, _)) => match mfs.lookup(parent, name).await {
                Ok((found, _)) if i64::from(found) == inode => match mfs.unlink(parent, name).await
                {
                    Ok(()) | Err(MfsError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                },
                Ok(_) | Err(MfsError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            },
            Err(MfsError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        lock.commit().await?;
        let bucket_depth = self.full_path(&self.s3_root).components().len() + 1;
        let mut dir = parent_path;
        while dir.components().len() > bucket_depth {
            let Some((up, name)) = dir.split_last() else {
                break;
            };
            let Ok((up_inode, _)) = mfs.resolve(&up).await else {
                break;
            };
            if mfs.rmdir(up_inode, name).await.is_err() {
                break;
            }
            dir = up;
        }
        self.ingest.dirs.forget();
        Ok(())
    }

    /// Streams `len` bytes of a file from `offset`, straight from the
    /// chunkservers (a small pipe between the reader task and the response;
    /// no whole chunk is buffered).
    pub fn read_object(
        &self,
        inode: u32,
        offset: u64,
        len: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
        let (mut sink, source) = tokio::io::duplex(256 << 10);
        let mfs = self.ingest.mfs.clone();
        tokio::spawn(async move {
            if let Err(e) = mfs
                .read_to(inode, offset, Some(len), &mut sink, ReplicaChoice::Any)
                .await
            {
                // The response is cut short; the client sees a short body.
                tracing::warn!(inode, offset, len, error = %e, "reading an object failed");
            }
        });
        tokio_util::io::ReaderStream::with_capacity(source, 64 << 10)
    }

    /// Fails a completion read by the client's deadline: nothing to do
    /// here, the session stays `open` and the reconciler completes it.
    pub fn completion_deadline(&self) -> Duration {
        self.ingest.cfg.completion_deadline
    }
}

async fn record_abandoned(
    tx: &mut sqlx::PgConnection,
    upload: Uuid,
    part_number: i32,
    part: &WrittenPart,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO abandoned_inodes (inode, path, session_id, part_number, fencing_token, reason)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(i64::from(part.inode))
    .bind(&part.path)
    .bind(upload)
    .bind(part_number)
    .bind(part.token)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One `s3_parts` row as `committed_parts_in` selects it.
type CommittedPartRow = (
    i32,
    i32,
    i64,
    String,
    i64,
    i64,
    String,
    chrono::DateTime<chrono::Utc>,
);

async fn committed_parts_in<'e>(
    db: impl sqlx::PgExecutor<'e>,
    upload: Uuid,
) -> Result<Vec<CommittedPart>, PipelineError> {
    let rows: Vec<CommittedPartRow> = sqlx::query_as(
        "SELECT part_number, committed_token, size, md5, crc32c, staging_inode, staging_path,
                committed_at
           FROM s3_parts WHERE upload_id = $1 AND committed_token IS NOT NULL
          ORDER BY part_number",
    )
    .bind(upload)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(part_number, token, size, md5, crc32c, staging_inode, staging_path, committed_at)| {
                CommittedPart {
                    part_number,
                    token,
                    size,
                    md5,
                    crc32c,
                    staging_inode,
                    staging_path,
                    committed_at,
                }
            },
        )
        .collect())
}

/// A token cancelled on SIGTERM/SIGINT.
pub fn shutdown_on_signals() -> tokio_util::sync::CancellationToken {
    shared::process::shutdown_on_signals()
}
