//! The `upload_sessions` table: sessions created with their parts and part
//! jobs in one transaction, and looked up.

use std::time::Duration;

use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::outbox::enqueue_jobs;
use super::{to_bigint, Store, StoreError};
use crate::queue::{PartJob, PART_GROUP_MAX_FILE_BYTES};

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
