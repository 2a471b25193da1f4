//! The S3 operations (s3s's [`S3`] trait): buckets, objects and multipart
//! uploads over the pipeline adapter ([`crate::pipeline`]) and the
//! namespace index in PostgreSQL ([`crate::index`]). Every operation is
//! counted by operation and status ([`crate::metrics`]).
//!
//! An object's data sits at `<S3 root>/<bucket>/<key>` in MooseFS (a mount
//! shows it too); a key must be a MooseFS path (components of 1..=255 bytes,
//! no empty, `.` or `..` component), and `a` and `a/b` cannot both be
//! objects: the second is refused with `409 ObjectPathConflict` and neither
//! object changes.

use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use md5::Digest;
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use uuid::Uuid;

use crate::index::{self, ObjectRow};
use crate::pipeline::{
    CommittedPart, Completed, FreezePlan, Frozen, NewUpload, PartCommitted, Pipeline, PipelineError,
};

/// The largest PutObject body and UploadPart body (S3's limit).
pub const MAX_PART_BYTES: u64 = 5 << 30;
/// The smallest part but the last of a multipart upload (S3's limit).
pub const MIN_PART_BYTES: i64 = 5 << 20;
/// Part numbers S3 allows.
pub const PART_NUMBERS: std::ops::RangeInclusive<i32> = 1..=10_000;
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
        if key.len() > 1024 {
            return Err(s3_error!(KeyTooLongError));
        }
        self.pipeline()
            .check_key(bucket, key)
            .map_err(|e| s3_error!(InvalidArgument, "key {key:?} cannot be stored: {e}"))?;
        if let Some(other) = index::conflicting_key(self.pool(), bucket, key)
            .await
            .map_err(db_error)?
        {
            return Err(path_conflict(key, &other));
        }
        Ok(())
    }

    /// The upload of `bucket`/`key` with this id, if it exists.
    async fn require_upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<Uuid> {
        let id = Uuid::parse_str(upload_id).map_err(|_| s3_error!(NoSuchUpload))?;
        if index::upload_of(self.pool(), id, bucket, key)
            .await
            .map_err(db_error)?
        {
            Ok(id)
        } else {
            Err(s3_error!(NoSuchUpload))
        }
    }

    /// Writes a request body as an attempt of one part and commits it: the
    /// part's fencing token, a fresh staging inode written and verified,
    /// the digests the client sent checked, the part row committed. Only
    /// then is the ETag (the body's MD5) answered.
    async fn receive_part(
        &self,
        upload: Uuid,
        part_number: i32,
        body: Option<StreamingBlob>,
        content_length: Option<i64>,
        digests: &Digests,
        trailers: Option<s3s::TrailingHeaders>,
    ) -> S3Result<(crate::pipeline::WrittenPart, s3s::dto::Checksum)> {
        let declared = match content_length {
            Some(n) if n >= 0 => n as u64,
            _ => return Err(s3_error!(MissingContentLength)),
        };
        if declared > MAX_PART_BYTES {
            return Err(s3_error!(EntityTooLarge));
        }
        let body = body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let token = self
            .pipeline()
            .start_part(upload, part_number)
            .await
            .map_err(pipeline_error)?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let hasher = Arc::new(std::sync::Mutex::new(digests.hasher()));
        let hashing = hasher.clone();
        let stream = body
            .inspect_ok(move |b| hashing.lock().expect("hasher").update(b))
            .map_err(|e| std::io::Error::other(e.to_string()));
        let reader = tokio_util::io::StreamReader::new(stream);
        let written = self
            .pipeline()
            .write_part(upload, part_number, token, declared, reader)
            .await
            .map_err(pipeline_error)?;
        let checksum = std::mem::take(&mut *hasher.lock().expect("hasher")).finalize();
        if let Err(e) = digests.verify(&written.md5, &checksum, trailers) {
            self.pipeline()
                .abandon(
                    upload,
                    part_number,
                    token,
                    written.inode,
                    &written.path,
                    "s3 part failed its digest check",
                )
                .await;
            return Err(e);
        }
        match self
            .pipeline()
            .commit_part(upload, part_number, &written)
            .await
            .map_err(pipeline_error)?
        {
            PartCommitted::Committed => {
                crate::metrics::metrics().bytes_in.inc_by(written.size);
                Ok((written, checksum))
            }
            PartCommitted::Superseded => Err(s3_error!(
                OperationAborted,
                "a newer upload of part {part_number} committed first; this one was discarded"
            )),
            PartCommitted::UploadClosed => Err(s3_error!(NoSuchUpload)),
        }
    }

    /// Freezes an upload with `plan` chosen by `check`, completes it through
    /// the pipeline and records the object. The object's ETag.
    async fn finish_upload<F>(&self, upload: Uuid, check: F) -> S3Result<String>
    where
        F: Fn(&[CommittedPart]) -> Result<FreezePlan, S3Error>,
    {
        let etag = self.freeze_upload(upload, check).await?;
        self.place_upload(upload, etag).await
    }

    /// The S3 checks and the freeze (fast: one transaction); the ETag.
    async fn freeze_upload<F>(&self, upload: Uuid, check: F) -> S3Result<String>
    where
        F: Fn(&[CommittedPart]) -> Result<FreezePlan, S3Error>,
    {
        let frozen = self
            .pipeline()
            .freeze(upload, &check)
            .await
            .map_err(pipeline_error)?;
        let etag = match frozen {
            Frozen::Now { etag } => etag,
            Frozen::Refused(e) => return Err(e),
            Frozen::Gone => return Err(s3_error!(NoSuchUpload)),
            Frozen::Before { etag, listed, .. } => {
                // A repeated Complete: the same list gets the same answer
                // (and finishes a completion that did not finish); any other
                // list finds the upload gone, as in S3.
                let parts = self
                    .pipeline()
                    .committed_parts(upload)
                    .await
                    .map_err(pipeline_error)?;
                if check(&parts).ok().map(|p| p.listed) != Some(listed) {
                    return Err(s3_error!(NoSuchUpload));
                }
                etag
            }
        };
        Ok(etag)
    }

    /// The pipeline's completion of a frozen upload, then the object row.
    async fn place_upload(&self, upload: Uuid, etag: String) -> S3Result<String> {
        match self
            .pipeline()
            .complete(upload)
            .await
            .map_err(pipeline_error)?
        {
            Completed::Placed(placed) => {
                index::record_object(self.pool(), upload, &placed)
                    .await
                    .map_err(db_error)?;
                Ok(etag)
            }
            Completed::Failed(why) => Err(completion_refused(&why)),
        }
    }
}

/// The digests a client sent with a body (headers; trailers are read after it).
#[derive(Default)]
struct Digests {
    content_md5: Option<String>,
    crc32: Option<String>,
    crc32c: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
    crc64nvme: Option<String>,
    algorithm: Option<ChecksumAlgorithm>,
}

impl Digests {
    fn hasher(&self) -> s3s::checksum::ChecksumHasher {
        let mut h = s3s::checksum::ChecksumHasher::default();
        let alg = self.algorithm.as_ref().map(|a| a.as_str().to_string());
        let wants = |given: &Option<String>, name: &str| {
            given.is_some() || alg.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(name))
        };
        if wants(&self.crc32, ChecksumAlgorithm::CRC32) {
            h.crc32 = Some(Default::default());
        }
        if wants(&self.crc32c, ChecksumAlgorithm::CRC32C) {
            h.crc32c = Some(Default::default());
        }
        if wants(&self.sha1, ChecksumAlgorithm::SHA1) {
            h.sha1 = Some(Default::default());
        }
        if wants(&self.sha256, ChecksumAlgorithm::SHA256) {
            h.sha256 = Some(Default::default());
        }
        if wants(&self.crc64nvme, ChecksumAlgorithm::CRC64NVME) {
            h.crc64nvme = Some(Default::default());
        }
        h
    }

    /// Content-MD5 against the body's MD5, each `x-amz-checksum-*` given (in
    /// the headers or the trailers) against what the body hashed to.
    fn verify(
        &self,
        md5_hex: &str,
        computed: &s3s::dto::Checksum,
        trailers: Option<s3s::TrailingHeaders>,
    ) -> S3Result<()> {
        if let Some(content_md5) = &self.content_md5 {
            let expected = base64_decode(content_md5)
                .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not base64"))?;
            if hex(&expected) != md5_hex {
                return Err(s3_error!(
                    BadDigest,
                    "the Content-MD5 you specified did not match what we received"
                ));
            }
        }
        let trailers = trailers.and_then(|t| t.take());
        let from_trailer = |name: &str| {
            trailers
                .as_ref()
                .and_then(|t| t.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let pairs = [
            ("crc32", &self.crc32, &computed.checksum_crc32),
            ("crc32c", &self.crc32c, &computed.checksum_crc32c),
            ("sha1", &self.sha1, &computed.checksum_sha1),
            ("sha256", &self.sha256, &computed.checksum_sha256),
            ("crc64nvme", &self.crc64nvme, &computed.checksum_crc64nvme),
        ];
        for (name, given, got) in pairs {
            let given = given
                .clone()
                .or_else(|| from_trailer(&format!("x-amz-checksum-{name}")));
            if let (Some(given), Some(got)) = (given, got) {
                if &given != got {
                    return Err(s3_error!(
                        BadDigest,
                        "the x-amz-checksum-{name} you specified did not match what we received"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The multipart ETag: `md5(md5₁‖…‖md5ₙ)-n`.
pub fn multipart_etag(part_md5s: &[&str]) -> Option<String> {
    let mut h = md5::Md5::new();
    for m in part_md5s {
        h.update(unhex(m)?);
    }
    Some(format!("{}-{}", hex(&h.finalize()), part_md5s.len()))
}

/// An ETag as a client sent it, without quotes.
fn bare_etag(etag: &ETag) -> &str {
    etag.value()
}

/// S3's checks of a CompleteMultipartUpload list against the committed
/// parts: non-empty, strictly ascending, each (PartNumber, ETag) the
/// committed part, every part but the last at least `min_part` bytes.
pub fn plan_completion(
    listed: &[(i32, String)],
    committed: &[CommittedPart],
    min_part: i64,
) -> Result<FreezePlan, S3Error> {
    if listed.is_empty() {
        return Err(s3_error!(
            MalformedXML,
            "the part list of CompleteMultipartUpload is empty"
        ));
    }
    if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(s3_error!(InvalidPartOrder));
    }
    let by_number: std::collections::HashMap<i32, &CommittedPart> =
        committed.iter().map(|p| (p.part_number, p)).collect();
    let mut md5s = Vec::with_capacity(listed.len());
    for (i, (number, etag)) in listed.iter().enumerate() {
        let part = by_number
            .get(number)
            .filter(|p| p.md5.eq_ignore_ascii_case(etag.trim_matches('"')))
            .ok_or_else(|| {
                s3_error!(
                    InvalidPart,
                    "part {number} with ETag {etag} is not a committed part of this upload"
                )
            })?;
        if i + 1 < listed.len() && part.size < min_part {
            return Err(s3_error!(
                EntityTooSmall,
                "part {number} has {} bytes; every part but the last needs at least {min_part}",
                part.size
            ));
        }
        md5s.push(part.md5.as_str());
    }
    let etag = multipart_etag(&md5s)
        .ok_or_else(|| s3_error!(InternalError, "a committed part has no MD5"))?;
    Ok(FreezePlan {
        part_numbers: listed.iter().map(|(n, _)| *n).collect(),
        etag,
        listed: serde_json::json!(listed
            .iter()
            .map(|(n, e)| (n, e.trim_matches('"').to_ascii_lowercase()))
            .collect::<Vec<_>>()),
    })
}

fn db_error(e: sqlx::Error) -> S3Error {
    tracing::warn!(error = %e, "S3 request failed on PostgreSQL");
    s3_error!(ServiceUnavailable, "the database is unavailable; retry")
}

fn pipeline_error(e: PipelineError) -> S3Error {
    match e {
        PipelineError::BodyLength { got, declared } => s3_error!(
            IncompleteBody,
            "the body has {got} bytes, Content-Length said {declared}"
        ),
        PipelineError::Body(why) => s3_error!(IncompleteBody, "reading the body failed: {why}"),
        e if e.is_invalid_path() => s3_error!(InvalidArgument, "{e}"),
        PipelineError::Db(e) => db_error(e),
        e => {
            tracing::warn!(error = %e, "S3 request failed in the pipeline");
            s3_error!(InternalError, "{e}")
        }
    }
}

fn path_conflict(key: &str, other: &str) -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("ObjectPathConflict".into()),
        format!(
            "key {key:?} and the existing object {other:?} cannot both exist: one would be a \
             directory of the other in MooseFS"
        ),
    );
    e.set_status_code(http::StatusCode::CONFLICT);
    e
}

fn completion_refused(why: &str) -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("ObjectPathConflict".into()),
        format!("the object could not be put in place: {why}"),
    );
    e.set_status_code(http::StatusCode::CONFLICT);
    e
}

/// Counts a finished operation (status from the result).
fn observed<T>(op: &'static str, started: Instant, result: S3Result<T>) -> S3Result<T> {
    let status = match &result {
        Ok(_) => 200,
        Err(e) => e.status_code().map_or(500, |s| s.as_u16()),
    };
    crate::metrics::observe(op, status, started.elapsed());
    result
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from(std::time::SystemTime::from(t))
}

/// If-Match / If-None-Match / If-(Un)Modified-Since of a GET or HEAD.
fn check_conditions(
    row: &ObjectRow,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let etag = ETag::Strong(row.etag.clone());
    let modified = std::time::SystemTime::from(row.last_modified);
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let as_system = |t: &Timestamp| std::time::SystemTime::from(time_of(t));
    if let Some(cond) = if_match {
        let ok = match cond {
            ETagCondition::Any => true,
            ETagCondition::ETag(e) => e.value() == etag.value(),
        };
        if !ok {
            return Err(s3_error!(PreconditionFailed));
        }
    } else if let Some(t) = if_unmodified_since {
        if secs(modified) > secs(as_system(t)) {
            return Err(s3_error!(PreconditionFailed));
        }
    }
    if let Some(cond) = if_none_match {
        let matches = match cond {
            ETagCondition::Any => true,
            ETagCondition::ETag(e) => e.value() == etag.value(),
        };
        if matches {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = if_modified_since {
        if secs(modified) <= secs(as_system(t)) {
            return Err(s3_error!(NotModified));
        }
    }
    Ok(())
}

fn time_of(t: &Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t.clone())
}

#[async_trait::async_trait]
impl S3 for Endpoint {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let started = Instant::now();
        let result = async {
            let who = req
                .credentials
                .as_ref()
                .map(|c| c.access_key.clone())
                .ok_or_else(|| s3_error!(AccessDenied))?;
            let allowed = crate::keys::allowed_buckets(self.pool(), &who)
                .await
                .map_err(db_error)?
                .unwrap_or_default();
            let buckets = index::buckets(self.pool()).await.map_err(db_error)?;
            let buckets = buckets
                .into_iter()
                .filter(|(name, _)| crate::keys::allows(&allowed, name))
                .map(|(name, created)| Bucket {
                    name: Some(name),
                    creation_date: Some(timestamp(created)),
                    bucket_region: None,
                })
                .collect();
            Ok(S3Response::new(ListBucketsOutput {
                buckets: Some(buckets),
                owner: Some(Owner {
                    display_name: Some(who.clone()),
                    id: Some(who),
                }),
                ..Default::default()
            }))
        }
        .await;
        observed("ListBuckets", started, result)
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let started = Instant::now();
        let result = async {
            let bucket = &req.input.bucket;
            if !crate::keys::valid_bucket_name(bucket) {
                return Err(s3_error!(InvalidBucketName));
            }
            let who = req
                .credentials
                .as_ref()
                .map(|c| c.access_key.as_str())
                .unwrap_or_default();
            if !index::create_bucket(self.pool(), bucket, who)
                .await
                .map_err(db_error)?
            {
                return Err(s3_error!(BucketAlreadyOwnedByYou));
            }
            if let Err(e) = self.pipeline().make_bucket_dir(bucket).await {
                let _ = index::delete_bucket_row(self.pool(), bucket).await;
                return Err(pipeline_error(e));
            }
            Ok(S3Response::new(CreateBucketOutput {
                location: Some(format!("/{bucket}")),
            }))
        }
        .await;
        observed("CreateBucket", started, result)
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let started = Instant::now();
        let result = async {
            self.require_bucket(&req.input.bucket).await?;
            Ok(S3Response::new(HeadBucketOutput::default()))
        }
        .await;
        observed("HeadBucket", started, result)
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let started = Instant::now();
        let result = async {
            self.require_bucket(&req.input.bucket).await?;
            Ok(S3Response::new(GetBucketLocationOutput::default()))
        }
        .await;
        observed("GetBucketLocation", started, result)
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let started = Instant::now();
        let result = async {
            let bucket = &req.input.bucket;
            match index::delete_bucket(self.pool(), bucket)
                .await
                .map_err(db_error)?
            {
                index::BucketDelete::Deleted => {}
                index::BucketDelete::NoSuchBucket => return Err(s3_error!(NoSuchBucket)),
                index::BucketDelete::NotEmpty => return Err(s3_error!(BucketNotEmpty)),
            }
            self.pipeline()
                .remove_bucket_dir(bucket)
                .await
                .map_err(pipeline_error)?;
            Ok(S3Response::with_status(
                DeleteBucketOutput::default(),
                http::StatusCode::NO_CONTENT,
            ))
        }
        .await;
        observed("DeleteBucket", started, result)
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let started = Instant::now();
        let result = async {
            let who = who(&req);
            let trailers = req.trailing_headers.clone();
            let input = req.input;
            let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
            self.require_bucket(bucket).await?;
            self.check_new_key(bucket, key).await?;
            if input.if_none_match.as_ref().is_some_and(|c| c.is_any())
                && index::object(self.pool(), bucket, key)
                    .await
                    .map_err(db_error)?
                    .is_some()
            {
                return Err(s3_error!(PreconditionFailed, "the object exists"));
            }
            match input.content_length {
                Some(n) if n >= 0 && (n as u64) <= MAX_PART_BYTES => {}
                Some(n) if n >= 0 => return Err(s3_error!(EntityTooLarge)),
                _ => return Err(s3_error!(MissingContentLength)),
            }
            let digests = Digests {
                content_md5: input.content_md5.clone(),
                crc32: input.checksum_crc32.clone(),
                crc32c: input.checksum_crc32c.clone(),
                sha1: input.checksum_sha1.clone(),
                sha256: input.checksum_sha256.clone(),
                crc64nvme: input.checksum_crc64nvme.clone(),
                algorithm: input.checksum_algorithm.clone(),
            };
            let upload = self
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
            let received = self
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
                    let _ = self
                        .pipeline()
                        .fail_upload(upload, &format!("PutObject failed: {e}"))
                        .await;
                    return Err(e);
                }
            };
            let md5 = written.md5.clone();
            let etag = self
                .finish_upload(upload, |parts| {
                    let only = parts
                        .iter()
                        .find(|p| p.part_number == 1)
                        .ok_or_else(|| s3_error!(InternalError, "the part vanished"))?;
                    Ok(FreezePlan {
                        part_numbers: vec![1],
                        etag: only.md5.clone(),
                        listed: serde_json::json!([[1, only.md5]]),
                    })
                })
                .await?;
            debug_assert_eq!(etag, md5);
            index::record_checksums(self.pool(), bucket, key, upload, &checksum)
                .await
                .map_err(db_error)?;
            Ok(S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong(etag)),
                checksum_crc32: checksum.checksum_crc32,
                checksum_crc32c: checksum.checksum_crc32c,
                checksum_sha1: checksum.checksum_sha1,
                checksum_sha256: checksum.checksum_sha256,
                checksum_crc64nvme: checksum.checksum_crc64nvme,
                size: Some(written.size as i64),
                ..Default::default()
            }))
        }
        .await;
        observed("PutObject", started, result)
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let started = Instant::now();
        let result = async {
            let input = req.input;
            self.require_bucket(&input.bucket).await?;
            let row = index::object(self.pool(), &input.bucket, &input.key)
                .await
                .map_err(db_error)?
                .ok_or_else(|| s3_error!(NoSuchKey))?;
            check_conditions(
                &row,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            )?;
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
            let body = self
                .pipeline()
                .read_object(row.inode as u32, range.start, len);
            crate::metrics::metrics().bytes_out.inc_by(len);
            Ok(S3Response::with_status(
                GetObjectOutput {
                    body: Some(StreamingBlob::wrap(body)),
                    content_length: Some(len as i64),
                    content_range: content_range.clone(),
                    accept_ranges: Some("bytes".into()),
                    e_tag: Some(ETag::Strong(row.etag.clone())),
                    last_modified: Some(timestamp(row.last_modified)),
                    content_type: row.content_type.clone(),
                    metadata: row.metadata(),
                    ..Default::default()
                },
                if content_range.is_some() {
                    http::StatusCode::PARTIAL_CONTENT
                } else {
                    http::StatusCode::OK
                },
            ))
        }
        .await;
        observed("GetObject", started, result)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let started = Instant::now();
        let result = async {
            let input = req.input;
            self.require_bucket(&input.bucket).await?;
            let row = index::object(self.pool(), &input.bucket, &input.key)
                .await
                .map_err(db_error)?
                .ok_or_else(|| s3_error!(NoSuchKey))?;
            check_conditions(
                &row,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            )?;
            Ok(S3Response::new(HeadObjectOutput {
                content_length: Some(row.size),
                accept_ranges: Some("bytes".into()),
                e_tag: Some(ETag::Strong(row.etag.clone())),
                last_modified: Some(timestamp(row.last_modified)),
                content_type: row.content_type.clone(),
                metadata: row.metadata(),
                ..Default::default()
            }))
        }
        .await;
        observed("HeadObject", started, result)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let started = Instant::now();
        let result = async {
            let input = req.input;
            self.require_bucket(&input.bucket).await?;
            self.delete_key(&input.bucket, &input.key).await?;
            Ok(S3Response::with_status(
                DeleteObjectOutput::default(),
                http::StatusCode::NO_CONTENT,
            ))
        }
        .await;
        observed("DeleteObject", started, result)
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let started = Instant::now();
        let result = async {
            let input = req.input;
            self.require_bucket(&input.bucket).await?;
            if input.delete.objects.len() > MAX_LIST as usize {
                return Err(s3_error!(
                    MalformedXML,
                    "at most {MAX_LIST} keys per DeleteObjects"
                ));
            }
            let quiet = input.delete.quiet.unwrap_or(false);
            let (mut deleted, mut errors) = (Vec::new(), Vec::new());
            for object in input.delete.objects {
                match self.delete_key(&input.bucket, &object.key).await {
                    Ok(()) if quiet => {}
                    Ok(()) => deleted.push(DeletedObject {
                        key: Some(object.key),
                        ..Default::default()
                    }),
                    Err(e) => errors.push(Error {
                        code: Some(e.code().as_str().to_string()),
                        key: Some(object.key),
                        message: e.message().map(str::to_string),
                        version_id: None,
                    }),
                }
            }
            Ok(S3Response::new(DeleteObjectsOutput {
                deleted: Some(deleted),
                errors: Some(errors),
                ..Default::default()
            }))
        }
        .await;
        observed("DeleteObjects", started, result)
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let started = Instant::now();
        let result = async {
            let input = req.input;
            self.require_bucket(&input.bucket).await?;
            let max_keys = input.max_keys.unwrap_or(MAX_LIST).clamp(0, MAX_LIST);
            let after = match &input.continuation_token {
                Some(token) => Some(
                    index::decode_token(token)
                        .ok_or_else(|| s3_error!(InvalidArgument, "invalid continuation token"))?,
                ),
                None => input.start_after.clone(),
            };
            let scope = index::ListScope {
                bucket: &input.bucket,
                prefix: input.prefix.as_deref().unwrap_or(""),
                max: max_keys,
            };
            let page = index::list(
                self.pool(),
                &scope,
                input.delimiter.as_deref().filter(|d| !d.is_empty()),
                after.as_deref(),
            )
            .await
            .map_err(db_error)?;
            let key_count = (page.objects.len() + page.prefixes.len()) as i32;
            Ok(S3Response::new(ListObjectsV2Output {
                name: Some(input.bucket),
                prefix: input.prefix,
                delimiter: input.delimiter,
                max_keys: Some(max_keys),
                key_count: Some(key_count),
                continuation_token: input.continuation_token,
                start_after: input.start_after,
                is_truncated: Some(page.next.is_some()),
                next_continuation_token: page.next.as_deref().map(index::encode_token),
                contents: Some(page.objects.iter().map(listed_object).collect()),
                common_prefixes: Some(
                    page.prefixes
                        .into_iter()
                        .map(|p| CommonPrefix { prefix: Some(p) })
                        .collect(),
                ),
                encoding_type: input.encoding_type,
                ..Default::default()
            }))
        }
        .await;
        observed("ListObjectsV2", started, result)
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let started = Instant::now();
        let result = async {
            let input = req.input;
            self.require_bucket(&input.bucket).await?;
            let max_keys = input.max_keys.unwrap_or(MAX_LIST).clamp(0, MAX_LIST);
            let scope = index::ListScope {
                bucket: &input.bucket,
                prefix: input.prefix.as_deref().unwrap_or(""),
                max: max_keys,
            };
            let page = index::list(
                self.pool(),
                &scope,
                input.delimiter.as_deref().filter(|d| !d.is_empty()),
                input.marker.as_deref().filter(|m| !m.is_empty()),
            )
            .await
            .map_err(db_error)?;
            Ok(S3Response::new(ListObjectsOutput {
                name: Some(input.bucket),
                prefix: input.prefix,
                delimiter: input.delimiter,
                marker: input.marker,
                max_keys: Some(max_keys),
                is_truncated: Some(page.next.is_some()),
                next_marker: page.next.clone(),
                contents: Some(page.objects.iter().map(listed_object).collect()),
                common_prefixes: Some(
                    page.prefixes
                        .into_iter()
                        .map(|p| CommonPrefix { prefix: Some(p) })
                        .collect(),
                ),
                encoding_type: input.encoding_type,
                ..Default::default()
            }))
        }
        .await;
        observed("ListObjects", started, result)
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let started = Instant::now();
        let result = async {
            let who = who(&req);
            let input = req.input;
            self.require_bucket(&input.bucket).await?;
            self.check_new_key(&input.bucket, &input.key).await?;
            let upload = self
                .pipeline()
                .open_upload(&NewUpload {
                    bucket: &input.bucket,
                    key: &input.key,
                    multipart: true,
                    content_type: input.content_type.as_deref(),
                    metadata: input.metadata.as_ref(),
                    who: &who,
                })
                .await
                .map_err(pipeline_error)?;
            Ok(S3Response::new(CreateMultipartUploadOutput {
                bucket: Some(input.bucket),
                key: Some(input.key),
                upload_id: Some(upload.to_string()),
                ..Default::default()
            }))
        }
        .await;
        observed("CreateMultipartUpload", started, result)
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let started = Instant::now();
        let result = async {
            let trailers = req.trailing_headers.clone();
            let input = req.input;
            if !PART_NUMBERS.contains(&input.part_number) {
                return Err(s3_error!(
                    InvalidArgument,
                    "part number must be an integer between 1 and 10000, inclusive"
                ));
            }
            let upload = self
                .require_upload(&input.bucket, &input.key, &input.upload_id)
                .await?;
            let digests = Digests {
                content_md5: input.content_md5.clone(),
                crc32: input.checksum_crc32.clone(),
                crc32c: input.checksum_crc32c.clone(),
                sha1: input.checksum_sha1.clone(),
                sha256: input.checksum_sha256.clone(),
                crc64nvme: input.checksum_crc64nvme.clone(),
                algorithm: input.checksum_algorithm.clone(),
            };
            let (written, checksum) = self
                .receive_part(
                    upload,
                    input.part_number,
                    input.body,
                    input.content_length,
                    &digests,
                    trailers,
                )
                .await?;
            Ok(S3Response::new(UploadPartOutput {
                e_tag: Some(ETag::Strong(written.md5)),
                checksum_crc32: checksum.checksum_crc32,
                checksum_crc32c: checksum.checksum_crc32c,
                checksum_sha1: checksum.checksum_sha1,
                checksum_sha256: checksum.checksum_sha256,
                checksum_crc64nvme: checksum.checksum_crc64nvme,
                ..Default::default()
            }))
        }
        .await;
        observed("UploadPart", started, result)
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let started = Instant::now();
        let result = async {
            let input = req.input;
            let upload = self
                .require_upload(&input.bucket, &input.key, &input.upload_id)
                .await?;
            if !self
                .pipeline()
                .is_receiving(upload)
                .await
                .map_err(pipeline_error)?
            {
                return Err(s3_error!(NoSuchUpload));
            }
            let max_parts = input.max_parts.unwrap_or(MAX_LIST).clamp(0, MAX_LIST);
            let marker = input.part_number_marker.unwrap_or(0);
            let parts = self
                .pipeline()
                .committed_parts(upload)
                .await
                .map_err(pipeline_error)?;
            let after: Vec<&CommittedPart> =
                parts.iter().filter(|p| p.part_number > marker).collect();
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
                        .map(|p| Part {
                            part_number: Some(p.part_number),
                            e_tag: Some(ETag::Strong(p.md5.clone())),
                            size: Some(p.size),
                            last_modified: Some(timestamp(p.committed_at)),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }))
        }
        .await;
        observed("ListParts", started, result)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let started = Instant::now();
        let result = async {
            let input = req.input;
            self.require_bucket(&input.bucket).await?;
            let max_uploads = input.max_uploads.unwrap_or(MAX_LIST).clamp(0, MAX_LIST);
            let scope = index::ListScope {
                bucket: &input.bucket,
                prefix: input.prefix.as_deref().unwrap_or(""),
                max: max_uploads,
            };
            let (uploads, truncated) = index::receiving_uploads(
                self.pool(),
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
        .await;
        observed("ListMultipartUploads", started, result)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let started = Instant::now();
        let result = async {
            let input = req.input;
            let upload = self
                .require_upload(&input.bucket, &input.key, &input.upload_id)
                .await?;
            if !self
                .pipeline()
                .abort_upload(upload)
                .await
                .map_err(pipeline_error)?
            {
                return Err(s3_error!(NoSuchUpload));
            }
            Ok(S3Response::with_status(
                AbortMultipartUploadOutput::default(),
                http::StatusCode::NO_CONTENT,
            ))
        }
        .await;
        observed("AbortMultipartUpload", started, result)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let started = Instant::now();
        let input = req.input;
        let upload = match self
            .require_upload(&input.bucket, &input.key, &input.upload_id)
            .await
        {
            Ok(u) => u,
            Err(e) => return observed("CompleteMultipartUpload", started, Err(e)),
        };
        let mut listed = Vec::new();
        for part in input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
        {
            match (part.part_number, part.e_tag) {
                (Some(n), Some(etag)) => listed.push((n, bare_etag(&etag).to_string())),
                _ => {
                    return observed(
                        "CompleteMultipartUpload",
                        started,
                        Err(s3_error!(MalformedXML, "a part without PartNumber or ETag")),
                    )
                }
            }
        }
        // The completion may take long (a copy assembly): s3s answers 200 at
        // once and keeps the connection alive with whitespace until the
        // result (or an error document) follows in the body.
        // The checks and the freeze first: their errors are ordinary S3
        // errors (an error inside the keep-alive future is a bare 500).
        let etag = match self
            .freeze_upload(upload, |parts| {
                plan_completion(&listed, parts, MIN_PART_BYTES)
            })
            .await
        {
            Ok(etag) => etag,
            Err(e) => return observed("CompleteMultipartUpload", started, Err(e)),
        };
        let endpoint = self.clone();
        let (bucket, key) = (input.bucket, input.key);
        let future = Box::pin(async move {
            let result = endpoint.place_upload(upload, etag).await.map(|etag| {
                CompleteMultipartUploadOutput {
                    bucket: Some(bucket.clone()),
                    key: Some(key.clone()),
                    e_tag: Some(ETag::Strong(etag)),
                    location: Some(format!("/{bucket}/{key}")),
                    ..Default::default()
                }
            });
            observed("CompleteMultipartUpload", started, result)
        });
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            future: Some(future),
            ..Default::default()
        }))
    }
}

impl Endpoint {
    /// Deletes a key: its row and (if still the same inode) its file, under
    /// the key's destination lock. A key that does not exist is no error.
    async fn delete_key(&self, bucket: &str, key: &str) -> S3Result<()> {
        if self.pipeline().check_key(bucket, key).is_err() {
            return Ok(());
        }
        let mut lock = self
            .pipeline()
            .lock_key(bucket, key)
            .await
            .map_err(pipeline_error)?;
        let removed = index::remove_object_in(lock.conn(), bucket, key)
            .await
            .map_err(db_error)?;
        if let Some(inode) = removed {
            self.pipeline()
                .remove_locked_file(lock, inode)
                .await
                .map_err(pipeline_error)?;
        }
        Ok(())
    }
}

fn who<T>(req: &S3Request<T>) -> String {
    req.credentials
        .as_ref()
        .map(|c| c.access_key.clone())
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: i32, size: i64, md5: &str) -> CommittedPart {
        CommittedPart {
            part_number: n,
            token: 1,
            size,
            md5: md5.into(),
            crc32c: 0,
            staging_inode: 10 + i64::from(n),
            staging_path: format!("/p{n}"),
            committed_at: chrono::Utc::now(),
        }
    }

    const A: &str = "0cc175b9c0f1b6a831c399e269772661";
    const B: &str = "92eb5ffee6ae2fec3ad71c777531578f";

    #[test]
    fn multipart_etag_is_the_md5_of_the_part_md5s() {
        // md5(md5("a") ‖ md5("b")) computed independently.
        let mut h = md5::Md5::new();
        h.update(unhex(A).unwrap());
        h.update(unhex(B).unwrap());
        assert_eq!(
            multipart_etag(&[A, B]).unwrap(),
            format!("{}-2", hex(&h.finalize()))
        );
        assert!(multipart_etag(&["zz"]).is_none());
    }

    #[test]
    fn completion_checks_follow_s3() {
        let big = MIN_PART_BYTES;
        let parts = vec![part(1, big, A), part(2, 1, B), part(3, 1, A)];
        let code = |r: Result<FreezePlan, S3Error>| r.unwrap_err().code().as_str().to_string();
        assert_eq!(code(plan_completion(&[], &parts, big)), "MalformedXML");
        assert_eq!(
            code(plan_completion(
                &[(2, B.into()), (1, A.into())],
                &parts,
                big
            )),
            "InvalidPartOrder"
        );
        assert_eq!(
            code(plan_completion(
                &[(1, A.into()), (1, A.into())],
                &parts,
                big
            )),
            "InvalidPartOrder"
        );
        assert_eq!(
            code(plan_completion(&[(1, B.into())], &parts, big)),
            "InvalidPart"
        );
        assert_eq!(
            code(plan_completion(&[(4, A.into())], &parts, big)),
            "InvalidPart"
        );
        assert_eq!(
            code(plan_completion(
                &[(2, B.into()), (3, A.into())],
                &parts,
                big
            )),
            "EntityTooSmall"
        );
        // Gaps are allowed; the last part may be small; quotes are ignored.
        let plan = plan_completion(&[(1, format!("\"{A}\"")), (3, A.into())], &parts, big).unwrap();
        assert_eq!(plan.part_numbers, vec![1, 3]);
        assert_eq!(plan.etag, multipart_etag(&[A, A]).unwrap());
    }

    #[test]
    fn base64_digests_decode() {
        // base64 of md5("a")
        assert_eq!(hex(&base64_decode("DMF1ucDxtqgxw5niaXcmYQ==").unwrap()), A);
        assert!(base64_decode("not*base64").is_none());
    }
}
