//! Problem documents (RFC 9457 `application/problem+json`): the one error
//! type every handler returns, the mapping of request, store and extractor
//! errors to it, the bound every handler's work runs under, and the
//! fallbacks for unknown routes and methods.

use std::future::Future;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::Path;
use axum::http::header::{HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::ingest::RequestError;
use shared::limits::PartLimitError;
use shared::store::StoreError;
use uuid::Uuid;

use axum::http::header;

use super::{OVERLOAD_RETRY_AFTER, PROBLEM_CONTENT_TYPE};

/// An RFC 9457 problem document as a response.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) extra: Option<serde_json::Value>,
}

impl Problem {
    pub(super) fn new(
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

    pub(super) fn header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// The document itself.
    pub(super) fn body(&self) -> serde_json::Value {
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
    pub(super) fn unavailable(what: &'static str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %error, "{what} unavailable while serving an API request");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service-unavailable",
            "Service unavailable",
            format!("{what} is unavailable; try again later"),
        )
        .header(header::RETRY_AFTER, "5")
    }

    pub(super) fn timed_out(what: &'static str, after: Duration) -> Self {
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
pub(super) fn json_problem(rejection: JsonRejection, body_limit: usize) -> Problem {
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
pub(super) fn request_problem(e: RequestError) -> Problem {
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

pub(super) fn store_problem(e: &StoreError) -> Problem {
    Problem::unavailable("PostgreSQL", e)
}

/// Runs `fut` with a bound; a timeout is a 503.
pub(super) async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, Problem> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Problem::timed_out(what, limit))
}

pub(super) fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, Problem> {
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

pub(super) fn upload_not_found(id: Uuid) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "upload-not-found",
        "Upload not found",
        format!("no upload with id {id}"),
    )
}

pub(super) async fn not_found(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
