//! A GET holds what it reads until its body ends, on the real stack: the
//! object's file stays open in the endpoint's MooseFS master session (an
//! overwrite and a delete by another endpoint instance — another master
//! session — leave its bytes readable, and the master frees them once the
//! GET is over), and the request's concurrency slot is held by the body,
//! released at its end or when a client that stopped reading is cut off.
//!
//! The client is raw HTTP/1.1 over a TCP socket with a small receive buffer
//! (SigV4-signed headers, `UNSIGNED-PAYLOAD`), so the test decides exactly
//! when bytes are read and when reading stops.
//!
//! Needs `scripts/stack up` (MFS_MASTER, DATABASE_URL).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::Digest as _;
use moosefs::MfsError;
use s3::keys::{self, ServerKey};
use s3::pipeline::Pipeline;
use s3::server::ServerLimits;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

mod common;

const MIB: usize = 1 << 20;

/// An access key and how to sign with it.
#[derive(Clone)]
struct Signer {
    key_id: String,
    secret: String,
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Signer {
    /// A request head signed with SigV4 (path-style, no query, payload
    /// unsigned).
    fn head(&self, method: &str, addr: SocketAddr, path: &str, length: Option<usize>) -> String {
        let now = chrono::Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = now.format("%Y%m%d").to_string();
        let host = addr.to_string();
        let payload = "UNSIGNED-PAYLOAD";
        let signed = "host;x-amz-content-sha256;x-amz-date";
        let canonical = format!(
            "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\n{signed}\n{payload}"
        );
        let scope = format!("{date}/us-east-1/s3/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&sha2::Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(format!("AWS4{}", self.secret).as_bytes(), &date);
        for part in ["us-east-1", "s3", "aws4_request"] {
            key = hmac(&key, part);
        }
        let signature = hex(&hmac(&key, &to_sign));
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {amz_date}\r\n\
             x-amz-content-sha256: {payload}\r\nAuthorization: AWS4-HMAC-SHA256 \
             Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}\r\n",
            self.key_id
        );
        if let Some(n) = length {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        head
    }
}

/// A response whose head has been read; the body is read by the caller.
struct Response {
    stream: TcpStream,
    status: u16,
    length: Option<usize>,
    /// Body bytes read with the head.
    body: Vec<u8>,
}

impl Response {
    /// Reads up to `n` more body bytes (fewer at the end of the stream).
    async fn read(&mut self, n: usize) -> std::io::Result<usize> {
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0;
        while got < n {
            let want = (n - got).min(buf.len());
            let r = self.stream.read(&mut buf[..want]).await?;
            if r == 0 {
                break;
            }
            self.body.extend_from_slice(&buf[..r]);
            got += r;
        }
        Ok(got)
    }

    async fn read_to_end(mut self) -> Vec<u8> {
        let rest = self.length.map_or(usize::MAX, |l| l - self.body.len());
        self.read(rest).await.unwrap();
        self.body
    }
}

/// Sends a request (a connection of its own, with a 64 KiB receive buffer
/// so that a client that reads nothing soon stops the server's writes) and
/// reads the response head.
async fn send(
    signer: &Signer,
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Option<&[u8]>,
) -> Response {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let head = signer.head(method, addr, path, body.map(<[u8]>::len));
    stream.write_all(head.as_bytes()).await.unwrap();
    if let Some(body) = body {
        stream.write_all(body).await.unwrap();
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let end = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head[9..12].parse().unwrap();
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().unwrap())
    });
    Response {
        stream,
        status,
        length,
        body: buf[end..].to_vec(),
    }
}

/// A whole request: status and body.
async fn call(
    signer: &Signer,
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let response = send(signer, method, addr, path, body).await;
    let status = response.status;
    let body = if method == "HEAD" {
        Vec::new()
    } else {
        response.read_to_end().await
    };
    (status, body)
}

fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", md5::Md5::digest(bytes))
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut data = vec![0u8; n];
    rand::Rng::fill(&mut rand::rng(), &mut data[..]);
    data
}

/// One endpoint instance served in-process on its own pipeline handle (its
/// own PostgreSQL pool and MooseFS master session).
struct Instance {
    addr: SocketAddr,
    pipeline: Pipeline,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Instance {
    async fn start(private: &common::Private, limits: ServerLimits) -> Instance {
        let pipeline = Pipeline::connect(
            &private.args.services,
            "s3",
            "mfs-ingest s3 held-reads test",
            4,
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(s3::server::serve(
            listener,
            s3::cli::build_service(&pipeline, server_key()),
            limits,
            shutdown.clone(),
        ));
        Instance {
            addr,
            pipeline,
            shutdown,
            server,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        self.pipeline.close().await;
    }
}

fn server_key() -> ServerKey {
    ServerKey::new("a test server key of at least thirty-two bytes").unwrap()
}

/// A private pipeline, a key for one bucket, the bucket created.
async fn set_up(tag: &str) -> (common::Private, Signer, String) {
    let private = common::Private::new().await;
    let bucket = format!("{tag}-{}", private.tag);
    let (key_id, secret) = keys::create(
        private.pipeline.pool(),
        &server_key(),
        std::slice::from_ref(&bucket),
        "held reads",
    )
    .await
    .unwrap();
    (private, Signer { key_id, secret }, bucket)
}

async fn create_bucket(signer: &Signer, addr: SocketAddr, bucket: &str) {
    let (status, body) = call(signer, "PUT", addr, &format!("/{bucket}"), Some(&[])).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

async fn put(signer: &Signer, addr: SocketAddr, path: &str, data: &[u8]) {
    let (status, body) = call(signer, "PUT", addr, path, Some(data)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

async fn object_inode(pipeline: &Pipeline, bucket: &str, key: &str) -> Option<u32> {
    sqlx::query_scalar::<_, i64>("SELECT inode FROM s3_objects WHERE bucket = $1 AND key = $2")
        .bind(bucket)
        .bind(key)
        .fetch_optional(pipeline.pool())
        .await
        .unwrap()
        .map(|i| i as u32)
}

/// Whether the master lists `inode` as open by `session`.
async fn holds(private: &common::Private, session: u32, inode: u32) -> bool {
    moosefs::admin::list_open_files(private.mfs.master().config(), session)
        .await
        .unwrap()
        .contains(&inode)
}

/// Waits (up to `limit`) until `check` holds; how long it took.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn limited(reason: &str) -> f64 {
    let text = Pipeline::render_metrics();
    text.lines()
        .find(|l| {
            l.starts_with("mfs_ingest_s3_limited_requests_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_reads_the_old_object_to_the_end_through_an_overwrite_and_a_delete_by_another_instance(
) {
    let (private, signer, bucket) = set_up("held").await;
    let a = Instance::start(&private, ServerLimits::default()).await;
    let b = Instance::start(&private, ServerLimits::default()).await;
    assert_ne!(
        a.pipeline.master_session_id(),
        b.pipeline.master_session_id(),
        "two master sessions"
    );
    create_bucket(&signer, a.addr, &bucket).await;
    let path = format!("/{bucket}/big");
    // Over one 64 MiB chunk: two chunks.
    let old = random_bytes(70 * MIB + 12345);
    let old_md5 = md5_hex(&old);
    put(&signer, a.addr, &path, &old).await;
    let old_inode = object_inode(&a.pipeline, &bucket, "big").await.unwrap();

    let mut get = send(&signer, "GET", a.addr, &path, None).await;
    assert_eq!(get.status, 200);
    assert_eq!(get.length, Some(old.len()));
    get.read(MIB).await.unwrap();
    let session = a.pipeline.master_session_id();
    assert!(
        holds(&private, session, old_inode).await,
        "the GET holds inode {old_inode} open in session {session}"
    );

    // Overwritten through the other instance: the key names a new inode,
    // the old one is unlinked but sustained (its bytes still counted).
    let new = random_bytes(3 * MIB);
    put(&signer, b.addr, &path, &new).await;
    let new_inode = object_inode(&a.pipeline, &bucket, "big").await.unwrap();
    assert_ne!(new_inode, old_inode);
    let detached = private.mfs.getattr_detached(old_inode).await.unwrap();
    assert_eq!(detached.length, old.len() as u64);
    let sustained = private.mfs.statfs().await.unwrap().sustained_bytes;
    assert!(sustained >= old.len() as u64, "sustained {sustained} bytes");
    // A GET started now answers the new object.
    let (status, body) = call(&signer, "GET", a.addr, &path, None).await;
    assert_eq!((status, md5_hex(&body)), (200, md5_hex(&new)));
    // Deleted through the other instance.
    let (status, _) = call(&signer, "DELETE", b.addr, &path, None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&signer, "HEAD", a.addr, &path, None).await;
    assert_eq!(status, 404);

    // The first GET, read slowly, answers the old object, whole.
    let started = Instant::now();
    while get.body.len() < old.len() {
        if get.read(8 * MIB).await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "old object read in {:?} after its overwrite and delete",
        started.elapsed()
    );
    assert_eq!(get.body.len(), old.len(), "the GET was cut short");
    assert_eq!(
        md5_hex(&get.body),
        old_md5,
        "the GET's bytes are not the old object"
    );
    drop(get);

    // Its body over, the session releases the inode, and the master frees
    // it (the sustained bucket sweep: one of 256 buckets a second).
    let released = eventually(Duration::from_secs(10), "the inode released", || {
        let private = &private;
        async move { !holds(private, session, old_inode).await }
    })
    .await;
    println!("inode {old_inode} released by the session {released:?} after the body ended");
    let freed = eventually(Duration::from_secs(300), "the old inode freed", || {
        let mfs = &private.mfs;
        async move {
            matches!(
                mfs.getattr_detached(old_inode).await,
                Err(MfsError::NotFound(_))
            )
        }
    })
    .await;
    println!("inode {old_inode} freed by the master {freed:?} after its release");
    // A GET that finds the row's inode gone reads the row again: here the
    // inode is gone for good, and opening it finds nothing.
    assert!(a
        .pipeline
        .open_object(old_inode.into(), old.len() as i64)
        .await
        .unwrap()
        .is_none());

    a.stop().await;
    b.stop().await;
    private.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_get_holds_its_slot_until_its_body_ends() {
    let (private, signer, bucket) = set_up("slot").await;
    let setup = Instance::start(&private, ServerLimits::default()).await;
    create_bucket(&signer, setup.addr, &bucket).await;
    let path = format!("/{bucket}/obj");
    let data = random_bytes(24 * MIB);
    put(&signer, setup.addr, &path, &data).await;
    setup.stop().await;

    let one = ServerLimits {
        concurrency: 1,
        ..ServerLimits::default()
    };
    let a = Instance::start(&private, one).await;
    let refused_before = limited("concurrency");
    let mut get = send(&signer, "GET", a.addr, &path, None).await;
    assert_eq!(get.status, 200);
    get.read(MIB).await.unwrap();
    // The GET's head was answered long ago; its body holds the only slot.
    for _ in 0..3 {
        let (status, body) = call(&signer, "GET", a.addr, &path, None).await;
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("SlowDown"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(limited("concurrency") >= refused_before + 3.0);
    let body = get.read_to_end().await;
    assert_eq!(md5_hex(&body), md5_hex(&data));
    // The body over, the slot is free again.
    let waited = eventually(Duration::from_secs(5), "the slot released", || async {
        call(&signer, "HEAD", a.addr, &path, None).await.0 == 200
    })
    .await;
    println!("slot free {waited:?} after the body was read");

    a.stop().await;
    private.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_frees_its_slot_and_inode() {
    let (private, signer, bucket) = set_up("stall").await;
    let setup = Instance::start(&private, ServerLimits::default()).await;
    create_bucket(&signer, setup.addr, &bucket).await;
    let path = format!("/{bucket}/obj");
    let data = random_bytes(24 * MIB);
    put(&signer, setup.addr, &path, &data).await;
    let inode = object_inode(&setup.pipeline, &bucket, "obj").await.unwrap();
    setup.stop().await;

    let idle = Duration::from_secs(3);
    let limits = ServerLimits {
        concurrency: 1,
        send_idle_timeout: idle,
        ..ServerLimits::default()
    };
    let a = Instance::start(&private, limits).await;
    let session = a.pipeline.master_session_id();
    let stalled_before = limited("stalled");
    let mut get = send(&signer, "GET", a.addr, &path, None).await;
    assert_eq!(get.status, 200);
    get.read(MIB).await.unwrap();
    let stopped = Instant::now();
    // The client reads nothing more: slot and inode stay held until the cut.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = call(&signer, "HEAD", a.addr, &path, None).await;
    assert_eq!(status, 503, "the stalled GET holds the slot");
    assert!(holds(&private, session, inode).await);
    let freed = eventually(idle * 4, "the slot freed", || async {
        call(&signer, "HEAD", a.addr, &path, None).await.0 == 200
    })
    .await;
    let cut_after = stopped.elapsed();
    println!("stalled GET cut, slot free {cut_after:?} after the client stopped reading");
    assert!(
        cut_after >= idle,
        "cut after {cut_after:?}, before the idle timeout {idle:?} ({freed:?} polling)"
    );
    assert!(limited("stalled") > stalled_before);
    eventually(Duration::from_secs(5), "the inode released", || {
        let private = &private;
        async move { !holds(private, session, inode).await }
    })
    .await;
    // The client finds its response cut short.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match get.read(8 * MIB).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        get.body.len()
    })
    .await
    .expect("the connection was closed");
    assert!(got < data.len(), "the whole body arrived ({got} bytes)");

    a.stop().await;
    private.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_before_the_body_of_an_expect_100_continue_request_closes_the_connection() {
    // botocore sends PutObject and UploadPart with `Expect: 100-continue`
    // and sends the body anyway when no answer came within a second. An
    // error answered before the body (here: a bucket the key may not use)
    // must close the connection, or those bytes are read as the next
    // request and the client's next call gets a bare `400 Bad Request`.
    let (private, signer, bucket) = set_up("expect").await;
    let a = Instance::start(&private, ServerLimits::default()).await;
    create_bucket(&signer, a.addr, &bucket).await;
    let body = b"the body the server never asked for";
    let head = signer.head(
        "PUT",
        a.addr,
        &format!("/{bucket}-not-allowed/k"),
        Some(body.len()),
    );
    let head = format!(
        "{}Expect: 100-continue\r\n\r\n",
        head.strip_suffix("\r\n").unwrap()
    );
    let mut stream = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let end = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        answer.extend_from_slice(&chunk[..n]);
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let response_head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
    assert!(response_head.starts_with("http/1.1 403"), "{response_head}");
    assert!(
        response_head.contains("\r\nconnection: close\r\n"),
        "{response_head}"
    );
    // The client gave up waiting for 100 Continue: the body, then its next
    // request on the same connection.
    let _ = stream.write_all(body).await;
    let next = signer.head("GET", a.addr, &format!("/{bucket}"), None);
    let _ = stream.write_all(next.as_bytes()).await;
    let mut rest = answer[end..].to_vec();
    let read_all = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read_all.is_ok(), "the connection was kept open");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("HTTP/1.1"),
        "a second response on the connection: {rest}"
    );
    a.stop().await;
    private.clean_up().await;
}
