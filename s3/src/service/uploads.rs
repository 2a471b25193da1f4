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
    CommitAndFreeze, CommittedPart, Completed, FreezePlan, Frozen, PartCommitted, SourceObject,
    WrittenPart,
};
use shared::domain::FencingToken;

/// The error of a part attempt that was not committed.
fn not_committed(part_number: i32, outcome: PartCommitted) -> S3Error {
    match outcome {
        PartCommitted::Superseded => s3_error!(
            OperationAborted,
            "a newer upload of part {part_number} committed first; this one was discarded"
        ),
        PartCommitted::UploadClosed | PartCommitted::Committed => s3_error!(NoSuchUpload),
    }
}

/// A request body's declared length, within a part's bound.
pub(super) fn declared_length(content_length: Option<i64>) -> S3Result<u64> {
    match content_length {
        Some(n) if n >= 0 && (n as u64) <= MAX_PART_BYTES => Ok(n as u64),
        Some(n) if n >= 0 => Err(s3_error!(EntityTooLarge)),
        _ => Err(s3_error!(MissingContentLength)),
    }
}

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
        let declared = declared_length(content_length)?;
        let body = body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let token = self
            .pipeline()
            .start_part(upload, part_number)
            .await
            .map_err(pipeline_error)?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let (written, checksum) = self
            .write_attempt(
                upload,
                part_number,
                token,
                body,
                declared,
                digests,
                trailers,
                keep,
            )
            .await?;
        self.commit_attempt(upload, part_number, &written).await?;
        Ok((written, checksum))
    }

    /// Writes a request body as attempt `token` of part `part_number`: a
    /// fresh staging inode written and verified, the digests the client
    /// sent checked (the inode recorded as abandoned if they do not match).
    /// Not committed yet. `keep`: see [`Endpoint::receive_part`].
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_attempt(
        &self,
        upload: Uuid,
        part_number: i32,
        token: FencingToken,
        body: StreamingBlob,
        declared: u64,
        digests: &Digests,
        trailers: Option<s3s::TrailingHeaders>,
        keep: Option<Algorithm>,
    ) -> S3Result<(WrittenPart, s3s::dto::Checksum)> {
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
            other => Err(not_committed(part_number, other)),
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
        self.frozen_answer(upload, frozen, check).await
    }

    /// Commits the written attempt of a single-part upload's part and
    /// freezes the upload with `check`'s plan, in one transaction (see
    /// [`crate::pipeline::Pipeline::commit_and_freeze`]); then completes
    /// it as [`Endpoint::finish_upload`] does.
    pub(super) async fn commit_and_finish<F>(
        &self,
        upload: Uuid,
        part_number: i32,
        written: &WrittenPart,
        check: F,
    ) -> S3Result<String>
    where
        F: Fn(&[CommittedPart]) -> Result<FreezePlan, S3Error>,
    {
        let committed = self
            .pipeline()
            .commit_and_freeze(upload, part_number, written, &check)
            .await
            .map_err(pipeline_error)?;
        let frozen = match committed {
            CommitAndFreeze::Frozen(frozen) => frozen,
            CommitAndFreeze::NotCommitted(outcome) => {
                return Err(not_committed(part_number, outcome))
            }
        };
        let (etag, _) = self.frozen_answer(upload, frozen, check).await?;
        self.place_object(upload, etag).await
    }

    /// The answer to a freeze: the ETag and the object's checksums, or the
    /// error a refused or gone upload gets.
    async fn frozen_answer<F>(
        &self,
        upload: Uuid,
        frozen: Frozen<S3Error>,
        check: F,
    ) -> S3Result<FrozenUpload>
    where
        F: Fn(&[CommittedPart]) -> Result<FreezePlan, S3Error>,
    {
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

    /// [`Endpoint::place_upload`] for an answer that needs only the ETag:
    /// one read of the session fewer.
    pub(super) async fn place_object(&self, upload: Uuid, etag: String) -> S3Result<String> {
        match self
            .pipeline()
            .complete_in_place(upload)
            .await
            .map_err(pipeline_error)?
        {
            Ok(()) => Ok(etag),
            Err(why) => Err(completion_refused(&why)),
        }
    }
}
