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
