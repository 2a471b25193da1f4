//! The S3 endpoint against real clients and the real stack: the endpoint is
//! served in-process on a private PostgreSQL database and MooseFS root,
//! then `tests/clients/s3_clients.py` drives it with boto3 and aws-cli.
//! Afterwards every object the clients wrote is checked on the MooseFS side:
//! each chunk has as many valid copies as the goal and the copies are
//! identical (what `worker mfs replicas` checks), the bytes through the
//! mount (if mounted) have the md5 the client sent, a server-side copy has
//! its source's chunk ids (a snapshot: no data moved), every upload is a
//! session with its `upload.completed` event queued, and the garbage
//! collector deletes exactly the abandoned staging inodes.
//!
//! Needs `scripts/stack up` (MFS_MASTER, MFS_MOUNT, DATABASE_URL) and
//! python3 with boto3 + aws-cli (installed into a venv under /var/tmp if
//! missing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use moosefs::MfsPath;
use s3::keys::{self, ServerKey};

mod common;
use common::env_or;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_aws_cli_against_the_endpoint() {
    let common::Private {
        tag,
        db,
        mfs_root,
        mfs,
        args,
        pipeline,
    } = common::Private::new().await;
    let server_key = ServerKey::new("a test server key of at least thirty-two bytes").unwrap();
    let (bucket, bucket2) = (format!("b-{tag}"), format!("c-{tag}"));
    // Allowed, never created: a copy from it is NoSuchBucket.
    let missing = format!("m-{tag}");
    let (key_id, secret) = keys::create(
        pipeline.pool(),
        &server_key,
        &[bucket.clone(), bucket2.clone(), missing.clone()],
        "test",
    )
    .await
    .unwrap();
    let (other_id, other_secret) = keys::create(
        pipeline.pool(),
        &server_key,
        std::slice::from_ref(&bucket2),
        "other",
    )
    .await
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(s3::server::serve(
        listener,
        s3::cli::build_service(&pipeline, server_key),
        s3::server::ServerLimits::default(),
        shutdown.clone(),
    ));

    let workdir = tempfile::tempdir().unwrap();
    let results = workdir.path().join("objects.jsonl");
    std::fs::write(&results, "").unwrap();
    let (python, venv_bin) = testkit::python::python_with_s3_clients();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/s3_clients.py");
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Some(bin) = venv_bin {
        path = format!("{}:{path}", bin.display());
    }
    let run = tokio::task::spawn_blocking({
        let (endpoint, bucket, bucket2) = (endpoint.clone(), bucket.clone(), bucket2.clone());
        let (workdir, results) = (workdir.path().to_path_buf(), results.clone());
        move || {
            Command::new(python)
                .arg(script)
                .env("PATH", path)
                .env("S3_ENDPOINT", endpoint)
                .env("S3_KEY_ID", key_id)
                .env("S3_SECRET", secret)
                .env("S3_OTHER_KEY_ID", other_id)
                .env("S3_OTHER_SECRET", other_secret)
                .env("S3_BUCKET", bucket)
                .env("S3_BUCKET2", bucket2)
                .env("S3_MISSING_BUCKET", missing)
                .env("S3_WORKDIR", workdir)
                .env("S3_RESULTS", results)
                .output()
                .expect("run the client script")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&run.stderr));
    let passed = run.status.success();

    let mut failures = Vec::new();
    if passed {
        // Every object the clients wrote, checked on the MooseFS side.
        let mount = PathBuf::from(env_or("MFS_MOUNT", "/var/tmp/mfs-ingest/mnt"));
        let objects = std::fs::read_to_string(&results).unwrap();
        let (mut checked, mut copies) = (0, 0);
        for line in objects.lines() {
            let o: serde_json::Value = serde_json::from_str(line).unwrap();
            let (b, k) = (o["bucket"].as_str().unwrap(), o["key"].as_str().unwrap());
            let Some(inode) = testkit::s3::check_stored_object(
                pipeline.pool(),
                &mfs,
                (b, k),
                o["size"].as_i64().unwrap(),
                3,
                &mut failures,
            )
            .await
            else {
                continue;
            };
            let through_mount = mount
                .join(mfs_root.trim_start_matches('/'))
                .join("s3")
                .join(b)
                .join(k);
            if mount.join(mfs_root.trim_start_matches('/')).is_dir() {
                let bytes = std::fs::read(&through_mount).unwrap();
                let md5 = format!("{:x}", md5::Md5::digest(&bytes));
                if md5 != o["md5"].as_str().unwrap() {
                    failures.push(format!("{b}/{k}: md5 through the mount {md5}"));
                }
            }
            if let Some(of) = o.get("chunks_of") {
                // A copy: no data moved, it references the same chunks.
                let (ob, ok) = (of["bucket"].as_str().unwrap(), of["key"].as_str().unwrap());
                let other: i64 = sqlx::query_scalar(
                    "SELECT inode FROM s3_objects WHERE bucket = $1 AND key = $2",
                )
                .bind(ob)
                .bind(ok)
                .fetch_one(pipeline.pool())
                .await
                .unwrap();
                let ids = mfs.chunk_ids(inode as u32).await.unwrap();
                let other_ids = mfs.chunk_ids(other as u32).await.unwrap();
                if inode == other || ids.is_empty() || ids.contains(&0) || ids != other_ids {
                    failures.push(format!(
                        "{b}/{k} (inode {inode}, chunks {ids:x?}) is not a copy by reference of \
                         {ob}/{ok} (inode {other}, chunks {other_ids:x?})"
                    ));
                }
                copies += 1;
            }
            checked += 1;
        }
        assert!(checked >= 8, "only {checked} objects were recorded");
        assert!(copies >= 3, "only {copies} copies were recorded");
        println!("{copies} copies share every chunk id with their source (no data moved)");
        println!("{checked} objects: 3 identical copies of every chunk, md5 through the mount");

        // One system: every completed S3 upload queued its upload.completed
        // event like any session.
        let completed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM upload_sessions WHERE request_id LIKE 's3:%' AND state = 'completed'",
        )
        .fetch_one(pipeline.pool())
        .await
        .unwrap();
        let events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox, jsonb_array_elements(
                 CASE jsonb_typeof(payload->'events') WHEN 'array' THEN payload->'events'
                      ELSE jsonb_build_array(payload) END) AS e
              WHERE e->>'event' = 'upload.completed' AND e->>'request_id' LIKE 's3:%'",
        )
        .fetch_one(pipeline.pool())
        .await
        .unwrap();
        if events != completed || completed < 10 {
            failures.push(format!(
                "{completed} completed S3 sessions but {events} upload.completed events queued"
            ));
        }

        // Garbage: replaced parts, unlisted parts, aborted uploads, parts of
        // assembled files. The pipeline's collector deletes them, and no
        // object loses a byte.
        let ingest = args
            .services
            .ingest("mfs-ingest s3 test gc", 2)
            .await
            .unwrap();
        let pending = ingest.store.pending_abandoned().await.unwrap();
        if pending.is_empty() {
            failures.push("no abandoned staging inodes were recorded".into());
        }
        let mut collected = 0;
        for _ in 0..10 {
            collected += ingest.collect_garbage(1000).await.unwrap();
            if ingest.store.pending_abandoned().await.unwrap().is_empty() {
                break;
            }
        }
        let left = ingest.store.pending_abandoned().await.unwrap();
        if !left.is_empty() {
            failures.push(format!("{} abandoned inodes not collected", left.len()));
        }
        println!(
            "collected {collected} of {} abandoned staging inodes",
            pending.len()
        );
        for line in objects.lines() {
            let o: serde_json::Value = serde_json::from_str(line).unwrap();
            let (b, k) = (o["bucket"].as_str().unwrap(), o["key"].as_str().unwrap());
            let inode: i64 =
                sqlx::query_scalar("SELECT inode FROM s3_objects WHERE bucket = $1 AND key = $2")
                    .bind(b)
                    .bind(k)
                    .fetch_one(pipeline.pool())
                    .await
                    .unwrap();
            let bytes = mfs.read_all(inode as u32).await.unwrap();
            let md5 = format!("{:x}", md5::Md5::digest(&bytes));
            if md5 != o["md5"].as_str().unwrap() {
                failures.push(format!("{b}/{k}: md5 after GC {md5}"));
            }
        }
        ingest.mfs.close().await;
    }

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    pipeline.close().await;
    let _ = mfs.remove(&MfsPath::parse(&mfs_root).unwrap(), true).await;
    mfs.close().await;
    db.drop_db().await;
    assert!(passed, "the client script failed:\n{stdout}");
    assert!(failures.is_empty(), "{failures:#?}");
}

use md5::Digest;

/// Runs `tests/clients/s3_clients.py` against `endpoint` with `env`;
/// returns whether it passed and its output.
async fn run_client_script(endpoint: &str, env: Vec<(&'static str, String)>) -> (bool, String) {
    let (python, venv_bin) = testkit::python::python_with_s3_clients();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/s3_clients.py");
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Some(bin) = venv_bin {
        path = format!("{}:{path}", bin.display());
    }
    let endpoint = endpoint.to_string();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("PATH", path)
            .env("S3_ENDPOINT", endpoint)
            .envs(env)
            .output()
            .expect("run the client script")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&run.stderr));
    (run.status.success(), stdout)
}

/// STS AssumeRole with boto3: temporary credentials on their parent's
/// buckets and nowhere else, their session token required (header and
/// presigned URL), no role chaining, bad parameters refused in STS's error
/// format; between the script's two phases this side moves one session's
/// expiry into the past and revokes another's parent, and checks the rows
/// and that the parent is the principal of the uploads (its upload cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_assume_role_temporary_credentials() {
    let private = common::Private::new().await;
    let pool = private.pipeline.pool().clone();
    let server_key = ServerKey::new("a test server key of at least thirty-two bytes").unwrap();
    let tag = &private.tag;
    let (bucket, bucket2) = (format!("sts-b-{tag}"), format!("sts-c-{tag}"));
    let mk = |buckets: Vec<String>, what: &'static str| {
        let (pool, server_key) = (pool.clone(), server_key.clone());
        async move {
            keys::create(&pool, &server_key, &buckets, what)
                .await
                .unwrap()
        }
    };
    let (key_id, secret) = mk(vec![bucket.clone(), bucket2.clone()], "main").await;
    let (other_id, other_secret) = mk(vec![bucket2.clone()], "parent").await;
    let (revoke_id, revoke_secret) = mk(vec![bucket2.clone()], "to revoke").await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(s3::server::serve(
        listener,
        s3::cli::build_service(&private.pipeline, server_key.clone()),
        s3::server::ServerLimits::default(),
        shutdown.clone(),
    ));
    let workdir = tempfile::tempdir().unwrap();
    let out = workdir.path().join("sts.json");
    let env = |phase: &str| {
        vec![
            ("S3_KEY_ID", key_id.clone()),
            ("S3_SECRET", secret.clone()),
            ("S3_OTHER_KEY_ID", other_id.clone()),
            ("S3_OTHER_SECRET", other_secret.clone()),
            ("S3_REVOKE_KEY_ID", revoke_id.clone()),
            ("S3_REVOKE_SECRET", revoke_secret.clone()),
            ("S3_BUCKET", bucket.clone()),
            ("S3_BUCKET2", bucket2.clone()),
            ("S3_MISSING_BUCKET", format!("sts-m-{tag}")),
            ("S3_WORKDIR", workdir.path().display().to_string()),
            ("S3_RESULTS", workdir.path().join("r").display().to_string()),
            ("S3_STS_OUT", out.display().to_string()),
            ("S3_STS_PHASE", phase.to_string()),
        ]
    };

    let mut failures = Vec::new();
    let (passed1, stdout1) = run_client_script(&endpoint, env("1")).await;
    let mut passed2 = true;
    let mut stdout2 = String::new();
    if passed1 {
        let sessions: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let id = |which: &str| sessions[which]["AccessKeyId"].as_str().unwrap().to_string();
        let (active, expire, revoke) = (id("active"), id("expire"), id("revoke"));

        // The rows: parents as expected, listed; nothing secret stored.
        let listed = keys::list_sessions(&pool).await.unwrap();
        let parent_of = |k: &str| {
            listed
                .iter()
                .find(|s| s.access_key_id == k)
                .map(|s| s.parent_key_id.clone())
        };
        if parent_of(&active).as_deref() != Some(other_id.as_str())
            || parent_of(&expire).as_deref() != Some(other_id.as_str())
            || parent_of(&revoke).as_deref() != Some(revoke_id.as_str())
            || listed.len() != 5
        {
            failures.push(format!("session keys listed: {listed:#?}"));
        }
        let token = sessions["active"]["SessionToken"].as_str().unwrap();
        let columns: String = sqlx::query_scalar(
            "SELECT row_to_json(s)::text FROM s3_session_keys s WHERE access_key_id = $1",
        )
        .bind(&active)
        .fetch_one(&pool)
        .await
        .unwrap();
        let secret = sessions["active"]["SecretAccessKey"].as_str().unwrap();
        if columns.contains(token) || columns.contains(secret) {
            failures.push(format!("a session secret or token is stored: {columns}"));
        }
        // The parent is the principal of the temporary key's uploads: its
        // sessions' source (what the per-key open-uploads cap counts).
        let by = |source: String| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM upload_sessions WHERE source = $1",
                )
                .bind(source)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        let (as_parent, as_session) = (
            by(format!("s3-push:{other_id}")).await,
            by(format!("s3-push:{active}")).await,
        );
        if as_parent < 2 || as_session != 0 {
            failures.push(format!(
                "uploads of the temporary key: {as_parent} under its parent, {as_session} under itself"
            ));
        }

        sqlx::query(
            "UPDATE s3_session_keys SET expires_at = now() - interval '1 second'
              WHERE access_key_id = $1",
        )
        .bind(&expire)
        .execute(&pool)
        .await
        .unwrap();
        keys::revoke(&pool, &revoke_id).await.unwrap();
        (passed2, stdout2) = run_client_script(&endpoint, env("2")).await;
    }

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    private.clean_up().await;
    assert!(passed1, "phase 1 of the STS checks failed:\n{stdout1}");
    assert!(passed2, "phase 2 of the STS checks failed:\n{stdout2}");
    assert!(failures.is_empty(), "{failures:#?}");
}
