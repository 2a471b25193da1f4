//! Multipart uploads: create, upload a part, abort, complete; and S3's
//! checks of a CompleteMultipartUpload list ([`plan_completion`]).

use std::time::Instant;

use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result};

use super::digests::{digests_of, multipart_etag, with_checksums};
use super::errors::pipeline_error;
use super::objects::check_overwrite;
use super::tagging::Tags;
use super::{observed, refuse_encryption, who, Endpoint, MIN_PART_BYTES, PART_NUMBERS};
use crate::pipeline::{CommittedPart, FreezePlan, NewUpload};

pub(super) async fn create_multipart_upload(
    ep: &Endpoint,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let who = who(&req);
    let input = req.input;
    refuse_encryption(
        input.server_side_encryption.as_ref(),
        input.sse_customer_algorithm.as_ref(),
    )?;
    let tags = Tags::from_header(input.tagging.as_deref())?.to_json();
    ep.require_bucket(&input.bucket).await?;
    ep.check_new_key(&input.bucket, &input.key).await?;
    let upload = ep
        .pipeline()
        .open_upload(&NewUpload {
            bucket: &input.bucket,
            key: &input.key,
            multipart: true,
            content_type: input.content_type.as_deref(),
            metadata: input.metadata.as_ref(),
            who: &who,
            tags: &tags,
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

pub(super) async fn upload_part(
    ep: &Endpoint,
    req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    let trailers = req.trailing_headers.clone();
    let input = req.input;
    refuse_encryption(None, input.sse_customer_algorithm.as_ref())?;
    if !PART_NUMBERS.contains(&input.part_number) {
        return Err(s3_error!(
            InvalidArgument,
            "part number must be an integer between 1 and 10000, inclusive"
        ));
    }
    let upload = ep
        .require_upload(&input.bucket, &input.key, &input.upload_id)
        .await?;
    let digests = digests_of!(input);
    let (written, checksum) = ep
        .receive_part(
            upload,
            input.part_number,
            input.body,
            input.content_length,
            &digests,
            trailers,
        )
        .await?;
    shared::metrics::metrics().s3_received(written.size);
    Ok(S3Response::new(with_checksums!(
        UploadPartOutput {
            e_tag: written.md5.map(ETag::Strong),
        },
        checksum
    )))
}

pub(super) async fn abort_multipart_upload(
    ep: &Endpoint,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let input = req.input;
    let upload = ep
        .require_upload(&input.bucket, &input.key, &input.upload_id)
        .await?;
    if !ep
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

/// The completion may take long (a copy assembly): s3s answers 200 at once
/// and keeps the connection alive with whitespace until the result (or an
/// error document) follows in the body. The checks and the freeze come
/// first: their errors are ordinary S3 errors (an error inside the
/// keep-alive future is a bare 500). The operation is counted when its
/// answer is known.
pub(super) async fn complete_multipart_upload(
    ep: &Endpoint,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    const OP: &str = "CompleteMultipartUpload";
    let started = Instant::now();
    let input = req.input;
    let frozen = async {
        let upload = ep
            .require_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        // A repeated Complete answers the first one's ETag, whatever the
        // object is now: the conditions hold for the first one only.
        if ep
            .pipeline()
            .is_receiving(upload)
            .await
            .map_err(pipeline_error)?
        {
            check_overwrite(
                ep,
                &input.bucket,
                &input.key,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
            )
            .await?;
        }
        let listed = listed_parts(input.multipart_upload)?;
        let etag = ep
            .freeze_upload(upload, |parts| {
                plan_completion(&listed, parts, MIN_PART_BYTES)
            })
            .await?;
        Ok((upload, etag))
    }
    .await;
    let (upload, etag) = match frozen {
        Ok(frozen) => frozen,
        Err(e) => return observed(OP, started, Err(e)),
    };
    let endpoint = ep.clone();
    let (bucket, key) = (input.bucket, input.key);
    let future = Box::pin(async move {
        let result = endpoint.place_upload(upload, etag).await.map(|(etag, _)| {
            CompleteMultipartUploadOutput {
                bucket: Some(bucket.clone()),
                key: Some(key.clone()),
                e_tag: Some(ETag::Strong(etag)),
                location: Some(format!("/{bucket}/{key}")),
                ..Default::default()
            }
        });
        observed(OP, started, result)
    });
    Ok(S3Response::new(CompleteMultipartUploadOutput {
        future: Some(future),
        ..Default::default()
    }))
}

/// The (PartNumber, ETag) pairs of a CompleteMultipartUpload body, ETags
/// without quotes.
fn listed_parts(body: Option<CompletedMultipartUpload>) -> S3Result<Vec<(i32, String)>> {
    body.and_then(|m| m.parts)
        .unwrap_or_default()
        .into_iter()
        .map(|part| match (part.part_number, part.e_tag) {
            (Some(n), Some(etag)) => Ok((n, etag.value().to_string())),
            _ => Err(s3_error!(MalformedXML, "a part without PartNumber or ETag")),
        })
        .collect()
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
        let (part, md5) = by_number
            .get(number)
            .and_then(|p| Some((p, p.md5.as_deref()?)))
            .filter(|(_, md5)| md5.eq_ignore_ascii_case(etag.trim_matches('"')))
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
        md5s.push(md5);
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
        checksums: serde_json::json!({}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: i32, size: i64, md5: &str) -> CommittedPart {
        CommittedPart {
            part_number: n,
            token: shared::domain::FencingToken(1),
            size,
            md5: Some(md5.into()),
            crc32c: 0,
            staging_inode: 10 + i64::from(n),
            staging_path: format!("/p{n}"),
            committed_at: chrono::Utc::now(),
        }
    }

    const A: &str = "0cc175b9c0f1b6a831c399e269772661";
    const B: &str = "92eb5ffee6ae2fec3ad71c777531578f";

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
}
