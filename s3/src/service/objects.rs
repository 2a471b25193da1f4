//! The object operations: PutObject (an upload of one part, completed at
//! once), GetObject and HeadObject (with their conditions), DeleteObject(s).

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::digests::{digests_of, with_checksums};
use super::errors::{db_error, pipeline_error};
use super::listing::NULL_VERSION;
use super::{timestamp, who, Endpoint, MAX_LIST, MAX_PART_BYTES};
use crate::index::{self, ObjectRow};
use crate::pipeline::{CommittedPart, FreezePlan, NewUpload};

pub(super) async fn put_object(
    ep: &Endpoint,
    req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let who = who(&req);
    let trailers = req.trailing_headers.clone();
    let input = req.input;
    let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
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
        Ok(r) => r,
        Err(e) => {
            let _ = ep
                .pipeline()
                .fail_upload(upload, &format!("PutObject failed: {e}"))
                .await;
            return Err(e);
        }
    };
    let etag = ep.finish_upload(upload, the_only_part).await?;
    debug_assert_eq!(etag, written.md5);
    index::record_checksums(ep.pool(), bucket, key, upload, &checksum)
        .await
        .map_err(db_error)?;
    Ok(S3Response::new(with_checksums!(
        PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: Some(written.size as i64),
        },
        checksum
    )))
}

/// The checks of a PutObject before its body is read: the bucket, the key,
/// `If-None-Match: *`, the declared length.
async fn check_put(ep: &Endpoint, input: &PutObjectInput) -> S3Result<()> {
    let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
    ep.require_bucket(bucket).await?;
    ep.check_new_key(bucket, key).await?;
    if input.if_none_match.as_ref().is_some_and(|c| c.is_any())
        && index::object(ep.pool(), bucket, key)
            .await
            .map_err(db_error)?
            .is_some()
    {
        return Err(s3_error!(PreconditionFailed, "the object exists"));
    }
    match input.content_length {
        Some(n) if n >= 0 && (n as u64) <= MAX_PART_BYTES => Ok(()),
        Some(n) if n >= 0 => Err(s3_error!(EntityTooLarge)),
        _ => Err(s3_error!(MissingContentLength)),
    }
}

/// The freeze plan of a PutObject: its one part, the part's MD5 as ETag.
fn the_only_part(parts: &[CommittedPart]) -> S3Result<FreezePlan> {
    let only = parts
        .iter()
        .find(|p| p.part_number == 1)
        .ok_or_else(|| s3_error!(InternalError, "the part vanished"))?;
    Ok(FreezePlan {
        part_numbers: vec![1],
        etag: only.md5.clone(),
        listed: serde_json::json!([[1, only.md5]]),
    })
}

/// The conditions of a GET or HEAD.
struct Conditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
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
            content_type: row.content_type.clone(),
            metadata: row.metadata(),
            ..Default::default()
        }
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

pub(super) async fn get_object(
    ep: &Endpoint,
    input: GetObjectInput,
) -> S3Result<S3Response<GetObjectOutput>> {
    let row = readable_object(ep, &input.bucket, &input.key, conditions_of!(input)).await?;
    if input.part_number.is_some() {
        return Err(s3_error!(
            NotImplemented,
            "GetObject by partNumber is not implemented"
        ));
    }
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
    let body = ep
        .pipeline()
        .read_object(row.inode as u32, range.start, len);
    crate::metrics::metrics().bytes_out.inc_by(len);
    Ok(S3Response::with_status(
        with_object_headers!(
            GetObjectOutput {
                body: Some(StreamingBlob::wrap(body)),
                content_length: Some(len as i64),
                content_range: content_range.clone(),
            },
            row
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
    Ok(S3Response::new(with_object_headers!(
        HeadObjectOutput {
            content_length: Some(row.size),
        },
        row
    )))
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
fn check_version(version_id: Option<&str>) -> S3Result<()> {
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

/// If-Match / If-None-Match / If-(Un)Modified-Since of a GET or HEAD.
fn check_conditions(row: &ObjectRow, conditions: &Conditions<'_>) -> S3Result<()> {
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
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = conditions.if_modified_since {
        if secs(modified) <= secs(as_system(t)) {
            return Err(s3_error!(NotModified));
        }
    }
    Ok(())
}

fn time_of(t: &Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t.clone())
}
