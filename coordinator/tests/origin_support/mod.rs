//! A loopback HTTP origin for source tests: serves one body with a strong
//! ETag, honours `Range`, `If-Match` and `If-Range` like a well-behaved
//! server, counts the TCP connections it accepts, and can misbehave on
//! purpose (change its body, answer a wrong `Content-Range`, drip bytes,
//! redirect).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;

/// How the origin answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// A correct server.
    Plain,
    /// After the first GET has been answered, the body (same size) and its
    /// ETag change.
    ChangeAfterFirstGet,
    /// Every range is answered with the bytes (and `Content-Range`) of the
    /// same length from offset 0.
    WrongContentRange,
    /// The first GET sends `fast` bytes, then one byte every `every`; later
    /// GETs are served at once.
    DripFirstGet { fast: usize, every: Duration },
    /// Every request is redirected (302) to this URL.
    RedirectTo(String),
}

struct State {
    body: Mutex<(Arc<Vec<u8>>, String)>,
    behaviour: Behaviour,
    gets: AtomicUsize,
    /// When each GET arrived.
    get_times: Mutex<Vec<SystemTime>>,
}

/// A running origin.
pub struct Origin {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Serves `body` on `ip`:0 (e.g. "127.0.0.1", "127.0.0.2").
    pub async fn start(ip: &str, body: Vec<u8>, behaviour: Behaviour) -> Origin {
        let state = Arc::new(State {
            body: Mutex::new((Arc::new(body), "\"v1\"".to_string())),
            behaviour,
            gets: AtomicUsize::new(0),
            get_times: Mutex::new(Vec::new()),
        });
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = listener.tap_io(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(move |method: Method, headers: HeaderMap| {
            let state = handler_state.clone();
            async move { answer(&state, method, &headers) }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Origin {
            addr,
            accepted,
            state,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// When the GETs arrived.
    pub fn get_times(&self) -> Vec<SystemTime> {
        self.state.get_times.lock().unwrap().clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(state: &State, method: Method, headers: &HeaderMap) -> Response {
    if let Behaviour::RedirectTo(to) = &state.behaviour {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, to)
            .body(Body::empty())
            .unwrap();
    }
    let (body, etag) = state.body.lock().unwrap().clone();
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if text(header::IF_MATCH).is_some_and(|m| m != etag) {
        return Response::builder()
            .status(StatusCode::PRECONDITION_FAILED)
            .body(Body::empty())
            .unwrap();
    }
    let range = text(header::RANGE)
        .filter(|_| text(header::IF_RANGE).is_none_or(|r| r == etag))
        .and_then(parse_range);
    let is_get = method == Method::GET;
    let first_get = is_get && state.gets.fetch_add(1, Ordering::SeqCst) == 0;
    if is_get {
        state.get_times.lock().unwrap().push(SystemTime::now());
    }
    if first_get && matches!(state.behaviour, Behaviour::ChangeAfterFirstGet) {
        // This answer is the old version; every later one the new.
        let changed: Vec<u8> = body.iter().map(|b| b.wrapping_add(1)).collect();
        *state.body.lock().unwrap() = (Arc::new(changed), "\"v2\"".to_string());
    }
    let total = body.len() as u64;
    let (status, first, last) = match range {
        Some((a, b)) if a < total => (StatusCode::PARTIAL_CONTENT, a, b.min(total - 1)),
        _ => (StatusCode::OK, 0, total.saturating_sub(1)),
    };
    let (first, last) = match state.behaviour {
        Behaviour::WrongContentRange if status == StatusCode::PARTIAL_CONTENT => (0, last - first),
        _ => (first, last),
    };
    let slice = if total == 0 {
        Vec::new()
    } else {
        body[first as usize..=last as usize].to_vec()
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, slice.len());
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{total}"),
        );
    }
    let body = match state.behaviour {
        Behaviour::DripFirstGet { fast, every } if first_get => drip(slice, fast, every),
        _ => Body::from(slice),
    };
    resp.body(body).unwrap()
}

/// `fast` bytes at once, then one byte per `every`.
fn drip(data: Vec<u8>, fast: usize, every: Duration) -> Body {
    let fast = fast.min(data.len());
    let head = axum::body::Bytes::from(data[..fast].to_vec());
    let tail: Vec<axum::body::Bytes> = data[fast..]
        .iter()
        .map(|b| axum::body::Bytes::from(vec![*b]))
        .collect();
    let stream = futures::stream::iter(std::iter::once(head)).chain(
        futures::stream::iter(tail).then(move |b| async move {
            tokio::time::sleep(every).await;
            b
        }),
    );
    Body::from_stream(futures::StreamExt::map(stream, Ok::<_, std::io::Error>))
}

use futures::StreamExt;

/// `bytes=a-b` (one range, both ends given).
fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}
