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

use uuid::Uuid;

use super::abandoned::{abandon_all, Abandon};
use super::{SessionLock, SessionState, Store, StoreError};
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
    /// session through [`SessionLock::conn`] and commits.
    pub async fn create_pushed_session(
        &self,
        new: &NewPushedSession<'_>,
    ) -> Result<SessionLock, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        Ok(SessionLock { tx })
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
