//! The object operations: PutObject (an upload of one part, completed at
//! once), GetObject (from the object's file held open for the whole body)
//! and HeadObject (with their conditions), DeleteObject(s).

use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result};

use super::digests::{digests_of, with_checksums};
use super::errors::{db_error, pipeline_error};
use super::listing::NULL_VERSION;
use super::tagging::{tag_count, Tags};
use super::{refuse_encryption, timestamp, who, Endpoint, MAX_LIST, MAX_PART_BYTES};
use crate::index::{self, ObjectRow};
use crate::pipeline::{CommittedPart, FreezePlan, NewUpload, OpenObject};

pub(super) async fn put_object(
    ep: &Endpoint,
    req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let who = who(&req);
    let trailers = req.trailing_headers.clone();
    let input = req.input;
    let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
    let tags = Tags::from_header(input.tagging.as_deref())?.to_json();
    check_put(ep, &input).await?;
    let digests = digests_of!(input);
    let upload = ep
        .pipeline()
        .open_upload(&NewUpload {
            bucket,
            key,
            multipart: false,
            content_type: input.content_type.as_deref(),
            metadata: input.metadata.as_ref(),
            who: &who,
            tags: &tags,
        })
        .await
        .map_err(pipeline_error)?;
    let received = ep
        .receive_part(
            upload,
            1,
            input.body,
            input.content_length,
            &digests,
            trailers,
        )
        .await;
    let (written, checksum) = match received {
        Ok(r) => {
            shared::metrics::metrics().s3_received(r.0.size);
            r
        }
        Err(e) => {
            let _ = ep
                .pipeline()
                .fail_upload(upload, &format!("PutObject failed: {e}"))
                .await;
            return Err(e);
        }
    };
    let checksums = index::checksums_json(&checksum);
    let (etag, _) = ep
        .finish_upload(upload, |parts| the_only_part(parts, &checksums))
        .await?;
    debug_assert_eq!(Some(&etag), written.md5.as_ref());
    Ok(S3Response::new(with_checksums!(
        PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: Some(written.size as i64),
        },
        checksum
    )))
}

/// The checks of a PutObject before its body is read: the bucket, the key,
/// its conditions, the declared length.
async fn check_put(ep: &Endpoint, input: &PutObjectInput) -> S3Result<()> {
    let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
    refuse_encryption(
        input.server_side_encryption.as_ref(),
        input.sse_customer_algorithm.as_ref(),
    )?;
    ep.require_bucket(bucket).await?;
    ep.check_new_key(bucket, key).await?;
    check_overwrite(
        ep,
        bucket,
        key,
        input.if_match.as_ref(),
        input.if_none_match.as_ref(),
    )
    .await?;
    match input.content_length {
        Some(n) if n >= 0 && (n as u64) <= MAX_PART_BYTES => Ok(()),
        Some(n) if n >= 0 => Err(s3_error!(EntityTooLarge)),
        _ => Err(s3_error!(MissingContentLength)),
    }
}

/// The freeze plan of a PutObject: its one part, the part's MD5 as ETag,
/// the checksums the client sent (stored with the object).
fn the_only_part(parts: &[CommittedPart], checksums: &serde_json::Value) -> S3Result<FreezePlan> {
    let md5 = parts
        .iter()
        .find(|p| p.part_number == 1)
        .and_then(|p| p.md5.clone())
        .ok_or_else(|| s3_error!(InternalError, "the part vanished"))?;
    Ok(FreezePlan {
        part_numbers: vec![1],
        listed: serde_json::json!([[1, md5]]),
        etag: md5,
        checksums: checksums.clone(),
    })
}

/// The Content-Type of an object written without one (S3's).
const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";

/// The conditions of a GET or HEAD (or of a copy's source).
pub(super) struct Conditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

/// The [`Conditions`] of a GetObject or HeadObject input.
macro_rules! conditions_of {
    ($input:expr) => {
        Conditions {
            if_match: $input.if_match.as_ref(),
            if_none_match: $input.if_none_match.as_ref(),
            if_modified_since: $input.if_modified_since.as_ref(),
            if_unmodified_since: $input.if_unmodified_since.as_ref(),
        }
    };
}

/// An output of a GET or HEAD with the object's headers (ETag, last
/// modification, content type, `x-amz-meta-*`) set from its row.
macro_rules! with_object_headers {
    ($output:ident { $($field:ident: $value:expr),* $(,)? }, $row:expr) => {{
        let row: &ObjectRow = &$row;
        $output {
            $($field: $value,)*
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(row.etag.clone())),
            last_modified: Some(timestamp(row.last_modified)),
            content_type: Some(
                row.content_type
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string()),
            ),
            metadata: row.metadata(),
            ..Default::default()
        }
    }};
}

/// Sets the checksums stored with the object on a GET or HEAD output if
/// the request asked for them (`x-amz-checksum-mode: ENABLED`) and the
/// answer is the whole object (a range's bytes have other checksums).
macro_rules! with_stored_checksums {
    ($output:expr, $row:expr, $mode:expr, $whole:expr) => {{
        let mut output = $output;
        let wanted = $mode
            .as_ref()
            .is_some_and(|m: &ChecksumMode| m.as_str() == ChecksumMode::ENABLED);
        if wanted && $whole {
            let stored = $row.stored_checksum();
            output.checksum_crc32 = stored.checksum_crc32;
            output.checksum_crc32c = stored.checksum_crc32c;
            output.checksum_sha1 = stored.checksum_sha1;
            output.checksum_sha256 = stored.checksum_sha256;
            output.checksum_crc64nvme = stored.checksum_crc64nvme;
        }
        output
    }};
}

/// The object a GET or HEAD reads, its conditions met.
async fn readable_object(
    ep: &Endpoint,
    bucket: &str,
    key: &str,
    conditions: Conditions<'_>,
) -> S3Result<ObjectRow> {
    ep.require_bucket(bucket).await?;
    let row = index::object(ep.pool(), bucket, key)
        .await
        .map_err(db_error)?
        .ok_or_else(|| s3_error!(NoSuchKey))?;
    check_conditions(&row, &conditions)?;
    Ok(row)
}

/// Times a GET reads the object row and opens its file before giving up
/// (each retry means the key was overwritten or deleted in between).
const OPEN_ATTEMPTS: u32 = 4;

/// The object a GET answers, its conditions met, and its file held open in
/// the master session: the row read and the open are not atomic, so an
/// inode found gone (or not the row's object) means the key changed in
/// between, and the row is read again (at most [`OPEN_ATTEMPTS`] times).
async fn opened_object(ep: &Endpoint, input: &GetObjectInput) -> S3Result<(ObjectRow, OpenObject)> {
    for attempt in 1..=OPEN_ATTEMPTS {
        let row = readable_object(ep, &input.bucket, &input.key, conditions_of!(input)).await?;
        if let Some(object) = ep
            .pipeline()
            .open_object(row.inode, row.size)
            .await
            .map_err(pipeline_error)?
        {
            return Ok((row, object));
        }
        tracing::debug!(
            attempt,
            inode = row.inode,
            "the object changed while it was opened; reading its row again"
        );
    }
    Err(s3_error!(
        InternalError,
        "the object was replaced {OPEN_ATTEMPTS} times while it was being opened; retry"
    ))
}

pub(super) async fn get_object(
    ep: &Endpoint,
    input: GetObjectInput,
) -> S3Result<S3Response<GetObjectOutput>> {
    if input.part_number.is_some() {
        // Checked after the object exists, as S3 does.
        readable_object(ep, &input.bucket, &input.key, conditions_of!(input)).await?;
        return Err(s3_error!(
            NotImplemented,
            "GetObject by partNumber is not implemented"
        ));
    }
    let (row, object) = opened_object(ep, &input).await?;
    let size = row.size as u64;
    let (range, content_range) = match &input.range {
        None => (0..size, None),
        Some(r) => {
            let range = r.check(size)?;
            let content_range = format!(
                "bytes {}-{}/{size}",
                range.start,
                range.end.saturating_sub(1)
            );
            (range, Some(content_range))
        }
    };
    let len = range.end - range.start;
    let body = ep.pipeline().read_object(object, range.start, len);
    shared::metrics::metrics().s3_sent(len);
    let whole = content_range.is_none();
    Ok(S3Response::with_status(
        with_stored_checksums!(
            with_object_headers!(
                GetObjectOutput {
                    body: Some(StreamingBlob::wrap(body)),
                    content_length: Some(len as i64),
                    content_range: content_range.clone(),
                    tag_count: tags_counted(&row),
                },
                row
            ),
            row,
            input.checksum_mode,
            whole
        ),
        if content_range.is_some() {
            http::StatusCode::PARTIAL_CONTENT
        } else {
            http::StatusCode::OK
        },
    ))
}

pub(super) async fn head_object(
    ep: &Endpoint,
    input: HeadObjectInput,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let row = readable_object(ep, &input.bucket, &input.key, conditions_of!(input)).await?;
    let mut response = S3Response::new(with_stored_checksums!(
        with_object_headers!(
            HeadObjectOutput {
                content_length: Some(row.size),
            },
            row
        ),
        row,
        input.checksum_mode,
        input.range.is_none()
    ));
    // S3 answers the count on HEAD too; s3s's HeadObjectOutput has no field.
    if let Some(count) = tags_counted(&row) {
        response
            .headers
            .insert("x-amz-tagging-count", http::HeaderValue::from(count));
    }
    Ok(response)
}

/// `x-amz-tagging-count` of a GET or HEAD: sent when the object has tags.
fn tags_counted(row: &ObjectRow) -> Option<i32> {
    let count = tag_count(&row.tags);
    (count > 0).then_some(count as i32)
}

pub(super) async fn delete_object(
    ep: &Endpoint,
    req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    let input = req.input;
    ep.require_bucket(&input.bucket).await?;
    check_version(input.version_id.as_deref())?;
    delete_key(ep, &input.bucket, &input.key).await?;
    Ok(S3Response::with_status(
        DeleteObjectOutput::default(),
        http::StatusCode::NO_CONTENT,
    ))
}

pub(super) async fn delete_objects(
    ep: &Endpoint,
    req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let input = req.input;
    ep.require_bucket(&input.bucket).await?;
    if input.delete.objects.len() > MAX_LIST as usize {
        return Err(s3_error!(
            MalformedXML,
            "at most {MAX_LIST} keys per DeleteObjects"
        ));
    }
    let quiet = input.delete.quiet.unwrap_or(false);
    let (mut deleted, mut errors) = (Vec::new(), Vec::new());
    for object in input.delete.objects {
        let deleting = match check_version(object.version_id.as_deref()) {
            Ok(()) => delete_key(ep, &input.bucket, &object.key).await,
            Err(e) => Err(e),
        };
        match deleting {
            Ok(()) if quiet => {}
            Ok(()) => deleted.push(DeletedObject {
                key: Some(object.key),
                version_id: object.version_id,
                ..Default::default()
            }),
            Err(e) => errors.push(Error {
                code: Some(e.code().as_str().to_string()),
                key: Some(object.key),
                message: e.message().map(str::to_string),
                version_id: object.version_id,
            }),
        }
    }
    Ok(S3Response::new(DeleteObjectsOutput {
        deleted: Some(deleted),
        errors: Some(errors),
        ..Default::default()
    }))
}

/// A version id a request names: buckets are never versioned, so only the
/// one version every object has (`null`) exists.
pub(super) fn check_version(version_id: Option<&str>) -> S3Result<()> {
    match version_id {
        None | Some(NULL_VERSION) => Ok(()),
        Some(_) => Err(s3_error!(InvalidArgument, "Invalid version id specified")),
    }
}

/// Deletes a key: its row and (if still the same inode) its file, under
/// the key's destination lock. A key that does not exist is no error.
async fn delete_key(ep: &Endpoint, bucket: &str, key: &str) -> S3Result<()> {
    if ep.pipeline().check_key(bucket, key).is_err() {
        return Ok(());
    }
    let mut lock = ep
        .pipeline()
        .lock_key(bucket, key)
        .await
        .map_err(pipeline_error)?;
    let removed = index::remove_object_in(lock.conn(), bucket, key)
        .await
        .map_err(db_error)?;
    if let Some(inode) = removed {
        ep.pipeline()
            .remove_locked_file(lock, inode)
            .await
            .map_err(pipeline_error)?;
    }
    Ok(())
}

/// [`check_write_conditions`] against the object `bucket`/`key` now.
pub(super) async fn check_overwrite(
    ep: &Endpoint,
    bucket: &str,
    key: &str,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<()> {
    if if_match.is_none() && if_none_match.is_none() {
        return Ok(());
    }
    let existing = index::object(ep.pool(), bucket, key)
        .await
        .map_err(db_error)?;
    check_write_conditions(
        existing.as_ref().map(|row| row.etag.as_str()),
        if_match,
        if_none_match,
    )
}

/// If-Match / If-None-Match of a write, checked against the ETag of the
/// object it replaces (if any) before the body is read: `If-Match` on a key
/// with no object is `404 NoSuchKey` (as S3 answers it), a mismatch `412`.
/// Like S3's, the check is not atomic with the write: two conditional
/// writes of one key racing may both pass it.
pub(super) fn check_write_conditions(
    existing_etag: Option<&str>,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<()> {
    let matches = |cond: &ETagCondition, etag: &str| match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    };
    if let Some(cond) = if_match {
        match existing_etag {
            None => return Err(s3_error!(NoSuchKey)),
            Some(etag) if !matches(cond, etag) => {
                return Err(s3_error!(PreconditionFailed, "If-Match: the ETag differs"))
            }
            Some(_) => {}
        }
    }
    if let (Some(cond), Some(etag)) = (if_none_match, existing_etag) {
        if matches(cond, etag) {
            return Err(s3_error!(
                PreconditionFailed,
                "If-None-Match: the object exists"
            ));
        }
    }
    Ok(())
}

/// If-Match / If-None-Match / If-(Un)Modified-Since of a GET or HEAD.
pub(super) fn check_conditions(row: &ObjectRow, conditions: &Conditions<'_>) -> S3Result<()> {
    let etag = ETag::Strong(row.etag.clone());
    let modified = std::time::SystemTime::from(row.last_modified);
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let as_system = |t: &Timestamp| std::time::SystemTime::from(time_of(t));
    let matches = |cond: &ETagCondition| match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag.value(),
    };
    if let Some(cond) = conditions.if_match {
        if !matches(cond) {
            return Err(s3_error!(PreconditionFailed));
        }
    } else if let Some(t) = conditions.if_unmodified_since {
        if secs(modified) > secs(as_system(t)) {
            return Err(s3_error!(PreconditionFailed));
        }
    }
    if let Some(cond) = conditions.if_none_match {
        if matches(cond) {
            return Err(not_modified(row));
        }
    } else if let Some(t) = conditions.if_modified_since {
        if secs(modified) <= secs(as_system(t)) {
            return Err(not_modified(row));
        }
    }
    Ok(())
}

/// `304 Not Modified` with the object's ETag and Last-Modified (RFC 9110
/// §15.4.5: the headers a 200 would have sent that validate the cache).
fn not_modified(row: &ObjectRow) -> S3Error {
    let mut e = s3_error!(NotModified);
    let mut headers = http::HeaderMap::new();
    if let Ok(etag) = http::HeaderValue::from_str(&format!("\"{}\"", row.etag)) {
        headers.insert(http::header::ETAG, etag);
    }
    let modified = httpdate(row.last_modified);
    if let Ok(modified) = http::HeaderValue::from_str(&modified) {
        headers.insert(http::header::LAST_MODIFIED, modified);
    }
    e.set_headers(headers);
    e
}

/// An HTTP date (IMF-fixdate).
fn httpdate(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn time_of(t: &Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(header: &str) -> ETagCondition {
        ETagCondition::parse_http_header(header.as_bytes()).unwrap()
    }

    fn code(result: S3Result<()>) -> String {
        result.unwrap_err().code().as_str().to_string()
    }

    #[test]
    fn if_match_needs_the_object_and_its_etag() {
        let etag = "37b51d194a7513e45b56f6524f2d51f2";
        assert!(
            check_write_conditions(Some(etag), Some(&cond(&format!("\"{etag}\""))), None).is_ok()
        );
        assert!(check_write_conditions(Some(etag), Some(&cond("*")), None).is_ok());
        assert_eq!(
            code(check_write_conditions(
                Some(etag),
                Some(&cond("\"ABCORZ\"")),
                None
            )),
            "PreconditionFailed"
        );
        assert_eq!(
            code(check_write_conditions(None, Some(&cond("*")), None)),
            "NoSuchKey"
        );
    }

    #[test]
    fn if_none_match_refuses_a_matching_object() {
        let etag = "37b51d194a7513e45b56f6524f2d51f2";
        assert!(check_write_conditions(None, None, Some(&cond("*"))).is_ok());
        assert!(check_write_conditions(Some(etag), None, Some(&cond("\"ABCORZ\""))).is_ok());
        assert_eq!(
            code(check_write_conditions(Some(etag), None, Some(&cond("*")))),
            "PreconditionFailed"
        );
        assert_eq!(
            code(check_write_conditions(Some(etag), None, Some(&cond(etag)))),
            "PreconditionFailed"
        );
    }
}
