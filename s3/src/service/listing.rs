//! The list operations: objects (ListObjects and ListObjectsV2, one page
//! from the index, common prefixes rolled up; ListObjectVersions, where a
//! bucket is never versioned and each object is its one version `null`),
//! the parts of an upload (ListParts) and the uploads of a bucket
//! (ListMultipartUploads).

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::checksums::Algorithm;
use super::errors::{db_error, pipeline_error};
use super::{timestamp, Endpoint, MAX_LIST};
use crate::index::{self, ListScope, ObjectRow};
use crate::pipeline::CommittedPart;

/// `encoding-type=url` of a list request: keys, prefixes, delimiters and
/// markers in the answer percent-encoded (every byte but the unreserved
/// ones and `/`), as S3 does so that any key survives XML 1.0. SDKs ask
/// for it unasked (botocore for every object listing) and decode.
#[derive(Clone, Copy)]
struct KeyEncoding {
    url: bool,
}

impl KeyEncoding {
    fn of(requested: Option<&EncodingType>) -> S3Result<KeyEncoding> {
        match requested.map(EncodingType::as_str) {
            None => Ok(KeyEncoding { url: false }),
            Some(EncodingType::URL) => Ok(KeyEncoding { url: true }),
            Some(other) => Err(s3_error!(
                InvalidArgument,
                "Invalid Encoding Method specified in Request: {other:?}"
            )),
        }
    }

    fn apply(self, text: String) -> String {
        if self.url {
            url_encoded(&text)
        } else {
            text
        }
    }

    fn apply_opt(self, text: Option<String>) -> Option<String> {
        text.map(|t| self.apply(t))
    }
}

/// `text` percent-encoded but for `A-Za-z0-9-_.~/`.
fn url_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What the object listings (v1, V2, versions) ask for.
struct PageRequest<'a> {
    bucket: &'a str,
    prefix: Option<&'a str>,
    delimiter: Option<&'a str>,
    /// The key the page starts after.
    after: Option<&'a str>,
    max_keys: Option<i32>,
    encoding_type: Option<&'a EncodingType>,
}

/// The [`PageRequest`] of a listing's input, the page starting after `after`.
macro_rules! page_request {
    ($input:ident, $after:expr) => {
        PageRequest {
            bucket: &$input.bucket,
            prefix: $input.prefix.as_deref(),
            delimiter: $input.delimiter.as_deref(),
            after: $after,
            max_keys: $input.max_keys,
            encoding_type: $input.encoding_type.as_ref(),
        }
    };
}

/// A page of objects as the object listings answer it.
struct ListedPage {
    encoding: KeyEncoding,
    max_keys: i32,
    contents: Vec<Object>,
    common_prefixes: Vec<CommonPrefix>,
    /// Where the next page starts, if the page is truncated.
    next: Option<String>,
}

/// One page of an existing bucket's keys after `q.after`, at most
/// `q.max_keys` (S3's limit if none, or above it), keys encoded as asked.
async fn list_page(ep: &Endpoint, q: &PageRequest<'_>) -> S3Result<ListedPage> {
    ep.require_bucket(q.bucket).await?;
    let encoding = KeyEncoding::of(q.encoding_type)?;
    let max_keys = q.max_keys.unwrap_or(MAX_LIST).clamp(0, MAX_LIST);
    let scope = ListScope {
        bucket: q.bucket,
        prefix: q.prefix.unwrap_or(""),
        max: max_keys,
    };
    let page = index::list(
        ep.pool(),
        &scope,
        q.delimiter.filter(|d| !d.is_empty()),
        q.after,
    )
    .await
    .map_err(db_error)?;
    Ok(ListedPage {
        encoding,
        max_keys,
        contents: page
            .objects
            .iter()
            .map(|row| Object {
                key: Some(encoding.apply(row.key.clone())),
                ..listed_object(row)
            })
            .collect(),
        common_prefixes: page
            .prefixes
            .into_iter()
            .map(|p| CommonPrefix {
                prefix: Some(encoding.apply(p)),
            })
            .collect(),
        next: page.next,
    })
}

pub(super) async fn list_objects_v2(
    ep: &Endpoint,
    req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let input = req.input;
    let after = match &input.continuation_token {
        Some(token) => Some(
            index::decode_token(token)
                .ok_or_else(|| s3_error!(InvalidArgument, "invalid continuation token"))?,
        ),
        None => input.start_after.clone(),
    };
    let page = list_page(ep, &page_request!(input, after.as_deref())).await?;
    let encoding = page.encoding;
    let key_count = (page.contents.len() + page.common_prefixes.len()) as i32;
    Ok(S3Response::new(ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: encoding.apply_opt(input.prefix),
        delimiter: encoding.apply_opt(input.delimiter.filter(|d| !d.is_empty())),
        max_keys: Some(page.max_keys),
        key_count: Some(key_count),
        continuation_token: input.continuation_token,
        start_after: encoding.apply_opt(input.start_after),
        is_truncated: Some(page.next.is_some()),
        next_continuation_token: page.next.as_deref().map(index::encode_token),
        contents: Some(page.contents),
        common_prefixes: Some(page.common_prefixes),
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

pub(super) async fn list_objects(
    ep: &Endpoint,
    req: S3Request<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    let input = req.input;
    let page = list_page(
        ep,
        &page_request!(input, input.marker.as_deref().filter(|m| !m.is_empty())),
    )
    .await?;
    let encoding = page.encoding;
    Ok(S3Response::new(ListObjectsOutput {
        name: Some(input.bucket),
        prefix: encoding.apply_opt(input.prefix),
        delimiter: encoding.apply_opt(input.delimiter.filter(|d| !d.is_empty())),
        marker: encoding.apply_opt(input.marker),
        max_keys: Some(page.max_keys),
        is_truncated: Some(page.next.is_some()),
        next_marker: encoding.apply_opt(page.next),
        contents: Some(page.contents),
        common_prefixes: Some(page.common_prefixes),
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

/// The version id of every object: buckets are never versioned, and S3
/// names the one version of an object in an unversioned bucket `null`.
pub(super) const NULL_VERSION: &str = "null";

pub(super) async fn list_object_versions(
    ep: &Endpoint,
    req: S3Request<ListObjectVersionsInput>,
) -> S3Result<S3Response<ListObjectVersionsOutput>> {
    let input = req.input;
    let page = list_page(
        ep,
        &page_request!(input, input.key_marker.as_deref().filter(|m| !m.is_empty())),
    )
    .await?;
    let encoding = page.encoding;
    let versions = page
        .contents
        .into_iter()
        .map(|o| ObjectVersion {
            key: o.key,
            size: o.size,
            e_tag: o.e_tag,
            last_modified: o.last_modified,
            is_latest: Some(true),
            version_id: Some(NULL_VERSION.into()),
            storage_class: Some(ObjectVersionStorageClass::from_static(
                ObjectVersionStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect();
    let truncated = page.next.is_some();
    Ok(S3Response::new(ListObjectVersionsOutput {
        name: Some(input.bucket),
        prefix: encoding.apply_opt(input.prefix),
        delimiter: encoding.apply_opt(input.delimiter.filter(|d| !d.is_empty())),
        key_marker: encoding.apply_opt(input.key_marker),
        version_id_marker: input.version_id_marker,
        max_keys: Some(page.max_keys),
        is_truncated: Some(truncated),
        next_key_marker: encoding.apply_opt(page.next),
        next_version_id_marker: truncated.then(|| NULL_VERSION.to_string()),
        versions: Some(versions),
        common_prefixes: Some(page.common_prefixes),
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

pub(super) async fn list_parts(
    ep: &Endpoint,
    req: S3Request<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    let input = req.input;
    let (upload, kept) = ep
        .require_receiving_upload(&input.bucket, &input.key, &input.upload_id)
        .await?;
    let max_parts = input.max_parts.unwrap_or(MAX_LIST).clamp(0, MAX_LIST);
    let marker = input.part_number_marker.unwrap_or(0);
    let parts = ep
        .pipeline()
        .committed_parts(upload)
        .await
        .map_err(pipeline_error)?;
    let after: Vec<&CommittedPart> = parts.iter().filter(|p| p.part_number > marker).collect();
    let page = &after[..after.len().min(max_parts as usize)];
    let truncated = after.len() > page.len();
    Ok(S3Response::new(ListPartsOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        max_parts: Some(max_parts),
        part_number_marker: input.part_number_marker,
        is_truncated: Some(truncated),
        next_part_number_marker: page.last().filter(|_| truncated).map(|p| p.part_number),
        parts: Some(
            page.iter()
                .map(|p| listed_part(p, kept.algorithm))
                .collect(),
        ),
        checksum_algorithm: Some(ChecksumAlgorithm::from(kept.algorithm.name().to_string())),
        checksum_type: Some(kept.kind.dto()),
        ..Default::default()
    }))
}

pub(super) async fn list_multipart_uploads(
    ep: &Endpoint,
    req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let input = req.input;
    ep.require_bucket(&input.bucket).await?;
    let max_uploads = input.max_uploads.unwrap_or(MAX_LIST).clamp(0, MAX_LIST);
    let scope = ListScope {
        bucket: &input.bucket,
        prefix: input.prefix.as_deref().unwrap_or(""),
        max: max_uploads,
    };
    let (uploads, truncated) = index::receiving_uploads(
        ep.pool(),
        &scope,
        input.key_marker.as_deref(),
        input.upload_id_marker.as_deref(),
    )
    .await
    .map_err(db_error)?;
    let last = uploads.last().cloned();
    Ok(S3Response::new(ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: input.prefix,
        key_marker: input.key_marker,
        upload_id_marker: input.upload_id_marker,
        max_uploads: Some(max_uploads),
        is_truncated: Some(truncated),
        next_key_marker: last.as_ref().filter(|_| truncated).map(|u| u.1.clone()),
        next_upload_id_marker: last.filter(|_| truncated).map(|u| u.0.to_string()),
        uploads: Some(
            uploads
                .into_iter()
                .map(|(id, key, created)| MultipartUpload {
                    upload_id: Some(id.to_string()),
                    key: Some(key),
                    initiated: Some(timestamp(created)),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }))
}

fn listed_object(row: &ObjectRow) -> Object {
    Object {
        key: Some(row.key.clone()),
        size: Some(row.size),
        e_tag: Some(ETag::Strong(row.etag.clone())),
        last_modified: Some(timestamp(row.last_modified)),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        ..Default::default()
    }
}

/// A committed part as ListParts shows it, with its checksum in the
/// upload's algorithm.
fn listed_part(p: &CommittedPart, algorithm: Algorithm) -> Part {
    let mut checksum = Checksum::default();
    if let Some(value) = &p.checksum {
        algorithm.set(&mut checksum, value.clone());
    }
    Part {
        part_number: Some(p.part_number),
        e_tag: p.md5.clone().map(ETag::Strong),
        size: Some(p.size),
        last_modified: Some(timestamp(p.committed_at)),
        checksum_crc32: checksum.checksum_crc32,
        checksum_crc32c: checksum.checksum_crc32c,
        checksum_sha1: checksum.checksum_sha1,
        checksum_sha256: checksum.checksum_sha256,
        checksum_crc64nvme: checksum.checksum_crc64nvme,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_unreserved_bytes_and_slashes() {
        assert_eq!(url_encoded("foo/bar_1-2.3~"), "foo/bar_1-2.3~");
        assert_eq!(url_encoded("asdf+b"), "asdf%2Bb");
        assert_eq!(url_encoded("quux ab/"), "quux%20ab/");
        assert_eq!(url_encoded("100%"), "100%25");
        assert_eq!(url_encoded("é"), "%C3%A9");
    }

    #[test]
    fn only_the_url_encoding_exists() {
        let url = EncodingType::from_static(EncodingType::URL);
        assert!(KeyEncoding::of(None).is_ok_and(|e| !e.url));
        assert!(KeyEncoding::of(Some(&url)).is_ok_and(|e| e.url));
        let other = EncodingType::from("base64".to_string());
        assert!(KeyEncoding::of(Some(&other)).is_err());
    }
}
