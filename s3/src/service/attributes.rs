//! GetObjectAttributes: an object's ETag, size, storage class, stored
//! checksum (with its type) and, for a multipart object, its parts (size
//! and kept checksum each, paged by `x-amz-max-parts` and
//! `x-amz-part-number-marker`), all from PostgreSQL.

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::checksums::{self, Algorithm};
use super::errors::db_error;
use super::objects::check_version;
use super::{timestamp, Endpoint, MAX_LIST};
use crate::index;

pub(super) async fn get_object_attributes(
    ep: &Endpoint,
    req: S3Request<GetObjectAttributesInput>,
) -> S3Result<S3Response<GetObjectAttributesOutput>> {
    let input = req.input;
    check_version(input.version_id.as_deref())?;
    ep.require_bucket(&input.bucket).await?;
    let row = index::object(ep.pool(), &input.bucket, &input.key)
        .await
        .map_err(db_error)?
        .ok_or_else(|| s3_error!(NoSuchKey))?;
    // One header, `x-amz-object-attributes: ETag,Checksum,…` (s3s keeps
    // it as one item when sent on one line).
    let wanted: Vec<String> = input
        .object_attributes
        .iter()
        .flat_map(|x| x.as_str().split(','))
        .map(|x| x.trim().to_string())
        .collect();
    let wants = |a: &str| wanted.iter().any(|x| x == a);
    let mut output = GetObjectAttributesOutput {
        last_modified: Some(timestamp(row.last_modified)),
        ..Default::default()
    };
    if wants(ObjectAttributes::ETAG) {
        output.e_tag = Some(ETag::Strong(row.etag.clone()));
    }
    if wants(ObjectAttributes::OBJECT_SIZE) {
        output.object_size = Some(row.size);
    }
    if wants(ObjectAttributes::STORAGE_CLASS) {
        output.storage_class = Some(StorageClass::from_static(StorageClass::STANDARD));
    }
    let algorithm = Algorithm::ALL
        .into_iter()
        .find(|a| row.checksums.get(a.key()).is_some());
    if wants(ObjectAttributes::CHECKSUM) && algorithm.is_some() {
        output.checksum = Some(Checksum {
            checksum_type: checksums::stored_kind(&row.checksums).map(|k| k.dto()),
            ..row.stored_checksum()
        });
    }
    // Parts: of a multipart object only (S3 answers none for the others).
    if wants(ObjectAttributes::OBJECT_PARTS) && row.etag.contains('-') {
        let max = input.max_parts.unwrap_or(MAX_LIST).clamp(0, MAX_LIST);
        let marker = input.part_number_marker.unwrap_or(0).max(0);
        let (total, mut parts) = index::object_parts(ep.pool(), row.session_id, marker, max + 1)
            .await
            .map_err(db_error)?;
        let truncated = parts.len() > max as usize;
        parts.truncate(max as usize);
        output.object_parts = Some(GetObjectAttributesParts {
            total_parts_count: Some(total),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: parts.last().filter(|_| truncated).map(|p| p.0),
            max_parts: Some(max),
            is_truncated: Some(truncated),
            parts: Some(
                parts
                    .into_iter()
                    .map(|(number, size, checksum)| {
                        let mut c = Checksum::default();
                        if let (Some(a), Some(value)) = (algorithm, checksum) {
                            a.set(&mut c, value);
                        }
                        ObjectPart {
                            part_number: Some(number),
                            size: Some(size),
                            checksum_crc32: c.checksum_crc32,
                            checksum_crc32c: c.checksum_crc32c,
                            checksum_sha1: c.checksum_sha1,
                            checksum_sha256: c.checksum_sha256,
                            checksum_crc64nvme: c.checksum_crc64nvme,
                        }
                    })
                    .collect(),
            ),
        });
    }
    Ok(S3Response::new(output))
}
