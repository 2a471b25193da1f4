//! The `upload_parts` table: attempts started (the fencing token is the
//! attempt counter) and parts committed under their session's row lock.

use std::time::Duration;

use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::abandoned::{abandon_all, Abandon};
use super::locked::SessionLock;
use super::outbox::enqueue_jobs;
use super::{state, Store, StoreError, Tx};
use crate::queue::PartJob;

/// Every part of one session, in order.
pub(super) const PARTS_OF_SESSION: &str =
    "SELECT session_id, part_number, part_offset, size, attempts, committed_token,
        staging_inode, staging_path, md5, crc32c, worker
   FROM upload_parts WHERE session_id = $1 ORDER BY part_number";

/// A part row.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Part {
    pub session_id: Uuid,
    pub part_number: i32,
    pub part_offset: i64,
    pub size: i64,
    pub attempts: i32,
    pub committed_token: Option<i32>,
    pub staging_inode: Option<i64>,
    pub staging_path: Option<String>,
    pub md5: Option<String>,
    pub crc32c: Option<i64>,
    pub worker: Option<String>,
}

/// A part attempt that just started: its fencing token and what to write.
#[derive(Debug, Clone, FromRow)]
pub struct AttemptStart {
    pub token: i32,
    pub part_offset: i64,
    pub size: i64,
    pub source: String,
    pub session_size: i64,
    pub goal: i16,
    pub part_count: i32,
    /// The source's validator at validation: every part read is pinned to it.
    pub source_validator: Option<String>,
}

/// [`Store::start_attempts`]: bumps each job's attempt counter (its fencing
/// token) if the part is uncommitted and its session open.
///
/// The state tests are wrapped in `IS TRUE` so that they do not match
/// the predicates of the partial indexes of pending parts and open
/// sessions. Statistics gathered while few uploads were open make those
/// indexes look nearly empty, and after a burst of new uploads the
/// planner would walk the whole index once per job (measured: 7.4 ms
/// for a group of 16 against 5,000 open uploads, instead of 0.27 ms
/// through the primary keys).
#[doc(hidden)]
pub const START_ATTEMPTS_SQL: &str = "UPDATE upload_parts p
        SET attempts = p.attempts + 1, worker = $3
       FROM upload_sessions s, UNNEST($1::uuid[], $2::int[]) AS j(session_id, part_number)
      WHERE p.session_id = j.session_id AND p.part_number = j.part_number
        AND (p.committed_token IS NULL) IS TRUE
        AND s.id = p.session_id AND (s.state = 'open') IS TRUE
     RETURNING p.session_id, p.part_number, p.attempts AS token, p.part_offset, p.size,
               s.source, s.size AS session_size, s.goal, s.part_count, s.source_validator";

/// A written staging file offered as a part.
#[derive(Debug, Clone)]
pub struct PartCommit<'a> {
    pub session_id: Uuid,
    pub part_number: i32,
    pub token: i32,
    pub staging_inode: u32,
    pub staging_path: &'a str,
    /// The part's MD5, computed only for the only part of a session (the
    /// file's MD5 then); `None` for parts of multi-part files.
    pub md5: Option<&'a str>,
    pub crc32c: u32,
    pub worker: &'a str,
}

/// How a part commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The part is recorded; `all_committed` says whether it was the last one.
    Committed { all_committed: bool },
    /// A newer attempt had already committed: our inode is abandoned.
    Superseded,
    /// The session is no longer open: our inode is abandoned.
    SessionClosed,
}

impl CommitOutcome {
    /// The part is recorded and was the session's last uncommitted one.
    pub fn was_last(self) -> bool {
        self == CommitOutcome::Committed {
            all_committed: true,
        }
    }
}

impl Store {
    pub async fn parts(&self, id: Uuid) -> Result<Vec<Part>, StoreError> {
        Ok(sqlx::query_as(PARTS_OF_SESSION)
            .bind(id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Starts an attempt of an uncommitted part of an open session: bumps the
    /// attempt counter and returns it as the fencing token. `None` if the part
    /// is committed already or the session is not open (nothing to do).
    pub async fn start_attempt(
        &self,
        job: &PartJob,
        worker: &str,
    ) -> Result<Option<AttemptStart>, StoreError> {
        let mut one = self
            .start_attempts(std::slice::from_ref(job), worker)
            .await?;
        Ok(one.pop().flatten())
    }

    /// [`Store::start_attempt`] for several parts in one statement: one
    /// answer per job, in order.
    pub async fn start_attempts(
        &self,
        jobs: &[PartJob],
        worker: &str,
    ) -> Result<Vec<Option<AttemptStart>>, StoreError> {
        #[derive(FromRow)]
        struct Started {
            session_id: Uuid,
            part_number: i32,
            #[sqlx(flatten)]
            start: AttemptStart,
        }
        let rows: Vec<Started> = sqlx::query_as(START_ATTEMPTS_SQL)
            .bind(jobs.iter().map(|j| j.session_id).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.part_number).collect::<Vec<_>>())
            .bind(worker)
            .fetch_all(&self.pool)
            .await?;
        let mut by_job: std::collections::HashMap<(Uuid, i32), AttemptStart> = rows
            .into_iter()
            .map(|r| ((r.session_id, r.part_number), r.start))
            .collect();
        Ok(jobs
            .iter()
            .map(|j| by_job.remove(&(j.session_id, j.part_number)))
            .collect())
    }

    /// Records a written staging file as the part, in one transaction: the
    /// session row is held `FOR SHARE` (completion takes it `FOR UPDATE`, so
    /// the two never interleave); see `commit_parts_in`.
    pub async fn commit_part(&self, c: &PartCommit<'_>) -> Result<CommitOutcome, StoreError> {
        let (lock, outcome) = self.commit_part_open(c).await?;
        lock.commit().await?;
        self.recount_after_commit(c.session_id, outcome).await
    }

    /// [`Store::commit_part`] up to, not including, the commit: the part is
    /// recorded in a transaction holding the session row `FOR SHARE`, which
    /// is returned still open. `Committed { all_committed }` says whether
    /// every part is committed as this transaction sees it: true means this
    /// was the last part (the caller may complete the session in the same
    /// transaction, see [`SessionLock::lock_session`]); false may be wrong
    /// only when other parts commit at the same time, which
    /// [`Store::recount_after_commit`] settles.
    pub async fn commit_part_open(
        &self,
        c: &PartCommit<'_>,
    ) -> Result<(SessionLock, CommitOutcome), StoreError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM upload_sessions WHERE id = $1 FOR SHARE")
                .bind(c.session_id)
                .fetch_optional(&mut *tx)
                .await?;
        let mut one =
            commit_parts_in(&mut tx, std::slice::from_ref(c), &[state.as_deref()]).await?;
        let (outcome, _) = one.pop().expect("one result per commit");
        if !matches!(outcome, CommitOutcome::Committed { .. }) {
            return Ok((SessionLock { tx }, outcome));
        }
        let remaining = Self::uncommitted_parts(&mut *tx, c.session_id).await?;
        Ok((
            SessionLock { tx },
            CommitOutcome::Committed {
                all_committed: remaining == 0,
            },
        ))
    }

    /// After the commit of a part whose own transaction still saw other
    /// parts uncommitted: counts again, now that it is committed. Two last
    /// parts committing at the same time each see the other's commit here,
    /// so at least one of them completes. Other outcomes pass through.
    pub async fn recount_after_commit(
        &self,
        session_id: Uuid,
        outcome: CommitOutcome,
    ) -> Result<CommitOutcome, StoreError> {
        if outcome
            != (CommitOutcome::Committed {
                all_committed: false,
            })
        {
            return Ok(outcome);
        }
        let remaining = Self::uncommitted_parts(&self.pool, session_id).await?;
        Ok(CommitOutcome::Committed {
            all_committed: remaining == 0,
        })
    }

    /// The session's parts not committed yet (through the primary key, not
    /// the partial index of all pending parts).
    async fn uncommitted_parts<'e>(
        db: impl sqlx::PgExecutor<'e>,
        session_id: Uuid,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE committed_token IS NULL)
               FROM upload_parts WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_one(db)
        .await?)
    }

    /// Re-queues jobs of parts still uncommitted `older_than` after their last
    /// publish (lost messages, crashed workers). Returns how many.
    pub async fn republish_stale_parts(&self, older_than: Duration) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let stale: Vec<(Uuid, i32)> = sqlx::query_as(
            "UPDATE upload_parts p SET published_at = now()
               FROM (SELECT p2.session_id, p2.part_number
                       FROM upload_parts p2 JOIN upload_sessions s ON s.id = p2.session_id
                      -- the session through its primary key (IS TRUE: see BACKLOG_SQL;
                      -- as a plain test, 1,000 stale parts of 1,000 open uploads
                      -- took 106 ms instead of 3)
                      WHERE p2.committed_token IS NULL AND (s.state = 'open') IS TRUE
                        AND p2.published_at < now() - make_interval(secs => $1)
                      ORDER BY p2.published_at
                      LIMIT 1000
                      FOR UPDATE OF p2 SKIP LOCKED) stale
              WHERE p.session_id = stale.session_id AND p.part_number = stale.part_number
             RETURNING p.session_id, p.part_number",
        )
        .bind(older_than.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        let jobs: Vec<PartJob> = stale
            .iter()
            .map(|(session_id, part_number)| PartJob {
                session_id: *session_id,
                part_number: *part_number,
            })
            .collect();
        enqueue_jobs(&mut tx, &jobs, &[]).await?;
        tx.commit().await?;
        Ok(jobs.len() as u64)
    }
}

/// Records parts inside a transaction that holds their sessions' rows
/// locked (`session_states[i]` as read under that lock for `commits[i]`;
/// `None` if there is no such session), in three statements whatever
/// their number: if a session is not open, or a newer attempt already
/// committed, the staging inode is recorded as abandoned; a replaced
/// older inode is recorded as abandoned. `Committed` carries
/// `all_committed: false` (the caller counts the parts itself) and
/// comes with the part row as committed. One result per commit, in order.
pub(super) async fn commit_parts_in(
    tx: &mut Tx,
    commits: &[PartCommit<'_>],
    session_states: &[Option<&str>],
) -> Result<Vec<(CommitOutcome, Option<Part>)>, StoreError> {
    let abandon_ours = |c: &PartCommit<'_>, reason: &'static str| Abandon {
        inode: c.staging_inode as i64,
        path: c.staging_path.to_string(),
        session_id: c.session_id,
        part_number: c.part_number,
        token: c.token,
        reason,
    };
    let mut outcomes: Vec<Option<CommitOutcome>> = vec![None; commits.len()];
    let mut abandons = Vec::new();
    let open: Vec<usize> = (0..commits.len())
        .filter(|&i| session_states[i] == Some(state::OPEN))
        .collect();
    for (i, c) in commits.iter().enumerate() {
        if session_states[i] != Some(state::OPEN) {
            abandons.push(abandon_ours(c, "session no longer open"));
            outcomes[i] = Some(CommitOutcome::SessionClosed);
        }
    }
    #[derive(FromRow)]
    struct Current {
        session_id: Uuid,
        part_number: i32,
        committed_token: Option<i32>,
        staging_inode: Option<i64>,
        staging_path: Option<String>,
    }
    let current: Vec<Current> = sqlx::query_as(
        "SELECT p.session_id, p.part_number, p.committed_token, p.staging_inode,
                    p.staging_path
               FROM upload_parts p
               JOIN UNNEST($1::uuid[], $2::int[]) AS j(session_id, part_number)
                 ON p.session_id = j.session_id AND p.part_number = j.part_number
              ORDER BY p.session_id, p.part_number
                FOR UPDATE OF p",
    )
    .bind(
        open.iter()
            .map(|&i| commits[i].session_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        open.iter()
            .map(|&i| commits[i].part_number)
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut **tx)
    .await?;
    let current: std::collections::HashMap<(Uuid, i32), _> = current
        .into_iter()
        .map(|c| {
            (
                (c.session_id, c.part_number),
                (c.committed_token, c.staging_inode, c.staging_path),
            )
        })
        .collect();
    let mut winners = Vec::new();
    for &i in &open {
        let c = &commits[i];
        let Some((token, inode, path)) = current.get(&(c.session_id, c.part_number)) else {
            return Err(StoreError::SameBatch(format!(
                "part {} of session {} does not exist",
                c.part_number, c.session_id
            )));
        };
        if token.is_some_and(|t| t >= c.token) {
            abandons.push(abandon_ours(c, "a newer attempt committed first"));
            outcomes[i] = Some(CommitOutcome::Superseded);
            continue;
        }
        if let (Some(old_token), Some(old_inode), Some(old_path)) = (token, inode, path) {
            abandons.push(Abandon {
                inode: *old_inode,
                path: old_path.clone(),
                session_id: c.session_id,
                part_number: c.part_number,
                token: *old_token,
                reason: "replaced by a newer attempt",
            });
        }
        winners.push(i);
    }
    abandon_all(tx, &abandons).await?;
    let rows: Vec<Part> = if winners.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "UPDATE upload_parts p
                SET committed_token = c.token, staging_inode = c.inode,
                    staging_path = c.path, md5 = c.md5, crc32c = c.crc32c,
                    worker = c.worker, committed_at = clock_timestamp()
               FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::bigint[], $5::text[],
                           $6::text[], $7::bigint[], $8::text[])
                    AS c(session_id, part_number, token, inode, path, md5, crc32c, worker)
              WHERE p.session_id = c.session_id AND p.part_number = c.part_number
             RETURNING p.session_id, p.part_number, p.part_offset, p.size, p.attempts,
                       p.committed_token, p.staging_inode, p.staging_path, p.md5,
                       p.crc32c, p.worker",
        )
        .bind(
            winners
                .iter()
                .map(|&i| commits[i].session_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            winners
                .iter()
                .map(|&i| commits[i].part_number)
                .collect::<Vec<_>>(),
        )
        .bind(
            winners
                .iter()
                .map(|&i| commits[i].token)
                .collect::<Vec<_>>(),
        )
        .bind(
            winners
                .iter()
                .map(|&i| commits[i].staging_inode as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            winners
                .iter()
                .map(|&i| commits[i].staging_path)
                .collect::<Vec<_>>(),
        )
        .bind(
            winners
                .iter()
                .map(|&i| commits[i].md5)
                .collect::<Vec<Option<&str>>>(),
        )
        .bind(
            winners
                .iter()
                .map(|&i| commits[i].crc32c as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            winners
                .iter()
                .map(|&i| commits[i].worker)
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut **tx)
        .await?
    };
    let mut rows: std::collections::HashMap<(Uuid, i32), Part> = rows
        .into_iter()
        .map(|p| ((p.session_id, p.part_number), p))
        .collect();
    Ok(commits
        .iter()
        .zip(outcomes)
        .map(|(c, outcome)| match outcome {
            Some(o) => (o, None),
            None => (
                CommitOutcome::Committed {
                    all_committed: false,
                },
                rows.remove(&(c.session_id, c.part_number)),
            ),
        })
        .collect())
}
