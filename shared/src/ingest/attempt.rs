//! One attempt of one part: its fencing token from PostgreSQL, the source
//! checked against the version the upload was created from, a fresh staging
//! inode written (every replica acknowledged and verified), then its commit
//! (see `commit`). A failed write's inode is recorded as abandoned.

use uuid::Uuid;

use super::{Ingest, PartOutcome};
use crate::queue::PartJob;
use crate::source::{Source, SourceError, SourceVersion, Validator};
use crate::store::{AttemptStart, CommitOutcome, PartCommit, SessionState, StoreError};
use moosefs::{CreatedFile, MfsError, WriteOptions, WriteOutcome};

/// Failures of a part attempt. Every one but [`PartError::SessionFailed`]
/// is transient: trying again may succeed.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// PostgreSQL trouble.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// MooseFS trouble (master, chunkservers, or the source read into it).
    #[error("{0}")]
    Mfs(#[from] MfsError),
    /// The source failed in a way that may pass (see [`SourceError::is_transient`]).
    #[error("{0}")]
    Source(SourceError),
    /// The session cannot succeed; it has been marked failed.
    #[error("{0}")]
    SessionFailed(String),
}

/// Test hooks into a part attempt (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
#[derive(Clone, Default)]
pub struct AttemptHooks {
    /// Runs after the staging file is written, before the commit.
    pub before_commit:
        Option<std::sync::Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>>,
}

/// A source that may work later is a transient failure; one that never
/// will (refused, changed, gone) fails the session.
fn source_failure(e: SourceError) -> PartError {
    if e.is_transient() {
        PartError::Source(e)
    } else {
        PartError::SessionFailed(e.to_string())
    }
}

/// A job found nothing to do (committed already, or its session is not open).
fn already_done() -> PartOutcome {
    crate::metrics::metrics().duplicate_job(crate::metrics::DuplicateDetector::Postgres);
    PartOutcome::AlreadyDone
}

/// A part attempt whose staging file is written and verified, waiting for
/// its commit. Holds the created file open (see [`CreatedFile`]) until then.
struct WrittenPart {
    job: PartJob,
    start: AttemptStart,
    file: CreatedFile,
    staging_path: String,
    md5: Option<String>,
    crc32c: u32,
}

impl WrittenPart {
    fn commit<'a>(&'a self, worker: &'a str) -> PartCommit<'a> {
        PartCommit {
            session_id: self.job.session_id,
            part_number: self.job.part_number,
            token: self.start.token,
            staging_inode: self.file.inode,
            staging_path: &self.staging_path,
            md5: self.md5.as_deref(),
            crc32c: self.crc32c,
            worker,
        }
    }

    /// What the commit made of it (counted in the part metrics).
    fn outcome(&self, (committed, completed): (CommitOutcome, bool)) -> PartOutcome {
        let m = crate::metrics::metrics();
        match committed {
            CommitOutcome::Committed { .. } => {
                m.part_committed(self.start.size as u64);
                PartOutcome::Committed { completed }
            }
            CommitOutcome::Superseded => {
                m.part_abandoned(crate::metrics::AbandonReason::Superseded);
                PartOutcome::Discarded
            }
            CommitOutcome::SessionClosed => {
                m.part_abandoned(crate::metrics::AbandonReason::SessionClosed);
                PartOutcome::Discarded
            }
        }
    }
}

impl Ingest {
    /// Runs one attempt of a part: fencing token from PostgreSQL, a fresh
    /// staging inode, the source range streamed into it (every replica
    /// acknowledged and verified), then the commit. Completes the session if
    /// this was its last part.
    pub async fn run_part(&self, job: &PartJob, worker: &str) -> Result<PartOutcome, PartError> {
        self.run_part_inner(job, worker, || async {}).await
    }

    /// [`Ingest::run_part`] with `hooks` run at their points (tests only).
    #[cfg(feature = "test-hooks")]
    pub async fn run_part_with_hooks(
        &self,
        job: &PartJob,
        worker: &str,
        hooks: &AttemptHooks,
    ) -> Result<PartOutcome, PartError> {
        self.run_part_inner(job, worker, || async {
            if let Some(hook) = &hooks.before_commit {
                hook().await;
            }
        })
        .await
    }

    #[tracing::instrument(name = "part", level = "info", skip_all, fields(session = %job.session_id, part = job.part_number))]
    async fn run_part_inner<F: std::future::Future<Output = ()>>(
        &self,
        job: &PartJob,
        worker: &str,
        before_commit: impl FnOnce() -> F,
    ) -> Result<PartOutcome, PartError> {
        let Some(start) = self.store.start_attempt(job, worker).await? else {
            return Ok(already_done());
        };
        let written = self.write_attempt(*job, start).await?;
        before_commit().await;
        let commit = written.commit(worker);
        let committed = if written.start.part_count == 1 {
            self.commit_single_part(&commit).await?
        } else {
            self.commit_one_of_many(&commit).await?
        };
        Ok(written.outcome(committed))
    }

    /// Runs one attempt of each of several parts of single-part files (a
    /// [`crate::queue::PartGroup`]): their fencing tokens in one statement,
    /// the writes side by side, then ONE transaction that commits and
    /// completes every file written (each still completes or fails alone;
    /// if that transaction cannot finish, each is committed on its own).
    /// One result per job, in order.
    #[tracing::instrument(name = "part_group", level = "info", skip_all, fields(parts = jobs.len()))]
    pub async fn run_parts_together(
        &self,
        jobs: &[PartJob],
        worker: &str,
    ) -> Vec<Result<PartOutcome, PartError>> {
        let starts = match self.store.start_attempts(jobs, worker).await {
            Ok(starts) => starts,
            Err(e) => {
                return e
                    .for_each(jobs.len())
                    .into_iter()
                    .map(|e| Err(e.into()))
                    .collect()
            }
        };
        let writes =
            futures::future::join_all(jobs.iter().zip(starts).map(|(job, start)| async move {
                match start {
                    Some(start) => self.write_attempt(*job, start).await.map(Some),
                    None => Ok(None),
                }
            }))
            .await;
        let mut results: Vec<Option<Result<PartOutcome, PartError>>> = Vec::new();
        let mut together: Vec<(usize, WrittenPart)> = Vec::new();
        for (i, write) in writes.into_iter().enumerate() {
            match write {
                Ok(Some(w)) if w.start.part_count == 1 => {
                    results.push(None);
                    together.push((i, w));
                }
                Ok(Some(w)) => {
                    // Not a single-part file: committed the usual way.
                    let commit = w.commit(worker);
                    results.push(Some(
                        self.commit_one_of_many(&commit).await.map(|c| w.outcome(c)),
                    ));
                }
                Ok(None) => results.push(Some(Ok(already_done()))),
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let commits: Vec<PartCommit<'_>> = together.iter().map(|(_, w)| w.commit(worker)).collect();
        let committed = match self.commit_single_parts(&commits).await {
            Ok(all) => all.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::warn!(parts = commits.len(), error = %e,
                    "committing the group together failed; committing each part alone");
                let mut each = Vec::with_capacity(commits.len());
                for commit in &commits {
                    each.push(self.commit_single_part(commit).await);
                }
                each
            }
        };
        for ((i, w), c) in together.iter().zip(committed) {
            results[*i] = Some(c.map(|c| w.outcome(c)));
        }
        results
            .into_iter()
            .map(|r| r.expect("every job has a result"))
            .collect()
    }

    /// The attempt up to its commit: the source checked, a fresh staging
    /// inode written (every replica acknowledged and verified). A failed
    /// write's inode is recorded as abandoned. The source is read pinned to
    /// the version seen at validation and under the part's deadline and
    /// minimum throughput ([`crate::source::PartLimits`]); a read cut short
    /// by those ends the chunk being written (its lock released) and is
    /// retried like any transient failure.
    #[tracing::instrument(name = "attempt", level = "info", skip_all, fields(session = %job.session_id, part = job.part_number, token = %start.token))]
    async fn write_attempt(
        &self,
        job: PartJob,
        start: AttemptStart,
    ) -> Result<WrittenPart, PartError> {
        crate::metrics::metrics().part_started();
        let (source, pinned) = self.check_source(&job, &start).await?;

        let _budget = self.write_budget.reserve(start.size as u64).await;
        let goal = start.goal as u8;
        let dir_inode = self.staging_dir_inode(goal).await?;
        let staging = self
            .cfg
            .staging_file(goal, job.session_id, job.part_number, start.token);
        let name = staging.file_name().expect("staging file has a name");
        let staging_path = staging.to_string();
        let file = match self.mfs.create(dir_inode, name, 0o644).await {
            Ok(f) => f,
            Err(e @ MfsError::NotFound(_)) => {
                self.dirs.forget();
                return Err(e.into());
            }
            // A previous try of this very attempt created it: a new attempt
            // (new token, new name) is the clean way forward.
            Err(e) => return Err(e.into()),
        };
        match self
            .stream_part(&job, &start, &source, &pinned, &file)
            .await
        {
            Ok(outcome) => Ok(WrittenPart {
                job,
                md5: outcome.md5_hex(),
                crc32c: outcome.crc32c,
                start,
                file,
                staging_path,
            }),
            Err((e, reason)) => {
                self.abandon_written(&job, &start, &file, &staging_path, reason)
                    .await;
                Err(match e {
                    PartError::SessionFailed(why) => self.fail_session(job.session_id, &why).await,
                    other => other,
                })
            }
        }
    }

    /// Streams the part's source range into its staging file; on failure,
    /// the error and the reason its inode is abandoned.
    async fn stream_part(
        &self,
        job: &PartJob,
        start: &AttemptStart,
        source: &Source,
        pinned: &SourceVersion,
        file: &CreatedFile,
    ) -> Result<WriteOutcome, (PartError, AbandonReason)> {
        let reader = source
            .open_range(
                start.part_offset as u64,
                start.size as u64,
                pinned,
                &self.cfg.sources,
            )
            .await
            .map_err(|e| (source_failure(e), AbandonReason::AttemptFailed))?;
        let opts = WriteOptions {
            required_copies: Some(start.goal as u8),
            // Only a single part's MD5 is the file's; a multi-part file's
            // MD5 is computed at completion, and only if it was asked for.
            compute_md5: start.part_count == 1,
            ..self.mfs.config().write.clone()
        };
        let outcome = self
            .mfs
            .write_new_file(file, reader, &opts)
            .await
            .map_err(|e| match &e {
                MfsError::Source(io) if crate::source::PartReadLimitError::is_in(io) => {
                    (e.into(), AbandonReason::SourceTooSlow)
                }
                _ => (e.into(), AbandonReason::AttemptFailed),
            })?;
        if outcome.length != start.size as u64 {
            let why = format!(
                "source ended early: part {} has {} of {} bytes",
                job.part_number, outcome.length, start.size
            );
            return Err((PartError::SessionFailed(why), AbandonReason::AttemptFailed));
        }
        Ok(outcome)
    }

    /// Records a failed write's staging inode for the collector (it is
    /// nobody's) and counts it.
    async fn abandon_written(
        &self,
        job: &PartJob,
        start: &AttemptStart,
        file: &CreatedFile,
        staging_path: &str,
        reason: AbandonReason,
    ) {
        let _ = self
            .store
            .abandon_attempt(
                job.session_id,
                job.part_number,
                start.token,
                file.inode,
                staging_path,
                reason.recorded(),
            )
            .await;
        crate::metrics::metrics().part_abandoned(reason.metric());
    }

    /// An attempt's source: parsed, and its size and validator now compared
    /// with the version the upload was created from (a different one fails
    /// the session).
    async fn check_source(
        &self,
        job: &PartJob,
        start: &AttemptStart,
    ) -> Result<(Source, SourceVersion), PartError> {
        let pinned = SourceVersion {
            size: start.session_size as u64,
            validator: start
                .source_validator
                .as_deref()
                .and_then(Validator::from_stored),
        };
        let checked = async {
            let source = Source::parse(&start.source, &self.cfg.sources)?;
            let now = source.probe(&self.cfg.sources).await?;
            Ok::<_, SourceError>((source, now))
        }
        .await;
        match checked {
            Ok((source, now)) => match pinned.change_to(&now) {
                None => Ok((source, pinned)),
                Some(why) => Err(self.fail_session(job.session_id, &why).await),
            },
            Err(e) => match source_failure(e) {
                PartError::SessionFailed(why) => Err(self.fail_session(job.session_id, &why).await),
                other => Err(other),
            },
        }
    }

    /// Marks a session failed (if still open) and returns the error to report.
    #[tracing::instrument(level = "info", skip(self, why), fields(session = %id))]
    pub async fn fail_session(&self, id: Uuid, why: &str) -> PartError {
        match self.end_session(id, SessionState::Failed, why).await {
            Ok(_) => PartError::SessionFailed(why.to_string()),
            Err(e) => e.into(),
        }
    }
}

/// Why a written staging inode was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AbandonReason {
    /// The write or the source failed.
    AttemptFailed,
    /// The source was slower than the part's minimum throughput.
    SourceTooSlow,
}

impl AbandonReason {
    /// As `abandoned_inodes.reason` records it.
    fn recorded(self) -> &'static str {
        match self {
            AbandonReason::AttemptFailed => "attempt failed",
            AbandonReason::SourceTooSlow => "source too slow",
        }
    }

    /// As `mfs_ingest_parts_abandoned_total` counts it.
    fn metric(self) -> crate::metrics::AbandonReason {
        match self {
            AbandonReason::AttemptFailed => crate::metrics::AbandonReason::AttemptFailed,
            AbandonReason::SourceTooSlow => crate::metrics::AbandonReason::SourceTooSlow,
        }
    }
}
