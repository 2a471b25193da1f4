//! Server-side copies.
//!
//! - **CopyObject**: the copy is an upload of one part like a PutObject,
//!   whose part is the source object's file *by reference* (a MooseFS
//!   snapshot at the part attempt's staging name: no data moves, the copy
//!   shares the source's chunks). The part is committed under its fencing
//!   token and the upload completed by the pipeline's completion, which puts
//!   it at the key under the key's destination lock and replaces an older
//!   object there exactly as a PutObject's completion does. Content-Type and
//!   `x-amz-meta-*` are the source's (`x-amz-metadata-directive: COPY`, the
//!   default) or the request's (`REPLACE`); the ETag and the stored
//!   checksums are the source's (the same bytes). The tags are the source's
//!   (`x-amz-tagging-directive: COPY`, the default) or the request's
//!   `x-amz-tagging` (`REPLACE`; none if it has none).
//! - **UploadPartCopy**: a part whose body is a range of an existing object
//!   (`x-amz-copy-source-range`, or all of it), read from the chunkservers
//!   and written by the part-writing path of UploadPart (fresh staging inode
//!   under a fencing token, every replica acknowledged, CRCs verified, the
//!   part row committed, then the answer). Its ETag is the MD5 of the bytes.
//!
//! Both check the source's `x-amz-copy-source-if-*` conditions (`412` when
//! one fails); the source bucket must be one the key may use (checked with
//! the access check, [`crate::keys::KeyAccess`]).

use s3s::dto::*;
use s3s::{s3_error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::digests::Digests;
use super::errors::{db_error, pipeline_error};
use super::objects::{check_conditions, check_version, open_found, Conditions};
use super::tagging::{replaces_tags, Tags};
use super::{check_part_number, refuse_encryption, timestamp, who, Endpoint, MAX_PART_BYTES};
use crate::index::{self, ObjectRow};
use crate::pipeline::{CommittedPart, FreezePlan, NewUpload, SourceObject};

/// The message S3 answers a copy of an object onto itself that changes
/// nothing with (`400 InvalidRequest`).
const COPY_TO_ITSELF: &str = "This copy request is illegal because it is trying to copy an \
     object to itself without changing the object's metadata, storage class, website redirect \
     location or encryption attributes.";

/// The `x-amz-copy-source-if-*` conditions of a copy input.
macro_rules! copy_conditions_of {
    ($input:expr) => {
        Conditions {
            if_match: $input.copy_source_if_match.as_ref(),
            if_none_match: $input.copy_source_if_none_match.as_ref(),
            if_modified_since: $input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: $input.copy_source_if_unmodified_since.as_ref(),
        }
    };
}

/// A copy's source: its bucket, key and index row, its conditions met.
struct Source {
    bucket: String,
    key: String,
    row: ObjectRow,
}

impl Source {
    fn object(&self) -> SourceObject {
        SourceObject {
            inode: self.row.inode as u32,
            size: self.row.size as u64,
            session: self.row.session_id,
        }
    }
}

/// Reads a copy's source object: `NoSuchBucket`, `NoSuchKey`, and `412
/// PreconditionFailed` for a failed `x-amz-copy-source-if-*` condition (a
/// copy answers 412 where a GET would answer 304).
async fn copy_source(
    ep: &Endpoint,
    source: &CopySource,
    conditions: Conditions<'_>,
) -> S3Result<Source> {
    let CopySource::Bucket {
        bucket,
        key,
        version_id,
    } = source
    else {
        return Err(s3_error!(
            NotImplemented,
            "copy sources other than bucket/key are not implemented"
        ));
    };
    check_version(version_id.as_deref())?;
    ep.require_bucket(bucket).await?;
    if ep.pipeline().check_key(bucket, key).is_err() {
        return Err(s3_error!(NoSuchKey));
    }
    let row = index::object(ep.pool(), bucket, key)
        .await
        .map_err(db_error)?
        .ok_or_else(|| s3_error!(NoSuchKey))?;
    check_conditions(&row, &conditions).map_err(|e| {
        if *e.code() == S3ErrorCode::NotModified {
            s3_error!(
                PreconditionFailed,
                "an x-amz-copy-source-if condition failed"
            )
        } else {
            e
        }
    })?;
    Ok(Source {
        bucket: bucket.to_string(),
        key: key.to_string(),
        row,
    })
}

/// Whether `x-amz-metadata-directive` says REPLACE (COPY is the default).
fn replaces_metadata(directive: Option<&MetadataDirective>) -> S3Result<bool> {
    match directive.map(|d| d.as_str()) {
        None => Ok(false),
        Some(d) if d.eq_ignore_ascii_case(MetadataDirective::COPY) => Ok(false),
        Some(d) if d.eq_ignore_ascii_case(MetadataDirective::REPLACE) => Ok(true),
        Some(d) => Err(s3_error!(
            InvalidArgument,
            "Unknown metadata directive {d:?}"
        )),
    }
}

pub(super) async fn copy_object(
    ep: &Endpoint,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    let who = who(&req);
    let input = req.input;
    let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
    refuse_encryption(
        input.server_side_encryption.as_ref(),
        input.sse_customer_algorithm.as_ref(),
    )?;
    refuse_encryption(None, input.copy_source_sse_customer_algorithm.as_ref())?;
    ep.require_bucket(bucket).await?;
    let replace = replaces_metadata(input.metadata_directive.as_ref())?;
    let replace_tags = replaces_tags(input.tagging_directive.as_ref())?;
    let new_tags = if replace_tags {
        Some(Tags::from_header(input.tagging.as_deref())?.to_json())
    } else {
        None
    };
    let source = copy_source(ep, &input.copy_source, copy_conditions_of!(input)).await?;
    if source.bucket == bucket && source.key == key && !replace {
        return Err(s3_error!(InvalidRequest, "{COPY_TO_ITSELF}"));
    }
    ep.check_new_key(bucket, key).await?;
    let (content_type, metadata) = if replace {
        (input.content_type.clone(), input.metadata.clone())
    } else {
        (source.row.content_type.clone(), source.row.metadata())
    };
    let tags = new_tags.unwrap_or_else(|| source.row.tags.clone());
    let upload = ep
        .pipeline()
        .open_upload(&NewUpload {
            bucket,
            key,
            multipart: false,
            content_type: content_type.as_deref(),
            metadata: metadata.as_ref(),
            who: &who,
            checksum_algorithm: None,
            checksum_type: None,
            tags: &tags,
        })
        .await
        .map_err(pipeline_error)?;
    if let Err(e) = ep.receive_snapshot(upload, &source.object()).await {
        let _ = ep
            .pipeline()
            .fail_upload(upload, &format!("CopyObject failed: {e}"))
            .await;
        return Err(e);
    }
    let (etag, last_modified) = ep
        .finish_upload(upload, |parts| plan_copy(parts, &source.row))
        .await?;
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(timestamp(last_modified)),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// The freeze plan of a CopyObject: its one part, the source's ETag and
/// stored checksums (the same bytes).
fn plan_copy(parts: &[CommittedPart], source: &index::ObjectRow) -> S3Result<FreezePlan> {
    if !parts.iter().any(|p| p.part_number == 1) {
        return Err(s3_error!(InternalError, "the part vanished"));
    }
    Ok(FreezePlan {
        part_numbers: vec![1],
        etag: source.etag.clone(),
        listed: serde_json::json!([[1, source.etag]]),
        checksums: source.checksums.clone(),
    })
}

pub(super) async fn upload_part_copy(
    ep: &Endpoint,
    req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let input = req.input;
    refuse_encryption(None, input.sse_customer_algorithm.as_ref())?;
    refuse_encryption(None, input.copy_source_sse_customer_algorithm.as_ref())?;
    check_part_number(input.part_number)?;
    let (upload, kept) = ep
        .require_upload_checksum(&input.bucket, &input.key, &input.upload_id)
        .await?;
    let (source, opened) = open_found(
        ep,
        || copy_source(ep, &input.copy_source, copy_conditions_of!(input)),
        |source| &source.row,
    )
    .await?;
    let size = source.row.size as u64;
    let range = match input.copy_source_range.as_deref() {
        None => 0..size,
        Some(header) => copy_range(header, size)?,
    };
    let len = range.end - range.start;
    if len > MAX_PART_BYTES {
        return Err(s3_error!(
            InvalidRequest,
            "The specified copy source is larger than the maximum allowable size for a copy \
             source: {MAX_PART_BYTES}"
        ));
    }
    let (pipe, reader) = ep.pipeline().read_source(opened, range.start, len);
    let body = StreamingBlob::wrap(tokio_util::io::ReaderStream::with_capacity(pipe, 64 << 10));
    let received = ep
        .receive_part(
            upload,
            input.part_number,
            Some(body),
            Some(len as i64),
            &Digests::default(),
            None,
            Some(kept.algorithm),
        )
        .await;
    let (written, checksum) = match received {
        Ok(received) => received,
        // The body ended short: the source's read failed, and says why.
        Err(e) if *e.code() == S3ErrorCode::IncompleteBody => {
            return Err(match reader.failure().await {
                Some(failure) => pipeline_error(failure),
                None => e,
            })
        }
        Err(e) => return Err(e),
    };
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: written.md5.map(ETag::Strong),
            last_modified: Some(timestamp(chrono::Utc::now())),
            checksum_crc32: checksum.checksum_crc32,
            checksum_crc32c: checksum.checksum_crc32c,
            checksum_sha1: checksum.checksum_sha1,
            checksum_sha256: checksum.checksum_sha256,
            checksum_crc64nvme: checksum.checksum_crc64nvme,
        }),
        ..Default::default()
    }))
}

/// `x-amz-copy-source-range: bytes=first-last` (inclusive, one range, both
/// given) of a source of `size` bytes, as a half-open range: a malformed
/// range is `InvalidArgument`, one past the end `InvalidRange` (as S3).
fn copy_range(header: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let malformed = || {
        s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=first-last, got {header:?}"
        )
    };
    let (first, last) = header
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(malformed)?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (first, last) = match (number(first), number(last)) {
        (Some(first), Some(last)) if first <= last => (first, last),
        _ => return Err(malformed()),
    };
    if last >= size {
        return Err(s3_error!(
            InvalidRange,
            "the range {header} is not within the source's {size} bytes"
        ));
    }
    Ok(first..last + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: S3Result<std::ops::Range<u64>>) -> String {
        r.unwrap_err().code().as_str().to_string()
    }

    #[test]
    fn copy_ranges_are_one_inclusive_range_inside_the_source() {
        assert_eq!(copy_range("bytes=0-9", 10).unwrap(), 0..10);
        assert_eq!(copy_range("bytes=3-3", 10).unwrap(), 3..4);
        assert_eq!(code(copy_range("bytes=0-21", 5)), "InvalidRange");
        assert_eq!(code(copy_range("bytes=5-5", 5)), "InvalidRange");
        // ceph/s3-tests test_multipart_copy_improper_range
        for bad in [
            "0-2",
            "bytes=0",
            "bytes=hello-world",
            "bytes=0-bar",
            "bytes=hello-",
            "bytes=0-2,3-5",
            "bytes=-3",
            "bytes=4-2",
            "bytes=+1-2",
        ] {
            assert_eq!(code(copy_range(bad, 10)), "InvalidArgument", "{bad}");
        }
    }

    #[test]
    fn metadata_directives() {
        assert!(!replaces_metadata(None).unwrap());
        let d = |s: &str| MetadataDirective::from(s.to_string());
        assert!(!replaces_metadata(Some(&d("COPY"))).unwrap());
        assert!(replaces_metadata(Some(&d("REPLACE"))).unwrap());
        assert!(replaces_metadata(Some(&d("MOVE"))).is_err());
    }
}
