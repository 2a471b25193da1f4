//! A private pipeline per test, on the real services: its own PostgreSQL
//! database, its own RabbitMQ vhost, its own MooseFS root and source
//! directory (Redis is shared; its keys carry session ids). It runs the real
//! `coordinator serve` and `worker run` binaries as child processes and
//! removes everything on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use md5::{Digest, Md5};
use rand::{RngCore, SeedableRng};
use shared::ingest::{Ingest, IngestConfig};
use shared::jobs::{IngestBatch, IngestRequest, Outgoing, Publisher, REQUESTS_QUEUE};
use shared::moosefs::{ClientConfig, MfsClient, MfsPath};
use shared::source::SourceConfig;
use shared::store::{Session, Store};

pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

pub fn master() -> String {
    env_or("MFS_MASTER", "10.213.47.10:9421")
}

pub fn mount_dir() -> PathBuf {
    PathBuf::from(env_or("MFS_MOUNT", "/var/tmp/mfs-ingest/mnt"))
}

fn pg_base() -> String {
    let url = env_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/mfs_ingest",
    );
    let mut u = url::Url::parse(&url).expect("DATABASE_URL");
    u.set_path("");
    u.to_string().trim_end_matches('/').to_string()
}

fn amqp_base() -> (String, String) {
    let url = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let u = url::Url::parse(&url).expect("AMQP_URL");
    let base = format!(
        "amqp://{}:{}@{}:{}",
        u.username(),
        u.password().unwrap_or(""),
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5672)
    );
    (base, u.username().to_string())
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn md5_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Md5::new();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything one test's pipeline uses.
pub struct Pipeline {
    pub tag: String,
    pub database_url: String,
    db_name: String,
    pub amqp_url: String,
    vhost: String,
    pub mfs_root: String,
    pub src_dir: PathBuf,
    pub ingest: Ingest,
    children: Mutex<HashMap<String, Child>>,
    pub publisher: Arc<Publisher>,
}

impl Pipeline {
    pub async fn new(name: &str) -> Pipeline {
        let tag = format!("{name}-{:08x}", rand::random::<u32>());
        let db_name = format!("t_{}", tag.replace('-', "_"));
        let admin = Store::connect(&format!("{}/postgres", pg_base()), 1)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
            .execute(&admin.pool)
            .await
            .expect("create test database");
        admin.pool.close().await;
        let database_url = format!("{}/{db_name}", pg_base());
        let store = Store::connect(&database_url, 8).await.unwrap();
        store.migrate().await.unwrap();

        let vhost = format!("mfs-ingest-{tag}");
        let (amqp_base, user) = amqp_base();
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, &user, ".*", ".*", ".*"]);
        let amqp_url = format!("{amqp_base}/{vhost}");

        let mfs_root = format!("/tests/pipe-{tag}");
        let mut cfg = ClientConfig::new(master());
        cfg.master.client_info = format!("pipeline test {tag}");
        let mfs = MfsClient::connect(cfg).await.expect("MooseFS master");
        let tests_inode = mfs
            .mkdir_all(&MfsPath::parse("/tests").unwrap())
            .await
            .unwrap();
        mfs.set_trash_time(tests_inode, 0, false).await.unwrap();
        let root_inode = mfs
            .mkdir_all(&MfsPath::parse(&mfs_root).unwrap())
            .await
            .unwrap();
        mfs.set_trash_time(root_inode, 0, false).await.unwrap();
        mfs.set_goal(root_inode, 3, false).await.unwrap();

        let src_dir = PathBuf::from(format!("/var/tmp/mfs-ingest/sources/pipe-{tag}"));
        std::fs::create_dir_all(&src_dir).unwrap();

        let ingest = Ingest {
            cfg: Arc::new(IngestConfig {
                root: MfsPath::parse(&mfs_root).unwrap(),
                default_goal: 3,
                default_part_size: 64 << 20,
                limits: Default::default(),
                sources: SourceConfig::new(vec![src_dir.clone()]),
                completion_deadline: Duration::from_secs(
                    shared::ingest::DEFAULT_COMPLETION_DEADLINE_SECS,
                ),
            }),
            store,
            mfs,
            dirs: Default::default(),
            write_budget: Default::default(),
        };
        Pipeline {
            publisher: Arc::new(Publisher::new(&amqp_url, &format!("test {tag}"))),
            tag,
            database_url,
            db_name,
            amqp_url,
            vhost,
            mfs_root,
            src_dir,
            ingest,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// Environment for the binaries.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.database_url.clone()),
            ("AMQP_URL", self.amqp_url.clone()),
            ("REDIS_URL", env_or("REDIS_URL", "redis://127.0.0.1:6379/")),
            ("MFS_MASTER", master()),
            ("MFS_ROOT", self.mfs_root.clone()),
            ("INGEST_SOURCE_ROOTS", self.src_dir.display().to_string()),
            ("INGEST_HTTP_ADDR", "127.0.0.1:0".into()),
            ("WORKER_HTTP_ADDR", "127.0.0.1:0".into()),
            ("RUST_LOG", "info,lapin=warn,sqlx=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn binary(name: &str) -> PathBuf {
        let coordinator = PathBuf::from(env!("CARGO_BIN_EXE_coordinator"));
        let path = coordinator.with_file_name(name);
        assert!(
            path.exists(),
            "{} is not built (run the tests for the whole workspace)",
            path.display()
        );
        path
    }

    /// Starts a process; `key` names it for [`Pipeline::kill`]. Logs go to
    /// `/var/tmp/mfs-ingest/test-logs/<tag>-<key>.log`.
    pub fn spawn(&self, key: &str, binary: &str, args: &[&str], extra_env: &[(&str, &str)]) {
        let log_dir = PathBuf::from("/var/tmp/mfs-ingest/test-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join(format!("{}-{key}.log", self.tag)))
            .unwrap();
        let mut cmd = Command::new(Self::binary(binary));
        // The API's authentication comes from the test, never from the
        // environment the tests run in.
        for var in [
            "INGEST_API_TOKEN",
            "INGEST_API_TOKENS",
            "INGEST_API_TOKENS_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .envs(self.env())
            .envs(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn");
        self.children.lock().unwrap().insert(key.to_string(), child);
    }

    pub fn spawn_coordinator(&self, extra_env: &[(&str, &str)]) {
        let mut env = vec![
            ("INGEST_MAINTENANCE_SECS", "1"),
            ("INGEST_STAGING_GRACE_SECS", "2"),
            ("INGEST_PART_STALE_SECS", "20"),
        ];
        env.extend_from_slice(extra_env);
        // The pipeline tests do not use the HTTP API; it listens on loopback.
        self.spawn(
            "coordinator",
            "coordinator",
            &["serve", "--insecure-no-auth"],
            &env,
        );
    }

    pub fn spawn_worker(&self, key: &str, extra_env: &[(&str, &str)]) {
        let mut env = vec![("WORKER_ID", key), ("WORKER_LEASE_SECS", "10")];
        env.extend_from_slice(extra_env);
        self.spawn(key, "worker", &["run"], &env);
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to a child and reaps it.
    pub fn kill(&self, key: &str, signal: &str) {
        let mut child = self
            .children
            .lock()
            .unwrap()
            .remove(key)
            .expect("known child");
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&self, key: &str, limit: Duration) -> std::process::ExitStatus {
        let mut child = self
            .children
            .lock()
            .unwrap()
            .remove(key)
            .expect("known child");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{key} did not exit within {limit:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a pseudo-random source file; returns (file:// URL, md5).
    pub fn source(&self, name: &str, size: usize, seed: u64) -> (String, String) {
        let path = self.src_dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut h = Md5::new();
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut left = size;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill_bytes(&mut buf[..n]);
            std::io::Write::write_all(&mut f, &buf[..n]).unwrap();
            h.update(&buf[..n]);
            left -= n;
        }
        std::io::Write::flush(&mut f).unwrap();
        let md5 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        (format!("file://{}", path.display()), md5)
    }

    pub fn request(&self, id: &str, source: &str, dest: &str) -> IngestRequest {
        IngestRequest {
            request_id: format!("{}/{id}", self.tag),
            source: source.to_string(),
            dest: dest.to_string(),
            size: None,
            md5: None,
            crc32c: None,
            goal: Some(3),
            overwrite: false,
            part_size: None,
        }
    }

    /// Publishes requests to `ingest.requests` in batches of 100.
    pub async fn submit(&self, requests: &[IngestRequest]) {
        for chunk in requests.chunks(100) {
            let batch = IngestBatch {
                items: chunk.to_vec(),
            };
            self.publisher
                .publish_all(&[Outgoing::json(REQUESTS_QUEUE, &batch).unwrap()])
                .await
                .expect("publish requests");
        }
    }

    /// Waits until a session exists for every request id and none is open.
    pub async fn wait_finished(&self, request_ids: &[String], limit: Duration) -> Vec<Session> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let rows: Vec<Session> =
                sqlx::query_as("SELECT * FROM upload_sessions WHERE request_id = ANY($1)")
                    .bind(request_ids)
                    .fetch_all(&self.ingest.store.pool)
                    .await
                    .unwrap();
            let open = rows
                .iter()
                .filter(|s| s.state == "open" || s.state == "completing")
                .count();
            if rows.len() == request_ids.len() && open == 0 {
                return rows;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out: {} of {} sessions exist, {open} still open (logs: /var/tmp/mfs-ingest/test-logs/{}-*.log)",
                    rows.len(),
                    request_ids.len(),
                    self.tag
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Makes every transaction that marks a session completed fail (a
    /// trigger in this test's private database) while `on`: the completion's
    /// MooseFS work is done, its commit is not, as in a crash between them.
    pub async fn fail_completions(&self, on: bool) {
        let pool = &self.ingest.store.pool;
        let statements: &[&str] = if on {
            &[
                "CREATE OR REPLACE FUNCTION test_fail() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'simulated crash before the commit'; END $$",
                "CREATE TRIGGER test_fail_completion BEFORE UPDATE ON upload_sessions
                 FOR EACH ROW WHEN (NEW.state = 'completed') EXECUTE FUNCTION test_fail()",
            ]
        } else {
            &["DROP TRIGGER IF EXISTS test_fail_completion ON upload_sessions"]
        };
        for statement in statements {
            sqlx::query(statement).execute(pool).await.unwrap();
        }
    }

    /// The mount path of a destination (relative to this pipeline's root).
    pub fn mount_path(&self, dest: &str) -> PathBuf {
        mount_dir()
            .join(self.mfs_root.trim_start_matches('/'))
            .join(dest)
    }

    /// Files left in the staging directories.
    pub async fn staging_files(&self) -> Vec<String> {
        let root = self.ingest.cfg.staging_root();
        let Ok((inode, _)) = self.ingest.mfs.resolve(&root).await else {
            return Vec::new();
        };
        let mut left = Vec::new();
        for dir in self.ingest.mfs.readdir(inode).await.unwrap() {
            for f in self.ingest.mfs.readdir(dir.inode).await.unwrap_or_default() {
                left.push(format!("{}/{}", dir.name, f.name));
            }
        }
        left
    }

    /// Waits until GC has deleted every abandoned inode and no staging file is left.
    pub async fn wait_staging_clean(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let pending = self.ingest.store.pending_abandoned().await.unwrap();
            let left = self.staging_files().await;
            if pending.is_empty() && left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "staging not clean: {} abandoned pending, files left: {left:?}",
                    pending.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for (_, mut child) in self.children.lock().unwrap().drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
        let _ = std::fs::remove_dir_all(&self.src_dir);
        let (root, db_name) = (self.mfs_root.clone(), self.db_name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mfs) = MfsClient::connect(ClientConfig::new(master())).await {
                    let _ = mfs.remove(&MfsPath::parse(&root).unwrap(), true).await;
                    mfs.close().await;
                }
                if let Ok(admin) = Store::connect(&format!("{}/postgres", pg_base()), 1).await {
                    let _ = sqlx::query(&format!(
                        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
                    ))
                    .execute(&admin.pool)
                    .await;
                }
            });
        })
        .join();
    }
}
