//! The HTTP server's limits against the real services (PostgreSQL, MooseFS),
//! with the real API served in-process on 127.0.0.1:0 (see `testkit::TestApi`):
//! slow clients (slowloris) are cut off after the header timeout while others
//! are served, slow bodies hit the request timeout, every route has a body
//! limit, the concurrency limit answers 503 problem+json with Retry-After,
//! graceful shutdown drains in-flight requests within a bound, and `/readyz`
//! asks MooseFS at most about once a second.

use std::time::{Duration, Instant};

use coordinator::api::Auth;
use coordinator::server::HttpLimits;
use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::TestApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

fn limits() -> HttpLimits {
    HttpLimits::default()
}

/// Reads until the server closes the connection (or `limit` passes); what
/// it sent.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A response read off a raw connection: status and body (Content-Length).
async fn read_response(stream: &mut TcpStream, limit: Duration) -> (u16, String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, head.to_string(), body.to_string());
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "connection closed before a whole response: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn assert_problem(status: u16, head: &str, body: &str, want: u16, case: &str) -> Value {
    assert_eq!(status, want, "{case}: {head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{case}: {head}"
    );
    let doc: Value = serde_json::from_str(body).unwrap();
    assert_eq!(doc["status"], want, "{case}: {doc}");
    for key in ["type", "title", "detail"] {
        assert!(doc[key].is_string(), "{case}: {key} missing in {doc}");
    }
    doc
}

/// Sends a request line and headers announcing `length` body bytes, and
/// `sent` of them.
async fn open_request(
    api: &TestApi,
    method: &str,
    path: &str,
    length: usize,
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s
}

/// Drips a never-ending request head a byte every 50 ms; returns how long
/// after connecting the server closed the connection (None: not within
/// `limit`).
async fn slowloris(addr: std::net::SocketAddr, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = b"POST /v1/uploads HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    let mut bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if s.write_all(&[bytes.next().unwrap()]).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn slowloris_clients_are_cut_off_and_others_are_served() {
    let header_timeout = Duration::from_secs(2);
    let api = open_api(
        "http-slowloris",
        HttpLimits {
            header_timeout,
            ..limits()
        },
    )
    .await;
    let slow: Vec<_> = (0..64)
        .map(|_| tokio::spawn(slowloris(api.addr, Duration::from_secs(8))))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While they drip, a normal client is answered at once, with real work.
    let src = api.source("normal.bin", 1000);
    for i in 0..5 {
        let started = Instant::now();
        let resp = api
            .http
            .post(api.url("/v1/uploads"))
            .json(
                &json!({"request_id": format!("http-slowloris-{}", Uuid::new_v4()),
                "source": src, "dest": format!("n{i}.bin")}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let health = api.http.get(api.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a normal client waited {:?} among slow ones",
            started.elapsed()
        );
    }
    for task in slow {
        let closed = task.await.unwrap();
        let after = closed.expect("a slow client was never cut off");
        assert!(
            after < header_timeout + Duration::from_millis(1500),
            "a slow client was cut off only after {after:?}"
        );
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_header_timeout() {
    let api = open_api(
        "http-idle",
        HttpLimits {
            header_timeout: Duration::from_secs(1),
            ..limits()
        },
    )
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(api.addr).await.unwrap();
    assert!(read_to_close(&mut silent, Duration::from_secs(5))
        .await
        .is_some());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A kept-alive connection idle after one request too.
    let mut kept = TcpStream::connect(api.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut kept, Duration::from_secs(5)).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let idle_from = Instant::now();
    assert!(read_to_close(&mut kept, Duration::from_secs(5))
        .await
        .is_some());
    assert!(
        idle_from.elapsed() < Duration::from_secs(3),
        "{:?}",
        idle_from.elapsed()
    );
}

#[tokio::test]
async fn slow_request_bodies_hit_the_request_timeout() {
    let api = open_api(
        "http-slowbody",
        HttpLimits {
            request_timeout: Duration::from_secs(2),
            ..limits()
        },
    )
    .await;
    let started = Instant::now();
    let mut s = open_request(&api, "POST", "/v1/uploads", 100, b"{\"request_id\":").await;
    let (status, head, body) = read_response(&mut s, Duration::from_secs(8)).await;
    let doc = assert_problem(status, &head, &body, 408, "slow body");
    assert!(doc["detail"].as_str().unwrap().contains("2s"), "{doc}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn every_route_has_a_body_limit() {
    let api = open_api(
        "http-bodylimit",
        HttpLimits {
            body_limit: 1024,
            ..limits()
        },
    )
    .await;
    let id = Uuid::new_v4();
    let big = vec![b' '; 2000];
    for (method, path) in [
        ("POST", "/v1/uploads".to_string()),
        ("POST", "/v1/batches".to_string()),
        ("GET", format!("/v1/uploads/{id}")),
        ("POST", format!("/v1/uploads/{id}/abort")),
        ("GET", "/healthz".to_string()),
        ("GET", "/readyz".to_string()),
        ("GET", "/metrics".to_string()),
        ("GET", "/no-such-route".to_string()),
    ] {
        let case = format!("{method} {path} with 2000 bytes");
        let mut s = open_request(&api, method, &path, big.len(), &big).await;
        let (status, head, body) = read_response(&mut s, Duration::from_secs(10)).await;
        let doc = assert_problem(status, &head, &body, 413, &case);
        assert!(
            doc["detail"].as_str().unwrap().contains("1024"),
            "{case}: {doc}"
        );
    }
    // A chunked body (no Content-Length) is cut at the limit as it streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 300])).collect();
    let resp = api
        .http
        .post(api.url("/v1/uploads"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_TYPE],
        "application/problem+json"
    );
    // Below the limit all is normal.
    let ok = api
        .http
        .get(api.url("/healthz"))
        .body(vec![b' '; 500])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_concurrency_limit_sheds_with_503() {
    let api = open_api(
        "http-concurrency",
        HttpLimits {
            concurrency: 2,
            ..limits()
        },
    )
    .await;
    // Two requests in flight: their handlers wait for bodies that do not come.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(open_request(&api, "POST", "/v1/uploads", 100, b"{").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let src = api.source("c.bin", 10);
    let body = json!({"request_id": format!("http-concurrency-{}", Uuid::new_v4()),
        "source": src, "dest": "c.bin"});
    let shed = api
        .http
        .post(api.url("/v1/uploads"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after = shed.headers().get(reqwest::header::RETRY_AFTER).cloned();
    assert_eq!(
        shed.headers()[reqwest::header::CONTENT_TYPE],
        "application/problem+json"
    );
    let doc: Value = shed.json().await.unwrap();
    assert_eq!(doc["status"], 503, "{doc}");
    assert!(retry_after.is_some(), "no Retry-After");
    let rid = body["request_id"].as_str().unwrap();
    assert!(api
        .ingest
        .store
        .session_by_request(rid)
        .await
        .unwrap()
        .is_none());
    // The probes are not shed.
    let health = api.http.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Once the held requests are gone, requests pass again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = api
        .http
        .post(api.url("/v1/uploads"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_within_a_bound() {
    let mut api = open_api(
        "http-drain",
        HttpLimits {
            drain: Duration::from_secs(2),
            ..limits()
        },
    )
    .await;
    let src = api.source("d.bin", 10);
    let body = json!({"request_id": format!("http-drain-{}", Uuid::new_v4()),
        "source": src, "dest": "d.bin"})
    .to_string();
    let (first, rest) = body.as_bytes().split_at(10);
    // One request half sent, one that will never finish its body.
    let mut finishing = open_request(&api, "POST", "/v1/uploads", body.len(), first).await;
    let mut stuck = open_request(&api, "POST", "/v1/uploads", body.len(), first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    api.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(api.addr).await.is_err(),
        "new connections are refused once shutdown started"
    );
    finishing.write_all(rest).await.unwrap();
    let (status, head, resp_body) = read_response(&mut finishing, Duration::from_secs(5)).await;
    assert_eq!(status, 201, "{head}\n{resp_body}");
    let server = api.server.take().unwrap();
    tokio::time::timeout(Duration::from_secs(4), server)
        .await
        .expect("the server stops within the drain bound")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(3500), "drain took {took:?}");
    assert!(read_to_close(&mut stuck, Duration::from_secs(2))
        .await
        .is_some());
}

#[tokio::test]
async fn readyz_asks_the_services_at_most_about_once_a_second() {
    let place = TestApi::prepare("http-readyz");
    let mut ingest = place.args.ingest("http readyz test", 4).await.unwrap();
    let (counted, statfs) = testkit::api::counting_client(&place.args.mfs_master, "statfs").await;
    ingest.mfs = counted;
    let api = TestApi::start_with(ingest, place, Auth::Open, limits()).await;
    let started = Instant::now();
    let hits = (0..50).map(|_| {
        let (http, url) = (api.http.clone(), api.url("/readyz"));
        async move { http.get(url).send().await.unwrap().status() }
    });
    let statuses = futures::future::join_all(hits).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let n = statfs.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&n),
        "50 /readyz hits asked MooseFS {n} times"
    );
    // After the cache time, it asks again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ready: Value = api
        .http
        .get(api.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["moosefs"], "ok");
    assert!(statfs.load(std::sync::atomic::Ordering::SeqCst) > n);
}

/// The API without authentication, served with `limits`.
async fn open_api(tag: &str, limits: HttpLimits) -> TestApi {
    TestApi::start(tag, Auth::Open, limits).await
}
