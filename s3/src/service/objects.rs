//! The object operations: PutObject (an upload of one part, completed at
//! once), GetObject (from the object's file held open for the whole body)
//! and HeadObject (with their conditions, a range or a part number, and the
//! stored checksums), DeleteObject(s).

use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::checksums::{self, Algorithm, Kind};
use super::digests::{digests_of, with_checksums};
use super::errors::{db_error, pipeline_error};
use super::listing::NULL_VERSION;
use super::tagging::{tag_count, Tags};
use super::uploads::declared_length;
use super::{refuse_encryption, timestamp, who, Endpoint, MAX_LIST, PART_NUMBERS};
use crate::index::{self, ObjectRow};
use crate::pipeline::{CommittedPart, FreezePlan, NewUpload, OpenObject, Pipeline};

pub(super) async fn put_object(
    ep: &Endpoint,
    req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let who = who(&req);
    let trailers = req.trailing_headers.clone();
    let mut input = req.input;
    let tags = Tags::from_header(input.tagging.as_deref())?.to_json();
    refuse_encryption(
        input.server_side_encryption.as_ref(),
        input.sse_customer_algorithm.as_ref(),
    )?;
    let declared = declared_length(input.content_length)?;
    if let Err(e) = ep.check_key_name(&input.bucket, &input.key) {
        ep.require_bucket(&input.bucket).await?;
        return Err(e);
    }
    let body = input.body.take().ok_or_else(|| s3_error!(IncompleteBody))?;
    let digests = digests_of!(input);
    // S3 keeps a CRC64NVME (FULL_OBJECT) of an object sent with no
    // checksum at all, and answers it with `x-amz-checksum-mode: ENABLED`.
    let default_checksum = (!digests.names_a_checksum()).then_some(Algorithm::Crc64Nvme);
    // The checks that need PostgreSQL and the upload's opening run while
    // the body is written into the staging file of the part's first
    // attempt (see `Pipeline::open_single` for why that file may exist a
    // moment before its session row); nothing is committed as the part
    // until both are done.
    let upload = uuid::Uuid::new_v4();
    let token = Pipeline::FIRST_ATTEMPT;
    let new_upload = NewUpload {
        bucket: &input.bucket,
        key: &input.key,
        multipart: false,
        content_type: input.content_type.as_deref(),
        metadata: input.metadata.as_ref(),
        who: &who,
        checksum_algorithm: None,
        checksum_type: None,
        tags: &tags,
    };
    let opening = async {
        tokio::join!(
            check_put(ep, &input),
            ep.pipeline().open_single(upload, &new_upload)
        )
    };
    let writing = ep.write_attempt(
        upload,
        1,
        token,
        body,
        declared,
        &digests,
        trailers,
        default_checksum,
    );
    let ((checked, opened), received) = tokio::join!(opening, writing);
    let opened = match (checked, opened) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), opened) => Err((e, opened.is_ok())),
        (Ok(()), Err(e)) => Err((pipeline_error(e), false)),
    };
    if let Err((e, upload_opened)) = opened {
        // The written attempt (if any) is nothing's: abandoned, with the
        // upload if it was opened.
        if let Ok((written, _)) = &received {
            ep.pipeline()
                .abandon(
                    upload,
                    1,
                    token,
                    written.inode,
                    &written.path,
                    "s3 PutObject refused by its checks",
                )
                .await;
        }
        if upload_opened {
            return Err(fail_put(ep, upload, e).await);
        }
        return Err(e);
    }
    let (written, checksum) = match received {
        Ok(r) => {
            shared::metrics::metrics().s3_received(r.0.size);
            r
        }
        Err(e) => return Err(fail_put(ep, upload, e).await),
    };
    let checksums = index::checksums_json(&checksum);
    let finished = ep
        .commit_and_finish(upload, 1, &written, |parts| {
            the_only_part(parts, &checksums)
        })
        .await;
    let etag = match finished {
        Ok(placed) => placed,
        Err(e) => return Err(fail_put(ep, upload, e).await),
    };
    debug_assert_eq!(Some(&etag), written.md5.as_ref());
    Ok(S3Response::new(with_checksums!(
        PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: Some(written.size as i64),
        },
        checksum
    )))
}

/// Ends a PutObject's upload that failed while it was still receiving
/// (its part's inode abandoned); an upload already frozen is the
/// pipeline's to complete, and is left alone. The request's error.
async fn fail_put(ep: &Endpoint, upload: uuid::Uuid, e: S3Error) -> S3Error {
    let _ = ep
        .pipeline()
        .fail_upload(upload, &format!("PutObject failed: {e}"))
        .await;
    e
}

/// The checks of a PutObject that read PostgreSQL: the bucket, the key
/// (no object that would be its parent directory or below it), its
/// conditions. (The rest, checked before: the declared length, no
/// server-side encryption, a key MooseFS can store.)
async fn check_put(ep: &Endpoint, input: &PutObjectInput) -> S3Result<()> {
    let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
    ep.require_bucket_for_new_key(bucket, key).await?;
    check_overwrite(
        ep,
        bucket,
        key,
        input.if_match.as_ref(),
        input.if_none_match.as_ref(),
    )
    .await
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

/// Sets an [`Answer`]'s checksums on a GET or HEAD output.
macro_rules! with_answer_checksums {
    ($output:expr, $answer:expr) => {{
        let mut output = $output;
        let answer: &Answer = &$answer;
        output.checksum_crc32 = answer.checksum.checksum_crc32.clone();
        output.checksum_crc32c = answer.checksum.checksum_crc32c.clone();
        output.checksum_sha1 = answer.checksum.checksum_sha1.clone();
        output.checksum_sha256 = answer.checksum.checksum_sha256.clone();
        output.checksum_crc64nvme = answer.checksum.checksum_crc64nvme.clone();
        output.checksum_type = answer.checksum_type.as_ref().map(|k| k.dto());
        output
    }};
}

/// What a GET or HEAD answers: the whole object, a range of it, or one of
/// its parts (`partNumber`).
struct Answer {
    range: std::ops::Range<u64>,
    /// `Content-Range` (a range or a part: `206`).
    content_range: Option<String>,
    /// `x-amz-mp-parts-count` (a part of a multipart object).
    parts_count: Option<i32>,
    /// With `x-amz-checksum-mode: ENABLED`: the stored checksums of the
    /// whole object, or a part's own (with the object's type); nothing for
    /// other ranges (their bytes have other checksums).
    checksum: Checksum,
    checksum_type: Option<Kind>,
}

/// The [`Answer`] to a GET or HEAD of `row`.
async fn answer(
    ep: &Endpoint,
    row: &ObjectRow,
    range: Option<&Range>,
    part_number: Option<i32>,
    mode: Option<&ChecksumMode>,
) -> S3Result<Answer> {
    let size = row.size as u64;
    let wanted = mode.is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
    let whole = |wanted: bool| {
        if wanted {
            (
                row.stored_checksum(),
                checksums::stored_kind(&row.checksums),
            )
        } else {
            (Checksum::default(), None)
        }
    };
    let content_range = |r: &std::ops::Range<u64>| {
        (r.end > r.start).then(|| format!("bytes {}-{}/{size}", r.start, r.end - 1))
    };
    let Some(n) = part_number else {
        return Ok(match range {
            None => {
                let (checksum, checksum_type) = whole(wanted);
                Answer {
                    range: 0..size,
                    content_range: None,
                    parts_count: None,
                    checksum,
                    checksum_type,
                }
            }
            Some(r) => {
                let range = r.check(size)?;
                Answer {
                    content_range: Some(content_range(&range).unwrap_or_default()),
                    range,
                    parts_count: None,
                    checksum: Checksum::default(),
                    checksum_type: None,
                }
            }
        });
    };
    if range.is_some() {
        return Err(s3_error!(
            InvalidRequest,
            "Cannot specify both Range header and partNumber query parameter"
        ));
    }
    if !PART_NUMBERS.contains(&n) {
        return Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        ));
    }
    let part = index::object_part(ep.pool(), row.session_id, n)
        .await
        .map_err(db_error)?;
    let part_count = part.as_ref().map(|p| p.part_count);
    let (offset, len, part_checksum) = match part {
        Some(index::ObjectPart {
            part_offset: Some(offset),
            size: Some(len),
            checksum,
            ..
        }) => (offset as u64, len as u64, checksum),
        // The session's rows are gone (a purge): its one part is the object.
        None if n == 1 => (0, size, None),
        _ => return Err(invalid_part_number()),
    };
    let range = offset..(offset + len).min(size);
    let is_whole = range == (0..size);
    // The part's own checksum, in the object's algorithm, with the
    // object's type; a part without one (a copy's) only when it is the
    // whole object, its stored checksums.
    let algorithm = Algorithm::ALL
        .into_iter()
        .find(|a| row.checksums.get(a.key()).is_some());
    let (checksum, checksum_type) = match (algorithm, part_checksum) {
        (Some(a), Some(value)) if wanted => {
            let mut c = Checksum::default();
            a.set(&mut c, value);
            (c, checksums::stored_kind(&row.checksums))
        }
        _ => whole(wanted && is_whole),
    };
    Ok(Answer {
        content_range: content_range(&range),
        range,
        parts_count: part_count.filter(|_| row.etag.contains('-')),
        checksum,
        checksum_type,
    })
}

/// A part number past the object's last part (S3's answer: 416).
fn invalid_part_number() -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("InvalidPartNumber".into()),
        "The requested partnumber is not satisfiable",
    );
    e.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
    e
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

/// Times a read of an object (GET, UploadPartCopy) reads its row and
/// opens its file before giving up (each retry means the key was
/// overwritten or deleted in between).
const OPEN_ATTEMPTS: u32 = 4;

/// An object found by `find` (its row, conditions met) with its file held
/// open in the master session (`row_of` names the row in what `find`
/// answers): the row read and the open are not atomic, so an inode found
/// gone (or not the row's object) means the key changed in between, and
/// the row is read again (at most [`OPEN_ATTEMPTS`] times).
pub(super) async fn open_found<T, Found>(
    ep: &Endpoint,
    mut find: impl FnMut() -> Found,
    row_of: impl Fn(&T) -> &ObjectRow,
) -> S3Result<(T, OpenObject)>
where
    Found: std::future::Future<Output = S3Result<T>>,
{
    for attempt in 1..=OPEN_ATTEMPTS {
        let found = find().await?;
        let row = row_of(&found);
        if let Some(object) = ep
            .pipeline()
            .open_object(row.inode, row.size)
            .await
            .map_err(pipeline_error)?
        {
            return Ok((found, object));
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

/// The object a GET answers, its conditions met, its file held open.
async fn opened_object(ep: &Endpoint, input: &GetObjectInput) -> S3Result<(ObjectRow, OpenObject)> {
    open_found(
        ep,
        || readable_object(ep, &input.bucket, &input.key, conditions_of!(input)),
        |row| row,
    )
    .await
}

pub(super) async fn get_object(
    ep: &Endpoint,
    input: GetObjectInput,
) -> S3Result<S3Response<GetObjectOutput>> {
    let (row, object) = opened_object(ep, &input).await?;
    let answer = answer(
        ep,
        &row,
        input.range.as_ref(),
        input.part_number,
        input.checksum_mode.as_ref(),
    )
    .await?;
    let (start, len) = (answer.range.start, answer.range.end - answer.range.start);
    let body = ep.pipeline().read_object(object, start, len);
    shared::metrics::metrics().s3_sent(len);
    let status = partial_or_ok(&answer);
    Ok(S3Response::with_status(
        with_answer_checksums!(
            with_object_headers!(
                GetObjectOutput {
                    body: Some(StreamingBlob::wrap(body)),
                    content_length: Some(len as i64),
                    content_range: answer.content_range.clone(),
                    parts_count: answer.parts_count,
                    tag_count: tags_counted(&row),
                },
                row
            ),
            answer
        ),
        status,
    ))
}

/// `206` for a range or a part, else `200`.
fn partial_or_ok(answer: &Answer) -> http::StatusCode {
    if answer.content_range.is_some() {
        http::StatusCode::PARTIAL_CONTENT
    } else {
        http::StatusCode::OK
    }
}

pub(super) async fn head_object(
    ep: &Endpoint,
    input: HeadObjectInput,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let row = readable_object(ep, &input.bucket, &input.key, conditions_of!(input)).await?;
    let mut response = if input.part_number.is_none() {
        // A HEAD with a Range answers the whole object's length (without
        // checksums: they are not the range's).
        let mode = input
            .checksum_mode
            .as_ref()
            .filter(|_| input.range.is_none());
        let answer = answer(ep, &row, None, None, mode).await?;
        S3Response::new(with_answer_checksums!(
            with_object_headers!(
                HeadObjectOutput {
                    content_length: Some(row.size),
                },
                row
            ),
            answer
        ))
    } else {
        let answer = answer(
            ep,
            &row,
            input.range.as_ref(),
            input.part_number,
            input.checksum_mode.as_ref(),
        )
        .await?;
        let status = partial_or_ok(&answer);
        S3Response::with_status(
            with_answer_checksums!(
                with_object_headers!(
                    HeadObjectOutput {
                        content_length: Some((answer.range.end - answer.range.start) as i64),
                        content_range: answer.content_range.clone(),
                        parts_count: answer.parts_count,
                    },
                    row
                ),
                answer
            ),
            status,
        )
    };
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
