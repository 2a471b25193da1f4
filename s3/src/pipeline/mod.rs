//! The adapter: the ONE module of this crate that calls the shared crate's
//! pipeline (ingest, store, metrics, MooseFS client). Everything else in the
//! crate speaks S3 and calls these functions, so a restructured pipeline core
//! changes this module only. The statements on the pipeline's tables are the
//! store's ([`shared::store::Store::share_session`] and its neighbours, in
//! `shared/src/store/pushed.rs`); those on the endpoint's own tables are in
//! [`crate::index`], run in the same transactions through
//! [`SessionLock::conn`](shared::store::SessionLock::conn).
//!
//! - this file: the handle ([`Pipeline`]), its errors, object paths;
//! - [`parts`]: part attempts (token, staging write, commit);
//! - [`uploads`]: an upload's session (open, freeze, complete, end);
//! - [`objects`]: buckets and objects in MooseFS (directories, delete, a
//!   GET's open file and its bytes);
//! - [`copies`]: an object's file as a part by reference (CopyObject), an
//!   object's range as the body of a part (UploadPartCopy).
//!
//! What it adds to the pipeline, in its terms: a session whose parts are
//! *pushed* (an S3 upload). Such a session is created in the state
//! `receiving` (migration 0005) with no `upload_parts` rows; each part
//! attempt takes a fencing token from PostgreSQL (`s3_parts.attempts`),
//! writes a fresh staging inode named like any part attempt's
//! (`<session>-p<part>-t<token>`) from the request body (every replica
//! acknowledged, CRCs verified by the MooseFS writer), and is committed in a
//! transaction that holds the session row `FOR SHARE` and checks the state
//! and the token; a replaced or late inode is recorded in `abandoned_inodes`.
//! [`Pipeline::freeze`] turns the chosen parts into committed `upload_parts`
//! rows (state `open`) in one transaction holding the session row
//! `FOR UPDATE`; [`Pipeline::complete`] then runs the pipeline's own locked
//! completion (`Ingest::complete`: APPEND_SLICE or copy assembly, rename into
//! place, `upload.completed` event, metrics), whose transaction also writes
//! the object row (the trigger of migration 0007, see [`crate::index`]).
//!
//! A single-part upload (PutObject) takes the same steps with fewer
//! transactions: [`Pipeline::open_single`] opens it and counts its part's
//! first attempt at once (asynchronous commit: nothing is answered on it),
//! and [`Pipeline::commit_and_freeze`] commits the part and freezes the
//! upload under one `FOR UPDATE` lock; the completion stays its own
//! transaction, after the freeze is durable, since its rename can only be
//! redone (by the reconciler) from a committed freeze.

use std::sync::Arc;
use std::time::Duration;

use moosefs::{MfsError, MfsPath, Name};
use shared::ingest::{CompletionError, Ingest};
use shared::store::{Store, StoreError};
use sqlx::PgPool;

mod copies;
mod objects;
mod parts;
mod uploads;

pub use copies::SourceObject;
pub use objects::{KeyLock, OpenObject};
pub use parts::{CommittedPart, PartCommitted, WrittenPart};
pub use shared::config::ServiceArgs;
/// The state of a session whose parts are being pushed (migration 0005).
pub use uploads::{CommitAndFreeze, Completed, FreezePlan, Frozen, NewUpload, Placed};

/// Pipeline failures, as this crate sees them.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("MooseFS: {0}")]
    Mfs(#[from] MfsError),
    #[error("completion: {0}")]
    Completion(#[from] CompletionError),
    #[error("start-up: {0}")]
    Config(String),
    /// The body ended before (or went past) its declared length.
    #[error("the request body has {got} bytes, {declared} were declared")]
    BodyLength { got: u64, declared: u64 },
    /// The body could not be read (client gone, limit, timeout).
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// The file of a copy's source object is gone (the object was replaced
    /// or deleted since its row was read).
    #[error("the copy source changed: {0}")]
    SourceGone(String),
    /// The access key already has `open` uploads receiving parts, the bound.
    #[error(
        "this access key has {open} uploads in progress, the limit is {limit} \
         (S3_MAX_OPEN_UPLOADS_PER_KEY): complete or abort some first"
    )]
    TooManyOpenUploads { open: i64, limit: u32 },
}

impl PipelineError {
    /// Whether a path a client asked for cannot exist in MooseFS.
    pub fn is_invalid_path(&self) -> bool {
        matches!(self, PipelineError::Mfs(MfsError::InvalidPath { .. }))
    }
}

/// Uploads one access key may have receiving parts unless set otherwise
/// (`S3_MAX_OPEN_UPLOADS_PER_KEY`).
pub const DEFAULT_MAX_OPEN_UPLOADS: u32 = 1000;

/// The pipeline handle of the S3 endpoint.
#[derive(Clone)]
pub struct Pipeline {
    ingest: Ingest,
    /// The S3 root relative to the ingest root (session destinations).
    s3_root: MfsPath,
    goal: u8,
    worker: Arc<str>,
    /// Multipart uploads are refused past this many receiving per key.
    max_open_uploads: Option<u32>,
}

impl Pipeline {
    /// Connects to PostgreSQL and MooseFS with the pipeline's settings.
    pub async fn connect(
        services: &ServiceArgs,
        s3_root: &str,
        client_info: &str,
        db_connections: u32,
    ) -> Result<Pipeline, PipelineError> {
        let ingest = services
            .ingest(client_info, db_connections)
            .await
            .map_err(|e| PipelineError::Config(e.to_string()))?;
        let s3_root = MfsPath::parse(s3_root)?;
        if s3_root.is_root() {
            return Err(PipelineError::Config(
                "the S3 root must be a directory below the ingest root".into(),
            ));
        }
        if s3_root.components()[0].as_str() == shared::ingest::SYSTEM_DIR {
            return Err(PipelineError::Config(format!(
                "the S3 root may not be inside {}",
                shared::ingest::SYSTEM_DIR
            )));
        }
        let goal = ingest.cfg.default_goal;
        Ok(Pipeline {
            ingest,
            s3_root,
            goal,
            worker: Arc::from(client_info),
            max_open_uploads: Some(DEFAULT_MAX_OPEN_UPLOADS),
        })
    }

    /// PostgreSQL only (the key commands need no MooseFS).
    pub async fn connect_db(services: &ServiceArgs) -> Result<PgPool, PipelineError> {
        let store = Store::connect(&services.database_url, 2).await?;
        Ok(store.pool)
    }

    /// Runs the migrations (the pipeline's, 0005 included).
    pub async fn migrate(pool: &PgPool) -> Result<(), PipelineError> {
        Store { pool: pool.clone() }.migrate().await?;
        Ok(())
    }

    /// Bounds the uploads one access key may have receiving parts when it
    /// opens a multipart upload (0 = no bound).
    pub fn set_max_open_uploads(&mut self, max: u32) {
        self.max_open_uploads = (max > 0).then_some(max);
    }

    /// Bounds the MiB of part bodies written to MooseFS at once.
    pub fn set_write_budget_mib(&mut self, mib: u32) {
        self.ingest.write_budget = shared::ingest::WriteBudget::mib(mib);
    }

    pub fn pool(&self) -> &PgPool {
        &self.ingest.store.pool
    }

    /// The prometheus registry the pipeline's metrics are in (`/metrics`).
    pub fn registry() -> &'static prometheus::Registry {
        shared::metrics::registry()
    }

    /// The process's metrics in the text exposition format.
    pub fn render_metrics() -> String {
        shared::metrics::render()
    }

    pub fn set_build_info() {
        shared::metrics::set_build_info(shared::metrics::Component::S3);
    }

    pub async fn close(&self) {
        self.ingest.mfs.close().await;
    }

    /// This process's MooseFS master session (whose open files hold the
    /// objects being read: `mfscli -SOF` lists them by this id).
    pub fn master_session_id(&self) -> u32 {
        self.ingest.mfs.session().session_id
    }

    /// A session destination (relative to the ingest root) of an object.
    fn dest(&self, bucket: &str, key: &str) -> Result<String, PipelineError> {
        let path = self.object_rel_path(bucket, key)?;
        Ok(path.to_string().trim_start_matches('/').to_string())
    }

    fn object_rel_path(&self, bucket: &str, key: &str) -> Result<MfsPath, PipelineError> {
        let mut path = self.s3_root.join(&Name::parse(bucket)?);
        for part in key.split('/') {
            path = path.join(&Name::parse(part)?);
        }
        Ok(path)
    }

    /// Checks that a key names a MooseFS path: components of 1..=255 bytes,
    /// no `.`/`..`, no empty component (`a//b`, a leading or trailing `/`).
    pub fn check_key(&self, bucket: &str, key: &str) -> Result<(), PipelineError> {
        self.object_rel_path(bucket, key).map(|_| ())
    }

    fn full_path(&self, rel: &MfsPath) -> MfsPath {
        let mut full = self.ingest.cfg.root.clone();
        for c in rel.components() {
            full = full.join(c);
        }
        full
    }

    /// Fails a completion read by the client's deadline: nothing to do
    /// here, the session stays `open` and the reconciler completes it.
    pub fn completion_deadline(&self) -> Duration {
        self.ingest.cfg.completion_deadline
    }
}

/// A failure of one of the pushed-session statements of the store: a
/// PostgreSQL failure is [`PipelineError::Db`], like one on the crate's own
/// tables (answered `503`, which clients retry).
fn db_statement(e: StoreError) -> PipelineError {
    match e {
        StoreError::Db(e) => PipelineError::Db(e),
        other => PipelineError::Store(other),
    }
}

/// A token cancelled on SIGTERM/SIGINT.
pub fn shutdown_on_signals() -> tokio_util::sync::CancellationToken {
    shared::process::shutdown_on_signals()
}
