//! Serving the S3 service over HTTP/1 with our own protection, since s3s
//! has none against body-size, rate or back-pressure abuse. The serving
//! loop (header-read timeout, connection limit, graceful shutdown) is the
//! shared one, [`shared::http_server`]; this module adds the per-request
//! limits, answered as S3 errors:
//!
//! - **Body limit**: a declared length (`Content-Length`, or
//!   `x-amz-decoded-content-length` of an aws-chunked body) above the limit
//!   is refused at once with `413 EntityTooLarge`; every body is also read
//!   through a counting limit, so an undeclared (chunked) body cannot exceed it.
//! - **Request timeout**: the whole request up to its response head, body
//!   included; past it `400 RequestTimeout` (an unfinished part attempt is
//!   abandoned: its session or a newer attempt decides, as for any attempt).
//! - **Concurrency limit**: past it a request is shed at once with
//!   `503 SlowDown`, which every S3 SDK backs off from and retries.
//!
//! It also refuses presigned URLs claiming a validity S3 refuses (over a
//! week, or negative), which s3s lets through or answers with 400.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use s3s::service::S3Service;
use s3s::{s3_error, S3Error, S3ErrorCode};
use shared::http_server::{serve_connections, ConcurrencyLimit, ConnectionLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shared::metrics::S3LimitReason as LimitReason;

/// The server's limits (see the module doc).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    /// Largest request body on the wire, bytes.
    pub max_body: u64,
    pub concurrency: usize,
    pub max_connections: usize,
    pub drain: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(3600),
            // A 5 GiB part plus the aws-chunked framing of its 64 KiB chunks.
            max_body: (5 << 30) + (64 << 20),
            concurrency: 64,
            max_connections: 1024,
            drain: Duration::from_secs(30),
        }
    }
}

type HttpResponse = http::Response<s3s::Body>;

fn refuse(e: S3Error, reason: LimitReason) -> HttpResponse {
    shared::metrics::metrics().s3_refused(reason);
    let mut response = e.to_http_response().unwrap_or_else(|_| {
        let mut r = HttpResponse::new(s3s::Body::empty());
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    });
    // The body may not have been read: the client must not reuse the connection.
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// The length a request declares for its object bytes.
fn declared_length(req: &http::Request<Incoming>) -> Option<u64> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    header("x-amz-decoded-content-length").or_else(|| header("content-length"))
}

/// The longest validity a presigned URL may claim (SigV4's limit).
const MAX_PRESIGNED_SECS: i64 = 7 * 24 * 3600;

/// A presigned URL's `X-Amz-Expires` S3 refuses (negative, or over a week):
/// `403 AuthorizationQueryParametersError`, where s3s would accept it (over
/// a week) or answer 400 (negative).
fn bad_presigned_expiry(uri: &http::Uri) -> Option<S3Error> {
    let expires = uri
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("X-Amz-Expires="))?;
    let message = match expires.parse::<i64>() {
        Ok(secs) if (0..=MAX_PRESIGNED_SECS).contains(&secs) => return None,
        Ok(secs) if secs > MAX_PRESIGNED_SECS => format!(
            "X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGNED_SECS}"
        ),
        _ => "X-Amz-Expires must be a non-negative integer".to_string(),
    };
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("AuthorizationQueryParametersError".into()),
        message,
    );
    e.set_status_code(http::StatusCode::FORBIDDEN);
    Some(e)
}

/// The answer to a [`bad_presigned_expiry`] (not a limit: not counted as one).
fn refuse_presigned(e: S3Error) -> HttpResponse {
    let mut fallback = HttpResponse::new(s3s::Body::empty());
    *fallback.status_mut() = http::StatusCode::FORBIDDEN;
    e.to_http_response().unwrap_or(fallback)
}

async fn handle(
    s3: S3Service,
    slots: ConcurrencyLimit,
    limits: Arc<ServerLimits>,
    req: http::Request<Incoming>,
) -> HttpResponse {
    let Some(permit) = slots.try_enter() else {
        return refuse(
            s3_error!(SlowDown, "too many requests at once; retry"),
            LimitReason::Concurrency,
        );
    };
    if declared_length(&req).is_some_and(|n| n > limits.max_body) {
        return refuse(
            s3_error!(
                EntityTooLarge,
                "the body is larger than the limit of {} bytes",
                limits.max_body
            ),
            LimitReason::BodySize,
        );
    }
    let max_body = usize::try_from(limits.max_body).unwrap_or(usize::MAX);
    let req = req.map(|body| s3s::Body::http_body(http_body_util::Limited::new(body, max_body)));
    if let Some(e) = bad_presigned_expiry(req.uri()) {
        return refuse_presigned(e);
    }
    let response = match tokio::time::timeout(limits.request_timeout, s3.call(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::warn!(error = ?e, "S3 request failed outside an operation");
            refuse(s3_error!(InternalError), LimitReason::Error)
        }
        Err(_) => refuse(
            s3_error!(
                RequestTimeout,
                "the request took longer than {:?}",
                limits.request_timeout
            ),
            LimitReason::Timeout,
        ),
    };
    drop(permit);
    response
}

/// Serves `s3` on `listener` until `shutdown`, then drains (the shared
/// serving loop, [`shared::http_server::serve_connections`]).
pub async fn serve(
    listener: TcpListener,
    s3: S3Service,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections =
        ConnectionLimits::new(limits.header_timeout, limits.max_connections, limits.drain);
    let slots = ConcurrencyLimit::new(limits.concurrency);
    let limits = Arc::new(limits);
    let service = hyper::service::service_fn(move |req| {
        let (s3, slots, limits) = (s3.clone(), slots.clone(), limits.clone());
        async move { Ok::<_, Infallible>(handle(s3, slots, limits, req).await) }
    });
    serve_connections(listener, service, connections, shutdown, "S3").await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(query: &str) -> Option<String> {
        let uri: http::Uri = format!("/b/k?{query}").parse().unwrap();
        bad_presigned_expiry(&uri).map(|e| {
            assert_eq!(e.status_code(), Some(http::StatusCode::FORBIDDEN));
            e.code().as_str().to_string()
        })
    }

    #[test]
    fn presigned_expiry_is_at_most_a_week_and_not_negative() {
        assert_eq!(refused("X-Amz-Expires=3600&X-Amz-Signature=x"), None);
        assert_eq!(refused("X-Amz-Expires=604800"), None);
        assert_eq!(refused("X-Amz-Expires=0"), None);
        assert_eq!(refused("list-type=2"), None);
        let code = Some("AuthorizationQueryParametersError".to_string());
        assert_eq!(refused("X-Amz-Expires=609901"), code);
        assert_eq!(refused("a=b&X-Amz-Expires=-7"), code);
    }
}
