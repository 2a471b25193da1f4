//! PostgreSQL access: upload sessions, parts, abandoned staging inodes and the
//! outbox. Every SQL statement of the system lives here. The transactions
//! that make the design's invariants hold are whole functions:
//! [`Store::create_sessions`], [`Store::commit_part`] /
//! [`Store::commit_part_in`], and the locked completion transaction opened by
//! [`Store::lock_session`].

use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use crate::jobs::{
    Outgoing, PartGroup, PartJob, UploadEvent, EVENTS_EXCHANGE, PARTS_QUEUE,
    PART_GROUP_MAX_FILE_BYTES, PART_GROUP_MAX_JOBS,
};

/// Database failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("PostgreSQL: {0}")]
    Db(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot encode outbox payload: {0}")]
    Encode(#[from] serde_json::Error),
    /// The failure of a statement that served several requests, reported
    /// for each of them after the first (which gets the error itself).
    #[error("{0}")]
    SameBatch(String),
    /// A value that does not fit its column (validation lets none through).
    #[error("{field} {value} does not fit its PostgreSQL column")]
    OutOfRange { field: &'static str, value: u64 },
}

/// A u64 for a PostgreSQL `bigint`, refused rather than wrapped.
fn to_bigint(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

impl StoreError {
    /// One error per request of a batch that failed together.
    pub fn for_each(self, n: usize) -> Vec<StoreError> {
        let again = self.to_string();
        let mut all = vec![self];
        all.extend((1..n).map(|_| StoreError::SameBatch(again.clone())));
        all.truncate(n);
        all
    }
}

impl From<sqlx::Error> for StoreError {
    /// Every PostgreSQL failure passes here: counted in
    /// `mfs_ingest_service_errors_total{service="postgres"}`.
    fn from(e: sqlx::Error) -> Self {
        crate::metrics::postgres_error(&e);
        StoreError::Db(e)
    }
}

/// The migrations in `migrations/`, embedded.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A session whose file is in place, as [`Store::complete_all_in`] records it.
#[derive(Debug, Clone, Copy)]
pub struct SessionDone<'a> {
    pub session: &'a Session,
    pub md5: Option<&'a str>,
    pub crc32c: u32,
    pub final_inode: u32,
    /// Whether it replaced a file that was at the destination.
    pub replaced: bool,
}

/// Every part of one session, in order.
const PARTS_OF_SESSION: &str =
    "SELECT session_id, part_number, part_offset, size, attempts, committed_token,
        staging_inode, staging_path, md5, crc32c, worker
   FROM upload_parts WHERE session_id = $1 ORDER BY part_number";

/// Session states.
pub mod state {
    pub const OPEN: &str = "open";
    pub const COMPLETING: &str = "completing";
    pub const COMPLETED: &str = "completed";
    pub const ABORTED: &str = "aborted";
    pub const FAILED: &str = "failed";
}

/// An upload session row.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Session {
    pub id: Uuid,
    pub request_id: String,
    pub source: String,
    pub dest: String,
    pub size: i64,
    pub part_size: i64,
    pub part_count: i32,
    pub goal: i16,
    pub overwrite: bool,
    pub state: String,
    pub expected_md5: Option<String>,
    pub expected_crc32c: Option<i64>,
    pub md5: Option<String>,
    pub crc32c: Option<i64>,
    pub final_inode: Option<i64>,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

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

/// What a new session needs.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub request_id: String,
    pub source: String,
    pub dest: String,
    pub size: u64,
    pub part_size: u64,
    pub goal: u8,
    pub overwrite: bool,
    pub expected_md5: Option<String>,
    pub expected_crc32c: Option<u32>,
    /// The source's validator at validation ([`crate::source::Validator::to_stored`]).
    pub source_validator: Option<String>,
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

/// An abandoned staging inode waiting for deletion.
#[derive(Debug, Clone, FromRow)]
pub struct Abandoned {
    pub id: i64,
    pub inode: i64,
    pub path: String,
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

/// [`Store::backlog`]: the backlog gauges' values.
///
/// The pending parts are read through their partial index and each one's
/// session through the primary key, one lookup per pending part (a
/// correlated subquery, kept from being flattened into a join by `OFFSET
/// 0`; the state test in `IS TRUE` so that it does not match the partial
/// index of open sessions). As a join, after statistics were gathered while
/// every upload was finished, the planner took both partial indexes for
/// nearly empty and walked the open sessions once per pending part:
/// measured 2.5 s per gauge (12.5 M rows compared) with 5,000 open uploads
/// over 20,000 finished ones, instead of 8 ms.
#[doc(hidden)]
pub const BACKLOG_SQL: &str = "SELECT pending.parts, pending.oldest_secs,
       (SELECT count(*) FROM upload_sessions WHERE state IN ('open', 'completing')),
       (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
          FROM upload_sessions WHERE state IN ('open', 'completing')),
       (SELECT count(*) FROM outbox),
       (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 FROM outbox),
       (SELECT count(*) FROM abandoned_inodes WHERE deleted_at IS NULL)
  FROM (SELECT count(o.created_at) AS parts,
               COALESCE(EXTRACT(EPOCH FROM now() - min(o.created_at)), 0)::float8 AS oldest_secs
          FROM (SELECT (SELECT s.created_at FROM upload_sessions s
                         WHERE s.id = p.session_id AND (s.state = 'open') IS TRUE) AS created_at
                  FROM upload_parts p
                 WHERE p.committed_token IS NULL
                OFFSET 0) o) pending";

/// An unsent outbox row.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub exchange: String,
    pub routing_key: String,
    pub payload: serde_json::Value,
}

/// Session settings of every pooled connection, so that no statement and no
/// transaction left idle (a completion stuck in MooseFS work, a process
/// frozen mid-transaction) holds its row locks without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbTimeouts {
    /// `statement_timeout`: the longest any one statement may run (waiting
    /// for a row or advisory lock included).
    pub statement: Duration,
    /// `idle_in_transaction_session_timeout`: the longest a transaction may
    /// wait between statements, e.g. while a completion does its MooseFS work
    /// under the session row lock; must exceed the completion deadline.
    pub idle_in_transaction: Duration,
}

impl Default for DbTimeouts {
    fn default() -> Self {
        DbTimeouts {
            statement: Duration::from_secs(DEFAULT_STATEMENT_TIMEOUT_SECS),
            idle_in_transaction: Duration::from_secs(DEFAULT_IDLE_IN_TRANSACTION_SECS),
        }
    }
}

/// Default `statement_timeout` of pooled connections, seconds.
pub const DEFAULT_STATEMENT_TIMEOUT_SECS: u64 = 120;
/// Default `idle_in_transaction_session_timeout`, seconds: the default
/// completion deadline ([`crate::ingest::DEFAULT_COMPLETION_DEADLINE_SECS`])
/// plus a minute.
pub const DEFAULT_IDLE_IN_TRANSACTION_SECS: u64 =
    crate::ingest::DEFAULT_COMPLETION_DEADLINE_SECS + 60;

/// Handle to the database.
#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
}

pub type Tx = Transaction<'static, Postgres>;

impl Store {
    /// Connects (bounded) with a pool of `max_connections` and the default
    /// [`DbTimeouts`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Self::connect_with(url, max_connections, DbTimeouts::default()).await
    }

    /// Connects (bounded) with a pool of `max_connections`; every connection
    /// of the pool gets `timeouts` as its session settings.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        timeouts: DbTimeouts,
    ) -> Result<Store, StoreError> {
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        let options = options.options([
            (
                "statement_timeout",
                timeouts.statement.as_millis().to_string(),
            ),
            (
                "idle_in_transaction_session_timeout",
                timeouts.idle_in_transaction.as_millis().to_string(),
            ),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|_, _| {
                Box::pin(async {
                    crate::metrics::service_ok(crate::metrics::Service::Postgres);
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Store { pool })
    }

    /// Applies the migrations on one connection without a statement
    /// timeout (a migration may legitimately run long).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut *conn)
            .await?;
        let ran = MIGRATOR.run(&mut *conn).await;
        // The connection goes back to the pool: its timeout with it.
        let reset = sqlx::query("RESET statement_timeout")
            .execute(&mut *conn)
            .await;
        ran?;
        reset?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Creates many sessions, their parts and their job messages in ONE
    /// transaction (three statements whatever the count); a request id that
    /// exists already (or twice in `news`) gets the existing session. One
    /// `(session, created now)` per entry, in order.
    pub async fn create_sessions(
        &self,
        news: &[NewSession],
    ) -> Result<Vec<(Session, bool)>, StoreError> {
        let ids: Vec<Uuid> = news.iter().map(|_| Uuid::new_v4()).collect();
        let sizes = news
            .iter()
            .map(|n| to_bigint("size", n.size))
            .collect::<Result<Vec<_>, _>>()?;
        let part_sizes = news
            .iter()
            .map(|n| to_bigint("part_size", n.part_size))
            .collect::<Result<Vec<_>, _>>()?;
        let part_counts = news
            .iter()
            .map(|n| {
                let count = n.size.div_ceil(n.part_size.max(1)).max(1);
                i32::try_from(count).map_err(|_| StoreError::OutOfRange {
                    field: "part count",
                    value: count,
                })
            })
            .collect::<Result<Vec<i32>, _>>()?;
        let mut tx = self.pool.begin().await?;
        let created: Vec<Session> = sqlx::query_as(
            "INSERT INTO upload_sessions
                (id, request_id, source, dest, size, part_size, part_count, goal, overwrite,
                 expected_md5, expected_crc32c, source_validator)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                  $6::bigint[], $7::int[], $8::smallint[], $9::bool[],
                                  $10::text[], $11::bigint[], $12::text[])
             ON CONFLICT (request_id) DO NOTHING
             RETURNING *",
        )
        .bind(&ids)
        .bind(
            news.iter()
                .map(|n| n.request_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(news.iter().map(|n| n.source.as_str()).collect::<Vec<_>>())
        .bind(news.iter().map(|n| n.dest.as_str()).collect::<Vec<_>>())
        .bind(&sizes)
        .bind(&part_sizes)
        .bind(&part_counts)
        .bind(news.iter().map(|n| i16::from(n.goal)).collect::<Vec<_>>())
        .bind(news.iter().map(|n| n.overwrite).collect::<Vec<_>>())
        .bind(
            news.iter()
                .map(|n| n.expected_md5.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            news.iter()
                .map(|n| n.expected_crc32c.map(i64::from))
                .collect::<Vec<_>>(),
        )
        .bind(
            news.iter()
                .map(|n| n.source_validator.clone())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;

        let (mut part_sessions, mut numbers, mut offsets, mut sizes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut jobs = Vec::new();
        let mut grouped = Vec::new();
        for session in &created {
            // Small single-part files travel in groups, every other part alone.
            let queue = if session.part_count == 1
                && u64::try_from(session.size).is_ok_and(|s| s <= PART_GROUP_MAX_FILE_BYTES)
            {
                &mut grouped
            } else {
                &mut jobs
            };
            for n in 0..session.part_count {
                let offset = i64::from(n) * session.part_size;
                part_sessions.push(session.id);
                numbers.push(n);
                offsets.push(offset);
                sizes.push((session.size - offset).min(session.part_size));
                queue.push(PartJob {
                    session_id: session.id,
                    part_number: n,
                });
            }
        }
        if !created.is_empty() {
            sqlx::query(
                "INSERT INTO upload_parts (session_id, part_number, part_offset, size)
                 SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::bigint[], $4::bigint[])",
            )
            .bind(&part_sessions)
            .bind(&numbers)
            .bind(&offsets)
            .bind(&sizes)
            .execute(&mut *tx)
            .await?;
            enqueue_jobs(&mut tx, &jobs, &grouped).await?;
        }
        let mut by_request: std::collections::HashMap<String, Session> = created
            .into_iter()
            .map(|s| (s.request_id.clone(), s))
            .collect();
        let missing: Vec<&str> = news
            .iter()
            .map(|n| n.request_id.as_str())
            .filter(|r| !by_request.contains_key(*r))
            .collect();
        if !missing.is_empty() {
            let existing: Vec<Session> =
                sqlx::query_as("SELECT * FROM upload_sessions WHERE request_id = ANY($1)")
                    .bind(&missing)
                    .fetch_all(&mut *tx)
                    .await?;
            by_request.extend(existing.into_iter().map(|s| (s.request_id.clone(), s)));
        }
        tx.commit().await?;
        news.iter()
            .zip(&ids)
            .map(|(n, id)| {
                let session = by_request.get(&n.request_id).cloned().ok_or_else(|| {
                    StoreError::SameBatch(format!("session of {} vanished", n.request_id))
                })?;
                let created = session.id == *id;
                Ok((session, created))
            })
            .collect()
    }

    /// The sessions of these request ids that exist, by request id.
    pub async fn sessions_by_request(
        &self,
        request_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, Session>, StoreError> {
        let found: Vec<Session> =
            sqlx::query_as("SELECT * FROM upload_sessions WHERE request_id = ANY($1)")
                .bind(request_ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(found
            .into_iter()
            .map(|s| (s.request_id.clone(), s))
            .collect())
    }

    pub async fn session(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM upload_sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn session_by_request(
        &self,
        request_id: &str,
    ) -> Result<Option<Session>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM upload_sessions WHERE request_id = $1")
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

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
    /// the two never interleave); see [`Store::commit_part_in`].
    pub async fn commit_part(&self, c: &PartCommit<'_>) -> Result<CommitOutcome, StoreError> {
        let (tx, outcome) = self.commit_part_open(c).await?;
        tx.commit().await?;
        self.recount_after_commit(c.session_id, outcome).await
    }

    /// [`Store::commit_part`] up to, not including, the commit: the part is
    /// recorded in a transaction holding the session row `FOR SHARE`, which
    /// is returned still open. `Committed { all_committed }` says whether
    /// every part is committed as this transaction sees it: true means this
    /// was the last part (the caller may complete the session in the same
    /// transaction, see [`Store::lock_session_in`]); false may be wrong
    /// only when other parts commit at the same time, which
    /// [`Store::recount_after_commit`] settles.
    pub async fn commit_part_open(
        &self,
        c: &PartCommit<'_>,
    ) -> Result<(Tx, CommitOutcome), StoreError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM upload_sessions WHERE id = $1 FOR SHARE")
                .bind(c.session_id)
                .fetch_optional(&mut *tx)
                .await?;
        let (outcome, _) = Self::commit_part_in(&mut tx, c, state.as_deref()).await?;
        if !matches!(outcome, CommitOutcome::Committed { .. }) {
            return Ok((tx, outcome));
        }
        let remaining = Self::uncommitted_parts(&mut *tx, c.session_id).await?;
        Ok((
            tx,
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

    /// Takes the session row `FOR UPDATE` inside `tx`. In a transaction
    /// that holds it `FOR SHARE` (from [`Store::commit_part_open`]) this
    /// waits for the other holders, the commits of the same session, to
    /// end; a commit of the same part waiting for this transaction's part
    /// row would deadlock with it, and PostgreSQL then aborts one of the two.
    pub async fn lock_session_in(tx: &mut Tx, id: Uuid) -> Result<Option<Session>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM upload_sessions WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?,
        )
    }

    /// Records the part inside a transaction that holds its session row
    /// locked (`session_state` as read under that lock; `None` if there is no
    /// such session); see [`Store::commit_parts_in`].
    pub async fn commit_part_in(
        tx: &mut Tx,
        c: &PartCommit<'_>,
        session_state: Option<&str>,
    ) -> Result<(CommitOutcome, Option<Part>), StoreError> {
        let mut one = Self::commit_parts_in(tx, std::slice::from_ref(c), &[session_state]).await?;
        Ok(one.pop().expect("one result per commit"))
    }

    /// Records parts inside a transaction that holds their sessions' rows
    /// locked (`session_states[i]` as read under that lock for `commits[i]`;
    /// `None` if there is no such session), in three statements whatever
    /// their number: if a session is not open, or a newer attempt already
    /// committed, the staging inode is recorded as abandoned; a replaced
    /// older inode is recorded as abandoned. `Committed` carries
    /// `all_committed: false` (the caller counts the parts itself) and
    /// comes with the part row as committed. One result per commit, in order.
    pub async fn commit_parts_in(
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

    /// Records a staging inode that never made it to a commit (the attempt
    /// failed after creating it) as abandoned.
    pub async fn abandon_attempt(
        &self,
        session_id: Uuid,
        part_number: i32,
        token: i32,
        inode: u32,
        path: &str,
        reason: &'static str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        abandon(
            &mut tx,
            &Abandon {
                inode: inode as i64,
                path: path.to_string(),
                session_id,
                part_number,
                token,
                reason,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Opens the completion transaction: the session row locked `FOR UPDATE`
    /// until the transaction ends.
    pub async fn lock_session(&self, id: Uuid) -> Result<(Tx, Option<Session>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let session = Self::lock_session_in(&mut tx, id).await?;
        Ok((tx, session))
    }

    /// [`Store::lock_session`] for several sessions, locked in id order (two
    /// transactions locking overlapping sets never wait on each other in a
    /// cycle). Sessions that do not exist are missing from the map.
    pub async fn lock_sessions(
        &self,
        ids: &[Uuid],
    ) -> Result<(Tx, std::collections::HashMap<Uuid, Session>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let sessions: Vec<Session> = sqlx::query_as(
            "SELECT * FROM upload_sessions WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        Ok((tx, sessions.into_iter().map(|s| (s.id, s)).collect()))
    }

    /// The parts, read inside the completion transaction.
    pub async fn parts_in(tx: &mut Tx, id: Uuid) -> Result<Vec<Part>, StoreError> {
        Ok(sqlx::query_as(PARTS_OF_SESSION)
            .bind(id)
            .fetch_all(&mut **tx)
            .await?)
    }

    /// Marks a locked session completed and queues its event.
    pub async fn complete_in(tx: &mut Tx, done: SessionDone<'_>) -> Result<(), StoreError> {
        Self::complete_all_in(tx, &[done]).await
    }

    /// Serializes completions per destination: takes a transaction-scoped
    /// advisory lock on each of `dests` (full MooseFS paths), in a fixed
    /// order (so two transactions never wait on each other in a cycle),
    /// after the session rows. Held until `tx` ends.
    pub async fn lock_destinations_in(tx: &mut Tx, dests: &[String]) -> Result<(), StoreError> {
        if dests.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k)
               FROM (SELECT DISTINCT hashtextextended('mfs-ingest dest ' || d, 0) AS k
                       FROM UNNEST($1::text[]) AS d ORDER BY 1) AS keys",
        )
        .bind(dests)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records, in its own transaction, inodes a completion is about to put
    /// at their sessions' destinations (see `migrations/0003`): one statement.
    pub async fn record_placements(&self, placements: &[(Uuid, u32)]) -> Result<(), StoreError> {
        if placements.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO completion_placements (session_id, inode)
             SELECT * FROM UNNEST($1::uuid[], $2::bigint[])
             ON CONFLICT DO NOTHING",
        )
        .bind(placements.iter().map(|p| p.0).collect::<Vec<_>>())
        .bind(placements.iter().map(|p| p.1 as i64).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a completion of `session_id` recorded `inode` as put in place
    /// (committed rows only: those are recorded in transactions of their own).
    pub async fn placed(&self, session_id: Uuid, inode: u32) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM completion_placements
                             WHERE session_id = $1 AND inode = $2)",
        )
        .bind(session_id)
        .bind(inode as i64)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Marks locked sessions completed and queues their events, in one
    /// statement: one outbox row holding the events of
    /// every session the statement updated, in the order given
    /// ([`crate::jobs::EventBatch`]).
    pub async fn complete_all_in(tx: &mut Tx, done: &[SessionDone<'_>]) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let events = done
            .iter()
            .map(|d| {
                serde_json::to_value(UploadEvent {
                    event: "upload.completed".into(),
                    session_id: d.session.id,
                    request_id: d.session.request_id.clone(),
                    dest: d.session.dest.clone(),
                    size: d.session.size as u64,
                    md5: d.md5.map(str::to_string),
                    crc32c: Some(d.crc32c),
                    error: None,
                    replaced: d.replaced,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "WITH v AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[],
                                      $5::jsonb[]) WITH ORDINALITY
                          AS v(id, md5, crc32c, final_inode, event, ord)),
             completed AS (
                 UPDATE upload_sessions s
                    SET state = 'completed', md5 = v.md5, crc32c = v.crc32c,
                        final_inode = v.final_inode, updated_at = now(),
                        finished_at = clock_timestamp()
                   FROM v
                  WHERE s.id = v.id
                 RETURNING s.id)
             INSERT INTO outbox (exchange, routing_key, payload)
             SELECT $6, '', jsonb_build_object('events', jsonb_agg(v.event ORDER BY v.ord))
               FROM v JOIN completed USING (id)
             HAVING count(*) > 0",
        )
        .bind(done.iter().map(|d| d.session.id).collect::<Vec<_>>())
        .bind(done.iter().map(|d| d.md5).collect::<Vec<Option<&str>>>())
        .bind(done.iter().map(|d| d.crc32c as i64).collect::<Vec<_>>())
        .bind(
            done.iter()
                .map(|d| d.final_inode as i64)
                .collect::<Vec<_>>(),
        )
        .bind(events)
        .bind(EVENTS_EXCHANGE)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Ends a locked session as failed or aborted and queues its event.
    pub async fn end_in(
        tx: &mut Tx,
        session: &Session,
        new_state: &'static str,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE upload_sessions SET state = $2, error = $3, updated_at = now(),
                    finished_at = clock_timestamp()
              WHERE id = $1",
        )
        .bind(session.id)
        .bind(new_state)
        .bind(error)
        .execute(&mut **tx)
        .await?;
        let event = UploadEvent {
            event: format!("upload.{new_state}"),
            session_id: session.id,
            request_id: session.request_id.clone(),
            dest: session.dest.clone(),
            size: session.size as u64,
            md5: None,
            crc32c: None,
            error: Some(error.to_string()),
            replaced: false,
        };
        enqueue(tx, &Outgoing::event(&event)).await
    }

    /// Records the committed parts' staging inodes of a completed session as
    /// abandoned (their chunks now belong to the final file), except `keep`.
    pub async fn abandon_parts_in(tx: &mut Tx, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO abandoned_inodes (inode, path, session_id, part_number, fencing_token, reason)
             SELECT staging_inode, staging_path, session_id, part_number, committed_token,
                    'part of a completed file'
               FROM upload_parts
              WHERE session_id = $1 AND staging_inode IS NOT NULL",
        )
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Claims up to `limit` unsent outbox rows (`FOR UPDATE SKIP LOCKED`, so
    /// several relays can run); remove them with [`Store::remove_sent`] in the
    /// same transaction after the broker confirmed them.
    pub async fn claim_outbox(&self, limit: i64) -> Result<(Tx, Vec<OutboxRow>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_as(
            "SELECT id, exchange, routing_key, payload FROM outbox
              ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok((tx, rows))
    }

    /// Deletes published rows (the outbox holds only what is still to send).
    pub async fn remove_sent(tx: &mut Tx, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut **tx)
            .await?;
        Ok(())
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

    /// Open sessions whose parts are all committed for `older_than` without
    /// completing (e.g. the completing process died).
    pub async fn sessions_awaiting_completion(
        &self,
        older_than: Duration,
    ) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT s.id FROM upload_sessions s
              WHERE s.state = 'open'
                -- its parts were committed after it was created: this bounds
                -- the scan to sessions old enough (the partial index on
                -- created_at), not every open session of a busy backlog
                AND s.created_at < now() - make_interval(secs => $1)
                AND NOT EXISTS (SELECT 1 FROM upload_parts p
                                 WHERE p.session_id = s.id
                                   AND (p.committed_token IS NULL
                                        OR p.committed_at > now() - make_interval(secs => $1)))
              LIMIT 100",
        )
        .bind(older_than.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Open sessions created more than `max_age` ago.
    pub async fn expired_sessions(&self, max_age: Duration) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM upload_sessions
              WHERE state = 'open' AND created_at < now() - make_interval(secs => $1)
              LIMIT 100",
        )
        .bind(max_age.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Claims abandoned inodes that no part row and no completed file
    /// references (`FOR UPDATE SKIP LOCKED`); mark them with
    /// [`Store::mark_deleted`] in the same transaction.
    pub async fn claim_abandoned(&self, limit: i64) -> Result<(Tx, Vec<Abandoned>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_as(
            "SELECT a.id, a.inode, a.path FROM abandoned_inodes a
              WHERE a.deleted_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM upload_parts p
                                  JOIN upload_sessions s ON s.id = p.session_id
                                 WHERE p.staging_inode = a.inode AND p.staging_path = a.path
                                   AND s.state IN ('open', 'completing'))
                AND NOT EXISTS (SELECT 1 FROM upload_sessions s
                                 WHERE s.final_inode = a.inode AND s.state = 'completed')
              ORDER BY a.id LIMIT $1
              FOR UPDATE OF a SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok((tx, rows))
    }

    pub async fn mark_deleted(tx: &mut Tx, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("UPDATE abandoned_inodes SET deleted_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The backlog gauges' values in one query, [`BACKLOG_SQL`]: pending
    /// parts of open sessions and the age of the oldest (since its session
    /// was created), open sessions, unsent outbox rows, abandoned inodes not
    /// deleted yet.
    pub async fn backlog(&self) -> Result<crate::metrics::BacklogValues, StoreError> {
        let row: (i64, f64, i64, f64, i64, f64, i64) =
            sqlx::query_as(BACKLOG_SQL).fetch_one(&self.pool).await?;
        Ok(crate::metrics::BacklogValues {
            pending_parts: row.0,
            oldest_pending_part_secs: row.1,
            open_sessions: row.2,
            oldest_open_session_secs: row.3,
            outbox_pending: row.4,
            oldest_outbox_secs: row.5,
            gc_pending: row.6,
        })
    }

    /// Records staging files found in MooseFS as abandoned when no row
    /// records them yet and either their session ended more than `grace`
    /// ago, or no session row names them at all (another deployment sharing
    /// the root, a file someone put there) and the file is older than
    /// `orphan_grace`. Returns how many it recorded.
    pub async fn record_leftovers(
        &self,
        files: &[Leftover],
        grace: Duration,
        orphan_grace: Duration,
    ) -> Result<u64, StoreError> {
        let sessions: Vec<Uuid> = files.iter().map(|f| f.session_id).collect();
        let inodes: Vec<i64> = files.iter().map(|f| f.inode).collect();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        let ages: Vec<f64> = files.iter().map(|f| f.age.as_secs_f64()).collect();
        let done = sqlx::query(
            "INSERT INTO abandoned_inodes (inode, path, session_id, part_number, fencing_token, reason)
             SELECT f.inode, f.path, f.session_id, -1, 0,
                    CASE WHEN s.id IS NULL THEN 'staging file of no known session'
                         ELSE 'left by an attempt that never committed' END
               FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::float8[])
                    AS f(session_id, inode, path, age)
               LEFT JOIN upload_sessions s ON s.id = f.session_id
              WHERE ((s.id IS NULL AND f.age > $6)
                     OR (s.state NOT IN ('open', 'completing')
                         AND s.finished_at < now() - make_interval(secs => $5)))
                AND NOT EXISTS (SELECT 1 FROM abandoned_inodes a
                                 WHERE a.session_id = f.session_id
                                   AND a.inode = f.inode AND a.path = f.path)",
        )
        .bind(&sessions)
        .bind(&inodes)
        .bind(&paths)
        .bind(&ages)
        .bind(grace.as_secs_f64())
        .bind(orphan_grace.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Ends an abandoned row that can never be collected (its path is not
    /// a MooseFS path): it leaves the collector's queue with the reason
    /// appended, and the file, if any, is left to the staging sweep.
    pub async fn mark_uncollectable(tx: &mut Tx, id: i64, why: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE abandoned_inodes SET deleted_at = now(),
                    reason = reason || ' (not collected: ' || $2 || ')'
              WHERE id = $1",
        )
        .bind(id)
        .bind(why)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Abandoned inodes not deleted yet (for status and tests).
    pub async fn pending_abandoned(&self) -> Result<Vec<Abandoned>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, inode, path FROM abandoned_inodes WHERE deleted_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Abandoned inodes of one session, deleted or not (for tests and status).
    pub async fn abandoned_of(
        &self,
        session_id: Uuid,
    ) -> Result<Vec<(i64, String, bool)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT inode, path, deleted_at IS NOT NULL FROM abandoned_inodes
              WHERE session_id = $1 ORDER BY id",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// A staging file the sweep found: its session (from the name), inode,
/// path, and age (since its last change).
#[derive(Debug, Clone)]
pub struct Leftover {
    pub session_id: Uuid,
    pub inode: i64,
    pub path: String,
    pub age: Duration,
}

struct Abandon {
    inode: i64,
    path: String,
    session_id: Uuid,
    part_number: i32,
    token: i32,
    reason: &'static str,
}

async fn abandon(tx: &mut Tx, a: &Abandon) -> Result<(), StoreError> {
    abandon_all(tx, std::slice::from_ref(a)).await
}

/// Records staging inodes as abandoned, in one statement.
async fn abandon_all(tx: &mut Tx, all: &[Abandon]) -> Result<(), StoreError> {
    if all.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO abandoned_inodes (inode, path, session_id, part_number, fencing_token, reason)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::uuid[], $4::int[], $5::int[],
                              $6::text[])",
    )
    .bind(all.iter().map(|a| a.inode).collect::<Vec<_>>())
    .bind(all.iter().map(|a| a.path.as_str()).collect::<Vec<_>>())
    .bind(all.iter().map(|a| a.session_id).collect::<Vec<_>>())
    .bind(all.iter().map(|a| a.part_number).collect::<Vec<_>>())
    .bind(all.iter().map(|a| a.token).collect::<Vec<_>>())
    .bind(all.iter().map(|a| a.reason).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An outgoing message's body as the outbox's jsonb column holds it.
fn outbox_payload(m: &Outgoing) -> Result<serde_json::Value, StoreError> {
    Ok(serde_json::from_slice(&m.payload)?)
}

/// Queues one message in the outbox (inside the caller's transaction; a
/// trigger wakes the relay).
pub async fn enqueue(tx: &mut Tx, m: &Outgoing) -> Result<(), StoreError> {
    let payload = outbox_payload(m)?;
    sqlx::query("INSERT INTO outbox (exchange, routing_key, payload) VALUES ($1, $2, $3)")
        .bind(&m.exchange)
        .bind(&m.queue)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Queues part jobs: `single` one message each, `grouped` (parts of small
/// single-part files) up to [`PART_GROUP_MAX_JOBS`] per message.
async fn enqueue_jobs(
    tx: &mut Tx,
    single: &[PartJob],
    grouped: &[PartJob],
) -> Result<(), StoreError> {
    let mut payloads: Vec<serde_json::Value> = single
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    for jobs in grouped.chunks(PART_GROUP_MAX_JOBS) {
        payloads.push(match jobs {
            [job] => serde_json::to_value(job)?,
            _ => serde_json::to_value(PartGroup {
                jobs: jobs.to_vec(),
            })?,
        });
    }
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, payload)
         SELECT '', $1, * FROM UNNEST($2::jsonb[])",
    )
    .bind(PARTS_QUEUE)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
