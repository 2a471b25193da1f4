//! Part leases on the real services: a part that legitimately runs longer
//! than its lease (a slow HTTP source, 6 s against a 2 s lease) keeps it
//! the whole time, because the worker renews it while the attempt runs; a
//! second worker asking for it meanwhile finds it held.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use shared::idempotency::{part_done_key, part_lease_key, Idempotency, Lease, PartClaim};
use testkit::*;

/// Serves `body` at any path: HEAD answers its length, a Range GET streams
/// the range in 12 pieces spread over `over`.
async fn slow_source(body: Vec<u8>, over: Duration) -> u16 {
    let body = std::sync::Arc::new(body);
    let app = axum::Router::new().fallback(move |method: Method, headers: HeaderMap| {
        let body = body.clone();
        async move { serve_slowly(&body, method, &headers, over) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn serve_slowly(body: &[u8], method: Method, headers: &HeaderMap, over: Duration) -> Response {
    let total = body.len();
    if method == Method::HEAD {
        return Response::builder()
            .header(header::CONTENT_LENGTH, total)
            .header(header::ACCEPT_RANGES, "bytes")
            .body(Body::empty())
            .unwrap();
    }
    let (first, last) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .unwrap_or((0, total - 1));
    let range = body[first..=last.min(total - 1)].to_vec();
    let piece = range.len().div_ceil(12).max(1);
    let pieces: Vec<Vec<u8>> = range.chunks(piece).map(<[u8]>::to_vec).collect();
    let pause = over / pieces.len() as u32;
    let stream = futures::stream::iter(pieces).then(move |p| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(p)
    });
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_LENGTH, range.len())
        .header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{}/{total}", first + range.len() - 1),
        )
        .body(Body::from_stream(stream))
        .unwrap()
}

use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_running_three_lease_lifetimes_keeps_its_lease() {
    let p = Pipeline::new("lease-renew").await;
    let size = 256 * 1024;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let md5 = md5_hex(&data);
    let port = slow_source(data, Duration::from_secs(6)).await;
    let loopback = [("INGEST_HTTP_SOURCE_HOSTS", "127.0.0.1")];
    p.spawn_coordinator(&loopback);
    p.spawn_worker(
        "w1",
        &[
            ("WORKER_LEASE_SECS", "2"),
            ("INGEST_HTTP_SOURCE_HOSTS", "127.0.0.1"),
        ],
    );
    let req = p.request(
        "slow",
        &format!("http://127.0.0.1:{port}/slow.bin"),
        "slow.bin",
    );
    p.submit(std::slice::from_ref(&req)).await;

    // Wait for the session and for w1 to take the part's lease.
    let redis = Idempotency::new(&env_or("REDIS_URL", "redis://127.0.0.1:6379/"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let session_id = loop {
        let id: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM upload_sessions WHERE request_id = $1")
                .bind(&req.request_id)
                .fetch_optional(&p.ingest.store.pool)
                .await
                .unwrap();
        if let Some(id) = id {
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no session");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let part: i32 =
        sqlx::query_scalar("SELECT part_number FROM upload_parts WHERE session_id = $1")
            .bind(session_id)
            .fetch_one(&p.ingest.store.pool)
            .await
            .unwrap();
    let (done_key, lease_key) = (
        part_done_key(session_id, part),
        part_lease_key(session_id, part),
    );
    // w1 takes the lease before its attempt takes a fencing token.
    loop {
        let attempts: i32 = sqlx::query_scalar(
            "SELECT attempts FROM upload_parts WHERE session_id = $1 AND part_number = $2",
        )
        .bind(session_id)
        .bind(part)
        .fetch_one(&p.ingest.store.pool)
        .await
        .unwrap();
        if attempts >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "w1 never started the part"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // For 5 s (2.5 lease lifetimes) another worker asking finds it held.
    let probing_until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut probes = 0;
    while tokio::time::Instant::now() < probing_until {
        let claim = redis
            .claim_part(&done_key, &lease_key, "intruder", Duration::from_secs(2))
            .await;
        if claim == PartClaim::Done {
            break; // the part finished early: nothing more to probe
        }
        assert_eq!(
            claim,
            PartClaim::Lease(Lease::Held),
            "after {probes} probes another worker got the lease of a part still running"
        );
        probes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        probes >= 12,
        "the part ended too soon to prove anything ({probes} probes)"
    );

    let sessions = p
        .wait_finished(
            std::slice::from_ref(&req.request_id),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(sessions[0].state, "completed", "{:?}", sessions[0].error);
    let on_mount = std::fs::read(p.mount_path("slow.bin")).unwrap();
    assert_eq!(md5_hex(&on_mount), md5);
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM upload_parts WHERE session_id = $1")
            .bind(session_id)
            .fetch_one(&p.ingest.store.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1, "a second attempt started while the first ran");
}
