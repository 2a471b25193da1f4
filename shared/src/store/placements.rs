//! The `completion_placements` table (inodes a completion is about to put
//! at a destination, recorded before the rename) and the per-destination
//! advisory locks that serialize completions to one destination.

use uuid::Uuid;

use super::{Store, StoreError, Tx};

impl Store {
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
}

/// Serializes completions per destination: takes a transaction-scoped
/// advisory lock on each of `dests` (full MooseFS paths), in a fixed
/// order (so two transactions never wait on each other in a cycle),
/// after the session rows. Held until `tx` ends.
pub(super) async fn lock_destinations_in(tx: &mut Tx, dests: &[String]) -> Result<(), StoreError> {
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
