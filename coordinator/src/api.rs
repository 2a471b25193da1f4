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

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::ingest::{Ingest, RequestError};
use shared::jobs::IngestRequest;
use shared::limits::PartLimitError;
use shared::store::{state, Part, Session, StoreError};
use uuid::Uuid;

use crate::auth::ApiTokens;

/// Largest accepted request body unless configured otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;
/// The default body limit (the name before it became configurable).
pub const MAX_BODY_BYTES: usize = DEFAULT_BODY_LIMIT;
/// Most items in one batch (the same cap holds for `ingest.requests`).
pub const MAX_BATCH_ITEMS: usize = shared::jobs::MAX_BATCH_ITEMS;
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

/// Who may call `/v1/*`.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A bearer token naming one of these (none configured: nobody).
    Tokens(ApiTokens),
    /// Anybody: only with the explicit `--insecure-no-auth`.
    Open,
}

/// The caller of a request, as authentication found it (a request
/// extension): the token's name, or `anonymous` without authentication.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// The last readiness answer and when it was found.
#[derive(Default)]
struct ReadyCache {
    last: tokio::sync::Mutex<Option<(Instant, Readiness)>>,
    checks: AtomicU64,
}

/// The outcome of one readiness check: per service, `Err(reason)` if down.
#[derive(Clone)]
struct Readiness {
    db: Result<(), String>,
    mfs: Result<(), String>,
}

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
        self.ready.checks.load(Ordering::Relaxed)
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

// ---------------------------------------------------------------------------
// Problem documents

/// An RFC 9457 problem document as a response.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    extra: Option<serde_json::Value>,
}

impl Problem {
    fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            headers: Vec::new(),
            extra: None,
        }
    }

    /// A request shed by the concurrency limit.
    pub fn overloaded() -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Too many requests in flight",
            "the coordinator is handling as many requests as it is configured to; try again shortly",
        )
        .header(header::RETRY_AFTER, OVERLOAD_RETRY_AFTER)
    }

    /// A request that did not complete within the server's request timeout.
    pub fn request_timeout(limit: Duration) -> Self {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            format!("the request was not completed within {}s", limit.as_secs()),
        )
    }

    /// Any other error status, for a response that had no document.
    pub fn bare(status: StatusCode) -> Self {
        let reason = status.canonical_reason().unwrap_or("Error");
        Problem::new(status, "http-error", reason, reason.to_string())
    }

    fn header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// The document itself.
    fn body(&self) -> serde_json::Value {
        let mut body = json!({
            "type": format!("urn:mfs-ingest:problem:{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (&self.extra, body.as_object_mut())
        {
            for (k, v) in extra {
                obj.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        body
    }

    /// A server-side failure: logged in full, reported with a short reason.
    fn unavailable(what: &'static str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %error, "{what} unavailable while serving an API request");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service-unavailable",
            "Service unavailable",
            format!("{what} is unavailable; try again later"),
        )
        .header(header::RETRY_AFTER, "5")
    }

    fn timed_out(what: &'static str, after: Duration) -> Self {
        tracing::error!(?after, "{what} timed out while serving an API request");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Service unavailable",
            format!(
                "{what} did not finish within {}s; try again later",
                after.as_secs()
            ),
        )
        .header(header::RETRY_AFTER, "5")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
            )],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// A malformed body: axum's rejection, with serde's message kept.
fn json_problem(rejection: JsonRejection, body_limit: usize) -> Problem {
    match &rejection {
        JsonRejection::JsonSyntaxError(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            rejection.body_text(),
        ),
        JsonRejection::JsonDataError(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Invalid request body",
            rejection.body_text(),
        ),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the body must be JSON sent with Content-Type: application/json",
        ),
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => body_too_large(body_limit),
        _ => Problem::new(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "Unreadable request body",
            rejection.body_text(),
        ),
    }
}

/// A body over the limit.
pub fn body_too_large(limit: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Request body too large",
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// A refused ingest request: the client's fault (409/422) or the system's
/// (502 for a source that cannot be reached now, 503 otherwise).
fn request_problem(e: RequestError) -> Problem {
    if e.is_client_error() {
        let (status, kind) = match &e {
            RequestError::DestExists(_) => (StatusCode::CONFLICT, "dest-exists"),
            RequestError::DestIsDirectory(_) => (StatusCode::CONFLICT, "dest-is-directory"),
            RequestError::Conflict(_) => (StatusCode::CONFLICT, "request-id-conflict"),
            RequestError::BadRequestId => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request-id"),
            RequestError::BadDest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-dest"),
            RequestError::Source(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-source"),
            RequestError::SizeMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "size-mismatch")
            }
            RequestError::TooLarge { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "too-large"),
            RequestError::BadMd5 => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-md5"),
            RequestError::BadGoal | RequestError::GoalAboveChunkservers { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid-goal")
            }
            RequestError::Parts(PartLimitError::BadPartSize { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid-part-size")
            }
            RequestError::Parts(PartLimitError::TooManyParts { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "too-many-parts")
            }
            RequestError::DestLimit(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-dest"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
        };
        let title = if status == StatusCode::CONFLICT {
            "Conflict"
        } else {
            "Invalid upload request"
        };
        tracing::debug!(error = %e, "upload request refused");
        return Problem::new(status, kind, title, e.to_string());
    }
    match &e {
        RequestError::Source(source) => {
            // The caller's own source (an HTTP server) failed: say so.
            tracing::warn!(error = %source, "source unavailable");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "source-unavailable",
                "Source unavailable",
                e.to_string(),
            )
            .header(header::RETRY_AFTER, "30")
        }
        RequestError::Mfs(inner) => Problem::unavailable("MooseFS", inner),
        RequestError::Store(inner) => store_problem(inner),
        other => Problem::unavailable("the coordinator", other),
    }
}

fn store_problem(e: &StoreError) -> Problem {
    Problem::unavailable("PostgreSQL", e)
}

/// Runs `fut` with a bound; a timeout is a 503.
async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, Problem> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Problem::timed_out(what, limit))
}

fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, Problem> {
    let raw = path
        .map_err(|r| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-id",
                "Invalid upload id",
                r.body_text(),
            )
        })?
        .0;
    Uuid::parse_str(&raw).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-id",
            "Invalid upload id",
            "an upload id is a UUID like 0b5e4c1e-8d6e-4c39-9d55-2a3f1f6e7a10",
        )
    })
}

fn upload_not_found(id: Uuid) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "upload-not-found",
        "Upload not found",
        format!("no upload with id {id}"),
    )
}

// ---------------------------------------------------------------------------
// Authentication

/// Whether `path` is under `/v1` (the authenticated, limited part).
pub fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Checks the bearer token on `/v1/*` and logs every mutating request with
/// the caller's token name (never the token).
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if !is_v1(req.uri().path()) {
        return next.run(req).await;
    }
    let caller = match &st.auth {
        Auth::Open => "anonymous".to_string(),
        Auth::Tokens(tokens) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            match presented.map(|token| tokens.verify(token)) {
                Some(Some(name)) => name.to_string(),
                presented => return unauthorized(&req, presented.is_some()),
            }
        }
    };
    let method = req.method().clone();
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let path = req.uri().path().to_string();
    req.extensions_mut().insert(Caller(caller.clone()));
    let response = next.run(req).await;
    if mutating {
        tracing::info!(token = %caller, %method, %path, status = response.status().as_u16(),
            "API request");
    }
    response
}

/// The answer to a `/v1/*` request without a valid token.
fn unauthorized(req: &Request, had_token: bool) -> Response {
    tracing::warn!(method = %req.method(), path = %req.uri().path(), had_token,
        "API request refused: no valid bearer token");
    let (detail, challenge) = if had_token {
        (
            "the bearer token is not valid",
            "Bearer error=\"invalid_token\"",
        )
    } else {
        (
            "this endpoint needs an Authorization: Bearer <token> header",
            "Bearer",
        )
    };
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
    .header(header::WWW_AUTHENTICATE, challenge)
    .into_response()
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Counts every HTTP request by route template (never the raw path, so ids
/// do not become labels), method and status class, and times it.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    shared::metrics::http_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

// ---------------------------------------------------------------------------
// Views

/// An upload as the API shows it.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub id: Uuid,
    pub request_id: String,
    pub state: String,
    pub source: String,
    pub dest: String,
    pub size: i64,
    pub part_size: i64,
    pub part_count: i32,
    pub goal: i16,
    pub overwrite: bool,
    /// MD5 of the stored file (once known).
    pub md5: Option<String>,
    /// CRC-32C of the stored file (once completed).
    pub crc32c: Option<u32>,
    pub expected_md5: Option<String>,
    pub expected_crc32c: Option<u32>,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub parts: PartsView,
}

#[derive(Debug, Serialize)]
pub struct PartsView {
    pub total: usize,
    pub committed: usize,
    pub items: Vec<PartView>,
}

#[derive(Debug, Serialize)]
pub struct PartView {
    pub part_number: i32,
    pub offset: i64,
    pub size: i64,
    pub attempts: i32,
    pub committed: bool,
    /// The worker of the latest attempt.
    pub worker: Option<String>,
}

impl SessionView {
    pub fn new(s: Session, parts: Vec<Part>) -> Self {
        let items: Vec<PartView> = parts
            .into_iter()
            .map(|p| PartView {
                part_number: p.part_number,
                offset: p.part_offset,
                size: p.size,
                attempts: p.attempts,
                committed: p.committed_token.is_some(),
                worker: p.worker,
            })
            .collect();
        SessionView {
            id: s.id,
            request_id: s.request_id,
            state: s.state,
            // A password in an http(s) source URL is not shown back.
            source: shared::config::mask_url(&s.source),
            dest: s.dest,
            size: s.size,
            part_size: s.part_size,
            part_count: s.part_count,
            goal: s.goal,
            overwrite: s.overwrite,
            md5: s.md5,
            crc32c: s.crc32c.map(|c| c as u32),
            expected_md5: s.expected_md5,
            expected_crc32c: s.expected_crc32c.map(|c| c as u32),
            error: s.error,
            created_at: s.created_at,
            updated_at: s.updated_at,
            finished_at: s.finished_at,
            parts: PartsView {
                total: items.len(),
                committed: items.iter().filter(|p| p.committed).count(),
                items,
            },
        }
    }
}

/// The view of a session whose row was just read: its parts are read now.
async fn view_of(st: &ApiState, session: Session) -> Result<SessionView, Problem> {
    let parts = bounded(
        "reading the upload's parts",
        READ_TIMEOUT,
        st.ingest.store.parts(session.id),
    )
    .await?
    .map_err(|e| store_problem(&e))?;
    Ok(SessionView::new(session, parts))
}

// ---------------------------------------------------------------------------
// Handlers

async fn create_upload(
    State(st): State<AppState>,
    body: Result<Json<IngestRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(req) = body.map_err(|r| json_problem(r, st.body_limit))?;
    let (session, created) = bounded(
        "creating the upload",
        SUBMIT_TIMEOUT,
        st.ingest.submit(&req),
    )
    .await?
    .map_err(request_problem)?;
    if created {
        tracing::info!(id = %session.id, request_id = %session.request_id, dest = %session.dest,
            size = session.size, parts = session.part_count, "upload created");
    }
    let location = format!("/v1/uploads/{}", session.id);
    let view = view_of(&st, session).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// A batch body: the items are parsed one by one, so a malformed item is
/// reported on its own and does not stop the others.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    items: Vec<serde_json::Value>,
}

async fn create_batch(
    State(st): State<AppState>,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(batch) = body.map_err(|r| json_problem(r, st.body_limit))?;
    if batch.items.is_empty() || batch.items.len() > MAX_BATCH_ITEMS {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-batch",
            "Invalid batch",
            format!(
                "a batch has 1..={MAX_BATCH_ITEMS} items, this one has {}",
                batch.items.len()
            ),
        ));
    }
    let results: Vec<serde_json::Value> =
        futures::stream::iter(batch.items.into_iter().enumerate())
            .map(|(index, item)| {
                let st = st.clone();
                async move { batch_item(&st, index, item).await }
            })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await;
    Ok((StatusCode::OK, Json(json!({ "items": results }))).into_response())
}

async fn batch_item(st: &ApiState, index: usize, item: serde_json::Value) -> serde_json::Value {
    let request_id = item
        .get("request_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let req: IngestRequest = match serde_json::from_value(item) {
        Ok(r) => r,
        Err(e) => {
            let p = Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-body",
                "Invalid request body",
                format!("items[{index}]: {e}"),
            );
            return json!({ "request_id": request_id, "error": p.body() });
        }
    };
    let outcome = bounded(
        "creating the upload",
        SUBMIT_TIMEOUT,
        st.ingest.submit(&req),
    )
    .await
    .and_then(|r| r.map_err(request_problem));
    match outcome {
        Ok((session, created)) => {
            if created {
                tracing::info!(id = %session.id, request_id = %session.request_id,
                    dest = %session.dest, size = session.size, parts = session.part_count,
                    "upload created (batch)");
            }
            json!({
                "request_id": session.request_id,
                "id": session.id,
                "state": session.state,
                "created": created,
            })
        }
        Err(p) => json!({ "request_id": req.request_id, "error": p.body() }),
    }
}

async fn get_upload(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionView>, Problem> {
    let id = parse_id(path)?;
    let session = bounded(
        "reading the upload",
        READ_TIMEOUT,
        st.ingest.store.session(id),
    )
    .await?
    .map_err(|e| store_problem(&e))?
    .ok_or_else(|| upload_not_found(id))?;
    Ok(Json(view_of(&st, session).await?))
}

async fn abort_upload(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionView>, Problem> {
    let id = parse_id(path)?;
    let ended = bounded(
        "aborting the upload",
        ABORT_TIMEOUT,
        st.ingest
            .end_session(id, state::ABORTED, "aborted by request"),
    )
    .await?
    .map_err(|e| store_problem(&e))?;
    let session = bounded(
        "reading the upload",
        READ_TIMEOUT,
        st.ingest.store.session(id),
    )
    .await?
    .map_err(|e| store_problem(&e))?
    .ok_or_else(|| upload_not_found(id))?;
    if !ended {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "upload-not-open",
            "Upload cannot be aborted",
            format!(
                "upload {id} is {}; only open uploads can be aborted",
                session.state
            ),
        ));
    }
    tracing::info!(%id, request_id = %session.request_id, "upload aborted by request");
    Ok(Json(view_of(&st, session).await?))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Asks PostgreSQL and MooseFS, both under [`READY_TIMEOUT`].
async fn check_readiness(st: &ApiState) -> Readiness {
    st.ready.checks.fetch_add(1, Ordering::Relaxed);
    let (db, mfs) = tokio::join!(
        tokio::time::timeout(READY_TIMEOUT, st.ingest.store.ping()),
        tokio::time::timeout(READY_TIMEOUT, st.ingest.mfs.statfs()),
    );
    fn check<T, E: std::fmt::Display>(
        what: &str,
        r: Result<Result<T, E>, tokio::time::error::Elapsed>,
    ) -> Result<(), String> {
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "readiness: {what} is down");
                Err(format!("{what} is down"))
            }
            Err(_) => {
                tracing::error!("readiness: {what} did not answer within {READY_TIMEOUT:?}");
                Err(format!(
                    "{what} did not answer within {}s",
                    READY_TIMEOUT.as_secs()
                ))
            }
        }
    }
    Readiness {
        db: check("PostgreSQL", db),
        mfs: check("MooseFS", mfs),
    }
}

/// The readiness answer, reused for [`READY_CACHE_TTL`]: concurrent hits
/// wait for the one check in progress instead of starting their own.
async fn cached_readiness(st: &ApiState) -> Readiness {
    let mut last = st.ready.last.lock().await;
    if let Some((at, readiness)) = last.as_ref() {
        if at.elapsed() < READY_CACHE_TTL {
            return readiness.clone();
        }
    }
    let readiness = check_readiness(st).await;
    *last = Some((Instant::now(), readiness.clone()));
    readiness
}

async fn readyz(State(st): State<AppState>) -> Response {
    let Readiness { db, mfs } = cached_readiness(&st).await;
    let word = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "down" };
    let checks = json!({ "postgresql": word(&db), "moosefs": word(&mfs) });
    let down: Vec<String> = [db, mfs].into_iter().filter_map(Result::err).collect();
    if down.is_empty() {
        return Json(json!({ "status": "ready", "checks": checks })).into_response();
    }
    let mut p = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-ready",
        "Not ready",
        format!("not ready: {}", down.join("; ")),
    )
    .header(header::RETRY_AFTER, "5");
    p.extra = Some(json!({ "checks": checks }));
    p.into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    let body = (st.metrics)();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(METRICS_CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn problems_have_the_four_members() {
        let body = body_too_large(1000).body();
        for key in ["type", "title", "status", "detail"] {
            assert!(body.get(key).is_some(), "{key} missing");
        }
        assert_eq!(body["status"], 413);
    }
}
