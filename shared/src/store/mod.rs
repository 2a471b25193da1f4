//! PostgreSQL access, split by table or aggregate; every SQL statement of
//! the system lives under this module, and every transaction is opened and
//! ended by one method of it:
//!
//! - `sessions`: upload sessions (creation with their parts and jobs, lookups);
//! - `parts`: part attempts (fencing tokens) and part commits;
//! - `locked`: [`SessionLock`], the transaction that holds session rows
//!   locked while a completion does its MooseFS work (the one unit of work
//!   that spans a caller's work: the caller holds the guard, never the
//!   transaction itself);
//! - `abandoned`: staging inodes waiting for the collector;
//! - `outbox`: messages committed with the state they announce;
//! - `placements`: inodes a completion puts in place, and destination locks.
//! - `pushed`: sessions whose parts a client pushes (the S3 endpoint):
//!   created receiving, parts committed under the row `FOR SHARE`, frozen.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

mod abandoned;
mod locked;
mod outbox;
mod parts;
mod placements;
mod pushed;
mod sessions;

pub use abandoned::{Abandoned, Collected, Leftover};
pub use locked::{SessionDone, SessionLock};
pub use outbox::{OutboxRelayError, OutboxRow};
pub use parts::{AttemptStart, CommitOutcome, Part, PartCommit, START_ATTEMPTS_SQL};
pub use pushed::{NewPushed, NewPushedSession, PushedInode, PushedPart};
pub use sessions::{NewSession, Session, SessionState, UnknownSessionState};

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
    #[error("{0}")]
    UnknownState(#[from] UnknownSessionState),
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

/// Default bound on the MooseFS work of one completion (it runs under the
/// session row lock, inside a transaction of this store), seconds.
pub const DEFAULT_COMPLETION_DEADLINE_SECS: u64 = 900;

/// Default `idle_in_transaction_session_timeout`, seconds: the default
/// completion deadline ([`DEFAULT_COMPLETION_DEADLINE_SECS`]) plus a minute.
pub const DEFAULT_IDLE_IN_TRANSACTION_SECS: u64 = DEFAULT_COMPLETION_DEADLINE_SECS + 60;

/// Handle to the database.
#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
}

/// A transaction of the store; it never leaves this module.
type Tx = Transaction<'static, Postgres>;

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
}
