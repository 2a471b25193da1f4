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
//! - **aws-chunked bodies** are re-framed as they stream so that s3s holds
//!   at most one network read of an unsigned chunk and at most
//!   [`ServerLimits::max_signed_chunk`] of a signed one
//!   ([`crate::aws_chunked`]).
//! - **Request timeout**: the whole request up to its response head, body
//!   included; past it `400 RequestTimeout` (an unfinished part attempt is
//!   abandoned: its session or a newer attempt decides, as for any attempt).
//! - **Concurrency limit**: past it a request is shed at once with
//!   `503 SlowDown`, which every S3 SDK backs off from and retries. A
//!   request's slot is held until its response body has been sent (or
//!   dropped: client gone, connection cut), not only up to the response
//!   head: a GET streaming an object holds its slot for as long as it reads
//!   from MooseFS ([`HeldBody`]).
//! - **Send stall**: a connection whose client has not taken a byte of its
//!   response for the idle timeout is cut
//!   ([`shared::http_server::StallLimit`]), which drops the response body
//!   and with it the slot and the object's open file; counted as
//!   `limited_requests_total{reason="stalled"}`.
//!
//! It also refuses presigned URLs claiming a validity S3 refuses (over a
//! week, or negative), which s3s lets through or answers with 400.
//!
//! **Request ids**: every request gets an id (16 hex digits, like S3's),
//! answered in `x-amz-request-id` and `x-amz-id-2` on every response and as
//! `<RequestId>` in every error body (s3s's own errors included), and
//! carried by the request's tracing span (`s3_request{request_id=…}`), so
//! every log line of a request greps out by the id a client reports.
//! The error document of an STS request ([`crate::sts::is_sts_request`])
//! is answered in STS's format instead, `<ErrorResponse><Error>…</Error>
//! <RequestId>…</RequestId></ErrorResponse>`, which STS clients read.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use s3s::service::S3Service;
use s3s::{s3_error, S3Error, S3ErrorCode};
use shared::http_server::{serve_connections, ConcurrencyLimit, ConnectionLimits};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use shared::metrics::S3LimitReason as LimitReason;

/// The default [`ServerLimits::max_signed_chunk`]: SDKs that sign chunks
/// sign 8 to 128 KiB ones; 64 requests at once hold at most 64 MiB of them.
pub const DEFAULT_MAX_SIGNED_CHUNK: u64 = 1 << 20;

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
    /// A response the client takes no byte of for this long is cut.
    pub send_idle_timeout: Duration,
    /// Largest signed aws-chunked chunk, bytes: s3s holds a signed chunk
    /// whole to check its signature ([`crate::aws_chunked`]).
    pub max_signed_chunk: u64,
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
            send_idle_timeout: Duration::from_secs(120),
            max_signed_chunk: DEFAULT_MAX_SIGNED_CHUNK,
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

/// A new request id: 16 upper-case hex digits, like S3's.
fn new_request_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

/// Answers `id` in the response's headers and, for an error with an S3
/// error document, as its `<RequestId>`; the error document of an STS
/// request (`sts`) becomes STS's `<ErrorResponse>` carrying the id.
/// Whether a request asked for `100 Continue` before sending its body.
fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Whether the connection must close after this answer: an error to a
/// request that asked for `100 Continue` was answered without its body
/// being read (no `100` was sent), and a client that stopped waiting for
/// the `100` (botocore: after 1 s, which a loaded server can take) sends
/// the body anyway. On a connection kept alive those bytes would be read
/// as the next request (a bare `400 Bad Request` to the client's next
/// call), so the connection is closed instead, as S3 does.
fn closes_after(expects_continue: bool, status: http::StatusCode) -> bool {
    expects_continue && (status.is_client_error() || status.is_server_error())
}

fn with_request_id(mut response: HttpResponse, id: &str, sts: bool) -> HttpResponse {
    if let Ok(value) = http::HeaderValue::from_str(id) {
        let headers = response.headers_mut();
        headers.insert("x-amz-request-id", value.clone());
        headers.insert("x-amz-id-2", value);
    }
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let body = response.body().bytes();
        let rewritten = if sts {
            body.and_then(|b| sts_error_body(&b, id, status.is_server_error()))
        } else {
            body.and_then(|b| error_body_with_id(&b, id))
        };
        if let Some(with_id) = rewritten {
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
            *response.body_mut() = s3s::Body::from(with_id);
        }
    }
    response
}

/// Whether a request is GetObjectAttributes (`GET /bucket/key?attributes`).
fn is_get_object_attributes(method: &http::Method, uri: &http::Uri) -> bool {
    method == http::Method::GET
        && uri.query().is_some_and(|q| {
            q.split('&')
                .any(|pair| pair == "attributes" || pair.starts_with("attributes="))
        })
}

/// A GetObjectAttributes answer with its `<ETag>` bare, as S3 sends it
/// there (and only there): s3s 0.14 quotes every ETag it writes in XML.
fn with_bare_etag(mut response: HttpResponse) -> HttpResponse {
    let Some(body) = response.body().bytes() else {
        return response;
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return response;
    };
    let bare = ["&quot;", "\""].iter().find_map(|quote| {
        let open = format!("<ETag>{quote}");
        let close = format!("{quote}</ETag>");
        let start = text.find(&open)?;
        let end = start + text[start..].find(&close)?;
        let etag = &text[start + open.len()..end];
        Some(format!(
            "{}<ETag>{etag}</ETag>{}",
            &text[..start],
            &text[end + close.len()..]
        ))
    });
    if let Some(bare) = bare {
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
        *response.body_mut() = s3s::Body::from(bare);
    }
    response
}

/// An S3 error document (`<Error>…</Error>`) with `<RequestId>id</RequestId>`
/// added, unless it has one; `None` for anything else.
fn error_body_with_id(body: &[u8], id: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("<Error>") || text.contains("<RequestId>") {
        return None;
    }
    let end = text.rfind("</Error>")?;
    Some(format!(
        "{}<RequestId>{id}</RequestId>{}",
        &text[..end],
        &text[end..]
    ))
}

/// An S3 error document (`<Error>…</Error>`) as STS answers errors:
/// `<ErrorResponse><Error><Type>…</Type>…</Error><RequestId>id</RequestId>`,
/// which STS clients (the awsQuery protocol) read; `None` for anything else.
fn sts_error_body(body: &[u8], id: &str, server_error: bool) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Error>")? + "<Error>".len();
    let end = text.rfind("</Error>")?;
    let inner = text.get(start..end)?;
    let kind = if server_error { "Receiver" } else { "Sender" };
    Some(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <ErrorResponse xmlns=\"{}\"><Error><Type>{kind}</Type>{inner}</Error>\
         <RequestId>{id}</RequestId></ErrorResponse>",
        crate::sts::STS_XMLNS
    ))
}

async fn handle(
    s3: S3Service,
    slots: ConcurrencyLimit,
    limits: Arc<ServerLimits>,
    req: http::Request<Incoming>,
) -> HttpResponse {
    let id = new_request_id();
    let span = tracing::info_span!(
        "s3_request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let sts = crate::sts::is_sts_request(req.method(), req.uri(), req.headers());
    let expects_continue = expects_continue(req.headers());
    let attributes = is_get_object_attributes(req.method(), req.uri());
    let (response, slot) = handle_request(s3, slots, limits, req)
        .instrument(span)
        .await;
    let mut response = with_request_id(response, &id, sts);
    if attributes && response.status().is_success() {
        response = with_bare_etag(response);
    }
    if closes_after(expects_continue, response.status()) {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    match slot {
        Some(slot) => response.map(|body| s3s::Body::http_body(HeldBody::new(body, slot))),
        None => response,
    }
}

/// The response, and the request's slot if it is still held: it is
/// released when the response body ends, not here.
async fn handle_request(
    s3: S3Service,
    slots: ConcurrencyLimit,
    limits: Arc<ServerLimits>,
    req: http::Request<Incoming>,
) -> (HttpResponse, Option<OwnedSemaphorePermit>) {
    let Some(permit) = slots.try_enter() else {
        let refused = refuse(
            s3_error!(SlowDown, "too many requests at once; retry"),
            LimitReason::Concurrency,
        );
        return (refused, None);
    };
    if declared_length(&req).is_some_and(|n| n > limits.max_body) {
        let refused = refuse(
            s3_error!(
                EntityTooLarge,
                "the body is larger than the limit of {} bytes",
                limits.max_body
            ),
            LimitReason::BodySize,
        );
        return (refused, None);
    }
    let max_body = usize::try_from(limits.max_body).unwrap_or(usize::MAX);
    let aws_chunked = crate::aws_chunked::is_aws_chunked(req.headers());
    let req = req.map(|body| {
        let limited = http_body_util::Limited::new(body, max_body);
        if aws_chunked {
            let reframed = crate::aws_chunked::Reframed::new(limited, limits.max_signed_chunk);
            s3s::Body::http_body(reframed)
        } else {
            s3s::Body::http_body(limited)
        }
    });
    if let Some(e) = bad_presigned_expiry(req.uri()) {
        return (refuse_presigned(e), None);
    }
    let call = crate::keys::with_request_memo(s3.call(req));
    match tokio::time::timeout(limits.request_timeout, call).await {
        Ok(Ok(response)) => (response, Some(permit)),
        Ok(Err(e)) => {
            tracing::warn!(error = ?e, "S3 request failed outside an operation");
            (refuse(s3_error!(InternalError), LimitReason::Error), None)
        }
        Err(_) => {
            let refused = refuse(
                s3_error!(
                    RequestTimeout,
                    "the request took longer than {:?}",
                    limits.request_timeout
                ),
                LimitReason::Timeout,
            );
            (refused, None)
        }
    }
}

/// A response body holding its request's slot until it ends (its last
/// frame taken, or an error) or is dropped (the client went away, or the
/// connection was cut for a stalled send). A GetObject's body also holds
/// the object's file open in the master session (see
/// `Pipeline::read_object`): both are released together.
pub struct HeldBody {
    inner: s3s::Body,
    slot: Option<OwnedSemaphorePermit>,
}

impl HeldBody {
    pub fn new(inner: s3s::Body, slot: OwnedSemaphorePermit) -> Self {
        let slot = (!http_body::Body::is_end_stream(&inner)).then_some(slot);
        HeldBody { inner, slot }
    }

    /// Whether the slot is still held.
    pub fn holds_slot(&self) -> bool {
        self.slot.is_some()
    }
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = s3s::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.slot = None,
            Poll::Ready(Some(Ok(_))) if http_body::Body::is_end_stream(&self.inner) => {
                self.slot = None
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
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
        ConnectionLimits::new(limits.header_timeout, limits.max_connections, limits.drain)
            .with_stall_limit(limits.send_idle_timeout, || {
                shared::metrics::metrics().s3_refused(LimitReason::Stalled)
            });
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

    #[test]
    fn get_object_attributes_answers_its_etag_bare() {
        let get = http::Method::GET;
        let uri = |u: &str| u.parse::<http::Uri>().unwrap();
        assert!(is_get_object_attributes(&get, &uri("/b/k?attributes")));
        assert!(is_get_object_attributes(&get, &uri("/b/k?x=1&attributes=")));
        assert!(!is_get_object_attributes(&get, &uri("/b/k?attributesx")));
        assert!(!is_get_object_attributes(&get, &uri("/b/k")));
        assert!(!is_get_object_attributes(
            &http::Method::HEAD,
            &uri("/b/k?attributes")
        ));
        for quoted in ["&quot;abc-2&quot;", "\"abc-2\""] {
            let xml = format!("<R><ETag>{quoted}</ETag><ObjectSize>3</ObjectSize></R>");
            let response = with_bare_etag(HttpResponse::new(s3s::Body::from(xml)));
            let body = response.body().bytes().unwrap();
            assert_eq!(
                &body[..],
                b"<R><ETag>abc-2</ETag><ObjectSize>3</ObjectSize></R>"
            );
        }
        let none = with_bare_etag(HttpResponse::new(s3s::Body::from("<R/>".to_string())));
        assert_eq!(&none.body().bytes().unwrap()[..], b"<R/>");
    }

    #[test]
    fn an_error_to_a_request_expecting_100_continue_closes_the_connection() {
        let mut headers = http::HeaderMap::new();
        assert!(!expects_continue(&headers));
        headers.insert(http::header::EXPECT, "100-Continue".parse().unwrap());
        assert!(expects_continue(&headers));
        let bad = http::StatusCode::BAD_REQUEST;
        assert!(closes_after(true, bad));
        assert!(closes_after(true, http::StatusCode::SERVICE_UNAVAILABLE));
        assert!(
            !closes_after(true, http::StatusCode::OK),
            "the body was read"
        );
        assert!(!closes_after(false, bad), "the body came with the request");
    }

    fn refused(query: &str) -> Option<String> {
        let uri: http::Uri = format!("/b/k?{query}").parse().unwrap();
        bad_presigned_expiry(&uri).map(|e| {
            assert_eq!(e.status_code(), Some(http::StatusCode::FORBIDDEN));
            e.code().as_str().to_string()
        })
    }

    #[tokio::test]
    async fn a_body_holds_its_slot_until_its_last_frame_or_its_drop() {
        use http_body_util::BodyExt;
        let slots = ConcurrencyLimit::new(1);
        let stream = futures::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"one")),
            Ok(Bytes::from_static(b"two")),
        ]);
        let streamed = s3s::Body::from(s3s::dto::StreamingBlob::wrap(stream));
        let mut body = HeldBody::new(streamed, slots.try_enter().unwrap());
        assert!(body.holds_slot() && slots.try_enter().is_none());
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"one");
        assert!(body.holds_slot(), "a frame left: still held");
        body.frame().await.unwrap().unwrap();
        assert!(body.frame().await.is_none());
        assert!(
            !body.holds_slot() && slots.try_enter().is_some(),
            "ended: released"
        );

        // A one-frame body releases with its frame, an empty one at once,
        // a dropped one when dropped.
        let mut once = HeldBody::new(s3s::Body::from("x".to_string()), slots.try_enter().unwrap());
        assert!(once.holds_slot());
        once.frame().await.unwrap().unwrap();
        assert!(!once.holds_slot());
        let empty = HeldBody::new(s3s::Body::empty(), slots.try_enter().unwrap());
        assert!(!empty.holds_slot() && slots.try_enter().is_some());
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"z"))]);
        let dropped = HeldBody::new(
            s3s::Body::from(s3s::dto::StreamingBlob::wrap(stream)),
            slots.try_enter().unwrap(),
        );
        assert!(slots.try_enter().is_none());
        drop(dropped);
        assert!(slots.try_enter().is_some());
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

    #[test]
    fn error_bodies_get_the_request_id_and_every_response_the_headers() {
        let id = new_request_id();
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        let answered = with_request_id(
            s3_error!(NoSuchKey, "no such key")
                .to_http_response()
                .unwrap(),
            &id,
            false,
        );
        assert_eq!(answered.headers()["x-amz-request-id"], id.as_str());
        assert_eq!(answered.headers()["x-amz-id-2"], id.as_str());
        let body = String::from_utf8(answered.body().bytes().unwrap().to_vec()).unwrap();
        assert!(
            body.contains(&format!("<RequestId>{id}</RequestId></Error>")),
            "{body}"
        );
        assert!(body.contains("<Code>NoSuchKey</Code>"), "{body}");
        // Not an error document, or one that has an id: unchanged.
        assert_eq!(error_body_with_id(b"<ListBucketResult/>", &id), None);
        assert_eq!(
            error_body_with_id(b"<Error><RequestId>x</RequestId></Error>", &id),
            None
        );
        let ok = with_request_id(HttpResponse::new(s3s::Body::empty()), &id, false);
        assert_eq!(ok.headers()["x-amz-request-id"], id.as_str());
    }

    #[test]
    fn sts_errors_are_answered_as_error_responses() {
        let id = new_request_id();
        let answered = with_request_id(
            s3_error!(AccessDenied, "no chaining")
                .to_http_response()
                .unwrap(),
            &id,
            true,
        );
        assert_eq!(answered.status(), http::StatusCode::FORBIDDEN);
        let body = String::from_utf8(answered.body().bytes().unwrap().to_vec()).unwrap();
        assert!(
            body.contains(
                "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                 <Error><Type>Sender</Type><Code>AccessDenied</Code>"
            ),
            "{body}"
        );
        assert!(
            body.ends_with(&format!(
                "</Error><RequestId>{id}</RequestId></ErrorResponse>"
            )),
            "{body}"
        );
        assert!(sts_error_body(b"<x/>", &id, false).is_none());
        let server = sts_error_body(b"<Error><Code>InternalError</Code></Error>", &id, true);
        assert!(server.unwrap().contains("<Type>Receiver</Type>"));
    }
}
