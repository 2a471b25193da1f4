//! The S3 operations (s3s's [`S3`] trait): buckets, objects and multipart
//! uploads over the pipeline adapter ([`crate::pipeline`]) and the
//! namespace index in PostgreSQL ([`crate::index`]). Every operation is
//! counted by operation and status (`shared::metrics::s3_request`).
//!
//! An object's data sits at `<S3 root>/<bucket>/<key>` in MooseFS (a mount
//! shows it too); a key must be a MooseFS path (components of 1..=255 bytes,
//! no empty, `.` or `..` component), and `a` and `a/b` cannot both be
//! objects: the second is refused with `409 ObjectPathConflict` and neither
//! object changes.
//!
//! This file holds the [`Endpoint`], the checks every operation shares and
//! the trait, each operation one call into its room:
//!
//! - [`buckets`]: ListBuckets, CreateBucket, HeadBucket, GetBucketLocation,
//!   DeleteBucket;
//! - [`objects`]: PutObject, GetObject, HeadObject, DeleteObject(s), and a
//!   request body received as one part;
//! - [`multipart`]: CreateMultipartUpload, UploadPart,
//!   CompleteMultipartUpload, AbortMultipartUpload, and the completion checks;
//! - [`attributes`]: GetObjectAttributes (ETag, size, checksum, parts);
//! - [`copies`]: CopyObject (a MooseFS snapshot: no data moved) and
//!   UploadPartCopy;
//! - [`listing`]: ListObjects (v1 and V2), ListObjectVersions, ListParts,
//!   ListMultipartUploads;
//! - [`tagging`]: PutObjectTagging, GetObjectTagging, DeleteObjectTagging,
//!   and the tag sets of writes (`x-amz-tagging`);
//! - [`uploads`]: a body received as a part, an upload frozen and completed;
//! - [`digests`]: Content-MD5 and `x-amz-checksum-*`, the multipart ETag;
//! - [`checksums`]: a multipart upload's checksum algorithm and type, its
//!   parts' checksums combined into the object's (COMPOSITE, FULL_OBJECT);
//! - [`errors`]: pipeline and database failures as S3 errors.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use uuid::Uuid;

use crate::index;
use crate::pipeline::Pipeline;

mod attributes;
mod buckets;
mod checksums;
mod copies;
mod digests;
mod errors;
mod listing;
mod multipart;
mod objects;
mod tagging;
mod uploads;

pub use digests::multipart_etag;
pub use multipart::plan_completion;

use errors::{db_error, path_conflict};

/// The largest PutObject body and UploadPart body (S3's limit).
pub const MAX_PART_BYTES: u64 = 5 << 30;
/// The smallest part but the last of a multipart upload (S3's limit).
pub const MIN_PART_BYTES: i64 = 5 << 20;
/// Part numbers S3 allows.
pub const PART_NUMBERS: std::ops::RangeInclusive<i32> = 1..=10_000;

/// An UploadPart's or UploadPartCopy's part number, checked against
/// [`PART_NUMBERS`].
fn check_part_number(part_number: i32) -> S3Result<()> {
    if PART_NUMBERS.contains(&part_number) {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidArgument,
            "part number must be an integer between 1 and 10000, inclusive"
        ))
    }
}
/// Most keys (and parts, and uploads) one list answer holds.
pub const MAX_LIST: i32 = 1000;

/// The S3 endpoint's operations.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: Pipeline,
}

impl Endpoint {
    pub fn new(pipeline: Pipeline) -> Endpoint {
        Endpoint {
            inner: Arc::new(Inner { pipeline }),
        }
    }

    fn pipeline(&self) -> &Pipeline {
        &self.inner.pipeline
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.pipeline().pool()
    }

    async fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        if index::bucket_exists(self.pool(), bucket)
            .await
            .map_err(db_error)?
        {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    /// The checks of a key about to be written: a MooseFS path, and no
    /// object that is a parent of it or that it is a parent of.
    async fn check_new_key(&self, bucket: &str, key: &str) -> S3Result<()> {
        self.check_key_name(bucket, key)?;
        if let Some(other) = index::conflicting_key(self.pool(), bucket, key)
            .await
            .map_err(db_error)?
        {
            return Err(path_conflict(key, &other));
        }
        Ok(())
    }

    /// [`Endpoint::require_bucket`] and [`Endpoint::check_new_key`], the
    /// same errors in the same order, with one query when the key is valid.
    async fn require_bucket_for_new_key(&self, bucket: &str, key: &str) -> S3Result<()> {
        if let Err(e) = self.check_key_name(bucket, key) {
            self.require_bucket(bucket).await?;
            return Err(e);
        }
        let (exists, conflict) = index::bucket_and_conflict(self.pool(), bucket, key)
            .await
            .map_err(db_error)?;
        if !exists {
            return Err(s3_error!(NoSuchBucket));
        }
        match conflict {
            Some(other) => Err(path_conflict(key, &other)),
            None => Ok(()),
        }
    }

    /// The checks of a key's name alone: its length, a MooseFS path.
    fn check_key_name(&self, bucket: &str, key: &str) -> S3Result<()> {
        if key.len() > 1024 {
            return Err(s3_error!(KeyTooLongError));
        }
        self.pipeline()
            .check_key(bucket, key)
            .map_err(|e| s3_error!(InvalidArgument, "key {key:?} cannot be stored: {e}"))
    }

    /// The upload of `bucket`/`key` with this id, if it exists.
    async fn require_upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<Uuid> {
        Ok(self
            .require_upload_checksum(bucket, key, upload_id)
            .await?
            .0)
    }

    /// [`Endpoint::require_upload`], and the upload's checksum.
    async fn require_upload_checksum(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> S3Result<(Uuid, checksums::UploadChecksum)> {
        let id = Uuid::parse_str(upload_id).map_err(|_| s3_error!(NoSuchUpload))?;
        match index::upload_of(self.pool(), id, bucket, key)
            .await
            .map_err(db_error)?
        {
            Some((algorithm, kind)) => Ok((
                id,
                checksums::UploadChecksum::from_columns(algorithm.as_deref(), kind.as_deref()),
            )),
            None => Err(s3_error!(NoSuchUpload)),
        }
    }

    /// [`Endpoint::require_upload`], and still receiving parts.
    async fn require_receiving_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> S3Result<(Uuid, checksums::UploadChecksum)> {
        let (upload, checksum) = self.require_upload_checksum(bucket, key, upload_id).await?;
        if self
            .pipeline()
            .is_receiving(upload)
            .await
            .map_err(errors::pipeline_error)?
        {
            Ok((upload, checksum))
        } else {
            Err(s3_error!(NoSuchUpload))
        }
    }
}

/// Server-side encryption is not implemented: a write asking for it (SSE-S3,
/// SSE-KMS, or SSE-C with the client's key) is refused with `501` rather
/// than stored in the clear while the client believes it encrypted (and,
/// for SSE-C, readable without the key).
fn refuse_encryption(
    sse: Option<&ServerSideEncryption>,
    customer_algorithm: Option<&SSECustomerAlgorithm>,
) -> S3Result<()> {
    if sse.is_some() || customer_algorithm.is_some() {
        return Err(s3_error!(
            NotImplemented,
            "server-side encryption is not implemented"
        ));
    }
    Ok(())
}

/// Every operation the endpoint answers, by the name its requests are
/// counted under (`operation` label): their series exist from the start.
pub const OPERATIONS: &[&str] = &[
    "ListBuckets",
    "CreateBucket",
    "HeadBucket",
    "GetBucketLocation",
    "DeleteBucket",
    "PutObject",
    "GetObject",
    "HeadObject",
    "GetObjectAttributes",
    "DeleteObject",
    "DeleteObjects",
    "CopyObject",
    "UploadPartCopy",
    "ListObjectsV2",
    "ListObjects",
    "ListObjectVersions",
    "CreateMultipartUpload",
    "UploadPart",
    "ListParts",
    "ListMultipartUploads",
    "AbortMultipartUpload",
    "CompleteMultipartUpload",
    "PutObjectTagging",
    "GetObjectTagging",
    "DeleteObjectTagging",
    "AssumeRole",
];

/// Counts a finished operation (status from the result).
fn observed<T>(op: &'static str, started: Instant, result: S3Result<T>) -> S3Result<T> {
    debug_assert!(OPERATIONS.contains(&op), "{op} is not in OPERATIONS");
    let status = match &result {
        Ok(_) => 200,
        Err(e) => e.status_code().map_or(500, |s| s.as_u16()),
    };
    shared::metrics::s3_request(op, status, started.elapsed());
    result
}

/// Runs an operation and counts it ([`observed`]), timed from its start.
pub(crate) async fn timed<T>(
    op: &'static str,
    operation: impl Future<Output = S3Result<T>>,
) -> S3Result<T> {
    let started = Instant::now();
    let result = operation.await;
    observed(op, started, result)
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from(std::time::SystemTime::from(t))
}

/// The permanent access key a request acts for: the key it was signed
/// with, or that session key's parent ([`crate::keys::Principal`]; "" if
/// none, which the access check never lets through).
fn who<T>(req: &S3Request<T>) -> String {
    req.extensions
        .get::<crate::keys::Principal>()
        .map(|p| p.key.clone())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl S3 for Endpoint {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        timed("ListBuckets", buckets::list_buckets(self, req)).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        timed("CreateBucket", buckets::create_bucket(self, req)).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        timed("HeadBucket", buckets::head_bucket(self, req)).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        timed("GetBucketLocation", buckets::get_bucket_location(self, req)).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        timed("DeleteBucket", buckets::delete_bucket(self, req)).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        timed("PutObject", objects::put_object(self, req)).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        timed("GetObject", objects::get_object(self, req.input)).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        timed("HeadObject", objects::head_object(self, req.input)).await
    }

    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        timed(
            "GetObjectAttributes",
            attributes::get_object_attributes(self, req),
        )
        .await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        timed("CopyObject", copies::copy_object(self, req)).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        timed("UploadPartCopy", copies::upload_part_copy(self, req)).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        timed("DeleteObject", objects::delete_object(self, req)).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        timed("DeleteObjects", objects::delete_objects(self, req)).await
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        timed("PutObjectTagging", tagging::put_object_tagging(self, req)).await
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        timed("GetObjectTagging", tagging::get_object_tagging(self, req)).await
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        timed(
            "DeleteObjectTagging",
            tagging::delete_object_tagging(self, req),
        )
        .await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        timed("ListObjectsV2", listing::list_objects_v2(self, req)).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        timed("ListObjects", listing::list_objects(self, req)).await
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        timed(
            "ListObjectVersions",
            listing::list_object_versions(self, req),
        )
        .await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        timed(
            "CreateMultipartUpload",
            multipart::create_multipart_upload(self, req),
        )
        .await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        timed("UploadPart", multipart::upload_part(self, req)).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        timed("ListParts", listing::list_parts(self, req)).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        timed(
            "ListMultipartUploads",
            listing::list_multipart_uploads(self, req),
        )
        .await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        timed(
            "AbortMultipartUpload",
            multipart::abort_multipart_upload(self, req),
        )
        .await
    }

    /// Counted when its answer is known, which may be after the response
    /// head (see [`multipart::complete_multipart_upload`]).
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        multipart::complete_multipart_upload(self, req).await
    }
}
