//! The bucket operations: a bucket is a row of the index and a directory
//! of MooseFS (goal of the uploads, trash time 0); an access key sees the
//! buckets it is allowed ([`crate::keys`]).

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::errors::{db_error, pipeline_error};
use super::{timestamp, Endpoint, MAX_LIST};
use crate::index;

pub(super) async fn list_buckets(
    ep: &Endpoint,
    req: S3Request<ListBucketsInput>,
) -> S3Result<S3Response<ListBucketsOutput>> {
    // The permanent key, or the parent of the session key, that signed it.
    let principal = crate::keys::Principal::of(&req)?;
    let (who, allowed) = (principal.key.clone(), &principal.buckets);
    let buckets = index::buckets(ep.pool()).await.map_err(db_error)?;
    let buckets = buckets
        .into_iter()
        .filter(|(name, _)| crate::keys::allows(allowed, name))
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

pub(super) async fn create_bucket(
    ep: &Endpoint,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    let bucket = &req.input.bucket;
    if !crate::keys::valid_bucket_name(bucket) {
        return Err(s3_error!(InvalidBucketName));
    }
    let who = super::who(&req);
    if !index::create_bucket(ep.pool(), bucket, &who)
        .await
        .map_err(db_error)?
    {
        return Err(s3_error!(BucketAlreadyOwnedByYou));
    }
    if let Err(e) = ep.pipeline().make_bucket_dir(bucket).await {
        let _ = index::delete_bucket_row(ep.pool(), bucket).await;
        return Err(pipeline_error(e));
    }
    Ok(S3Response::new(CreateBucketOutput {
        location: Some(format!("/{bucket}")),
    }))
}

pub(super) async fn head_bucket(
    ep: &Endpoint,
    req: S3Request<HeadBucketInput>,
) -> S3Result<S3Response<HeadBucketOutput>> {
    ep.require_bucket(&req.input.bucket).await?;
    Ok(S3Response::new(HeadBucketOutput::default()))
}

pub(super) async fn get_bucket_location(
    ep: &Endpoint,
    req: S3Request<GetBucketLocationInput>,
) -> S3Result<S3Response<GetBucketLocationOutput>> {
    ep.require_bucket(&req.input.bucket).await?;
    Ok(S3Response::new(GetBucketLocationOutput::default()))
}

pub(super) async fn delete_bucket(
    ep: &Endpoint,
    req: S3Request<DeleteBucketInput>,
) -> S3Result<S3Response<DeleteBucketOutput>> {
    let bucket = &req.input.bucket;
    let mut deleted = index::delete_bucket(ep.pool(), bucket)
        .await
        .map_err(db_error)?;
    if matches!(deleted, index::BucketDelete::NotEmpty)
        && !index::bucket_has_objects(ep.pool(), bucket)
            .await
            .map_err(db_error)?
    {
        abort_multipart_uploads(ep, bucket).await?;
        deleted = index::delete_bucket(ep.pool(), bucket)
            .await
            .map_err(db_error)?;
    }
    match deleted {
        index::BucketDelete::Deleted => {}
        index::BucketDelete::NoSuchBucket => return Err(s3_error!(NoSuchBucket)),
        index::BucketDelete::NotEmpty => return Err(s3_error!(BucketNotEmpty)),
    }
    ep.pipeline()
        .remove_bucket_dir(bucket)
        .await
        .map_err(pipeline_error)?;
    Ok(S3Response::with_status(
        DeleteBucketOutput::default(),
        http::StatusCode::NO_CONTENT,
    ))
}

/// Aborts every multipart upload of a bucket still receiving parts: as in
/// S3, uploads never completed do not keep an otherwise empty bucket from
/// being deleted (uploads being completed, and PutObjects, still do).
async fn abort_multipart_uploads(ep: &Endpoint, bucket: &str) -> S3Result<()> {
    let scope = index::ListScope {
        bucket,
        prefix: "",
        max: MAX_LIST,
    };
    loop {
        let (uploads, truncated) = index::receiving_uploads(ep.pool(), &scope, None, None)
            .await
            .map_err(db_error)?;
        for (upload, _, _) in &uploads {
            ep.pipeline()
                .abort_upload(*upload)
                .await
                .map_err(pipeline_error)?;
        }
        if !truncated || uploads.is_empty() {
            return Ok(());
        }
    }
}
