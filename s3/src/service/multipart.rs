//! Multipart uploads: create, upload a part, abort, complete; and S3's
//! checks of a CompleteMultipartUpload list ([`plan_completion`]), which
//! also makes the object's checksum from the parts' ([`super::checksums`]).

use std::time::Instant;

use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result};

use super::checksums::{self, Algorithm, UploadChecksum};
use super::digests::{digests_of, multipart_etag, with_checksums, Digests};
use super::errors::pipeline_error;
use super::objects::check_overwrite;
use super::tagging::Tags;
use super::{check_part_number, observed, refuse_encryption, who, Endpoint, MIN_PART_BYTES};
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
    let checksum = UploadChecksum::requested(
        input.checksum_algorithm.as_ref(),
        input.checksum_type.as_ref(),
    )?;
    let (checksum_algorithm, checksum_type) = checksum.columns();
    let upload = ep
        .pipeline()
        .open_upload(&NewUpload {
            bucket: &input.bucket,
            key: &input.key,
            multipart: true,
            content_type: input.content_type.as_deref(),
            metadata: input.metadata.as_ref(),
            who: &who,
            checksum_algorithm,
            checksum_type,
            tags: &tags,
        })
        .await
        .map_err(pipeline_error)?;
    Ok(S3Response::new(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload.to_string()),
        checksum_algorithm: checksum_algorithm.map(|a| ChecksumAlgorithm::from(a.to_string())),
        checksum_type: checksum.explicit.then(|| checksum.kind.dto()),
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
    check_part_number(input.part_number)?;
    let (upload, kept) = ep
        .require_upload_checksum(&input.bucket, &input.key, &input.upload_id)
        .await?;
    let digests = digests_of!(input);
    check_part_algorithm(&kept, &digests)?;
    let (written, checksum) = ep
        .receive_part(
            upload,
            input.part_number,
            input.body,
            input.content_length,
            &digests,
            trailers,
            Some(kept.algorithm),
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

/// A part of an upload created with a checksum algorithm may be sent with
/// that algorithm's checksum only (S3's `InvalidRequest`); the parts of an
/// upload that named none may carry any (each is verified).
fn check_part_algorithm(upload: &UploadChecksum, digests: &Digests) -> S3Result<()> {
    if !upload.explicit {
        return Ok(());
    }
    let named = checksums::named(digests.algorithm.as_ref(), &digests.given());
    match named.into_iter().find(|a| *a != upload.algorithm) {
        Some(other) => Err(s3_error!(
            InvalidRequest,
            "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
            upload.algorithm.key(),
            other.key()
        )),
        None => Ok(()),
    }
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
    let requested = RequestedChecksum {
        given: Checksum {
            checksum_crc32: input.checksum_crc32.clone(),
            checksum_crc32c: input.checksum_crc32c.clone(),
            checksum_sha1: input.checksum_sha1.clone(),
            checksum_sha256: input.checksum_sha256.clone(),
            checksum_crc64nvme: input.checksum_crc64nvme.clone(),
            ..Default::default()
        },
        kind: input.checksum_type.clone(),
    };
    let frozen = async {
        let (upload, kept) = ep
            .require_upload_checksum(&input.bucket, &input.key, &input.upload_id)
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
        let (etag, checksums) = ep
            .freeze_upload(upload, |parts| {
                plan_completion(&listed, parts, MIN_PART_BYTES, &kept, &requested)
            })
            .await?;
        Ok((upload, etag, checksums))
    }
    .await;
    let (upload, etag, checksums) = match frozen {
        Ok(frozen) => frozen,
        Err(e) => return observed(OP, started, Err(e)),
    };
    let endpoint = ep.clone();
    let (bucket, key) = (input.bucket, input.key);
    let future = Box::pin(async move {
        let result = endpoint.place_object(upload, etag).await.map(|etag| {
            let stored = crate::index::stored_checksum(&checksums);
            CompleteMultipartUploadOutput {
                bucket: Some(bucket.clone()),
                key: Some(key.clone()),
                e_tag: Some(ETag::Strong(etag)),
                location: Some(format!("/{bucket}/{key}")),
                checksum_crc32: stored.checksum_crc32,
                checksum_crc32c: stored.checksum_crc32c,
                checksum_sha1: stored.checksum_sha1,
                checksum_sha256: stored.checksum_sha256,
                checksum_crc64nvme: stored.checksum_crc64nvme,
                checksum_type: checksums::stored_kind(&checksums).map(|k| k.dto()),
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

/// A part as a CompleteMultipartUpload body lists it.
#[derive(Debug, Clone, Default)]
pub struct ListedPart {
    pub number: i32,
    /// Without quotes.
    pub etag: String,
    /// The part's `Checksum*` elements, if any.
    pub checksum: Checksum,
}

/// The whole-object checksum a CompleteMultipartUpload request sent
/// (`x-amz-checksum-*`, `x-amz-checksum-type`), checked against the one the
/// parts make.
#[derive(Debug, Clone, Default)]
pub struct RequestedChecksum {
    pub given: Checksum,
    pub kind: Option<ChecksumType>,
}

/// The parts of a CompleteMultipartUpload body.
fn listed_parts(body: Option<CompletedMultipartUpload>) -> S3Result<Vec<ListedPart>> {
    body.and_then(|m| m.parts)
        .unwrap_or_default()
        .into_iter()
        .map(|part| match (part.part_number, &part.e_tag) {
            (Some(number), Some(etag)) => Ok(ListedPart {
                number,
                etag: etag.value().to_string(),
                checksum: Checksum {
                    checksum_crc32: part.checksum_crc32,
                    checksum_crc32c: part.checksum_crc32c,
                    checksum_sha1: part.checksum_sha1,
                    checksum_sha256: part.checksum_sha256,
                    checksum_crc64nvme: part.checksum_crc64nvme,
                    ..Default::default()
                },
            }),
            _ => Err(s3_error!(MalformedXML, "a part without PartNumber or ETag")),
        })
        .collect()
}

/// S3's checks of a CompleteMultipartUpload list against the committed
/// parts: non-empty, strictly ascending (and 1, 2, 3, … when the upload
/// named a checksum algorithm), each (PartNumber, ETag) the committed
/// part, each part checksum listed the committed part's, every part but
/// the last at least `min_part` bytes. The plan carries the object's
/// checksum (COMPOSITE or FULL_OBJECT of the upload's algorithm), which a
/// checksum the request sent for the whole object must equal.
pub fn plan_completion(
    listed: &[ListedPart],
    committed: &[CommittedPart],
    min_part: i64,
    upload: &UploadChecksum,
    requested: &RequestedChecksum,
) -> Result<FreezePlan, S3Error> {
    if listed.is_empty() {
        return Err(s3_error!(
            MalformedXML,
            "the part list of CompleteMultipartUpload is empty"
        ));
    }
    if listed.windows(2).any(|w| w[0].number >= w[1].number) {
        return Err(s3_error!(InvalidPartOrder));
    }
    if upload.explicit && listed.iter().zip(1..).any(|(p, n)| p.number != n) {
        return Err(s3_error!(
            InvalidPartOrder,
            "an upload with a checksum algorithm needs its parts numbered 1, 2, 3, …"
        ));
    }
    let by_number: std::collections::HashMap<i32, &CommittedPart> =
        committed.iter().map(|p| (p.part_number, p)).collect();
    let mut md5s = Vec::with_capacity(listed.len());
    let mut sums = Vec::with_capacity(listed.len());
    for (i, l) in listed.iter().enumerate() {
        let (number, etag) = (l.number, &l.etag);
        let (part, md5) = by_number
            .get(&number)
            .and_then(|p| Some((p, p.md5.as_deref()?)))
            .filter(|(_, md5)| md5.eq_ignore_ascii_case(etag.trim_matches('"')))
            .ok_or_else(|| {
                s3_error!(
                    InvalidPart,
                    "part {number} with ETag {etag} is not a committed part of this upload"
                )
            })?;
        check_listed_checksum(l, part, upload)?;
        if i + 1 < listed.len() && part.size < min_part {
            return Err(s3_error!(
                EntityTooSmall,
                "part {number} has {} bytes; every part but the last needs at least {min_part}",
                part.size
            ));
        }
        md5s.push(md5);
        sums.push(part.checksum.as_deref().map(|c| (c, part.size as u64)));
    }
    let etag = multipart_etag(&md5s)
        .ok_or_else(|| s3_error!(InternalError, "a committed part has no MD5"))?;
    // A part without a checksum (committed before they were kept): the
    // object has none.
    let object_checksum = sums
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .and_then(|sums| upload.algorithm.combine(upload.kind, &sums));
    check_requested(object_checksum.as_deref(), upload, requested)?;
    Ok(FreezePlan {
        part_numbers: listed.iter().map(|l| l.number).collect(),
        etag,
        listed: serde_json::json!(listed
            .iter()
            .map(|l| (l.number, l.etag.trim_matches('"').to_ascii_lowercase()))
            .collect::<Vec<_>>()),
        checksums: match &object_checksum {
            Some(value) => checksums::stored_json(upload.algorithm, upload.kind, value),
            None => serde_json::json!({}),
        },
    })
}

/// A part checksum listed in CompleteMultipartUpload must be the committed
/// part's (`InvalidPart`, as S3 answers). Of an upload that named no
/// algorithm, only a listed checksum of the kept algorithm is compared
/// (its parts may have been sent with any).
fn check_listed_checksum(
    listed: &ListedPart,
    part: &CommittedPart,
    upload: &UploadChecksum,
) -> S3Result<()> {
    for a in Algorithm::ALL {
        let Some(given) = a.get(&listed.checksum) else {
            continue;
        };
        let matches = a == upload.algorithm && part.checksum.as_deref() == Some(given.as_str());
        if !matches && (upload.explicit || a == upload.algorithm) {
            return Err(s3_error!(
                InvalidPart,
                "part {}: the {} checksum listed is not the part's",
                listed.number,
                a.name()
            ));
        }
    }
    Ok(())
}

/// The whole-object checksum a Complete request sent: of the upload's
/// algorithm, equal to the object's (`BadDigest`); its type the upload's.
fn check_requested(
    object: Option<&str>,
    upload: &UploadChecksum,
    requested: &RequestedChecksum,
) -> S3Result<()> {
    if let Some(kind) = &requested.kind {
        if !kind.as_str().eq_ignore_ascii_case(upload.kind.name()) {
            return Err(s3_error!(
                InvalidRequest,
                "The upload was created using the {} checksum mode. The complete request must \
                 use the same checksum mode.",
                upload.kind.name()
            ));
        }
    }
    for a in Algorithm::ALL {
        let Some(given) = a.get(&requested.given) else {
            continue;
        };
        if a != upload.algorithm && upload.explicit {
            return Err(s3_error!(
                InvalidRequest,
                "The upload was created using the {} checksum algorithm; the complete request \
                 sent a {} checksum.",
                upload.algorithm.name(),
                a.name()
            ));
        }
        if a == upload.algorithm && object != Some(given.as_str()) {
            return Err(s3_error!(
                BadDigest,
                "the x-amz-checksum-{} you specified did not match the object's",
                a.key()
            ));
        }
    }
    Ok(())
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
            checksum: None,
        }
    }

    fn listed(n: i32, etag: &str) -> ListedPart {
        ListedPart {
            number: n,
            etag: etag.into(),
            checksum: Checksum::default(),
        }
    }

    fn plan(list: &[ListedPart], parts: &[CommittedPart], min: i64) -> Result<FreezePlan, S3Error> {
        plan_completion(
            list,
            parts,
            min,
            &UploadChecksum::DEFAULT,
            &RequestedChecksum::default(),
        )
    }

    fn code(r: Result<FreezePlan, S3Error>) -> String {
        r.unwrap_err().code().as_str().to_string()
    }

    const A: &str = "0cc175b9c0f1b6a831c399e269772661";
    const B: &str = "92eb5ffee6ae2fec3ad71c777531578f";

    #[test]
    fn completion_checks_follow_s3() {
        let big = MIN_PART_BYTES;
        let parts = vec![part(1, big, A), part(2, 1, B), part(3, 1, A)];
        assert_eq!(code(plan(&[], &parts, big)), "MalformedXML");
        assert_eq!(
            code(plan(&[listed(2, B), listed(1, A)], &parts, big)),
            "InvalidPartOrder"
        );
        assert_eq!(
            code(plan(&[listed(1, A), listed(1, A)], &parts, big)),
            "InvalidPartOrder"
        );
        assert_eq!(code(plan(&[listed(1, B)], &parts, big)), "InvalidPart");
        assert_eq!(code(plan(&[listed(4, A)], &parts, big)), "InvalidPart");
        assert_eq!(
            code(plan(&[listed(2, B), listed(3, A)], &parts, big)),
            "EntityTooSmall"
        );
        // Gaps are allowed; the last part may be small; quotes are ignored.
        let p = plan(&[listed(1, &format!("\"{A}\"")), listed(3, A)], &parts, big).unwrap();
        assert_eq!(p.part_numbers, vec![1, 3]);
        assert_eq!(p.etag, multipart_etag(&[A, A]).unwrap());
        // Parts without a kept checksum: the object has none.
        assert_eq!(p.checksums, serde_json::json!({}));
    }

    fn sha256(data: &[u8]) -> String {
        let mut h = Algorithm::Sha256.hasher();
        h.update(data);
        h.finalize().checksum_sha256.unwrap()
    }

    #[test]
    fn completion_makes_and_checks_the_object_checksum() {
        let sha = |n: i32, data: &[u8], md5: &str| CommittedPart {
            checksum: Some(sha256(data)),
            ..part(n, data.len() as i64, md5)
        };
        // s3-tests' test_multipart_checksum_sha256: 1024 'A's.
        let parts = vec![sha(1, &[b'A'; 1024], A)];
        let upload =
            UploadChecksum::requested(Some(&ChecksumAlgorithm::from("SHA256".to_string())), None)
                .unwrap();
        let composite = "Ok6Cs5b96ux6+MWQkJO7UBT5sKPBeXBLwvj/hK89smg=-1";
        let with = |part_sum: Option<&str>, whole: Option<&str>| {
            let mut l = listed(1, A);
            l.checksum.checksum_sha256 = part_sum.map(str::to_string);
            let requested = RequestedChecksum {
                given: Checksum {
                    checksum_sha256: whole.map(str::to_string),
                    ..Default::default()
                },
                kind: None,
            };
            plan_completion(&[l], &parts, 0, &upload, &requested)
        };
        let ok = with(Some(&sha256(&[b'A'; 1024])), Some(composite)).unwrap();
        assert_eq!(
            ok.checksums,
            serde_json::json!({"sha256": composite, "type": "COMPOSITE"})
        );
        assert!(with(None, None).is_ok());
        assert_eq!(code(with(None, Some("bad"))), "BadDigest");
        assert_eq!(code(with(Some(&sha256(b"other")), None)), "InvalidPart");
        // Another algorithm's checksum, listed or for the whole object.
        let mut l = listed(1, A);
        l.checksum.checksum_crc32 = Some("AAAAAA==".into());
        assert_eq!(
            code(plan_completion(
                &[l],
                &parts,
                0,
                &upload,
                &RequestedChecksum::default()
            )),
            "InvalidPart"
        );
        let crc = RequestedChecksum {
            given: Checksum {
                checksum_crc32: Some("AAAAAA==".into()),
                ..Default::default()
            },
            kind: None,
        };
        assert_eq!(
            code(plan_completion(&[listed(1, A)], &parts, 0, &upload, &crc)),
            "InvalidRequest"
        );
        let full = RequestedChecksum {
            kind: Some(ChecksumType::from("FULL_OBJECT".to_string())),
            ..Default::default()
        };
        assert_eq!(
            code(plan_completion(&[listed(1, A)], &parts, 0, &upload, &full)),
            "InvalidRequest"
        );
        // With a checksum algorithm, parts are 1, 2, 3, …
        let two = vec![sha(2, b"x", A)];
        assert_eq!(
            code(plan_completion(
                &[listed(2, A)],
                &two,
                0,
                &upload,
                &RequestedChecksum::default()
            )),
            "InvalidPartOrder"
        );
    }
}
