//! The S3 namespace in PostgreSQL (this crate's own tables, migrations
//! 0005, 0007 and 0010): buckets, uploads (one per upload session), and the
//! objects index that ListObjectsV2 reads (never a MooseFS walk); [`parts`]:
//! part attempts and the frozen part list. The pipeline's tables are the
//! store's; two reads here join `upload_sessions` only to filter by an
//! upload's session state.
//!
//! An object row is never written from here: the trigger
//! `s3_object_on_completion` (migration 0007) writes it from the upload row
//! and the session row in the transaction that marks the session completed,
//! whichever process runs that completion (this endpoint, another instance,
//! the coordinator's reconciler). Only its removal is here.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::pipeline::NewUpload;

pub mod parts;

pub use parts::{
    committed_parts, frozen_list, lock_part, next_part_token, record_frozen_list,
    record_part_commit, PartRow,
};

/// An object as listed and read.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ObjectRow {
    pub key: String,
    /// The session that put the object in place.
    pub session_id: Uuid,
    pub inode: i64,
    pub size: i64,
    pub etag: String,
    pub content_type: Option<String>,
    pub metadata_json: serde_json::Value,
    /// The `x-amz-checksum-*` values stored with it ([`checksums_json`];
    /// a copy's are its source's).
    pub checksums: serde_json::Value,
    /// Its tags (migration 0010: an array of `{"Key", "Value"}` by key).
    pub tags: serde_json::Value,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

impl ObjectRow {
    /// The stored checksums (the inverse of [`checksums_json`]).
    pub fn stored_checksum(&self) -> s3s::dto::Checksum {
        stored_checksum(&self.checksums)
    }

    /// The `x-amz-meta-*` pairs.
    pub fn metadata(&self) -> Option<s3s::dto::Metadata> {
        let map = self.metadata_json.as_object()?;
        if map.is_empty() {
            return None;
        }
        Some(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        )
    }
}

pub async fn bucket_exists(pool: &PgPool, bucket: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM s3_buckets WHERE name = $1)")
        .bind(bucket)
        .fetch_one(pool)
        .await
}

/// Whether a bucket exists and, if it does, [`conflicting_key`] of `key`
/// in it: the two checks of a new key in one round trip.
pub async fn bucket_and_conflict(
    pool: &PgPool,
    bucket: &str,
    key: &str,
) -> Result<(bool, Option<String>), sqlx::Error> {
    let (parents, below_from, below_to) = conflict_bounds(key);
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM s3_buckets WHERE name = $1),
                (SELECT key FROM s3_objects
                  WHERE bucket = $1
                    AND (key = ANY($2::text[]) OR (key >= $3 AND key < $4))
                  LIMIT 1)",
    )
    .bind(bucket)
    .bind(&parents)
    .bind(&below_from)
    .bind(&below_to)
    .fetch_one(pool)
    .await
}

pub async fn buckets(
    pool: &PgPool,
) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    sqlx::query_as("SELECT name, created_at FROM s3_buckets ORDER BY name")
        .fetch_all(pool)
        .await
}

/// False if the bucket exists already.
pub async fn create_bucket(pool: &PgPool, bucket: &str, who: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO s3_buckets (name, created_by) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(bucket)
    .bind(who)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_bucket_row(pool: &PgPool, bucket: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM s3_buckets WHERE name = $1")
        .bind(bucket)
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether a bucket holds any object.
pub async fn bucket_has_objects(pool: &PgPool, bucket: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM s3_objects WHERE bucket = $1)")
        .bind(bucket)
        .fetch_one(pool)
        .await
}

pub enum BucketDelete {
    Deleted,
    NoSuchBucket,
    NotEmpty,
}

/// Deletes an empty bucket's rows in one transaction holding the bucket row
/// (an upload being opened in it holds a key-share lock on it): no objects
/// and no upload still receiving or completing. Ended uploads' rows go too.
pub async fn delete_bucket(pool: &PgPool, bucket: &str) -> Result<BucketDelete, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM s3_buckets WHERE name = $1 FOR UPDATE")
            .bind(bucket)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Ok(BucketDelete::NoSuchBucket);
    }
    let busy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM s3_objects WHERE bucket = $1)
             OR EXISTS (SELECT 1 FROM s3_uploads u JOIN upload_sessions s ON s.id = u.upload_id
                         WHERE u.bucket = $1 AND s.state IN ('receiving', 'open', 'completing'))",
    )
    .bind(bucket)
    .fetch_one(&mut *tx)
    .await?;
    if busy {
        return Ok(BucketDelete::NotEmpty);
    }
    sqlx::query("DELETE FROM s3_uploads WHERE bucket = $1")
        .bind(bucket)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM s3_buckets WHERE name = $1")
        .bind(bucket)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(BucketDelete::Deleted)
}

/// An existing object that is a parent directory of `key` (`a` for `a/b`)
/// or that `key` is a parent directory of (`a/b` for `a`).
pub async fn conflicting_key(
    pool: &PgPool,
    bucket: &str,
    key: &str,
) -> Result<Option<String>, sqlx::Error> {
    let (parents, below_from, below_to) = conflict_bounds(key);
    sqlx::query_scalar(
        "SELECT key FROM s3_objects
          WHERE bucket = $1
            AND (key = ANY($2::text[]) OR (key >= $3 AND key < $4))
          LIMIT 1",
    )
    .bind(bucket)
    .bind(&parents)
    .bind(&below_from)
    .bind(&below_to)
    .fetch_optional(pool)
    .await
}

/// What [`conflicting_key`] looks for: the parent directories of `key`,
/// and the range of keys below it as a directory.
fn conflict_bounds(key: &str) -> (Vec<&str>, String, String) {
    let parents: Vec<&str> = key.match_indices('/').map(|(i, _)| &key[..i]).collect();
    let below_from = format!("{key}/");
    // '0' follows '/' in every collation order of bytes.
    let below_to = format!("{key}0");
    (parents, below_from, below_to)
}

/// The statement that records an upload's row.
const INSERT_UPLOAD: &str =
    "INSERT INTO s3_uploads (upload_id, bucket, key, multipart, content_type, metadata,
                             created_by, tags, checksum_algorithm, checksum_type)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The `x-amz-meta-*` pairs of a new upload as its `metadata` column.
fn metadata_json(upload: &NewUpload<'_>) -> serde_json::Value {
    serde_json::Value::Object(
        upload
            .metadata
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// `query` (of [`INSERT_UPLOAD`]'s parameters) with an upload's values bound
/// in order.
macro_rules! bind_upload {
    ($query:expr, $id:expr, $upload:expr, $metadata:expr) => {
        $query
            .bind($id)
            .bind($upload.bucket)
            .bind($upload.key)
            .bind($upload.multipart)
            .bind($upload.content_type)
            .bind($metadata)
            .bind($upload.who)
            .bind($upload.tags)
            .bind($upload.checksum_algorithm)
            .bind($upload.checksum_type)
    };
}

/// Records an upload's row (in the transaction that creates its session).
pub async fn insert_upload(
    conn: &mut PgConnection,
    id: Uuid,
    upload: &NewUpload<'_>,
) -> Result<(), sqlx::Error> {
    let metadata = metadata_json(upload);
    bind_upload!(sqlx::query(INSERT_UPLOAD), id, upload, &metadata)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records a single-part upload's row and the first attempt of its part 1
/// (what [`insert_upload`] and then [`next_part_token`] write, in one
/// statement), in the transaction that creates its session; the attempt's
/// fencing token. `synchronous_commit` is set off for that transaction:
/// see [`crate::pipeline::Pipeline::open_single`], the one caller, for why
/// that is safe there.
pub async fn insert_single_upload(
    conn: &mut PgConnection,
    id: Uuid,
    upload: &NewUpload<'_>,
) -> Result<shared::domain::FencingToken, sqlx::Error> {
    let metadata = metadata_json(upload);
    let statement = format!(
        "WITH upload AS ({INSERT_UPLOAD} RETURNING upload_id)
         INSERT INTO s3_parts (upload_id, part_number, attempts)
         SELECT upload_id, 1, 1 FROM upload
         RETURNING attempts, set_config('synchronous_commit', 'off', true)"
    );
    let (token, _): (shared::domain::FencingToken, String) =
        bind_upload!(sqlx::query_as(&statement), id, upload, &metadata)
            .fetch_one(&mut *conn)
            .await?;
    Ok(token)
}

/// The checksum columns (`checksum_algorithm`, `checksum_type`) of
/// `upload` if it is a multipart upload of `bucket`/`key`.
pub async fn upload_of(
    pool: &PgPool,
    upload: Uuid,
    bucket: &str,
    key: &str,
) -> Result<Option<(Option<String>, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT checksum_algorithm, checksum_type FROM s3_uploads
          WHERE upload_id = $1 AND bucket = $2 AND key = $3 AND multipart",
    )
    .bind(upload)
    .bind(bucket)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// What one list answer covers: the names of a bucket (keys, or the keys
/// of uploads) that start with `prefix`, at most `max` entries.
#[derive(Debug, Clone, Copy)]
pub struct ListScope<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub max: i32,
}

/// Multipart uploads of a bucket still receiving parts, by key then start
/// time, after the markers; whether more follow.
pub async fn receiving_uploads(
    pool: &PgPool,
    q: &ListScope<'_>,
    key_marker: Option<&str>,
    upload_id_marker: Option<&str>,
) -> Result<(Vec<(Uuid, String, chrono::DateTime<chrono::Utc>)>, bool), sqlx::Error> {
    let upload_marker = upload_id_marker.and_then(|u| Uuid::parse_str(u).ok());
    let mut rows: Vec<(Uuid, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT u.upload_id, u.key, u.created_at
           FROM s3_uploads u JOIN upload_sessions s ON s.id = u.upload_id
          WHERE u.bucket = $1 AND u.multipart AND s.state = 'receiving'
            AND starts_with(u.key, $2)
            AND ($3::text IS NULL OR u.key > $3
                 OR (u.key = $3 AND $4::uuid IS NOT NULL AND u.upload_id > $4))
          ORDER BY u.key, u.upload_id
          LIMIT $5",
    )
    .bind(q.bucket)
    .bind(q.prefix)
    .bind(key_marker)
    .bind(upload_marker)
    .bind(i64::from(q.max) + 1)
    .fetch_all(pool)
    .await?;
    let truncated = rows.len() > q.max as usize;
    rows.truncate(q.max as usize);
    Ok((rows, truncated))
}

/// The `x-amz-checksum-*` values of a PutObject as the upload row keeps
/// them until its object row is written (`s3_uploads.checksums`).
pub fn checksums_json(checksum: &s3s::dto::Checksum) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in [
        ("crc32", &checksum.checksum_crc32),
        ("crc32c", &checksum.checksum_crc32c),
        ("sha1", &checksum.checksum_sha1),
        ("sha256", &checksum.checksum_sha256),
        ("crc64nvme", &checksum.checksum_crc64nvme),
    ] {
        if let Some(v) = value {
            map.insert(name.into(), serde_json::Value::String(v.clone()));
        }
    }
    serde_json::Value::Object(map)
}

/// The `x-amz-checksum-*` values of stored checksums (an object's, or the
/// ones a freeze recorded; their `"type"` is not one of them).
pub fn stored_checksum(checksums: &serde_json::Value) -> s3s::dto::Checksum {
    let get = |name: &str| {
        checksums
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    s3s::dto::Checksum {
        checksum_crc32: get("crc32"),
        checksum_crc32c: get("crc32c"),
        checksum_sha1: get("sha1"),
        checksum_sha256: get("sha256"),
        checksum_crc64nvme: get("crc64nvme"),
        ..Default::default()
    }
}

/// One part of an object as GetObject/HeadObject `partNumber` reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ObjectPart {
    /// The object's part count (its session's).
    pub part_count: i32,
    /// The part's place in the object; `None` past the last part.
    pub part_offset: Option<i64>,
    pub size: Option<i64>,
    /// The part's checksum in its upload's algorithm, if kept.
    pub checksum: Option<String>,
}

/// Part `part_number` (1-based, as the object's parts follow each other) of
/// the object its session `session` put in place; `None` if the session is
/// gone. Primary-key probes only: the session, its frozen `upload_parts`
/// row (numbered from 0), the upload row, and the part's `s3_parts` row
/// (the client's number for it is the frozen list's entry).
pub async fn object_part(
    pool: &PgPool,
    session: Uuid,
    part_number: i32,
) -> Result<Option<ObjectPart>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.part_count, p.part_offset, p.size, sp.checksum
           FROM upload_sessions s
           LEFT JOIN upload_parts p ON p.session_id = s.id AND p.part_number = $2 - 1
           LEFT JOIN s3_uploads u ON u.upload_id = s.id
           LEFT JOIN s3_parts sp ON sp.upload_id = s.id
                AND sp.part_number = ((u.completed_parts -> ($2 - 1)) ->> 0)::int
          WHERE s.id = $1",
    )
    .bind(session)
    .bind(part_number)
    .fetch_optional(pool)
    .await
}

/// The parts of the object its session `session` put in place after part
/// `marker` (1-based), at most `limit`: (part number, size, kept checksum)
/// each; and the object's part count. Primary-key reads: the session, a
/// range of its `upload_parts`, the upload row and each part's `s3_parts`.
pub async fn object_parts(
    pool: &PgPool,
    session: Uuid,
    marker: i32,
    limit: i32,
) -> Result<(i32, Vec<(i32, i64, Option<String>)>), sqlx::Error> {
    let count: Option<i32> =
        sqlx::query_scalar("SELECT part_count FROM upload_sessions WHERE id = $1")
            .bind(session)
            .fetch_optional(pool)
            .await?;
    let parts = sqlx::query_as(
        "SELECT p.part_number + 1, p.size, sp.checksum
           FROM upload_parts p
           LEFT JOIN s3_uploads u ON u.upload_id = p.session_id
           LEFT JOIN s3_parts sp ON sp.upload_id = p.session_id
                AND sp.part_number = ((u.completed_parts -> p.part_number) ->> 0)::int
          WHERE p.session_id = $1 AND p.part_number >= $2
          ORDER BY p.part_number
          LIMIT $3",
    )
    .bind(session)
    .bind(marker)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok((count.unwrap_or(0), parts))
}

const OBJECT_COLUMNS: &str = "key, session_id, inode, size, etag, content_type, \
     metadata AS metadata_json, checksums, tags, last_modified";

pub async fn object(
    pool: &PgPool,
    bucket: &str,
    key: &str,
) -> Result<Option<ObjectRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {OBJECT_COLUMNS} FROM s3_objects WHERE bucket = $1 AND key = $2"
    ))
    .bind(bucket)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// The tags of an object (`None`: no such object).
pub async fn object_tags(
    pool: &PgPool,
    bucket: &str,
    key: &str,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT tags FROM s3_objects WHERE bucket = $1 AND key = $2")
        .bind(bucket)
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// Replaces the tags of the object at `bucket`/`key` now, in one statement
/// (false: no such object). The row lock orders it with a completion's
/// upsert of the same row: it tags the object before or after an
/// overwrite, never a mix (see `service::tagging`).
pub async fn set_object_tags(
    pool: &PgPool,
    bucket: &str,
    key: &str,
    tags: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE s3_objects SET tags = $3 WHERE bucket = $1 AND key = $2")
        .bind(bucket)
        .bind(key)
        .bind(tags)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes an object's row in the caller's transaction; its inode.
pub async fn remove_object_in(
    conn: &mut PgConnection,
    bucket: &str,
    key: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("DELETE FROM s3_objects WHERE bucket = $1 AND key = $2 RETURNING inode")
        .bind(bucket)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub objects: Vec<ObjectRow>,
    pub prefixes: Vec<String>,
    /// Where the next page starts (after this key or prefix), if any.
    pub next: Option<String>,
}

/// A key greater than every key that starts with `prefix` (in byte order:
/// U+10FFFF is the largest scalar value, F4 8F BF BF in UTF-8).
fn past_prefix(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// Lists keys of `bucket` that start with `prefix`, after `after`, up to
/// `max` entries (objects and common prefixes together), rolling keys that
/// have `delimiter` after the prefix into common prefixes. A common prefix
/// costs one query, not one row per key below it.
pub async fn list(
    pool: &PgPool,
    q: &ListScope<'_>,
    delimiter: Option<&str>,
    after: Option<&str>,
) -> Result<Page, sqlx::Error> {
    let mut page = Page::default();
    let mut cursor = after.map(str::to_string);
    let max = q.max.max(0) as usize;
    if max == 0 {
        return Ok(page);
    }
    loop {
        let room = max - page.objects.len() - page.prefixes.len();
        let limit = room + 1;
        let batch: Vec<ObjectRow> = sqlx::query_as(&format!(
            "SELECT {OBJECT_COLUMNS} FROM s3_objects
              WHERE bucket = $1 AND starts_with(key, $2) AND ($3::text IS NULL OR key > $3)
              ORDER BY key LIMIT $4"
        ))
        .bind(q.bucket)
        .bind(q.prefix)
        .bind(cursor.as_deref())
        .bind(limit as i64)
        .fetch_all(pool)
        .await?;
        let batch_len = batch.len();
        let mut rolled_up = false;
        for row in batch {
            if page.objects.len() + page.prefixes.len() == max {
                // One more entry exists: the page is truncated.
                page.next = cursor;
                return Ok(page);
            }
            let rolled = delimiter.and_then(|d| {
                row.key[q.prefix.len()..]
                    .find(d)
                    .map(|i| row.key[..q.prefix.len() + i + d.len()].to_string())
            });
            match rolled {
                Some(common) => {
                    // Everything else under this prefix is skipped by a
                    // fresh query from past it.
                    cursor = Some(past_prefix(&common));
                    page.prefixes.push(common);
                    rolled_up = true;
                    break;
                }
                None => {
                    cursor = Some(row.key.clone());
                    page.objects.push(row);
                }
            }
        }
        if !rolled_up && batch_len < limit {
            return Ok(page);
        }
    }
}

/// A continuation token: the cursor, hex-encoded (opaque to clients).
pub fn encode_token(cursor: &str) -> String {
    cursor.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for cursor in ["", "a/b", "ünïcode/\u{10FFFF}"] {
            assert_eq!(decode_token(&encode_token(cursor)).as_deref(), Some(cursor));
        }
        assert!(decode_token("zz").is_none());
        assert!(decode_token("abc").is_none());
    }

    #[test]
    fn past_prefix_sorts_after_every_key_below_the_prefix() {
        let p = past_prefix("a/");
        assert!(p.as_bytes() > "a/zzzz".as_bytes());
        assert!(p.as_bytes() > "a/\u{FFFF}".as_bytes());
        assert!(p.as_bytes() < "a0".as_bytes());
    }
}
