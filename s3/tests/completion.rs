//! The object row of an S3 upload is written by the transaction that marks
//! its session completed (migration 0007's trigger), whoever runs that
//! completion. Before, the endpoint wrote it after the pipeline's completion
//! had committed: each case below stops the endpoint's work where that gap
//! was, and each failed then (the object was not listed).
//!
//! Needs `scripts/stack up` (MFS_MASTER, DATABASE_URL).

use md5::Digest;
use s3::index;
use s3::pipeline::{Completed, FreezePlan, Frozen, NewUpload, Pipeline};
use uuid::Uuid;

mod common;
use common::Private;

/// An upload of one part holding `data`, frozen for its completion (what a
/// PutObject or a CompleteMultipartUpload does before the pipeline's
/// completion): its id and ETag.
async fn frozen_upload(p: &Pipeline, bucket: &str, key: &str, data: &[u8]) -> (Uuid, String) {
    let upload = p
        .open_upload(&NewUpload {
            bucket,
            key,
            multipart: false,
            content_type: Some("text/plain"),
            metadata: None,
            who: "test",
            checksum_algorithm: None,
            checksum_type: None,
            tags: &serde_json::json!([{"Key": "k", "Value": key}]),
        })
        .await
        .unwrap();
    let token = p.start_part(upload, 1).await.unwrap().expect("receiving");
    let written = p
        .write_part(upload, 1, token, data.len() as u64, data)
        .await
        .unwrap();
    p.commit_part(upload, 1, &written).await.unwrap();
    let frozen = p
        .freeze(upload, |parts| {
            Ok::<_, ()>(FreezePlan {
                part_numbers: vec![1],
                etag: parts[0].md5.clone().expect("a written part has an MD5"),
                listed: serde_json::json!([[1, parts[0].md5]]),
                checksums: serde_json::json!({"crc32": "AAAAAA=="}),
            })
        })
        .await
        .unwrap();
    let Frozen::Now { etag, .. } = frozen else {
        panic!("not frozen: {frozen:?}")
    };
    (upload, etag)
}

async fn state(p: &Pipeline, upload: Uuid) -> String {
    sqlx::query_scalar("SELECT state FROM upload_sessions WHERE id = $1")
        .bind(upload)
        .fetch_one(p.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_row_is_written_by_the_completion_transaction() {
    let t = Private::new().await;
    let p = &t.pipeline;
    let bucket = format!("b-{}", t.tag);
    assert!(index::create_bucket(p.pool(), &bucket, "test")
        .await
        .unwrap());
    p.make_bucket_dir(&bucket).await.unwrap();

    // 1. The endpoint dies right after the pipeline's completion committed
    //    (where it used to write the row next): the object is listed.
    let data = b"completed, then the endpoint died".repeat(1000);
    let (upload, etag) = frozen_upload(p, &bucket, "died/after-commit", &data).await;
    let Completed::Placed(placed) = p.complete(upload).await.unwrap() else {
        panic!("the completion failed")
    };
    let row = index::object(p.pool(), &bucket, "died/after-commit")
        .await
        .unwrap()
        .expect("the object is listed after the completion alone");
    assert_eq!(row.etag, etag);
    assert_eq!(row.inode, i64::from(placed.inode));
    assert_eq!(row.size, data.len() as i64);
    assert_eq!(row.content_type.as_deref(), Some("text/plain"));
    assert_eq!(row.last_modified, placed.finished_at);
    let checksums: serde_json::Value = sqlx::query_scalar(
        "SELECT checksums FROM s3_objects WHERE bucket = $1 AND key = 'died/after-commit'",
    )
    .bind(&bucket)
    .fetch_one(p.pool())
    .await
    .unwrap();
    assert_eq!(checksums, serde_json::json!({"crc32": "AAAAAA=="}));
    // The upload's tags (migration 0010 carries them through the trigger).
    assert_eq!(
        row.tags,
        serde_json::json!([{"Key": "k", "Value": "died/after-commit"}])
    );
    let bytes = t.mfs.read_all(placed.inode).await.unwrap();
    assert_eq!(md5::Md5::digest(&bytes), md5::Md5::digest(&data));

    // 2. The endpoint dies right after the freeze; the coordinator's
    //    reconciler (no S3 code in it) completes the session like any
    //    other: the object is listed too.
    let data2 = b"frozen, then completed by the reconciler".repeat(500);
    let (upload2, etag2) = frozen_upload(p, &bucket, "died/after-freeze", &data2).await;
    let ingest = t.args.services.ingest("reconciler", 2).await.unwrap();
    let done = ingest.complete(upload2).await.unwrap();
    assert!(
        matches!(done, shared::ingest::Completion::Completed { .. }),
        "{done:?}"
    );
    let row = index::object(p.pool(), &bucket, "died/after-freeze")
        .await
        .unwrap()
        .expect("a completion the reconciler ran lists the object");
    assert_eq!(
        (row.etag.as_str(), row.size),
        (etag2.as_str(), data2.len() as i64)
    );
    assert_eq!(
        row.tags,
        serde_json::json!([{"Key": "k", "Value": "died/after-freeze"}])
    );

    // 3. Neither: a completion whose object row cannot be written (here its
    //    upload row lost the ETag) does not complete the session either;
    //    once it can, both happen, and a repeated completion changes nothing.
    let data3 = b"all or nothing".repeat(300);
    let (upload3, etag3) = frozen_upload(p, &bucket, "neither", &data3).await;
    sqlx::query("UPDATE s3_uploads SET etag = NULL WHERE upload_id = $1")
        .bind(upload3)
        .execute(p.pool())
        .await
        .unwrap();
    let failed = p.complete(upload3).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(state(p, upload3).await, "open");
    assert!(index::object(p.pool(), &bucket, "neither")
        .await
        .unwrap()
        .is_none());
    sqlx::query("UPDATE s3_uploads SET etag = $2 WHERE upload_id = $1")
        .bind(upload3)
        .bind(&etag3)
        .execute(p.pool())
        .await
        .unwrap();
    assert!(matches!(
        p.complete(upload3).await.unwrap(),
        Completed::Placed(_)
    ));
    assert_eq!(state(p, upload3).await, "completed");
    let row = index::object(p.pool(), &bucket, "neither")
        .await
        .unwrap()
        .expect("listed once completed");
    assert!(matches!(
        p.complete(upload3).await.unwrap(),
        Completed::Placed(_)
    ));
    let again = index::object(p.pool(), &bucket, "neither")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.inode, again.last_modified),
        (row.inode, row.last_modified)
    );

    // 4. Two uploads of one key: the one completed last is the object.
    let (first, _) = frozen_upload(p, &bucket, "twice", b"first").await;
    let (second, etag_second) = frozen_upload(p, &bucket, "twice", b"second!").await;
    let Completed::Placed(placed_second) = p.complete(second).await.unwrap() else {
        panic!()
    };
    let Completed::Placed(placed_first) = p.complete(first).await.unwrap() else {
        panic!()
    };
    let row = index::object(p.pool(), &bucket, "twice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.inode, i64::from(placed_first.inode));
    assert_ne!(row.inode, i64::from(placed_second.inode));
    assert_ne!(row.etag, etag_second);

    // One event per completed session, as for any upload.
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox, jsonb_array_elements(payload->'events') AS e
          WHERE e->>'event' = 'upload.completed'",
    )
    .fetch_one(p.pool())
    .await
    .unwrap();
    assert_eq!(events, 5);

    ingest.mfs.close().await;
    t.clean_up().await;
}
