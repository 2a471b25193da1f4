//! Checks of what the S3 endpoint stored, shared by the tests that drive it
//! with real clients (`s3/tests/clients.rs`, `worker/tests/s3_clients.rs`):
//! the object's index row, its session, and its chunks on the chunkservers.

use moosefs::MfsClient;
use sqlx::PgPool;

/// The index row of `bucket/key` checked against the size a client wrote:
/// its session completed, every chunk with `goal` valid copies, all
/// identical. Each problem is pushed to `failures`; the object's inode, if
/// it has a row.
pub async fn check_stored_object(
    pool: &PgPool,
    mfs: &MfsClient,
    (bucket, key): (&str, &str),
    size: i64,
    goal: usize,
    failures: &mut Vec<String>,
) -> Option<i64> {
    let row: Option<(i64, i64, uuid::Uuid)> = sqlx::query_as(
        "SELECT inode, size, session_id FROM s3_objects WHERE bucket = $1 AND key = $2",
    )
    .bind(bucket)
    .bind(key)
    .fetch_optional(pool)
    .await
    .expect("reading s3_objects");
    let Some((inode, stored_size, session)) = row else {
        failures.push(format!("{bucket}/{key}: no object row"));
        return None;
    };
    if stored_size != size {
        failures.push(format!("{bucket}/{key}: size {stored_size} != {size}"));
    }
    let state: String = sqlx::query_scalar("SELECT state FROM upload_sessions WHERE id = $1")
        .bind(session)
        .fetch_one(pool)
        .await
        .expect("reading the object's session");
    if state != "completed" {
        failures.push(format!("{bucket}/{key}: session {session} is {state}"));
    }
    let chunks = mfs
        .replica_report(inode as u32)
        .await
        .expect("the replica report of an object");
    for chunk in chunks {
        if chunk.chunk_id != 0 && (chunk.valid_copies() != goal || !chunk.copies_identical()) {
            failures.push(format!(
                "{bucket}/{key}: chunk {} has {} valid copies, identical: {}",
                chunk.index,
                chunk.valid_copies(),
                chunk.copies_identical()
            ));
        }
    }
    Some(inode)
}
