//! The `upload_parts` table: attempts started (the fencing token is the
//! attempt counter) and parts committed under their session's row lock.

use std::time::Duration;

use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::abandoned::{abandon_all, Abandon};
use super::outbox::enqueue_jobs;
use super::{SessionState, Store, StoreError, Tx};
use crate::domain::FencingToken;
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
    pub token: FencingToken,
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
    pub token: FencingToken,
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
    pub(super) async fn uncommitted_parts<'e>(
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
        // Two statements, each through an index at any table size: an
        // UPDATE joined to this subquery got a generic plan that hash-joins
        // a sequential scan of upload_parts.
        let stale: Vec<(Uuid, i32)> = sqlx::query_as(
            "SELECT p.session_id, p.part_number
               FROM upload_parts p
              WHERE p.committed_token IS NULL
                AND p.published_at < now() - make_interval(secs => $1)
                -- the session through its primary key, once per stale part: a
                -- scalar subquery stays a subplan (a join or EXISTS let the
                -- generic plan hash-join every session); IS TRUE: see BACKLOG_SQL
                AND (SELECT s.state = 'open' FROM upload_sessions s
                      WHERE s.id = p.session_id) IS TRUE
              ORDER BY p.published_at
              LIMIT 1000
              FOR UPDATE OF p SKIP LOCKED",
        )
        .bind(older_than.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        if stale.is_empty() {
            return Ok(0);
        }
        let (sessions, numbers): (Vec<Uuid>, Vec<i32>) = stale.iter().copied().unzip();
        sqlx::query(
            "UPDATE upload_parts p SET published_at = now()
               FROM UNNEST($1::uuid[], $2::int4[]) AS k(session_id, part_number)
              WHERE p.session_id = k.session_id AND p.part_number = k.part_number",
        )
        .bind(&sessions)
        .bind(&numbers)
        .execute(&mut *tx)
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
    session_states: &[Option<SessionState>],
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
        .filter(|&i| session_states[i] == Some(SessionState::Open))
        .collect();
    for (i, c) in commits.iter().enumerate() {
        if session_states[i] != Some(SessionState::Open) {
            abandons.push(abandon_ours(c, "session no longer open"));
            outcomes[i] = Some(CommitOutcome::SessionClosed);
        }
    }
    let current = lock_current_parts(tx, commits, &open).await?;
    let mut winners = Vec::new();
    for &i in &open {
        let c = &commits[i];
        let Some(now) = current.get(&(c.session_id, c.part_number)) else {
            return Err(StoreError::SameBatch(format!(
                "part {} of session {} does not exist",
                c.part_number, c.session_id
            )));
        };
        if now.committed_token.is_some_and(|t| t >= c.token) {
            abandons.push(abandon_ours(c, "a newer attempt committed first"));
            outcomes[i] = Some(CommitOutcome::Superseded);
            continue;
        }
        if let (Some(old_token), Some(old_inode), Some(old_path)) =
            (now.committed_token, now.staging_inode, &now.staging_path)
        {
            abandons.push(Abandon {
                inode: old_inode,
                path: old_path.clone(),
                session_id: c.session_id,
                part_number: c.part_number,
                token: old_token,
                reason: "replaced by a newer attempt",
            });
        }
        winners.push(i);
    }
    abandon_all(tx, &abandons).await?;
    let rows = record_commits_in(tx, commits, &winners).await?;
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

/// What a part row holds now, read `FOR UPDATE` before a commit decides.
#[derive(FromRow)]
struct CurrentPart {
    session_id: Uuid,
    part_number: i32,
    committed_token: Option<FencingToken>,
    staging_inode: Option<i64>,
    staging_path: Option<String>,
}

/// `f` of each commit `which` names, in that order: one array parameter
/// of an `UNNEST` statement.
fn column<'c, 'a, T>(
    commits: &'c [PartCommit<'a>],
    which: &[usize],
    f: impl Fn(&'c PartCommit<'a>) -> T,
) -> Vec<T> {
    which.iter().map(|&i| f(&commits[i])).collect()
}

/// Locks the part rows of the commits `which` names (in key order) and
/// returns them by `(session, part number)`.
async fn lock_current_parts(
    tx: &mut Tx,
    commits: &[PartCommit<'_>],
    which: &[usize],
) -> Result<std::collections::HashMap<(Uuid, i32), CurrentPart>, StoreError> {
    let current: Vec<CurrentPart> = sqlx::query_as(
        "SELECT p.session_id, p.part_number, p.committed_token, p.staging_inode,
                    p.staging_path
               FROM upload_parts p
               JOIN UNNEST($1::uuid[], $2::int[]) AS j(session_id, part_number)
                 ON p.session_id = j.session_id AND p.part_number = j.part_number
              ORDER BY p.session_id, p.part_number
                FOR UPDATE OF p",
    )
    .bind(column(commits, which, |c| c.session_id))
    .bind(column(commits, which, |c| c.part_number))
    .fetch_all(&mut **tx)
    .await?;
    Ok(current
        .into_iter()
        .map(|c| ((c.session_id, c.part_number), c))
        .collect())
}

/// Records the commits `which` names in one statement; the part rows as committed.
async fn record_commits_in(
    tx: &mut Tx,
    commits: &[PartCommit<'_>],
    which: &[usize],
) -> Result<Vec<Part>, StoreError> {
    if which.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
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
    .bind(column(commits, which, |c| c.session_id))
    .bind(column(commits, which, |c| c.part_number))
    .bind(column(commits, which, |c| c.token))
    .bind(column(commits, which, |c| c.staging_inode as i64))
    .bind(column(commits, which, |c| c.staging_path))
    .bind(column(commits, which, |c| c.md5))
    .bind(column(commits, which, |c| c.crc32c as i64))
    .bind(column(commits, which, |c| c.worker))
    .fetch_all(&mut **tx)
    .await?)
}
