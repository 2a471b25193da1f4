//! The `abandoned_inodes` table: staging inodes nobody references any
//! more, recorded for the collector, claimed and marked deleted by it.

use std::time::Duration;

use sqlx::FromRow;
use uuid::Uuid;

use super::{Store, StoreError, Tx};
use crate::domain::FencingToken;

/// An abandoned staging inode waiting for deletion.
#[derive(Debug, Clone, FromRow)]
pub struct Abandoned {
    pub id: i64,
    pub inode: i64,
    pub path: String,
}

/// What the collector did with one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collected {
    /// Deleted, or the recorded inode is not there any more.
    Deleted,
    /// Never collectable (its path is not a MooseFS path): ended with this reason.
    Uncollectable(String),
    /// Not collected this time (MooseFS trouble): left for the next pass.
    Kept,
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

pub(super) struct Abandon {
    pub(super) inode: i64,
    pub(super) path: String,
    pub(super) session_id: Uuid,
    pub(super) part_number: i32,
    pub(super) token: FencingToken,
    pub(super) reason: &'static str,
}

/// Records staging inodes as abandoned, in one statement.
pub(super) async fn abandon_all(tx: &mut Tx, all: &[Abandon]) -> Result<(), StoreError> {
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

impl Store {
    /// Records a staging inode that never made it to a commit (the attempt
    /// failed after creating it) as abandoned.
    pub async fn abandon_attempt(
        &self,
        session_id: Uuid,
        part_number: i32,
        token: FencingToken,
        inode: u32,
        path: &str,
        reason: &'static str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        abandon_all(
            &mut tx,
            &[Abandon {
                inode: inode as i64,
                path: path.to_string(),
                session_id,
                part_number,
                token,
                reason,
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One collector pass, one transaction: claims up to `limit` abandoned
    /// inodes that no part row and no completed file references (`FOR
    /// UPDATE SKIP LOCKED`), hands each to `collect` (which deletes it from
    /// MooseFS), and records what it says: deleted rows are marked so, an
    /// uncollectable row leaves the queue with its reason, a kept row waits
    /// for the next pass. Returns how many were deleted.
    pub async fn collect_abandoned<F, Fut>(
        &self,
        limit: i64,
        mut collect: F,
    ) -> Result<u64, StoreError>
    where
        F: FnMut(Abandoned) -> Fut,
        Fut: std::future::Future<Output = Collected>,
    {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Abandoned> = sqlx::query_as(
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
        let mut deleted = Vec::new();
        for row in &rows {
            match collect(row.clone()).await {
                Collected::Deleted => deleted.push(row.id),
                Collected::Uncollectable(why) => mark_uncollectable(&mut tx, row.id, &why).await?,
                Collected::Kept => {}
            }
        }
        mark_deleted(&mut tx, &deleted).await?;
        tx.commit().await?;
        Ok(deleted.len() as u64)
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

/// Records the committed parts' staging inodes of a completed session as
/// abandoned (their chunks now belong to the final file), except `keep`.
pub(super) async fn abandon_parts_in(tx: &mut Tx, id: Uuid) -> Result<(), StoreError> {
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

async fn mark_deleted(tx: &mut Tx, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query("UPDATE abandoned_inodes SET deleted_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ends an abandoned row that can never be collected (its path is not
/// a MooseFS path): it leaves the collector's queue with the reason
/// appended, and the file, if any, is left to the staging sweep.
async fn mark_uncollectable(tx: &mut Tx, id: i64, why: &str) -> Result<(), StoreError> {
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
