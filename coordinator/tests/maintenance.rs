//! The maintenance round on the real services with failures injected: a
//! staging directory entry that breaks the sweep (a file where a staging
//! directory belongs, a directory whose name is not a valid MooseFS name
//! once read back) and an abandoned row whose path cannot be parsed must
//! not stop the collector; staging files of no known session are left
//! alone until they are older than the orphan grace period.

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use coordinator::service::{maintenance_round, Intervals};
use moosefs::{MfsError, Name};
use testkit::*;

/// Creates an empty staging file `name` in the goal-3 staging directory;
/// returns its inode and MooseFS path.
async fn staging_file(p: &Pipeline, name: &str) -> (u32, String) {
    let dir = p.ingest.cfg.staging_dir(3);
    let dir_inode = p.ingest.mfs.mkdir_all(&dir).await.unwrap();
    let file = p
        .ingest
        .mfs
        .create(dir_inode, &Name::parse(name).unwrap(), 0o644)
        .await
        .unwrap();
    (
        file.inode,
        dir.join(&Name::parse(name).unwrap()).to_string(),
    )
}

async fn exists(p: &Pipeline, path: &str) -> bool {
    match p
        .ingest
        .mfs
        .resolve(&moosefs::MfsPath::parse(path).unwrap())
        .await
    {
        Ok(_) => true,
        Err(MfsError::NotFound(_)) => false,
        Err(e) => panic!("resolve {path}: {e}"),
    }
}

async fn record_abandoned(p: &Pipeline, inode: i64, path: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO abandoned_inodes (inode, path, session_id, part_number, fencing_token, reason)
         VALUES ($1, $2, $3, 0, 1, 'test') RETURNING id",
    )
    .bind(inode)
    .bind(path)
    .bind(uuid::Uuid::new_v4())
    .fetch_one(&p.ingest.store.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_collected_although_the_sweep_and_a_row_fail() {
    let p = Pipeline::new("gc-isolation").await;
    let staging = p.ingest.cfg.staging_root();
    let staging_inode = p.ingest.mfs.mkdir_all(&staging).await.unwrap();
    // Sweep breakers: a plain file where staging directories live, and a
    // directory whose name (255 bytes that are not UTF-8) reads back as a
    // name over 255 bytes.
    p.ingest
        .mfs
        .create(staging_inode, &Name::parse("junk").unwrap(), 0o644)
        .await
        .unwrap();
    let bad_dir = mount_dir()
        .join(staging.to_string().trim_start_matches('/'))
        .join(std::ffi::OsStr::from_bytes(&[0xFF; 255]));
    std::fs::create_dir(&bad_dir).unwrap();
    // A row that can never be collected, recorded before a good one.
    let bad_row = record_abandoned(&p, 1, &format!("/{}/x", "y".repeat(300))).await;
    let (inode, path) = staging_file(&p, &format!("{}-p0-t1", uuid::Uuid::new_v4())).await;
    let good_row = record_abandoned(&p, inode as i64, &path).await;
    // A fresh staging file of no known session (another deployment's).
    let (_, orphan) = staging_file(&p, &format!("{}-p0-t1", uuid::Uuid::new_v4())).await;

    let intervals = Intervals {
        staging_grace: Duration::ZERO,
        ..Intervals::default()
    };
    let report = format!("{:?}", maintenance_round(&p.ingest, &intervals).await);
    std::fs::remove_dir(&bad_dir).unwrap();

    assert!(
        !exists(&p, &path).await,
        "abandoned inode not collected: {report}"
    );
    let deleted: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT id, deleted_at IS NOT NULL FROM abandoned_inodes WHERE id = ANY($1) ORDER BY id",
    )
    .bind(vec![bad_row, good_row])
    .fetch_all(&p.ingest.store.pool)
    .await
    .unwrap();
    assert_eq!(deleted, vec![(bad_row, true), (good_row, true)], "{report}");
    assert!(
        exists(&p, &orphan).await,
        "a fresh file of no known session was collected"
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM abandoned_inodes WHERE path = $1")
        .bind(&orphan)
        .fetch_one(&p.ingest.store.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "a fresh file of no known session was recorded");
    for step in ["sweep", "gc"] {
        assert!(
            report.contains(step),
            "{step} errors not reported: {report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_no_known_session_is_collected_once_older_than_its_grace() {
    let p = Pipeline::new("gc-orphan").await;
    let (_, orphan) = staging_file(&p, &format!("{}-p0-t1", uuid::Uuid::new_v4())).await;
    let patient = Intervals {
        orphan_grace: Duration::from_secs(3600),
        ..Intervals::default()
    };
    let report = maintenance_round(&p.ingest, &patient).await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        exists(&p, &orphan).await,
        "collected within its grace period"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let eager = Intervals {
        orphan_grace: Duration::from_secs(1),
        ..Intervals::default()
    };
    let report = maintenance_round(&p.ingest, &eager).await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        !exists(&p, &orphan).await,
        "not collected after its grace period"
    );
    let reason: String = sqlx::query_scalar("SELECT reason FROM abandoned_inodes WHERE path = $1")
        .bind(&orphan)
        .fetch_one(&p.ingest.store.pool)
        .await
        .unwrap();
    assert_eq!(reason, "staging file of no known session");
}

/// Opens a pushed (S3) upload of `who` with one committed part whose
/// staging file is real; its creation and part commit are `age` ago.
async fn idle_s3_upload(
    p: &Pipeline,
    who: &str,
    bucket: &str,
    age_secs: f64,
) -> (uuid::Uuid, String) {
    use shared::store::{NewPushed, NewPushedSession};
    let id = uuid::Uuid::new_v4();
    let NewPushed::Created(lock) = p
        .ingest
        .store
        .create_pushed_session(&NewPushedSession {
            id,
            request_id: &format!("s3:{id}"),
            source: &format!("s3-push:{who}"),
            dest: &format!("s3/{bucket}/{id}"),
            goal: 3,
            max_receiving: None,
        })
        .await
        .unwrap()
    else {
        panic!("no bound was set")
    };
    lock.commit().await.unwrap();
    let (inode, path) = staging_file(p, &format!("{id}-p1-t1")).await;
    let pool = &p.ingest.store.pool;
    sqlx::query(
        "UPDATE upload_sessions SET created_at = now() - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(id)
    .bind(age_secs)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO s3_uploads (upload_id, bucket, key, multipart, created_by) VALUES ($1, $2, $3, true, $4)")
        .bind(id)
        .bind(bucket)
        .bind(id.to_string())
        .bind(who)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO s3_parts (upload_id, part_number, attempts, committed_token, staging_inode,
                               staging_path, size, md5, crc32c, committed_at)
         VALUES ($1, 1, 1, 1, $2, $3, 0, 'd41d8cd98f00b204e9800998ecf8427e', 0,
                 now() - make_interval(secs => $4))",
    )
    .bind(id)
    .bind(inode as i64)
    .bind(&path)
    .bind(age_secs)
    .execute(pool)
    .await
    .unwrap();
    (id, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_s3_uploads_are_aborted_and_their_parts_collected() {
    let p = Pipeline::new("s3-expiry").await;
    let pool = &p.ingest.store.pool;
    let who = format!("AK{}", rand::random::<u32>());
    let bucket = format!("b-{}", rand::random::<u32>());
    sqlx::query("INSERT INTO s3_buckets (name, created_by) VALUES ($1, $2)")
        .bind(&bucket)
        .bind(&who)
        .execute(pool)
        .await
        .unwrap();
    let day = 86400.0;
    let (old, old_path) = idle_s3_upload(&p, &who, &bucket, 8.0 * day).await;
    let (fresh, fresh_path) = idle_s3_upload(&p, &who, &bucket, 60.0).await;
    // Created long ago, but a part committed an hour ago: still active.
    let (active, active_path) = idle_s3_upload(&p, &who, &bucket, 8.0 * day).await;
    sqlx::query(
        "UPDATE s3_parts SET committed_at = now() - interval '1 hour' WHERE upload_id = $1",
    )
    .bind(active)
    .execute(pool)
    .await
    .unwrap();

    let intervals = Intervals {
        s3_upload_expiry: Duration::from_secs(7 * 86400),
        ..Intervals::default()
    };
    let report = maintenance_round(&p.ingest, &intervals).await;
    assert!(report.errors.is_empty(), "{report:?}");

    let state = |id: uuid::Uuid| async move {
        sqlx::query_scalar::<_, String>("SELECT state FROM upload_sessions WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(state(old).await, "aborted");
    assert_eq!(state(fresh).await, "receiving");
    assert_eq!(state(active).await, "receiving");
    let abandoned: Vec<(String, bool)> = sqlx::query_as(
        "SELECT path, deleted_at IS NOT NULL FROM abandoned_inodes WHERE session_id = ANY($1)",
    )
    .bind(vec![old, fresh, active])
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(abandoned, vec![(old_path.clone(), true)]);
    assert!(
        !exists(&p, &old_path).await,
        "the expired part was not collected"
    );
    assert!(exists(&p, &fresh_path).await);
    assert!(exists(&p, &active_path).await);
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE payload::text LIKE '%upload.aborted%' AND payload::text LIKE $1",
    )
    .bind(format!("%{old}%"))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(events, 1, "no upload.aborted event for the expired upload");
    // A second round finds nothing more to do.
    let report = maintenance_round(&p.ingest, &intervals).await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(state(fresh).await, "receiving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_past_its_bound_of_receiving_uploads_is_refused() {
    use shared::store::{NewPushed, NewPushedSession};
    let p = Pipeline::new("s3-cap").await;
    let source = format!("s3-push:AK{}", rand::random::<u32>());
    let mut created = Vec::new();
    let mut refused = 0;
    for _ in 0..3 {
        let id = uuid::Uuid::new_v4();
        match p
            .ingest
            .store
            .create_pushed_session(&NewPushedSession {
                id,
                request_id: &format!("s3:{id}"),
                source: &source,
                dest: &format!("s3/b/{id}"),
                goal: 3,
                max_receiving: Some(2),
            })
            .await
            .unwrap()
        {
            NewPushed::Created(lock) => {
                lock.commit().await.unwrap();
                created.push(id);
            }
            NewPushed::TooMany { receiving } => {
                assert_eq!(receiving, 2);
                refused += 1;
                let rows: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM upload_sessions WHERE id = $1")
                        .bind(id)
                        .fetch_one(&p.ingest.store.pool)
                        .await
                        .unwrap();
                assert_eq!(rows, 0, "a refused upload wrote its session");
            }
        }
    }
    assert_eq!((created.len(), refused), (2, 1));
}
