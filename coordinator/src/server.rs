//! The coordinator's HTTP server: the API router with its per-request
//! limits, served by the shared serving loop
//! ([`shared::http_server::serve_connections`]: header-read timeout,
//! connection limit, graceful shutdown with a drain bound; HTTP/1 only, no
//! client of this API needs cleartext HTTP/2).
//!
//! - **Request timeout** (tower-http `TimeoutLayer`): the whole request,
//!   body read and handler included; a late one is a 408 problem document.
//! - **Body limit** on every route (tower-http `RequestBodyLimitLayer`, and
//!   axum's extractor limit set to the same value): 413 problem document.
//! - **Concurrency limit** on `/v1/*`: past it a request is shed at once with
//!   503 and `Retry-After` (the probes and `/metrics` are never shed).
//! - Every error answer says `Connection: close`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::service::TowerToHyperService;
use shared::http_server::{serve_connections, ConcurrencyLimit, ConnectionLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::api::{self, ApiState, Problem};

/// The server's limits (see the module doc).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time to send a request's head.
    pub header_timeout: Duration,
    /// Time for a whole request, body and handler included.
    pub request_timeout: Duration,
    /// Largest request body on any route, bytes.
    pub body_limit: usize,
    /// `/v1/*` requests handled at the same time.
    pub concurrency: usize,
    /// Connections open at the same time.
    pub max_connections: usize,
    /// Time in-flight requests get to finish at shutdown.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            body_limit: api::DEFAULT_BODY_LIMIT,
            concurrency: 64,
            max_connections: 1024,
            drain: Duration::from_secs(30),
        }
    }
}

/// The limits as flags and environment variables.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpLimitArgs {
    /// Seconds a client has to send a request's headers (idle kept-alive
    /// connections are closed after it too).
    #[arg(long, env = "INGEST_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,
    /// Seconds a whole request may take, body and handler included (408 after).
    #[arg(long, env = "INGEST_HTTP_REQUEST_TIMEOUT_SECS", default_value_t = 120)]
    pub http_request_timeout_secs: u64,
    /// Largest request body on any route, in bytes (413 above).
    #[arg(long, env = "INGEST_HTTP_BODY_LIMIT_BYTES", default_value_t = api::DEFAULT_BODY_LIMIT)]
    pub http_body_limit_bytes: usize,
    /// /v1/* requests handled at the same time (503 with Retry-After above).
    #[arg(long, env = "INGEST_HTTP_CONCURRENCY", default_value_t = 64)]
    pub http_concurrency: usize,
    /// HTTP connections open at the same time (more wait to be accepted).
    #[arg(long, env = "INGEST_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,
    /// Seconds in-flight requests get to finish at shutdown.
    #[arg(long, env = "INGEST_HTTP_DRAIN_SECS", default_value_t = 30)]
    pub http_drain_secs: u64,
}

/// A limit that makes no sense.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LimitError(String);

impl HttpLimitArgs {
    pub fn limits(&self) -> Result<HttpLimits, LimitError> {
        let positive = [
            (
                "INGEST_HTTP_HEADER_TIMEOUT_SECS",
                self.http_header_timeout_secs as usize,
            ),
            (
                "INGEST_HTTP_REQUEST_TIMEOUT_SECS",
                self.http_request_timeout_secs as usize,
            ),
            ("INGEST_HTTP_CONCURRENCY", self.http_concurrency),
            ("INGEST_HTTP_MAX_CONNECTIONS", self.http_max_connections),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(LimitError(format!("{name} must be at least 1")));
        }
        if self.http_body_limit_bytes < 1024 {
            return Err(LimitError(
                "INGEST_HTTP_BODY_LIMIT_BYTES must be at least 1024".into(),
            ));
        }
        Ok(HttpLimits {
            header_timeout: Duration::from_secs(self.http_header_timeout_secs),
            request_timeout: Duration::from_secs(self.http_request_timeout_secs),
            body_limit: self.http_body_limit_bytes,
            concurrency: self.http_concurrency,
            max_connections: self.http_max_connections,
            drain: Duration::from_secs(self.http_drain_secs),
        })
    }
}

/// The API with every per-request limit, ready for [`serve`]. The last layer
/// added runs first: problem documents for bare errors, metrics, body limit,
/// timeout, the concurrency limit, then (inside [`api::router`])
/// authentication.
pub fn app(state: Arc<ApiState>, limits: &HttpLimits) -> Router {
    let slots = ConcurrencyLimit::new(limits.concurrency);
    let request_timeout = limits.request_timeout;
    api::router(state)
        .layer(middleware::from_fn_with_state(slots, limit_concurrency))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(limits.body_limit))
        .layer(middleware::from_fn(api::track_http))
        .layer(middleware::map_response_with_state(
            (limits.body_limit, request_timeout),
            problem_for_bare_errors,
        ))
}

/// Sheds `/v1/*` requests past the concurrency limit.
async fn limit_concurrency(
    State(slots): State<ConcurrencyLimit>,
    req: Request,
    next: Next,
) -> Response {
    if !api::is_v1(req.uri().path()) {
        return next.run(req).await;
    }
    match slots.try_enter() {
        Some(permit) => {
            let response = next.run(req).await;
            drop(permit);
            response
        }
        None => {
            tracing::debug!(
                path = req.uri().path(),
                "request shed: concurrency limit reached"
            );
            Problem::overloaded().into_response()
        }
    }
}

/// Gives the bare error responses of the layers (413 of the body limit, 408
/// of the timeout) a problem document, and every error `Connection: close`.
async fn problem_for_bare_errors(
    State((body_limit, request_timeout)): State<(usize, Duration)>,
    response: Response,
) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == HeaderValue::from_static(api::PROBLEM_CONTENT_TYPE));
    if status.as_u16() < 400 {
        return response;
    }
    let mut response = match status {
        _ if is_problem => response,
        StatusCode::PAYLOAD_TOO_LARGE => api::body_too_large(body_limit).into_response(),
        StatusCode::REQUEST_TIMEOUT => Problem::request_timeout(request_timeout).into_response(),
        other => Problem::bare(other).into_response(),
    };
    // An error may be answered before the request body was read (401, 404,
    // 415, 413, a shed request): hyper then closes the connection after the
    // response, and a client that put it back in its pool races that close
    // with its next request ("connection closed before message completed",
    // seen in the API fuzz run). Saying so lets every client stop reusing it.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains
/// (bounded by `limits.drain`); the serving loop is
/// [`shared::http_server::serve_connections`]. Connection errors are
/// logged, not returned.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections =
        ConnectionLimits::new(limits.header_timeout, limits.max_connections, limits.drain);
    let service = TowerToHyperService::new(app);
    serve_connections(listener, service, connections, shutdown, "HTTP").await
}
