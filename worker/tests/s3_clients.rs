//! The S3 endpoint as it is deployed: `worker s3 serve` processes on a
//! private pipeline (database, MooseFS root), driven by real clients:
//!
//! - `s3_races_through_two_instances`: two processes on different ports,
//!   no affinity; `s3/tests/clients/s3_races.py` (boto3, raw presigned
//!   requests for stalled attempts) replays the races of issue 14 through
//!   both: a part re-uploaded while Complete runs, ceph/s3-tests'
//!   `resend_first_finishes_last`, `atomic_multipart_upload_write`,
//!   `reupload_checksum_and_etag`, and parts of one upload sent
//!   alternately to both instances.
//! - `rclone_and_s3s_e2e_against_the_endpoint`: rclone `copy`, `check
//!   --download`, forced multipart (`--s3-upload-cutoff 0`) with 5 MiB and
//!   64 MiB chunks; then the `s3s-e2e` suite from crates.io.
//!
//! Afterwards every object the clients wrote is checked on the MooseFS
//! side: byte-identical through the mount, every chunk with 3 identical
//! copies (`worker mfs replicas` and the client's replica report), and the
//! garbage collector deletes every abandoned staging inode while no object
//! loses a byte. A tool that cannot be installed (rclone by apt-get,
//! s3s-e2e by `cargo install` in `scripts/install-s3-clients`, which
//! `scripts/test` runs first) skips its part with a message saying so.
//!
//! Needs `scripts/stack up` (MFS_MASTER, MFS_MOUNT, DATABASE_URL).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use s3::keys::{self, ServerKey};
use testkit::Pipeline;

const SERVER_KEY: &str = "a test server key of at least thirty-two bytes";

/// A private pipeline with `worker s3 serve` processes on it.
struct Endpoints {
    p: Pipeline,
    urls: Vec<String>,
    key_id: String,
    secret: String,
    workdir: tempfile::TempDir,
}

impl Endpoints {
    /// `instances` endpoint processes and a key allowed `buckets`.
    async fn start(name: &str, instances: usize, buckets: &[String]) -> Endpoints {
        let p = Pipeline::new(name).await;
        let pool = p.ingest.store.pool.clone();
        s3::pipeline::Pipeline::migrate(&pool).await.unwrap();
        let (key_id, secret) =
            keys::create(&pool, &ServerKey::new(SERVER_KEY).unwrap(), buckets, "test")
                .await
                .unwrap();
        let mut urls = Vec::new();
        for i in 0..instances {
            let listen = format!("127.0.0.1:{}", testkit::free_port());
            let metrics = format!("127.0.0.1:{}", testkit::free_port());
            p.spawn(
                &format!("s3-{i}"),
                "worker",
                &["s3", "serve"],
                &[
                    ("S3_LISTEN", &listen),
                    ("S3_METRICS_ADDR", &metrics),
                    ("S3_KEY_SECRET", SERVER_KEY),
                ],
            );
            wait_listening(&listen, &p.log_path(&format!("s3-{i}"))).await;
            urls.push(format!("http://{listen}"));
        }
        Endpoints {
            p,
            urls,
            key_id,
            secret,
            workdir: tempfile::tempdir().unwrap(),
        }
    }

    fn results(&self) -> PathBuf {
        self.workdir.path().join("objects.jsonl")
    }
}

async fn wait_listening(addr: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "worker s3 serve never listened on {addr}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a command on a blocking thread; its output, printed.
async fn run(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// One object a client wrote, as the client knows it.
#[derive(serde::Deserialize)]
struct Written {
    bucket: String,
    key: String,
    md5: String,
    size: i64,
}

fn read_results(path: &Path) -> Vec<Written> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Checks every written object on the MooseFS side, then collects the
/// garbage and checks them again. The failures.
async fn check_objects(e: &Endpoints, written: &[Written]) -> Vec<String> {
    let p = &e.p;
    let pool = &p.ingest.store.pool;
    let mfs = &p.ingest.mfs;
    let mut failures = Vec::new();
    let mut inodes = Vec::new();
    for o in written {
        let (b, k) = (&o.bucket, &o.key);
        let Some(inode) = testkit::s3::check_stored_object(
            pool,
            mfs,
            (b.as_str(), k.as_str()),
            o.size,
            3,
            &mut failures,
        )
        .await
        else {
            continue;
        };
        inodes.push((o, inode));
        let dest = format!("s3/{b}/{k}");
        let path = format!("{}/{dest}", p.mfs_root);
        let replicas = run({
            let mut c = Command::new(env!("CARGO_BIN_EXE_worker"));
            c.args(["mfs", "replicas", &path])
                .envs(p.env())
                .env_remove("RUST_LOG");
            c
        })
        .await;
        if !replicas.status.success() {
            failures.push(format!("{b}/{k}: worker mfs replicas {}", replicas.status));
        }
        let through_mount = p.mount_path(&dest);
        if through_mount.exists() {
            let md5 = testkit::mfs::md5_through_mount(&through_mount);
            if md5 != o.md5 {
                failures.push(format!("{b}/{k}: md5 through the mount {md5}"));
            }
        } else {
            failures.push(format!("{b}/{k}: not on the mount at {through_mount:?}"));
        }
    }
    println!(
        "{} objects: 3 identical copies of every chunk (worker mfs replicas), md5 through the mount",
        inodes.len()
    );

    // Garbage: replaced, late, unlisted and aborted part attempts, parts of
    // assembled files. Only those are collected; no object loses a byte.
    let pending = p.ingest.store.pending_abandoned().await.unwrap();
    let mut collected = 0;
    for _ in 0..10 {
        collected += p.ingest.collect_garbage(1000).await.unwrap();
        if p.ingest.store.pending_abandoned().await.unwrap().is_empty() {
            break;
        }
    }
    let left = p.ingest.store.pending_abandoned().await.unwrap();
    if !left.is_empty() {
        failures.push(format!("{} abandoned inodes not collected", left.len()));
    }
    println!(
        "collected {collected} of {} abandoned staging inodes",
        pending.len()
    );
    for (o, inode) in inodes {
        let bytes = mfs.read_all(inode as u32).await.unwrap();
        let md5 = testkit::md5_hex(&bytes);
        if md5 != o.md5 {
            failures.push(format!("{}/{}: md5 after GC {md5}", o.bucket, o.key));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_races_through_two_instances() {
    let bucket = format!("races-{:08x}", rand::random::<u32>());
    let e = Endpoints::start("s3races", 2, std::slice::from_ref(&bucket)).await;
    let (python, venv_bin) = testkit::python::python_with_s3_clients();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../s3/tests/clients/s3_races.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .env("S3_ENDPOINT", &e.urls[0])
        .env("S3_ENDPOINT2", &e.urls[1])
        .env("S3_KEY_ID", &e.key_id)
        .env("S3_SECRET", &e.secret)
        .env("S3_BUCKET", &bucket)
        .env("S3_RESULTS", e.results());
    if let Some(bin) = venv_bin {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", bin.display()));
    }
    let out = run(cmd).await;
    assert!(out.status.success(), "the race script failed");
    let written = read_results(&e.results());
    assert!(
        written.len() >= 8,
        "only {} objects recorded",
        written.len()
    );
    let failures = check_objects(&e, &written).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// rclone as `scripts/install-s3-clients` installs it (apt-get); `None`
/// if it is not installed.
fn rclone() -> Option<PathBuf> {
    Command::new("rclone")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then(|| PathBuf::from("rclone"))
}

/// `s3s-e2e` (the s3s project's suite, from crates.io) as
/// `scripts/install-s3-clients` installs it (compiling it takes longer than
/// a test may run): `$S3_TOOLS_ROOT/bin/s3s-e2e` (default
/// /var/tmp/mfs-ingest-tools), or on `PATH`; `None` if it is not installed.
fn s3s_e2e() -> Option<PathBuf> {
    let root =
        std::env::var("S3_TOOLS_ROOT").unwrap_or_else(|_| "/var/tmp/mfs-ingest-tools".into());
    let installed = PathBuf::from(root).join("bin/s3s-e2e");
    if installed.exists() {
        return Some(installed);
    }
    Command::new("s3s-e2e")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success())
        .then(|| PathBuf::from("s3s-e2e"))
}

/// Files of sizes that exercise each path: a small one, one of 13 MiB
/// (3 parts of 5 MiB: a copy assembly), one of 67 MiB (64 MiB + 3 MiB:
/// zero-copy), in a tree.
fn source_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let files = [
        ("small.txt", 70_001usize, 1u64),
        ("d/thirteen.bin", 13 * 1024 * 1024 + 11, 2),
        ("d/e/sixty-seven.bin", 67 * 1024 * 1024 + 5, 3),
    ];
    files
        .iter()
        .map(|&(name, size, seed)| {
            let bytes = testkit::mfs::random_bytes(size, seed);
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            (name.to_string(), bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_and_s3s_e2e_against_the_endpoint() {
    // '*': s3s-e2e creates buckets of its own names.
    let e = Endpoints::start("s3rclone", 1, &["*".to_string()]).await;
    let bucket = format!("rclone-{:08x}", rand::random::<u32>());
    let mut written = Vec::new();
    let mut ran = Vec::new();

    if let Some(rclone) = rclone() {
        let src = e.workdir.path().join("src");
        let files = source_tree(&src);
        let rclone_cmd = |args: &[&str]| {
            let mut c = Command::new(&rclone);
            c.args(args)
                .args(["--config", "/dev/null", "-q", "--retries", "1"])
                .env("RCLONE_CONFIG_MFS_TYPE", "s3")
                .env("RCLONE_CONFIG_MFS_PROVIDER", "Other")
                .env("RCLONE_CONFIG_MFS_ENDPOINT", &e.urls[0])
                .env("RCLONE_CONFIG_MFS_ACCESS_KEY_ID", &e.key_id)
                .env("RCLONE_CONFIG_MFS_SECRET_ACCESS_KEY", &e.secret)
                .env("RCLONE_CONFIG_MFS_REGION", "us-east-1")
                .env("RCLONE_CONFIG_MFS_FORCE_PATH_STYLE", "true")
                // The endpoint is plain HTTP; rclone 1.60 refuses to start
                // with a CA bundle given for an HTTP transport.
                .env_remove("AWS_CA_BUNDLE");
            c
        };
        let src_arg = src.display().to_string();
        for (dir, extra) in [
            ("copy", &[][..]),
            (
                "multipart-5m",
                &["--s3-upload-cutoff", "0", "--s3-chunk-size", "5M"][..],
            ),
            (
                "multipart-64m",
                &["--s3-upload-cutoff", "0", "--s3-chunk-size", "64M"][..],
            ),
        ] {
            let remote = format!("mfs:{bucket}/{dir}");
            let mut args = vec!["copy", src_arg.as_str(), remote.as_str()];
            args.extend_from_slice(extra);
            let out = run(rclone_cmd(&args)).await;
            assert!(out.status.success(), "rclone copy {dir} failed");
            // Sizes and hashes (rclone's md5 metadata for multipart
            // objects), then every byte read back through S3.
            for check in [&["check"][..], &["check", "--download"][..]] {
                let mut args = check.to_vec();
                args.extend_from_slice(&[src_arg.as_str(), remote.as_str()]);
                let out = run(rclone_cmd(&args)).await;
                assert!(out.status.success(), "rclone {check:?} {dir} failed");
            }
            for (name, bytes) in &files {
                written.push(Written {
                    bucket: bucket.clone(),
                    key: format!("{dir}/{name}"),
                    md5: testkit::md5_hex(bytes),
                    size: bytes.len() as i64,
                });
            }
        }
        // The part counts the chunk sizes promise.
        for (key, parts) in [
            ("multipart-5m/d/thirteen.bin", "-3"),
            ("multipart-64m/d/e/sixty-seven.bin", "-2"),
            ("multipart-5m/small.txt", "-1"),
        ] {
            let etag: String =
                sqlx::query_scalar("SELECT etag FROM s3_objects WHERE bucket = $1 AND key = $2")
                    .bind(&bucket)
                    .bind(key)
                    .fetch_one(&e.p.ingest.store.pool)
                    .await
                    .unwrap();
            assert!(etag.ends_with(parts), "{key}: ETag {etag}");
        }
        ran.push(
            "rclone copy, check, check --download, --s3-upload-cutoff 0 with 5M and 64M chunks",
        );
    } else {
        println!(
            "SKIPPED rclone: not installed (scripts/install-s3-clients runs \
             `apt-get install rclone`; it failed or was not run)"
        );
    }

    if let Some(e2e) = s3s_e2e() {
        let report = e.workdir.path().join("s3s-e2e.json");
        let mut cmd = Command::new(e2e);
        cmd.arg("--json")
            .arg(&report)
            .env("AWS_ACCESS_KEY_ID", &e.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &e.secret)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &e.urls[0])
            .env("RUST_LOG", "error")
            .env_remove("AWS_CA_BUNDLE");
        let _ = run(cmd).await;
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let mut passed = Vec::new();
        let mut failed = Vec::new();
        for suite in report["suites"].as_array().unwrap() {
            for fixture in suite["fixtures"].as_array().unwrap() {
                for case in fixture["cases"].as_array().unwrap() {
                    let name = case["name"].as_str().unwrap().to_string();
                    match case["passed"].as_bool() {
                        Some(true) => passed.push(name),
                        _ => failed.push(name),
                    }
                }
            }
        }
        println!("s3s-e2e: {} passed {passed:?}", passed.len());
        println!("s3s-e2e: {} failed {failed:?}", failed.len());
        // Every case passes, STS AssumeRole and tagging included.
        assert!(failed.is_empty(), "s3s-e2e cases failed: {failed:?}");
        for required in ["test_assume_role", "test_object_tagging"] {
            assert!(
                passed.iter().any(|p| p == required),
                "s3s-e2e's {required} did not pass"
            );
        }
        assert_eq!(passed.len(), 18, "s3s-e2e ran {} cases", passed.len());
        ran.push("s3s-e2e");
    } else {
        println!(
            "SKIPPED s3s-e2e: not installed (scripts/install-s3-clients runs `cargo install s3s-e2e`; \
             it failed or was not run)"
        );
    }

    let failures = check_objects(&e, &written).await;
    assert!(failures.is_empty(), "{failures:#?}");
    println!("ran: {ran:?}");
}
