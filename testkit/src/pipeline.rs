//! A private pipeline per test, on the real services: its own PostgreSQL
//! database, RabbitMQ vhost, MooseFS root and source directory
//! ([`crate::resources`]), an [`Ingest`] on them for the test to look with,
//! requests published straight to the queue, waits on the sessions, and
//! everything removed on drop. The coordinator and workers run in-process
//! ([`crate::apps`]) or as the real binaries ([`crate::processes`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use md5::{Digest, Md5};
use moosefs::MfsPath;
use rand::{RngCore, SeedableRng};
use shared::ingest::{Ingest, IngestConfig};
use shared::queue::{IngestBatch, IngestRequest, Outgoing, Publisher, REQUESTS_QUEUE};
use shared::source::SourceConfig;
use shared::store::Session;

use crate::digest::hex;
use crate::env::{mount_dir, unique_tag};
use crate::resources::PrivateResources;

/// Everything one test's pipeline uses.
pub struct Pipeline {
    pub tag: String,
    pub database_url: String,
    pub amqp_url: String,
    pub mfs_root: String,
    pub src_dir: PathBuf,
    pub ingest: Ingest,
    pub publisher: Arc<Publisher>,
    pub(crate) resources: PrivateResources,
    pub(crate) children: Mutex<HashMap<String, Child>>,
}

impl Pipeline {
    /// Creates the private resources of a fresh tag `<name>-<random>`.
    pub async fn new(name: &str) -> Pipeline {
        let resources = PrivateResources::for_tag(&unique_tag(name));
        let tag = resources.tag.clone();
        let (store, mfs) = resources.create(&format!("pipeline test {tag}")).await;
        let ingest = Ingest {
            cfg: Arc::new(IngestConfig {
                root: MfsPath::parse(&resources.mfs_root).unwrap(),
                default_goal: 3,
                default_part_size: 64 << 20,
                limits: Default::default(),
                sources: SourceConfig::new(vec![resources.src_dir.clone()]),
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
            publisher: Arc::new(Publisher::new(&resources.amqp_url, &format!("test {tag}"))),
            tag,
            database_url: resources.database_url.clone(),
            amqp_url: resources.amqp_url.clone(),
            mfs_root: resources.mfs_root.clone(),
            src_dir: resources.src_dir.clone(),
            ingest,
            resources,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// Environment for the binaries.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.resources.env();
        env.extend(
            [
                ("INGEST_HTTP_ADDR", "127.0.0.1:0"),
                ("WORKER_HTTP_ADDR", "127.0.0.1:0"),
                ("RUST_LOG", "info,lapin=warn,sqlx=warn"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env
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
        (format!("file://{}", path.display()), hex(&h.finalize()))
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
                    "timed out: {} of {} sessions exist, {open} still open (logs: {}/{}-*.log)",
                    rows.len(),
                    request_ids.len(),
                    crate::env::LOG_DIR,
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

/// Asserts every session completed (else lists the others with their errors).
pub fn assert_all_completed(sessions: &[Session]) {
    let not_completed: Vec<_> = sessions
        .iter()
        .filter(|s| s.state != "completed")
        .map(|s| (&s.request_id, &s.state, &s.error))
        .collect();
    assert!(not_completed.is_empty(), "not completed: {not_completed:?}");
}

/// Requests of one test and the files they should produce.
#[derive(Default)]
pub struct Batch {
    pub requests: Vec<IngestRequest>,
    /// (destination, md5 of its source), in request order.
    pub expected: Vec<(String, String)>,
}

impl Batch {
    /// Writes the source `name` of `p` (`size` pseudo-random bytes from
    /// `seed`) and adds the request `id` that ingests it to `dest`; returns
    /// that request for the test to adjust.
    pub fn add(
        &mut self,
        p: &Pipeline,
        id: &str,
        name: &str,
        dest: &str,
        size: usize,
        seed: u64,
    ) -> &mut IngestRequest {
        let (url, md5) = p.source(name, size, seed);
        self.requests.push(p.request(id, &url, dest));
        self.expected.push((dest.to_string(), md5));
        self.requests.last_mut().expect("just added")
    }

    /// The request ids, in order.
    pub fn ids(&self) -> Vec<String> {
        self.requests.iter().map(|r| r.request_id.clone()).collect()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill_all();
        self.resources.remove();
    }
}
