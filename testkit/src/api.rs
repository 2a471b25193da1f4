//! The coordinator's HTTP API served in-process on 127.0.0.1:0 against the
//! real PostgreSQL (`DATABASE_URL`, the shared database unless the test
//! points it elsewhere) and MooseFS, without RabbitMQ, relay or workers: for
//! the API, server-limit, auth and fuzz tests. Each instance has a source
//! directory of its own under /var/tmp/mfs-ingest/sources/ and a MooseFS
//! root of its own, `/tests/<prefix>-<pid>-<random>` (trash time 0);
//! dropping it stops the server, aborts the sessions it left open and
//! removes both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use coordinator::api::{ApiState, Auth};
use coordinator::server::{self, HttpLimits};
use moosefs::{MfsClient, MfsPath};
use serde_json::Value;
use shared::config::ServiceArgs;
use shared::ingest::Ingest;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::resources::DEFAULT_SOURCES_PARENT;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    services: ServiceArgs,
}

/// The service addresses from the environment, or the defaults.
pub fn service_args() -> ServiceArgs {
    Args::try_parse_from(["api-tests"])
        .expect("service settings from the environment")
        .services
}

/// Where a [`TestApi`] works: its settings (the services from the
/// environment, its own root and source dir), its source dir and root.
pub struct ApiPlace {
    pub args: ServiceArgs,
    pub sources: tempfile::TempDir,
    pub mfs_root: MfsPath,
}

/// A running API.
pub struct TestApi {
    pub ingest: Ingest,
    pub state: Arc<ApiState>,
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    /// The bearer token [`TestApi::post`] and friends send, if any.
    pub token: Option<String>,
    pub sources: tempfile::TempDir,
    pub mfs_root: MfsPath,
    pub args: ServiceArgs,
    pub shutdown: CancellationToken,
    pub server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Whether dropping this aborts the sessions left open (not needed
    /// with a private database that is dropped whole).
    pub abort_open_sessions: bool,
    /// Whether dropping this removes `mfs_root` (false for a second server
    /// sharing another's root).
    pub owns_root: bool,
}

impl TestApi {
    /// Connects to the services with a fresh root and serves the API.
    pub async fn start(prefix: &str, auth: Auth, limits: HttpLimits) -> TestApi {
        let place = Self::prepare(prefix);
        let ingest = place
            .args
            .ingest("mfs-ingest coordinator api tests", 8)
            .await
            .expect("PostgreSQL and MooseFS (is `scripts/stack up` running?)");
        Self::start_with(ingest, place, auth, limits).await
    }

    /// The settings, a source dir and a MooseFS root name, nothing created
    /// in MooseFS yet.
    pub fn prepare(prefix: &str) -> ApiPlace {
        let sources = Self::source_dir(prefix);
        let mfs_root = MfsPath::parse(&format!(
            "/tests/{prefix}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ))
        .unwrap();
        let mut args = service_args();
        args.mfs_root = mfs_root.to_string();
        args.source_roots = vec![sources.path().to_path_buf()];
        ApiPlace {
            args,
            sources,
            mfs_root,
        }
    }

    /// A fresh source directory `<prefix>-*` under /var/tmp/mfs-ingest/sources.
    pub fn source_dir(prefix: &str) -> tempfile::TempDir {
        std::fs::create_dir_all(DEFAULT_SOURCES_PARENT).unwrap();
        tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(DEFAULT_SOURCES_PARENT)
            .unwrap()
    }

    /// Creates the root (and /tests, trash time 0), migrates, serves.
    pub async fn start_with(
        ingest: Ingest,
        place: ApiPlace,
        auth: Auth,
        limits: HttpLimits,
    ) -> TestApi {
        let tests = ingest
            .mfs
            .mkdir_all(&MfsPath::parse(moosefs::testing::TESTS_ROOT).unwrap())
            .await
            .unwrap();
        ingest.mfs.set_trash_time(tests, 0, false).await.unwrap();
        let root = ingest.mfs.mkdir_all(&place.mfs_root).await.unwrap();
        ingest.mfs.set_trash_time(root, 0, false).await.unwrap();
        ingest.store.migrate().await.unwrap();
        Self::serve(ingest, place, auth, limits).await
    }

    /// Serves an API on `ingest` as it is (its services may be down).
    pub async fn serve(ingest: Ingest, place: ApiPlace, auth: Auth, limits: HttpLimits) -> TestApi {
        let ApiPlace {
            args,
            sources,
            mfs_root,
        } = place;
        let state = Arc::new(ApiState::new(
            ingest.clone(),
            auth,
            Arc::new(|| "# TYPE api_test_metric counter\napi_test_metric 1\n".to_string()),
            limits.body_limit,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = server::app(state.clone(), &limits);
        let server = tokio::spawn(server::serve(listener, app, limits, shutdown.clone()));
        TestApi {
            ingest,
            state,
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            token: None,
            sources,
            mfs_root,
            args,
            shutdown,
            server: Some(server),
            abort_open_sessions: true,
            owns_root: true,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A sparse source file of `size` bytes; returns its `file://` URL.
    pub fn source(&self, name: &str, size: u64) -> String {
        let path = self.sources.path().join(name);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        format!("file://{}", path.display())
    }

    pub fn source_prefix(&self) -> String {
        format!("file://{}/", self.sources.path().display())
    }

    /// `rb` with the bearer token, if this API has one.
    pub fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.authed(self.http.post(self.url(path)).json(body))
            .send()
            .await
            .unwrap()
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        content_type: &str,
    ) -> reqwest::Response {
        self.authed(
            self.http
                .post(self.url(path))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body),
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.authed(self.http.get(self.url(path)))
            .send()
            .await
            .unwrap()
    }

    pub async fn sessions_with_request_id(&self, request_id: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM upload_sessions WHERE request_id = $1")
            .bind(request_id)
            .fetch_one(&self.ingest.store.pool)
            .await
            .unwrap()
    }

    /// Sessions of any state whose source is in this test's source dir.
    pub async fn sessions_from_my_sources(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM upload_sessions WHERE starts_with(source, $1)")
            .bind(self.source_prefix())
            .fetch_one(&self.ingest.store.pool)
            .await
            .unwrap()
    }

    pub async fn assert_no_session(&self, request_id: &str, case: &str) {
        assert!(
            self.ingest
                .store
                .session_by_request(request_id)
                .await
                .unwrap()
                .is_none(),
            "{case}: a session was created for a refused request"
        );
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let args = self.args.clone();
        let prefix = self.abort_open_sessions.then(|| self.source_prefix());
        let root = self.owns_root.then(|| self.mfs_root.clone());
        // Cleanup needs async I/O; run it on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(cleanup(args, prefix, root));
        })
        .join();
    }
}

/// Aborts the sessions the test left open (so that a relay and workers
/// started later find nothing to do) and removes its MooseFS root.
async fn cleanup(args: ServiceArgs, prefix: Option<String>, root: Option<MfsPath>) {
    let ingest = match args.ingest("mfs-ingest api tests cleanup", 1).await {
        Ok(ingest) => ingest,
        Err(e) => return eprintln!("cleanup impossible: {e}"),
    };
    let open: Vec<Uuid> = match prefix {
        Some(prefix) => sqlx::query_scalar(
            "SELECT id FROM upload_sessions WHERE state = 'open' AND starts_with(source, $1)",
        )
        .bind(&prefix)
        .fetch_all(&ingest.store.pool)
        .await
        .unwrap_or_default(),
        None => Vec::new(),
    };
    for id in open {
        if let Err(e) = ingest
            .end_session(id, shared::store::SessionState::Aborted, "test cleanup")
            .await
        {
            eprintln!("cleanup: aborting {id} failed: {e}");
        }
    }
    if let Some(root) = root {
        if let Err(e) = ingest.mfs.remove(&root, true).await {
            eprintln!("cleanup of {root} failed: {e}");
        }
    }
    ingest.mfs.close().await;
}

/// Connects an MfsClient that counts the master requests named `op`.
pub async fn counting_client(
    master: &str,
    op: &'static str,
) -> (MfsClient, Arc<std::sync::atomic::AtomicU64>) {
    struct Count {
        op: &'static str,
        n: Arc<std::sync::atomic::AtomicU64>,
    }
    impl moosefs::observe::Observer for Count {
        fn master_request(&self, op: &'static str, _seconds: f64, _outcome: &'static str) {
            if op == self.op {
                self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let client = MfsClient::connect_observed(
        moosefs::ClientConfig::new(master),
        Arc::new(Count { op, n: n.clone() }),
    )
    .await
    .expect("MooseFS master");
    (client, n)
}
