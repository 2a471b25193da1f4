//! The coordinator's HTTP API (axum): create uploads one by one or in
//! batches, read an upload's state with per-part progress, abort an upload,
//! and the probes (`/healthz`, `/readyz`) and `/metrics`.
//!
//! Conventions (DESIGN.md): JSON bodies; every error is an RFC 9457
//! `application/problem+json` document `{"type","title","status","detail"}`;
//! `/v1/*` needs `Authorization: Bearer <token>` naming one of the configured
//! [`ApiTokens`] (unless the server runs with `--insecure-no-auth`), and every
//! mutating request is logged with the token's name; the probes and
//! `/metrics` never need a token, and `/readyz` asks PostgreSQL and MooseFS
//! at most once per [`READY_CACHE_TTL`]. Requests are validated by
//! [`Ingest::submit`] before anything is written, so a rejected request
//! changes nothing. The server's limits (timeouts, body limit, concurrency)
//! are applied around this router by [`crate::server`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use shared::ingest::Ingest;

mod access;
mod probes;
mod problem;
mod uploads;
mod views;

use probes::{healthz, metrics, readyz, ReadyCache};
use problem::{method_not_allowed, not_found};
use uploads::{abort_upload, create_batch, create_upload, get_upload};

pub use access::{authenticate, is_v1, track_http, Auth, Caller};
pub use problem::{body_too_large, Problem};
pub use views::{PartView, PartsView, SessionView};

/// Largest accepted request body unless configured otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;
/// The default body limit (the name before it became configurable).
pub const MAX_BODY_BYTES: usize = DEFAULT_BODY_LIMIT;
/// Most items in one batch (the same cap holds for `ingest.requests`).
pub const MAX_BATCH_ITEMS: usize = shared::queue::MAX_BATCH_ITEMS;
/// Items of a batch submitted at the same time.
const BATCH_CONCURRENCY: usize = 8;
/// Bound of one submit (the source is stat'ed: an HTTP source's HEAD may
/// take up to its own 30 s timeout; PostgreSQL's pool waits up to 10 s).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of a read of one session and its parts.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound of an abort (it waits for the session row lock, which a running
/// completion holds until it is done).
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of each readiness check.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a readiness answer is reused: `/readyz` asks PostgreSQL and
/// MooseFS at most once per this time, however often it is hit.
pub const READY_CACHE_TTL: Duration = Duration::from_secs(1);
/// Content type of the Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// Seconds a shed client is asked to wait.
const OVERLOAD_RETRY_AFTER: &str = "1";

/// What the handlers share.
pub struct ApiState {
    pub ingest: Ingest,
    pub auth: Auth,
    /// Renders the Prometheus text exposition for `/metrics`.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// Largest request body (the same as the server's body limit).
    body_limit: usize,
    ready: ReadyCache,
}

impl ApiState {
    pub fn new(
        ingest: Ingest,
        auth: Auth,
        metrics: Arc<dyn Fn() -> String + Send + Sync>,
        body_limit: usize,
    ) -> ApiState {
        ApiState {
            ingest,
            auth,
            metrics,
            body_limit,
            ready: ReadyCache::default(),
        }
    }

    /// How many readiness checks (PostgreSQL and MooseFS round trips) ran.
    pub fn readiness_checks(&self) -> u64 {
        self.ready.checks()
    }
}

type AppState = Arc<ApiState>;

/// The API's routes, with authentication, the extractors' body limit, and
/// problem documents for unknown routes and methods (the server's other
/// limits are added by [`crate::server::app`]).
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/uploads", post(create_upload))
        .route("/v1/batches", post(create_batch))
        .route("/v1/uploads/{id}", get(get_upload))
        .route("/v1/uploads/{id}/abort", post(abort_upload))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The last layer added runs first: authentication before any body is read.
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}
