//! A raw HTTP/1.1 S3 client for the tests that must decide exactly when
//! bytes are sent and read (SigV4-signed headers over a TCP socket with a
//! small receive buffer), and an endpoint instance served in-process on its
//! own pipeline handle.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::Digest as _;
use s3::keys::{self, ServerKey};
use s3::pipeline::Pipeline;
use s3::server::ServerLimits;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const MIB: usize = 1 << 20;

/// An access key and how to sign with it.
#[derive(Clone)]
pub struct Signer {
    pub key_id: String,
    pub secret: String,
}

pub fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Signer {
    /// A request head signed with SigV4 (path-style, no query, payload
    /// unsigned).
    pub fn head(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        length: Option<usize>,
    ) -> String {
        self.signed_head(method, addr, path, "UNSIGNED-PAYLOAD", &[], length)
            .0
    }

    /// A request head signed with SigV4 (path-style, no query) declaring
    /// `payload` as its `x-amz-content-sha256`, with `extra` headers (not
    /// signed), and what signs an aws-chunked body's chunks on from the
    /// request's signature.
    pub fn signed_head(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        payload: &str,
        extra: &[(&str, String)],
        length: Option<usize>,
    ) -> (String, ChunkSigning) {
        let now = chrono::Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = now.format("%Y%m%d").to_string();
        let host = addr.to_string();
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
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(n) = length {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        let signing = ChunkSigning {
            key,
            amz_date,
            scope,
            previous: signature,
        };
        (head, signing)
    }
}

/// What signs the chunks of a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` body:
/// each chunk's signature chains on the previous one (the seed is the
/// request's own).
pub struct ChunkSigning {
    key: Vec<u8>,
    amz_date: String,
    scope: String,
    previous: String,
}

impl ChunkSigning {
    /// The signature of the next chunk, `data`.
    pub fn sign(&mut self, data: &[u8]) -> String {
        let empty = hex(&sha2::Sha256::digest(b""));
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{empty}\n{}",
            self.amz_date,
            self.scope,
            self.previous,
            hex(&sha2::Sha256::digest(data))
        );
        self.previous = hex(&hmac(&self.key, &to_sign));
        self.previous.clone()
    }
}

/// Connects with a 64 KiB receive buffer (so that a client that reads
/// nothing soon stops the server's writes).
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A response whose head has been read; the body is read by the caller.
pub struct Response {
    pub stream: TcpStream,
    /// The response head as sent (status line and headers).
    pub head: String,
    pub status: u16,
    pub length: Option<usize>,
    /// Body bytes read with the head.
    pub body: Vec<u8>,
}

impl Response {
    /// Reads up to `n` more body bytes (fewer at the end of the stream).
    pub async fn read(&mut self, n: usize) -> std::io::Result<usize> {
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

    pub async fn read_to_end(mut self) -> Vec<u8> {
        let rest = self.length.map_or(usize::MAX, |l| l - self.body.len());
        self.read(rest).await.unwrap();
        self.body
    }
}

/// Sends a request (a connection of its own, see [`connect`]) and reads
/// the response head.
pub async fn send(
    signer: &Signer,
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Option<&[u8]>,
) -> Response {
    let mut stream = connect(addr).await;
    let head = signer.head(method, addr, path, body.map(<[u8]>::len));
    stream.write_all(head.as_bytes()).await.unwrap();
    if let Some(body) = body {
        stream.write_all(body).await.unwrap();
    }
    read_head(stream).await
}

/// Reads a response head from `stream` (the request sent).
pub async fn read_head(mut stream: TcpStream) -> Response {
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
        head,
        status,
        length,
        body: buf[end..].to_vec(),
    }
}

/// A whole request: status and body.
pub async fn call(
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

pub fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", md5::Md5::digest(bytes))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut data = vec![0u8; n];
    rand::Rng::fill(&mut rand::rng(), &mut data[..]);
    data
}

/// One endpoint instance served in-process on its own pipeline handle (its
/// own PostgreSQL pool and MooseFS master session).
pub struct Instance {
    pub addr: SocketAddr,
    pub pipeline: Pipeline,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Instance {
    pub async fn start(private: &super::Private, limits: ServerLimits) -> Instance {
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

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        self.pipeline.close().await;
    }
}

pub fn server_key() -> ServerKey {
    ServerKey::new("a test server key of at least thirty-two bytes").unwrap()
}

/// A private pipeline, a key for one bucket, the bucket created.
pub async fn set_up(tag: &str) -> (super::Private, Signer, String) {
    let private = super::Private::new().await;
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

pub async fn create_bucket(signer: &Signer, addr: SocketAddr, bucket: &str) {
    let (status, body) = call(signer, "PUT", addr, &format!("/{bucket}"), Some(&[])).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

pub async fn put(signer: &Signer, addr: SocketAddr, path: &str, data: &[u8]) {
    let (status, body) = call(signer, "PUT", addr, path, Some(data)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

pub async fn object_inode(pipeline: &Pipeline, bucket: &str, key: &str) -> Option<u32> {
    sqlx::query_scalar::<_, i64>("SELECT inode FROM s3_objects WHERE bucket = $1 AND key = $2")
        .bind(bucket)
        .bind(key)
        .fetch_optional(pipeline.pool())
        .await
        .unwrap()
        .map(|i| i as u32)
}

/// Whether the master lists `inode` as open by `session`.
pub async fn holds(private: &super::Private, session: u32, inode: u32) -> bool {
    moosefs::admin::list_open_files(private.mfs.master().config(), session)
        .await
        .unwrap()
        .contains(&inode)
}

/// Waits (up to `limit`) until `check` holds; how long it took.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
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

pub fn limited(reason: &str) -> f64 {
    let text = Pipeline::render_metrics();
    text.lines()
        .find(|l| {
            l.starts_with("mfs_ingest_s3_limited_requests_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}
