//! Hostile or broken HTTP sources through the real pipeline (coordinator and
//! worker apps in-process, or the binaries where the test sets their part
//! limits through the environment; PostgreSQL, RabbitMQ, Redis, MooseFS),
//! each served by a loopback origin the test names in the allowed source
//! hosts: a source that changes between part reads, one that answers a
//! wrong `Content-Range`, and one that drips bytes past the part deadline.

mod origin_support;
use std::time::{Duration, SystemTime};

use origin_support::{Behaviour, Origin};
use rand::{RngCore, SeedableRng};
use testkit::{md5_file, md5_hex, Pipeline, RunningApp};

const MIB: usize = 1 << 20;
const HOSTS: (&str, &str) = ("INGEST_HTTP_SOURCE_HOSTS", "127.0.0.1");

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// A coordinator and a worker in-process whose sources may be on loopback;
/// `concurrency` parts at a time.
async fn start_apps(p: &Pipeline, concurrency: u16) -> (RunningApp, RunningApp) {
    let mut coordinator = p.coordinator_config();
    coordinator.services.http_source_hosts = vec![HOSTS.1.to_string()];
    let mut worker = p.worker_config("w1");
    worker.services.http_source_hosts = vec![HOSTS.1.to_string()];
    worker.concurrency = concurrency;
    (
        testkit::apps::start_coordinator(coordinator).await,
        testkit::apps::start_worker(worker).await,
    )
}

/// Submits one HTTP source with 1 MiB parts and waits for its session.
async fn ingest_one(p: &Pipeline, url: &str, dest: &str) -> shared::store::Session {
    let mut req = p.request(dest, url, dest);
    req.part_size = Some(MIB as u64);
    p.submit(std::slice::from_ref(&req)).await;
    p.wait_finished(&[req.request_id.clone()], Duration::from_secs(120))
        .await
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_that_changes_between_part_reads_fails_the_session() {
    let p = Pipeline::new("src-changed").await;
    let origin = Origin::start(
        "127.0.0.1",
        random_bytes(3 * MIB + 5, 41),
        Behaviour::ChangeAfterFirstGet,
    )
    .await;
    // One part at a time: the first part read sees the old body, the
    // others the new one.
    let _apps = start_apps(&p, 1).await;
    let session = ingest_one(&p, &origin.url("/changing.bin"), "changing.bin").await;
    assert_eq!(session.state, "failed", "a mixed file was accepted");
    let error = session.error.unwrap_or_default();
    assert!(error.contains("changed"), "{error}");
    assert!(
        !p.mount_path("changing.bin").exists(),
        "no file may be put in place"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_content_range_fails_the_session() {
    let p = Pipeline::new("src-range").await;
    let origin = Origin::start(
        "127.0.0.1",
        random_bytes(2 * MIB + MIB / 2, 42),
        Behaviour::WrongContentRange,
    )
    .await;
    let _apps = start_apps(&p, 8).await;
    let session = ingest_one(&p, &origin.url("/shifted.bin"), "shifted.bin").await;
    assert_eq!(
        session.state, "failed",
        "a file of misplaced ranges was accepted"
    );
    let error = session.error.unwrap_or_default();
    assert!(error.contains("Content-Range"), "{error}");
    assert!(!p.mount_path("shifted.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dripping_source_is_abandoned_at_its_deadline_and_retried() {
    const DEADLINE_SECS: u64 = 4;
    let p = Pipeline::new("src-drip").await;
    let data = random_bytes(2 * MIB + 17, 43);
    let md5 = md5_hex(&data);
    // The first read: 256 KiB at once (a chunk lock is taken and blocks
    // are sent), then a byte a second. Later reads are fast.
    let origin = Origin::start(
        "127.0.0.1",
        data,
        Behaviour::DripFirstGet {
            fast: 256 << 10,
            every: Duration::from_secs(1),
        },
    )
    .await;
    // No garbage collection meanwhile: the abandoned staging inode is
    // looked at below.
    p.spawn_coordinator(&[HOSTS, ("INGEST_MAINTENANCE_SECS", "3600")]);
    let deadline = DEADLINE_SECS.to_string();
    p.spawn_worker(
        "w1",
        &[
            HOSTS,
            ("WORKER_PART_DEADLINE_SECS", deadline.as_str()),
            ("WORKER_MIN_SOURCE_BYTES_PER_SEC", "65536"),
            ("WORKER_SOURCE_RATE_WINDOW_SECS", "2"),
        ],
    );
    let mut req = p.request("drip", &origin.url("/drip.bin"), "drip.bin");
    req.part_size = None;
    p.submit(std::slice::from_ref(&req)).await;
    let session = p
        .wait_finished(&[req.request_id.clone()], Duration::from_secs(60))
        .await
        .remove(0);
    assert_eq!(session.state, "completed", "{:?}", session.error);
    assert_eq!(md5_file(&p.mount_path("drip.bin")), md5);

    // The first attempt ended within the deadline (plus slack), and was
    // recorded abandoned because of the slow source.
    let abandoned: Vec<(i64, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT inode, reason, recorded_at FROM abandoned_inodes WHERE session_id = $1",
    )
    .bind(session.id)
    .fetch_all(&p.ingest.store.pool)
    .await
    .unwrap();
    let [(inode, reason, recorded_at)] = abandoned.as_slice() else {
        panic!("expected one abandoned attempt: {abandoned:?}");
    };
    assert_eq!(reason, "source too slow");
    let first_get = origin.get_times()[0];
    let took = SystemTime::from(*recorded_at)
        .duration_since(first_get)
        .unwrap_or_default();
    assert!(
        took <= Duration::from_secs(DEADLINE_SECS + 3),
        "the slow attempt took {took:?}"
    );
    assert!(origin.get_times().len() >= 2, "the part was read again");

    // Its chunk lock was released: a new write lock is granted at once.
    let mfs = &p.ingest.mfs;
    let lock = tokio::time::timeout(
        Duration::from_secs(10),
        mfs.write_chunk(*inode as u32, 0, 0),
    )
    .await
    .expect("the abandoned chunk is still locked")
    .expect("write lock on the abandoned chunk");
    mfs.write_chunk_end(lock.chunk_id, *inode as u32, 0, lock.file_length)
        .await
        .unwrap();
}
