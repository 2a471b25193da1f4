//! Sessions whose parts a client pushes (the S3 endpoint, migration 0005):
//! the statements such a session needs on the pipeline's tables
//! (`upload_sessions`, `upload_parts`, `abandoned_inodes`).
//!
//! A pushed session is created in the state [`SessionState::Receiving`] with no
//! `upload_parts` rows. Each part attempt is started and committed in a
//! transaction holding the session row `FOR SHARE` ([`Store::share_session`]);
//! the endpoint keeps its attempts and committed parts in tables of its own,
//! written through [`SessionLock::conn`] in that same transaction. A freeze
//! ([`SessionLock::freeze_pushed`], under the row `FOR UPDATE` of
//! [`Store::lock_session`]) turns the chosen parts into committed
//! `upload_parts` rows and opens the session, after which the pipeline's
//! own completion takes over; a part commit that comes later finds the
//! session no longer receiving.
//!
//! Two guards keep receiving sessions bounded: [`Store::create_pushed_session`]
//! refuses a new one when its source (one access key) already has
//! [`NewPushedSession::max_receiving`] of them, and the coordinator's
//! maintenance aborts those idle longer than its expiry
//! ([`Store::idle_pushed_sessions`], [`Store::expire_pushed_session`]) as
//! AbortMultipartUpload does ([`SessionLock::end_pushed`]). Ending a pushed
//! session reads its committed parts from the endpoint's `s3_parts` table
//! (migration 0005): the coordinator ends sessions without the endpoint's
//! crate, so the one statement both need lives here.

use std::time::Duration;

use uuid::Uuid;

use super::abandoned::{abandon_all, Abandon};
use super::{Session, SessionLock, SessionState, Store, StoreError};
use crate::domain::FencingToken;

/// What a new pushed session needs (its size and parts are only known
/// when it is frozen).
#[derive(Debug, Clone, Copy)]
pub struct NewPushedSession<'a> {
    pub id: Uuid,
    pub request_id: &'a str,
    pub source: &'a str,
    /// Relative to the ingest root.
    pub dest: &'a str,
    pub goal: u8,
    /// Refuse the session ([`NewPushed::TooMany`]) when this many sessions
    /// of the same `source` are already receiving (`None`: no bound).
    pub max_receiving: Option<u32>,
}

/// What [`Store::create_pushed_session`] did.
pub enum NewPushed {
    /// Created, in this transaction (still open: commit it).
    Created(SessionLock),
    /// Refused: the source already has this many receiving sessions, the
    /// bound; nothing was written.
    TooMany { receiving: i64 },
}

/// A committed pushed part chosen for the completion.
#[derive(Debug, Clone, Copy)]
pub struct PushedPart<'a> {
    /// The fencing token of the attempt that committed it.
    pub token: FencingToken,
    pub size: i64,
    pub staging_inode: i64,
    pub staging_path: &'a str,
    /// `None` for a part that is a snapshot of a file whose MD5 is unknown.
    pub md5: Option<&'a str>,
    pub crc32c: i64,
}

/// The staging inode of a pushed part attempt that nothing will reference.
#[derive(Debug, Clone, Copy)]
pub struct PushedInode<'a> {
    pub inode: i64,
    pub path: &'a str,
    pub part_number: i32,
    /// The fencing token of the attempt that wrote it.
    pub token: FencingToken,
}

impl Store {
    /// Creates a pushed session (state [`SessionState::Receiving`], overwriting its
    /// destination, size and parts placeholders until the freeze) in a new
    /// transaction, returned open: the caller writes its own rows of the
    /// session through [`SessionLock::conn`] and commits. With
    /// [`NewPushedSession::max_receiving`] the creations of one source are
    /// serialized (a transaction-scoped advisory lock on its name) and
    /// counted (index `upload_sessions_receiving_source`, migration 0008),
    /// so concurrent creations never pass the bound together.
    pub async fn create_pushed_session(
        &self,
        new: &NewPushedSession<'_>,
    ) -> Result<NewPushed, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(max) = new.max_receiving {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 14))")
                .bind(new.source)
                .execute(&mut *tx)
                .await?;
            let receiving: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM upload_sessions WHERE state = 'receiving' AND source = $1",
            )
            .bind(new.source)
            .fetch_one(&mut *tx)
            .await?;
            if receiving >= i64::from(max) {
                tx.rollback().await?;
                return Ok(NewPushed::TooMany { receiving });
            }
        }
        sqlx::query(
            "INSERT INTO upload_sessions
                (id, request_id, source, dest, size, part_size, part_count, goal, overwrite, state)
             VALUES ($1, $2, $3, $4, 0, 1, 1, $5, true, $6)",
        )
        .bind(new.id)
        .bind(new.request_id)
        .bind(new.source)
        .bind(new.dest)
        .bind(i16::from(new.goal))
        .bind(SessionState::Receiving.as_str())
        .execute(&mut *tx)
        .await?;
        Ok(NewPushed::Created(SessionLock { tx }))
    }

    /// Receiving pushed sessions idle longer than `idle`: created before
    /// then and no part committed since (oldest first, at most `limit`).
    /// Reads `upload_sessions_receiving` (migration 0008) and each
    /// candidate's parts by the `s3_parts` primary key.
    pub async fn idle_pushed_sessions(
        &self,
        idle: Duration,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT s.id FROM upload_sessions s
              WHERE s.state = 'receiving' AND s.created_at < now() - make_interval(secs => $1)
                AND NOT EXISTS (SELECT 1 FROM s3_parts p
                                 WHERE p.upload_id = s.id
                                   AND p.committed_at >= now() - make_interval(secs => $1))
              ORDER BY s.created_at
              LIMIT $2",
        )
        .bind(idle.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Aborts pushed session `id` if, under its row lock, it is still
    /// receiving and idle longer than `idle` (a part committed meanwhile
    /// keeps it): as [`SessionLock::end_pushed`] with state `aborted`.
    /// The session as it was, if it was aborted.
    pub async fn expire_pushed_session(
        &self,
        id: Uuid,
        idle: Duration,
        why: &str,
    ) -> Result<Option<Session>, StoreError> {
        let (mut lock, session) = self.lock_session(id).await?;
        let Some(session) = session.filter(|s| s.state == SessionState::Receiving) else {
            lock.rollback().await?;
            return Ok(None);
        };
        let idle_now: bool = sqlx::query_scalar(
            "SELECT $2 < now() - make_interval(secs => $3)
                AND NOT EXISTS (SELECT 1 FROM s3_parts
                                 WHERE upload_id = $1
                                   AND committed_at >= now() - make_interval(secs => $3))",
        )
        .bind(id)
        .bind(session.created_at)
        .bind(idle.as_secs_f64())
        .fetch_one(&mut *lock.tx)
        .await?;
        if !idle_now {
            lock.rollback().await?;
            return Ok(None);
        }
        lock.end_pushed(&session, SessionState::Aborted, why, "s3 upload expired")
            .await?;
        lock.commit().await?;
        Ok(Some(session))
    }

    /// Opens a transaction holding the session row `FOR SHARE` (part
    /// attempts of one session run side by side; a freeze or an end takes
    /// the row `FOR UPDATE` and never interleaves with them) and reads the
    /// session's state under it: `None` if there is no such session.
    pub async fn share_session(
        &self,
        id: Uuid,
    ) -> Result<(SessionLock, Option<SessionState>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM upload_sessions WHERE id = $1 FOR SHARE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let state = state.map(SessionState::try_from).transpose()?;
        Ok((SessionLock { tx }, state))
    }

    /// The MD5 (if its completion knew it) and the whole-file CRC-32C of a
    /// completed session's file, as its completion recorded them: what a
    /// copy of that file by reference (a snapshot) records as its own part.
    /// `None` if the session is not completed.
    pub async fn completed_digests(
        &self,
        id: Uuid,
    ) -> Result<Option<(Option<String>, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT md5, crc32c FROM upload_sessions
              WHERE id = $1 AND state = 'completed' AND crc32c IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Whether the session exists and is still [`SessionState::Receiving`] parts.
    pub async fn is_receiving(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM upload_sessions WHERE id = $1 AND state = 'receiving')",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }
}

impl SessionLock {
    /// Ends a receiving pushed session locked `FOR UPDATE` as failed or
    /// aborted: its state and `upload.<state>` event ([`SessionLock::end`]),
    /// and every committed part's staging inode recorded as abandoned with
    /// `reason` (the collector deletes them; attempts still writing find
    /// the session closed and abandon their own inodes).
    pub async fn end_pushed(
        &mut self,
        session: &Session,
        new_state: SessionState,
        why: &str,
        reason: &'static str,
    ) -> Result<(), StoreError> {
        self.end(session, new_state, why).await?;
        let parts: Vec<(i32, FencingToken, i64, String)> = sqlx::query_as(
            "SELECT part_number, committed_token, staging_inode, staging_path
               FROM s3_parts WHERE upload_id = $1 AND committed_token IS NOT NULL
              ORDER BY part_number",
        )
        .bind(session.id)
        .fetch_all(&mut *self.tx)
        .await?;
        let all: Vec<Abandon> = parts
            .into_iter()
            .map(|(part_number, token, inode, path)| Abandon {
                inode,
                path,
                session_id: session.id,
                part_number,
                token,
                reason,
            })
            .collect();
        abandon_all(&mut self.tx, &all).await
    }

    /// Records staging inodes of pushed part attempts of session `id` as
    /// abandoned (the collector deletes them), in this transaction.
    pub async fn abandon_pushed(
        &mut self,
        id: Uuid,
        inodes: &[PushedInode<'_>],
        reason: &'static str,
    ) -> Result<(), StoreError> {
        let all: Vec<Abandon> = inodes
            .iter()
            .map(|i| Abandon {
                inode: i.inode,
                path: i.path.to_string(),
                session_id: id,
                part_number: i.part_number,
                token: i.token,
                reason,
            })
            .collect();
        abandon_all(&mut self.tx, &all).await
    }

    /// Freezes a pushed session locked `FOR UPDATE`: `parts` (in their
    /// order) become its committed `upload_parts` rows, numbered from 0 with
    /// offsets from their sizes, and the session becomes `open` with their
    /// total size, the largest part as its part size and their count.
    pub async fn freeze_pushed(
        &mut self,
        id: Uuid,
        parts: &[PushedPart<'_>],
        worker: &str,
    ) -> Result<(), StoreError> {
        let offsets: Vec<i64> = parts
            .iter()
            .scan(0i64, |offset, p| {
                let at = *offset;
                *offset += p.size;
                Some(at)
            })
            .collect();
        let total: i64 = parts.iter().map(|p| p.size).sum();
        let part_size = parts.iter().map(|p| p.size).max().unwrap_or(1).max(1);
        sqlx::query(
            "INSERT INTO upload_parts
                (session_id, part_number, part_offset, size, attempts, committed_token,
                 staging_inode, staging_path, md5, crc32c, worker, committed_at)
             SELECT $1, n, o, s, t, t, i, p, m, c, $10, clock_timestamp()
               FROM UNNEST($2::int[], $3::bigint[], $4::bigint[], $5::int[], $6::bigint[],
                           $7::text[], $8::text[], $9::bigint[]) AS x(n, o, s, t, i, p, m, c)",
        )
        .bind(id)
        .bind((0..parts.len() as i32).collect::<Vec<_>>())
        .bind(&offsets)
        .bind(parts.iter().map(|p| p.size).collect::<Vec<_>>())
        .bind(parts.iter().map(|p| p.token).collect::<Vec<_>>())
        .bind(parts.iter().map(|p| p.staging_inode).collect::<Vec<_>>())
        .bind(parts.iter().map(|p| p.staging_path).collect::<Vec<_>>())
        .bind(parts.iter().map(|p| p.md5).collect::<Vec<Option<&str>>>())
        .bind(parts.iter().map(|p| p.crc32c).collect::<Vec<_>>())
        .bind(worker)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "UPDATE upload_sessions SET state = $2, size = $3, part_size = $4, part_count = $5,
                    updated_at = now()
              WHERE id = $1",
        )
        .bind(id)
        .bind(SessionState::Open.as_str())
        .bind(total)
        .bind(part_size)
        .bind(parts.len() as i32)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
