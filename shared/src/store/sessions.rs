//! The `upload_sessions` table: sessions created with their parts and part
//! jobs in one transaction, and looked up.

use std::time::Duration;

use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::outbox::enqueue_jobs;
use super::{to_bigint, Store, StoreError, Tx};
use crate::domain::{Dest, Goal, PartSize};
use crate::queue::{PartJob, PART_GROUP_MAX_FILE_BYTES};

/// The state of an upload session (the `upload_sessions.state` column, in
/// lower case): `Receiving` while an S3 client pushes its parts, `Open`
/// while its parts are written, `Completing` while a completion holds it,
/// then one of the three final states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Receiving,
    Open,
    Completing,
    Completed,
    Aborted,
    Failed,
}

impl SessionState {
    pub const ALL: [SessionState; 6] = [
        SessionState::Receiving,
        SessionState::Open,
        SessionState::Completing,
        SessionState::Completed,
        SessionState::Aborted,
        SessionState::Failed,
    ];

    /// The column's value (and the `upload.<state>` event's suffix).
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionState::Receiving => "receiving",
            SessionState::Open => "open",
            SessionState::Completing => "completing",
            SessionState::Completed => "completed",
            SessionState::Aborted => "aborted",
            SessionState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compared with the column's spelling (`session.state == "open"`).
impl PartialEq<&str> for SessionState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A state the column does not know (the migrations' CHECK lets none in).
#[derive(Debug, thiserror::Error)]
#[error("unknown session state {0:?}")]
pub struct UnknownSessionState(pub String);

impl std::str::FromStr for SessionState {
    type Err = UnknownSessionState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownSessionState(s.to_string()))
    }
}

impl TryFrom<String> for SessionState {
    type Error = UnknownSessionState;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// An upload session row (serialized as the HTTP API shows it: without its
/// final inode).
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
    #[sqlx(try_from = "String")]
    pub state: SessionState,
    pub expected_md5: Option<String>,
    pub expected_crc32c: Option<i64>,
    pub md5: Option<String>,
    pub crc32c: Option<i64>,
    #[serde(skip_serializing)]
    pub final_inode: Option<i64>,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a new session needs.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub request_id: String,
    pub source: String,
    pub dest: Dest,
    pub size: u64,
    pub part_size: PartSize,
    pub goal: Goal,
    pub overwrite: bool,
    pub expected_md5: Option<String>,
    pub expected_crc32c: Option<u32>,
    /// The source's validator at validation ([`crate::source::Validator::to_stored`]).
    pub source_validator: Option<String>,
}

impl Store {
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
            .map(|n| to_bigint("part_size", n.part_size.bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let part_counts = news
            .iter()
            .map(|n| {
                let count = n.part_size.parts_of(n.size);
                i32::try_from(count).map_err(|_| StoreError::OutOfRange {
                    field: "part count",
                    value: count,
                })
            })
            .collect::<Result<Vec<i32>, _>>()?;
        let mut tx = self.pool.begin().await?;
        let columns = NewColumns {
            ids: &ids,
            sizes: &sizes,
            part_sizes: &part_sizes,
            part_counts: &part_counts,
        };
        let created = insert_sessions_in(&mut tx, news, &columns).await?;
        if !created.is_empty() {
            insert_parts_and_jobs_in(&mut tx, &created).await?;
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
}

/// The columns of new sessions computed (and range-checked) before their insert.
struct NewColumns<'a> {
    ids: &'a [Uuid],
    sizes: &'a [i64],
    part_sizes: &'a [i64],
    part_counts: &'a [i32],
}

/// Inserts the sessions whose request id is new; the rows inserted.
async fn insert_sessions_in(
    tx: &mut Tx,
    news: &[NewSession],
    columns: &NewColumns<'_>,
) -> Result<Vec<Session>, StoreError> {
    Ok(sqlx::query_as(
        "INSERT INTO upload_sessions
            (id, request_id, source, dest, size, part_size, part_count, goal, overwrite,
             expected_md5, expected_crc32c, source_validator)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                              $6::bigint[], $7::int[], $8::smallint[], $9::bool[],
                              $10::text[], $11::bigint[], $12::text[])
         ON CONFLICT (request_id) DO NOTHING
         RETURNING *",
    )
    .bind(columns.ids)
    .bind(
        news.iter()
            .map(|n| n.request_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(news.iter().map(|n| n.source.as_str()).collect::<Vec<_>>())
    .bind(news.iter().map(|n| n.dest.to_stored()).collect::<Vec<_>>())
    .bind(columns.sizes)
    .bind(columns.part_sizes)
    .bind(columns.part_counts)
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
    .fetch_all(&mut **tx)
    .await?)
}

/// Inserts the part rows of new sessions and their part jobs (into the
/// outbox): small single-part files travel in groups, every other part alone.
async fn insert_parts_and_jobs_in(tx: &mut Tx, created: &[Session]) -> Result<(), StoreError> {
    let (mut part_sessions, mut numbers, mut offsets, mut sizes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut jobs = Vec::new();
    let mut grouped = Vec::new();
    for session in created {
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
    sqlx::query(
        "INSERT INTO upload_parts (session_id, part_number, part_offset, size)
         SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::bigint[], $4::bigint[])",
    )
    .bind(&part_sessions)
    .bind(&numbers)
    .bind(&offsets)
    .bind(&sizes)
    .execute(&mut **tx)
    .await?;
    enqueue_jobs(tx, &jobs, &grouped).await
}
