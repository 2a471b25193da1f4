//! The endpoint's part attempts and committed parts (`s3_parts`) and the
//! list an upload was frozen with (`s3_uploads.etag`, `completed_parts`).
//! Every statement runs in a transaction of the pipeline's that holds the
//! upload's session row locked, through its connection
//! (the session lock's `conn()`, see [`crate::pipeline`]), or reads
//! committed rows.

use sqlx::PgConnection;
use uuid::Uuid;

use shared::domain::FencingToken;

use crate::pipeline::{CommittedPart, WrittenPart};

/// The next fencing token of a part: its attempts, counted.
pub async fn next_part_token(
    conn: &mut PgConnection,
    upload: Uuid,
    part_number: i32,
) -> Result<FencingToken, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO s3_parts (upload_id, part_number, attempts) VALUES ($1, $2, 1)
         ON CONFLICT (upload_id, part_number) DO UPDATE SET attempts = s3_parts.attempts + 1
         RETURNING attempts",
    )
    .bind(upload)
    .bind(part_number)
    .fetch_one(&mut *conn)
    .await
}

/// A part's committed attempt as [`lock_part`] reads it (all `None` while
/// no attempt has committed).
#[derive(Debug, Default, sqlx::FromRow)]
pub struct PartRow {
    pub committed_token: Option<FencingToken>,
    pub staging_inode: Option<i64>,
    pub staging_path: Option<String>,
}

/// A part's row, locked `FOR UPDATE` until the transaction ends.
pub async fn lock_part(
    conn: &mut PgConnection,
    upload: Uuid,
    part_number: i32,
) -> Result<PartRow, sqlx::Error> {
    let row: Option<PartRow> = sqlx::query_as(
        "SELECT committed_token, staging_inode, staging_path FROM s3_parts
          WHERE upload_id = $1 AND part_number = $2 FOR UPDATE",
    )
    .bind(upload)
    .bind(part_number)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.unwrap_or_default())
}

/// Makes `part` the committed attempt of its part.
pub async fn record_part_commit(
    conn: &mut PgConnection,
    upload: Uuid,
    part_number: i32,
    part: &WrittenPart,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE s3_parts SET committed_token = $3, staging_inode = $4,
                staging_path = $5, size = $6, md5 = $7, crc32c = $8, checksum = $9,
                committed_at = clock_timestamp()
          WHERE upload_id = $1 AND part_number = $2",
    )
    .bind(upload)
    .bind(part_number)
    .bind(part.token)
    .bind(i64::from(part.inode))
    .bind(&part.path)
    .bind(part.size as i64)
    .bind(&part.md5)
    .bind(i64::from(part.crc32c))
    .bind(&part.checksum)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The committed parts of an upload, by part number.
pub async fn committed_parts<'e>(
    db: impl sqlx::PgExecutor<'e>,
    upload: Uuid,
) -> Result<Vec<CommittedPart>, sqlx::Error> {
    sqlx::query_as(
        "SELECT part_number, committed_token AS token, size, md5, crc32c, staging_inode,
                staging_path, committed_at, checksum
           FROM s3_parts WHERE upload_id = $1 AND committed_token IS NOT NULL
          ORDER BY part_number",
    )
    .bind(upload)
    .fetch_all(db)
    .await
}

/// The ETag and part list an upload was frozen with (both `None` before
/// its freeze); `None` if there is no such upload.
pub async fn frozen_list(
    conn: &mut PgConnection,
    upload: Uuid,
) -> Result<Option<(Option<String>, Option<serde_json::Value>)>, sqlx::Error> {
    sqlx::query_as("SELECT etag, completed_parts FROM s3_uploads WHERE upload_id = $1")
        .bind(upload)
        .fetch_optional(&mut *conn)
        .await
}

/// Records the ETag, part list and checksums (`x-amz-checksum-*` of a
/// PutObject, `{}` for none) of a freeze: what the object row is written
/// from when the session completes (migration 0007).
pub async fn record_frozen_list(
    conn: &mut PgConnection,
    upload: Uuid,
    etag: &str,
    listed: &serde_json::Value,
    checksums: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE s3_uploads SET etag = $2, completed_parts = $3, checksums = $4
          WHERE upload_id = $1",
    )
    .bind(upload)
    .bind(etag)
    .bind(listed)
    .bind(checksums)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
