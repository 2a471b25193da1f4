//! The steps every write shares: a request body received as one part
//! attempt (written, its digests checked, committed), and an upload frozen
//! and completed into its object.

use std::sync::Arc;

use futures::TryStreamExt;
use s3s::dto::StreamingBlob;
use s3s::{s3_error, S3Error, S3Result};
use uuid::Uuid;

use super::checksums::Algorithm;
use super::digests::Digests;
use super::errors::{completion_refused, pipeline_error};
use super::{Endpoint, MAX_PART_BYTES};
use crate::pipeline::{
    CommittedPart, Completed, FreezePlan, Frozen, PartCommitted, SourceObject, WrittenPart,
};

/// A completed upload's object: its ETag and last-modified time.
pub(super) type Placement = (String, chrono::DateTime<chrono::Utc>);

/// A frozen upload: its ETag and the object's checksums (as stored).
pub(super) type FrozenUpload = (String, serde_json::Value);

impl Endpoint {
    /// Writes a request body as an attempt of one part and commits it: the
    /// part's fencing token, a fresh staging inode written and verified,
    /// the digests the client sent checked, the part row committed. Only
    /// then is the ETag (the body's MD5) answered. (The caller counts a
    /// client's body as received bytes; an UploadPartCopy's is not one.)
    /// `keep`: the upload's checksum algorithm, computed whatever the
    /// client sent and committed with the part.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn receive_part(
        &self,
        upload: Uuid,
        part_number: i32,
        body: Option<StreamingBlob>,
        content_length: Option<i64>,
        digests: &Digests,
        trailers: Option<s3s::TrailingHeaders>,
        keep: Option<Algorithm>,
    ) -> S3Result<(WrittenPart, s3s::dto::Checksum)> {
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
        let hasher = Arc::new(std::sync::Mutex::new(digests.hasher(keep)));
        let hashing = hasher.clone();
        let stream = body
            .inspect_ok(move |b| hashing.lock().expect("hasher").update(b))
            .map_err(|e| std::io::Error::other(e.to_string()));
        let reader = tokio_util::io::StreamReader::new(stream);
        let mut written = self
            .pipeline()
            .write_part(upload, part_number, token, declared, reader)
            .await
            .map_err(pipeline_error)?;
        let checksum = std::mem::take(&mut *hasher.lock().expect("hasher")).finalize();
        let md5 = written.md5.as_deref().unwrap_or_default();
        if let Err(e) = digests.verify(md5, &checksum, trailers) {
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
        written.checksum = keep.and_then(|a| a.get(&checksum).cloned());
        self.commit_attempt(upload, part_number, &written).await?;
        Ok((written, checksum))
    }

    /// Makes the file of `source` by reference (a snapshot, no data moved)
    /// the attempt of part 1 of `upload` and commits it: CopyObject's part.
    pub(super) async fn receive_snapshot(
        &self,
        upload: Uuid,
        source: &SourceObject,
    ) -> S3Result<WrittenPart> {
        let token = self
            .pipeline()
            .start_part(upload, 1)
            .await
            .map_err(pipeline_error)?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let written = self
            .pipeline()
            .snapshot_part(upload, 1, token, source)
            .await
            .map_err(pipeline_error)?;
        self.commit_attempt(upload, 1, &written).await?;
        Ok(written)
    }

    /// Commits a written part attempt: an error unless it is the part now.
    async fn commit_attempt(
        &self,
        upload: Uuid,
        part_number: i32,
        written: &WrittenPart,
    ) -> S3Result<()> {
        match self
            .pipeline()
            .commit_part(upload, part_number, written)
            .await
            .map_err(pipeline_error)?
        {
            PartCommitted::Committed => Ok(()),
            PartCommitted::Superseded => Err(s3_error!(
                OperationAborted,
                "a newer upload of part {part_number} committed first; this one was discarded"
            )),
            PartCommitted::UploadClosed => Err(s3_error!(NoSuchUpload)),
        }
    }

    /// Freezes an upload with `plan` chosen by `check` and completes it
    /// through the pipeline (which records the object). The object's ETag
    /// and time.
    pub(super) async fn finish_upload<F>(&self, upload: Uuid, check: F) -> S3Result<Placement>
    where
        F: Fn(&[CommittedPart]) -> Result<FreezePlan, S3Error>,
    {
        let (etag, _) = self.freeze_upload(upload, check).await?;
        self.place_upload(upload, etag).await
    }

    /// The S3 checks and the freeze (fast: one transaction); the ETag and
    /// the object's checksums.
    pub(super) async fn freeze_upload<F>(&self, upload: Uuid, check: F) -> S3Result<FrozenUpload>
    where
        F: Fn(&[CommittedPart]) -> Result<FreezePlan, S3Error>,
    {
        let frozen = self
            .pipeline()
            .freeze(upload, &check)
            .await
            .map_err(pipeline_error)?;
        let frozen = match frozen {
            Frozen::Now { etag, checksums } => (etag, checksums),
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
                match check(&parts) {
                    Ok(plan) if plan.listed == listed => (etag, plan.checksums),
                    _ => return Err(s3_error!(NoSuchUpload)),
                }
            }
        };
        Ok(frozen)
    }

    /// The pipeline's completion of a frozen upload; its transaction wrote
    /// the object row (migration 0007), so a crash after it loses nothing.
    pub(super) async fn place_upload(&self, upload: Uuid, etag: String) -> S3Result<Placement> {
        match self
            .pipeline()
            .complete(upload)
            .await
            .map_err(pipeline_error)?
        {
            Completed::Placed(placed) => Ok((etag, placed.finished_at)),
            Completed::Failed(why) => Err(completion_refused(&why)),
        }
    }
}
