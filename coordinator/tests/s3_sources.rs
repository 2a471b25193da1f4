//! `s3://` sources against an S3 server no one here wrote: `s3s-fs` from
//! crates.io (installed by `scripts/stack up`, found through `S3S_FS`),
//! started by each test on loopback with its own directory and keys, and
//! named to the coordinator and worker as their store (`AWS_ENDPOINT_URL`
//! and the `AWS_*` credentials). The pipeline runs in-process on the real
//! services: a batch of small and multi-part objects ingests with the
//! objects' md5; an object changed mid-ingest fails its session with the
//! ETag reason; a missing object, an endpoint not allowed and wrong
//! credentials are refused at submit with a clear 422 and nothing stored.
//!
//! s3s-fs keeps each object as a file under `<root>/<bucket>/<key>` and
//! answers its md5 as the ETag; the tests put and replace objects there,
//! a new version renamed into place in one step.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use shared::config::S3SourceArgs;
use shared::source::{Source, SourceConfig, SourceError};
use testkit::{md5_file, md5_hex, Pipeline, RunningApp};
use tokio::io::AsyncReadExt;

const MIB: usize = 1 << 20;
const BUCKET: &str = "ingest-src";

/// The s3s-fs binary: `S3S_FS` (what `scripts/stack up` prints), else
/// where the stack installs it, else `s3s-fs` on the PATH.
fn s3s_fs() -> PathBuf {
    let candidates = [
        std::env::var_os("S3S_FS").map(PathBuf::from),
        Some(PathBuf::from("/var/tmp/mfs-ingest-tools/bin/s3s-fs")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return c;
        }
    }
    let on_path = Command::new("s3s-fs").arg("--version").output();
    assert!(
        on_path.is_ok_and(|o| o.status.success()),
        "s3s-fs not found: run `scripts/stack up` (it installs s3s-fs into /var/tmp/mfs-ingest-tools and prints S3S_FS)"
    );
    PathBuf::from("s3s-fs")
}

/// An s3s-fs process on a free loopback port, stopped and removed on drop.
struct S3Server {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
    key_id: String,
    secret: String,
}

impl S3Server {
    async fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data").join(BUCKET)).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let key_id = format!("AK{:016X}", rand::random::<u64>());
        let secret = format!("{:032x}", rand::random::<u128>());
        // A port free a moment ago; taken meanwhile, the server exits and
        // another is tried.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = std::fs::File::create(dir.path().join("s3s-fs.log")).unwrap();
            let mut child = Command::new(s3s_fs())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &key_id, "--secret-key", &secret])
                .arg(dir.path().join("data"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start s3s-fs");
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return S3Server {
                        child,
                        dir,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        key_id,
                        secret,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "s3s-fs did not start (log: {})",
            std::fs::read_to_string(dir.path().join("s3s-fs.log")).unwrap_or_default()
        );
    }

    fn object_path(&self, key: &str) -> PathBuf {
        self.dir.path().join("data").join(BUCKET).join(key)
    }

    /// Puts (or replaces) an object in one step; returns its md5.
    fn put(&self, key: &str, data: &[u8]) -> String {
        let tmp = self
            .dir
            .path()
            .join("tmp")
            .join(format!("{:x}", rand::random::<u64>()));
        std::fs::write(&tmp, data).unwrap();
        let path = self.object_path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        md5_hex(data)
    }

    fn delete(&self, key: &str) {
        std::fs::remove_file(self.object_path(key)).unwrap();
    }

    /// The settings naming this server as the default store.
    fn args(&self) -> S3SourceArgs {
        S3SourceArgs {
            enabled: true,
            endpoint: Some(self.endpoint.clone()),
            endpoints: Vec::new(),
            region: "us-east-1".into(),
            access_key_id: Some(self.key_id.clone()),
            secret_access_key: Some(self.secret.clone()),
            session_token: None,
        }
    }

    fn source_config(&self) -> SourceConfig {
        SourceConfig::new(Vec::new())
            .with_s3(&self.args().settings())
            .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// `s3://BUCKET/<key>` with the key percent-encoded.
fn url(key: &str) -> String {
    let encoded: String = key
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("s3://{BUCKET}/{encoded}")
}

/// A coordinator (and, with `concurrency`, a worker) in-process reading
/// s3:// sources from `s3`.
async fn start_apps(
    p: &Pipeline,
    s3: &S3SourceArgs,
    concurrency: Option<u16>,
) -> (RunningApp, Option<RunningApp>) {
    let mut coordinator = p.coordinator_config();
    coordinator.services.s3_sources = s3.clone();
    let worker = match concurrency {
        Some(n) => {
            let mut worker = p.worker_config("w1");
            worker.services.s3_sources = s3.clone();
            worker.concurrency = n;
            Some(testkit::apps::start_worker(worker).await)
        }
        None => None,
    };
    (testkit::apps::start_coordinator(coordinator).await, worker)
}

async fn read_all(mut r: shared::source::SourceReader) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_s3_objects_ingests_with_the_objects_md5() {
    let s3 = S3Server::start().await;
    let p = Pipeline::new("s3src-batch").await;
    // (key, size, part size): small single-part objects, and multi-part
    // ones in 1 MiB parts, one ending mid-part.
    let objects: &[(&str, usize, Option<u64>)] = &[
        ("one-byte.bin", 1, None),
        ("small/4k.bin", 4096, None),
        ("small/100k.bin", 100_000, None),
        ("odd names/a b?c#d%e+f.bin", 300_000, None),
        ("deep/er/still/1m.bin", MIB, None),
        ("multi/3m.bin", 3 * MIB, Some(MIB as u64)),
        ("multi/5m-plus.bin", 5 * MIB + 12_345, Some(MIB as u64)),
    ];
    let mut requests = Vec::new();
    let mut md5s = Vec::new();
    for (i, (key, size, part_size)) in objects.iter().enumerate() {
        md5s.push(s3.put(key, &random_bytes(*size, 100 + i as u64)));
        let mut req = p.request(&format!("o{i}"), &url(key), &format!("in/{i}.bin"));
        req.part_size = *part_size;
        requests.push(req);
    }
    let _apps = start_apps(&p, &s3.args(), Some(4)).await;
    p.submit(&requests).await;
    let ids: Vec<String> = requests.iter().map(|r| r.request_id.clone()).collect();
    let sessions = p.wait_finished(&ids, Duration::from_secs(180)).await;
    for (i, req) in requests.iter().enumerate() {
        let s = sessions
            .iter()
            .find(|s| s.request_id == req.request_id)
            .unwrap();
        assert_eq!(
            (s.state.as_str(), s.error.as_deref()),
            ("completed", None),
            "{}",
            req.source
        );
        assert_eq!(s.source, req.source);
        assert_eq!(s.size, objects[i].1 as i64);
        assert_eq!(
            md5_file(&p.mount_path(&req.dest)),
            md5s[i],
            "{}: the bytes in MooseFS differ from the object's",
            req.source
        );
        let validator: Option<String> =
            sqlx::query_scalar("SELECT source_validator FROM upload_sessions WHERE id = $1")
                .bind(s.id)
                .fetch_one(&p.ingest.store.pool)
                .await
                .unwrap();
        assert_eq!(
            validator.unwrap_or_default(),
            format!("etag:\"{}\"", md5s[i]),
            "the session is pinned to the object's ETag"
        );
    }
    let parts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM upload_parts p JOIN upload_sessions s ON s.id = p.session_id
         WHERE s.request_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&p.ingest.store.pool)
    .await
    .unwrap();
    assert_eq!(parts, 5 + 3 + 6, "single-part objects and 1 MiB parts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_changed_mid_ingest_fails_the_session_with_the_etag_reason() {
    let s3 = S3Server::start().await;
    let p = Pipeline::new("s3src-changed").await;
    let key = "changing.bin";
    let size = 24 * MIB;
    s3.put(key, &random_bytes(size, 7));
    // One part at a time, so that parts remain when the object changes.
    let _apps = start_apps(&p, &s3.args(), Some(1)).await;
    let mut req = p.request("changing", &url(key), "changing.bin");
    req.part_size = Some(MIB as u64);
    p.submit(std::slice::from_ref(&req)).await;
    // Once the first part is committed, a new version of the same size.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let committed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM upload_parts p JOIN upload_sessions s ON s.id = p.session_id
             WHERE s.request_id = $1 AND p.committed_token IS NOT NULL",
        )
        .bind(&req.request_id)
        .fetch_one(&p.ingest.store.pool)
        .await
        .unwrap();
        if committed > 0 {
            assert!(committed < 24, "every part was read before the change");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no part committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_md5 = s3.put(key, &random_bytes(size, 8));
    let session = p
        .wait_finished(&[req.request_id.clone()], Duration::from_secs(120))
        .await
        .remove(0);
    assert_eq!(
        session.state, "failed",
        "a file of two versions was accepted"
    );
    let error = session.error.unwrap_or_default();
    assert!(
        error.contains("ETag") && error.contains(&new_md5),
        "the reason names the new ETag: {error}"
    );
    assert!(
        !p.mount_path("changing.bin").exists(),
        "no file may be put in place"
    );
}

#[tokio::test]
async fn every_part_read_is_pinned_to_the_etag_seen_first() {
    let s3 = S3Server::start().await;
    let cfg = s3.source_config();
    let data = random_bytes(3 * MIB, 9);
    let md5 = s3.put("pinned.bin", &data);
    let source = Source::parse(&url("pinned.bin"), &cfg).unwrap();
    let version = source.probe(&cfg).await.unwrap();
    assert_eq!(version.size, data.len() as u64);
    let part = |n: usize| (n * MIB) as u64;
    let first = read_all(
        source
            .open_range(part(0), MIB as u64, &version, &cfg)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(first, &data[..MIB]);
    // A range in the middle, exactly.
    let mid = read_all(
        source
            .open_range(part(1) + 7, 1000, &version, &cfg)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(mid, &data[MIB + 7..MIB + 1007]);

    let new_md5 = s3.put("pinned.bin", &random_bytes(3 * MIB, 10));
    let e = match source.open_range(part(1), MIB as u64, &version, &cfg).await {
        Ok(_) => panic!("a part of the new version was read"),
        Err(e) => e,
    };
    assert!(matches!(e, SourceError::Changed { .. }), "{e}");
    assert!(!e.is_transient());
    let text = e.to_string();
    assert!(
        text.contains(&md5) && text.contains(&new_md5) && text.contains("ETag"),
        "{text}"
    );
    // What a part attempt checks before it reads: the same change.
    let now = source.probe(&cfg).await.unwrap();
    let why = version.change_to(&now).expect("a change");
    assert!(why.contains("ETag"), "{why}");

    s3.delete("pinned.bin");
    let e = source.probe(&cfg).await.unwrap_err();
    assert!(matches!(e, SourceError::Missing(_)), "{e}");
    let e = match source.open_range(0, 10, &version, &cfg).await {
        Ok(_) => panic!("a deleted object was read"),
        Err(e) => e,
    };
    assert!(matches!(e, SourceError::Missing(_)), "{e}");
}

/// POSTs one upload to the coordinator's API; the status and the
/// problem's detail.
async fn post_upload(app: &RunningApp, request_id: &str, source: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(app.url("/v1/uploads"))
        .json(&serde_json::json!({
            "request_id": request_id,
            "source": source,
            "dest": format!("{request_id}.bin"),
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_string(),
    )
}

async fn assert_no_session(p: &Pipeline, request_id: &str) {
    assert!(
        p.ingest
            .store
            .session_by_request(request_id)
            .await
            .unwrap()
            .is_none(),
        "{request_id}: a session was created for a refused request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_objects_other_endpoints_and_wrong_credentials_are_refused_at_submit() {
    let s3 = S3Server::start().await;
    let other = S3Server::start().await;
    other.put("elsewhere.bin", b"a store nobody allowed");
    let p = Pipeline::new("s3src-refused").await;
    let (coordinator, _) = start_apps(&p, &s3.args(), None).await;

    let cases = [
        ("missing", url("missing.bin"), "does not exist"),
        (
            "other-store",
            format!(
                "{}?endpoint={}",
                url("elsewhere.bin"),
                other.endpoint.replace(':', "%3A").replace('/', "%2F")
            ),
            "INGEST_S3_SOURCE_ENDPOINTS",
        ),
        (
            "metadata",
            format!("{}?endpoint=http://169.254.169.254", url("k")),
            "is not allowed",
        ),
        (
            "private",
            format!("{}?endpoint=http://10.0.0.1:9000", url("k")),
            "is not allowed",
        ),
        ("no-key", format!("s3://{BUCKET}"), "no object key"),
    ];
    for (name, source, says) in &cases {
        let id = format!("{}/{name}", p.tag);
        let (status, detail) = post_upload(&coordinator, &id, source).await;
        assert_eq!(status, 422, "{name}: {detail}");
        assert!(detail.contains(says), "{name}: {detail}");
        assert_no_session(&p, &id).await;
    }

    // Wrong credentials: the store refuses them, and the reason says so.
    s3.put("present.bin", b"present");
    let mut wrong = s3.args();
    wrong.secret_access_key = Some("not-the-secret".into());
    let mut cfg = p.coordinator_config();
    cfg.services.s3_sources = wrong;
    let wrong_coordinator = testkit::apps::start_coordinator(cfg).await;
    let id = format!("{}/wrong-credentials", p.tag);
    let (status, detail) = post_upload(&wrong_coordinator, &id, &url("present.bin")).await;
    assert_eq!(status, 422, "{detail}");
    assert!(
        detail.contains("refused access") && detail.contains("AWS_SECRET_ACCESS_KEY"),
        "{detail}"
    );
    assert_no_session(&p, &id).await;
    // The right credentials in the environment, but s3:// sources not
    // turned on (INGEST_S3_SOURCES): refused, and the reason says how.
    let mut off = s3.args();
    off.enabled = false;
    let mut cfg = p.coordinator_config();
    cfg.services.s3_sources = off;
    let off_coordinator = testkit::apps::start_coordinator(cfg).await;
    let id = format!("{}/sources-off", p.tag);
    let (status, detail) = post_upload(&off_coordinator, &id, &url("present.bin")).await;
    assert_eq!(status, 422, "{detail}");
    assert!(detail.contains("INGEST_S3_SOURCES=true"), "{detail}");
    assert_no_session(&p, &id).await;
    // The right ones read it.
    let id = format!("{}/present", p.tag);
    let (status, detail) = post_upload(&coordinator, &id, &url("present.bin")).await;
    assert_eq!(status, 201, "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_deleted_after_submit_fails_its_session_clearly() {
    let s3 = S3Server::start().await;
    let p = Pipeline::new("s3src-gone").await;
    s3.put("gone.bin", &random_bytes(2 * MIB, 11));
    let (_coordinator, _) = start_apps(&p, &s3.args(), None).await;
    let mut req = p.request("gone", &url("gone.bin"), "gone.bin");
    req.part_size = Some(MIB as u64);
    p.submit(std::slice::from_ref(&req)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while p
        .ingest
        .store
        .session_by_request(&req.request_id)
        .await
        .unwrap()
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline, "no session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s3.delete("gone.bin");
    let mut worker = p.worker_config("w1");
    worker.services.s3_sources = s3.args();
    let _worker = testkit::apps::start_worker(worker).await;
    let session = p
        .wait_finished(&[req.request_id.clone()], Duration::from_secs(60))
        .await
        .remove(0);
    assert_eq!(session.state, "failed");
    let error = session.error.unwrap_or_default();
    assert!(
        error.contains("s3://ingest-src/gone.bin does not exist"),
        "{error}"
    );
}
