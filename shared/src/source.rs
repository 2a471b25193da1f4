//! Where ingested bytes come from: `file://` URLs confined to configured
//! roots, and `http(s)://` URLs read with Range requests. Parsing checks the
//! scheme and confinement once; `size` and `open_range` do the I/O, each
//! under a timeout.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a source cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid source URL {url:?}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("unsupported source URL scheme {0:?} (use file:// or http(s)://)")]
    UnsupportedScheme(String),
    #[error("source {0} is outside the allowed source roots")]
    OutsideRoots(String),
    #[error("source host {0} is not in the allowed HTTP source hosts")]
    HostNotAllowed(String),
    #[error("source {0} does not exist")]
    Missing(String),
    #[error("source {0} is not a regular file")]
    NotAFile(String),
    #[error("source {url}: {detail}")]
    Http { url: String, detail: String },
    #[error("reading source {url}: {error}")]
    Io { url: String, error: std::io::Error },
    #[error("timed out after {0:?} reading the source")]
    Timeout(Duration),
}

impl SourceError {
    /// Whether trying again later may help (network trouble, server errors).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Http { .. } | SourceError::Timeout(_) | SourceError::Io { .. }
        )
    }
}

/// A validated source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Http(url::Url),
}

/// A byte stream of part of a source.
pub type SourceReader = Pin<Box<dyn AsyncRead + Send>>;

/// Shared settings for reading sources.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `file://` sources must be inside one of these (canonical) directories.
    pub allowed_roots: Vec<PathBuf>,
    /// `http(s)://` sources must name one of these hosts (lower case, no
    /// port); `None` allows any host.
    pub allowed_http_hosts: Option<Vec<String>>,
    pub http: reqwest::Client,
    pub timeout: Duration,
}

impl SourceConfig {
    pub fn new(allowed_roots: Vec<PathBuf>) -> Self {
        let timeout = Duration::from_secs(30);
        SourceConfig {
            allowed_roots: allowed_roots
                .into_iter()
                .map(|r| std::fs::canonicalize(&r).unwrap_or(r))
                .collect(),
            allowed_http_hosts: None,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(timeout)
                .build()
                .expect("HTTP client"),
            timeout,
        }
    }

    /// Only these hosts may be named by `http(s)://` sources (so a request
    /// cannot make the workers fetch from anywhere they can reach); an empty
    /// list allows any host.
    pub fn with_http_hosts(mut self, hosts: &[String]) -> Self {
        let hosts: Vec<String> = hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        self.allowed_http_hosts = (!hosts.is_empty()).then_some(hosts);
        self
    }
}

impl Source {
    /// Parses and confines a source URL.
    pub fn parse(raw: &str, cfg: &SourceConfig) -> Result<Source, SourceError> {
        let url = url::Url::parse(raw).map_err(|e| SourceError::Invalid {
            url: raw.to_string(),
            reason: e.to_string(),
        })?;
        match url.scheme() {
            "file" => {
                let path = url.to_file_path().map_err(|_| SourceError::Invalid {
                    url: raw.to_string(),
                    reason: "not a local absolute path".into(),
                })?;
                // Confinement is checked before the filesystem is touched (no
                // existence oracle outside the roots), then again after
                // resolving symlinks.
                let lexical = lexically_normal(&path);
                let inside = |p: &Path| cfg.allowed_roots.iter().any(|root| p.starts_with(root));
                if !inside(&lexical) {
                    return Err(SourceError::OutsideRoots(path.display().to_string()));
                }
                let real = std::fs::canonicalize(&lexical)
                    .map_err(|_| SourceError::Missing(path.display().to_string()))?;
                if !inside(&real) {
                    return Err(SourceError::OutsideRoots(path.display().to_string()));
                }
                Ok(Source::File(real))
            }
            "http" | "https" => {
                let Some(host) = url.host_str() else {
                    return Err(SourceError::Invalid {
                        url: raw.to_string(),
                        reason: "no host".into(),
                    });
                };
                if let Some(allowed) = &cfg.allowed_http_hosts {
                    // The URL parser lower-cases and normalises host names
                    // (and IP literals), so this compares like with like.
                    if !allowed.iter().any(|a| a == host) {
                        return Err(SourceError::HostNotAllowed(host.to_string()));
                    }
                }
                Ok(Source::Http(url))
            }
            other => Err(SourceError::UnsupportedScheme(other.to_string())),
        }
    }

    fn display(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Http(u) => masked(u),
        }
    }

    /// The source's current size in bytes.
    pub async fn size(&self, cfg: &SourceConfig) -> Result<u64, SourceError> {
        match self {
            Source::File(path) => file_size(path).await,
            Source::Http(url) => {
                let resp = tokio::time::timeout(cfg.timeout, cfg.http.head(url.clone()).send())
                    .await
                    .map_err(|_| SourceError::Timeout(cfg.timeout))?
                    .map_err(|e| http_error(url, e.to_string()))?;
                if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    return Err(SourceError::Missing(masked(url)));
                }
                if !resp.status().is_success() {
                    return Err(http_error(url, format!("HEAD answered {}", resp.status())));
                }
                resp.headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| http_error(url, "no Content-Length".into()))
            }
        }
    }

    /// Reads `len` bytes at `offset`. The stream yields at most `len` bytes;
    /// a source that has fewer yields fewer (the caller checks the count).
    pub async fn open_range(
        &self,
        offset: u64,
        len: u64,
        cfg: &SourceConfig,
    ) -> Result<SourceReader, SourceError> {
        match self {
            Source::File(path) => {
                let io = |error| SourceError::Io {
                    url: path.display().to_string(),
                    error,
                };
                let path = path.clone();
                // Opened, positioned and the first piece read in ONE
                // hand-off to the blocking pool (a small file's only one).
                let (file, first) = blocking_io(move || {
                    let mut file = std::fs::File::open(&path)?;
                    file.seek(std::io::SeekFrom::Start(offset))?;
                    let first = read_piece(&file, len.min(FILE_READ_BYTES))?;
                    Ok((file, first))
                })
                .await
                .map_err(io)?;
                Ok(Box::pin(file_range_reader(file, first, len)))
            }
            Source::Http(url) => {
                if len == 0 {
                    return Ok(Box::pin(tokio::io::empty()));
                }
                let range = format!("bytes={}-{}", offset, offset + len - 1);
                let resp = tokio::time::timeout(
                    cfg.timeout,
                    cfg.http
                        .get(url.clone())
                        .header(reqwest::header::RANGE, range)
                        .send(),
                )
                .await
                .map_err(|_| SourceError::Timeout(cfg.timeout))?
                .map_err(|e| http_error(url, e.to_string()))?;
                let status = resp.status();
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Err(SourceError::Missing(masked(url)));
                }
                let whole_body = status == reqwest::StatusCode::OK && offset == 0;
                if status != reqwest::StatusCode::PARTIAL_CONTENT && !whole_body {
                    return Err(http_error(
                        url,
                        format!("range request answered {status} (the server must support Range)"),
                    ));
                }
                let stream = resp
                    .bytes_stream()
                    .map_err(|e| std::io::Error::other(e.to_string()));
                let reader = tokio_util::io::StreamReader::new(stream);
                Ok(Box::pin(reader.take(len)))
            }
        }
    }

    /// Human-readable location for errors.
    pub fn describe(&self) -> String {
        self.display()
    }
}

/// Bytes a local file is read in, per blocking read.
///
/// `tokio::fs::File` hands every `poll_read` to the blocking pool, and the
/// writer asks for one 64 KiB MooseFS block at a time: 16 thread hand-offs
/// per MiB, which cost the workers more CPU than the copying itself. Reading
/// 1 MiB per hand-off, into a buffer the writer then takes its blocks from,
/// makes that 1 per MiB (a small file: one read).
const FILE_READ_BYTES: u64 = 1 << 20;

/// The `len` bytes of a range: `first`, read already, then the rest of
/// `file` (positioned after `first`), read [`FILE_READ_BYTES`] at a time on
/// the blocking pool. A file that ends early ends the stream early (the
/// caller checks the count).
fn file_range_reader(file: std::fs::File, first: Vec<u8>, len: u64) -> impl AsyncRead + Send {
    let short = (first.len() as u64) < len.min(FILE_READ_BYTES);
    let left = if short { 0 } else { len - first.len() as u64 };
    let rest = futures::stream::try_unfold((file, left), |(file, left)| async move {
        if left == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        let want = left.min(FILE_READ_BYTES);
        let (file, piece) = blocking_io(move || {
            let piece = read_piece(&file, want)?;
            Ok((file, piece))
        })
        .await?;
        if piece.is_empty() {
            return Ok(None);
        }
        // A short read is the end of the file.
        let left = if (piece.len() as u64) < want {
            0
        } else {
            left - want
        };
        Ok(Some((bytes::Bytes::from(piece), (file, left))))
    });
    let first = (!first.is_empty()).then(|| Ok(bytes::Bytes::from(first)));
    tokio_util::io::StreamReader::new(futures::StreamExt::chain(
        futures::stream::iter(first),
        rest,
    ))
}

/// Up to `want` bytes from the file's position (fewer only at its end).
fn read_piece(file: &std::fs::File, want: u64) -> std::io::Result<Vec<u8>> {
    let mut piece = Vec::with_capacity(want as usize);
    file.take(want).read_to_end(&mut piece)?;
    Ok(piece)
}

/// Runs blocking file I/O on the blocking pool; a task that panicked is an
/// I/O error like any other.
async fn blocking_io<T: Send + 'static>(
    io: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(io)
        .await
        .map_err(std::io::Error::other)?
}

async fn file_size(path: &Path) -> Result<u64, SourceError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|_| SourceError::Missing(path.display().to_string()))?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile(path.display().to_string()));
    }
    Ok(meta.len())
}

fn http_error(url: &url::Url, detail: String) -> SourceError {
    SourceError::Http {
        url: masked(url),
        detail,
    }
}

/// The URL without its password.
fn masked(url: &url::Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

/// Removes `.` and `..` components without touching the filesystem.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_range_is_read_exactly_across_read_boundaries() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("range.bin");
        let data: Vec<u8> = (0..3 * FILE_READ_BYTES as usize + 12_345)
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let cfg = SourceConfig::new(vec![root.path().to_path_buf()]);
        let source = Source::parse(&format!("file://{}", path.display()), &cfg).unwrap();
        let read = |offset: u64, len: u64| {
            let source = source.clone();
            let cfg = cfg.clone();
            async move {
                let mut out = Vec::new();
                let mut reader = source.open_range(offset, len, &cfg).await.unwrap();
                reader.read_to_end(&mut out).await.unwrap();
                out
            }
        };
        // A range starting mid-file and spanning several reads.
        let (offset, len) = (FILE_READ_BYTES - 100, 2 * FILE_READ_BYTES + 5_000);
        assert_eq!(
            read(offset, len).await,
            &data[offset as usize..(offset + len) as usize]
        );
        // The whole file, a read-sized range, and nothing at all.
        assert_eq!(read(0, data.len() as u64).await, data);
        assert_eq!(
            read(FILE_READ_BYTES, FILE_READ_BYTES).await,
            &data[FILE_READ_BYTES as usize..2 * FILE_READ_BYTES as usize]
        );
        assert!(read(10, 0).await.is_empty());
        // A file shorter than the range asked for yields what it has.
        let tail = data.len() as u64 - 1_000;
        assert_eq!(read(tail, 50_000).await, &data[tail as usize..]);
        let tail = data.len() as u64 - FILE_READ_BYTES - 1_000;
        assert_eq!(
            read(tail, 3 * FILE_READ_BYTES).await,
            &data[tail as usize..]
        );
        // A small file's range: one read, opened and read together.
        assert_eq!(read(70_000, 65_536).await, &data[70_000..135_536]);
    }

    #[test]
    fn file_sources_are_confined_to_the_roots() {
        let root = tempfile::tempdir().unwrap();
        let inside = root.path().join("a.bin");
        std::fs::write(&inside, b"x").unwrap();
        let cfg = SourceConfig::new(vec![root.path().to_path_buf()]);
        let ok = format!("file://{}", inside.display());
        assert!(matches!(Source::parse(&ok, &cfg), Ok(Source::File(_))));
        let escape = format!("file://{}/../etc/passwd", root.path().display());
        assert!(matches!(
            Source::parse(&escape, &cfg),
            Err(SourceError::OutsideRoots(_))
        ));
        // No existence oracle outside the roots.
        assert!(matches!(
            Source::parse("file:///no/such/file", &cfg),
            Err(SourceError::OutsideRoots(_))
        ));
        assert!(matches!(
            Source::parse("file:///etc/hostname", &cfg),
            Err(SourceError::OutsideRoots(_))
        ));
        assert!(matches!(
            Source::parse(&format!("file://{}/missing", root.path().display()), &cfg),
            Err(SourceError::Missing(_))
        ));
        assert!(matches!(
            Source::parse("ftp://host/x", &cfg),
            Err(SourceError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            Source::parse("not a url", &cfg),
            Err(SourceError::Invalid { .. })
        ));
    }

    #[test]
    fn http_sources_can_be_limited_to_named_hosts() {
        let any = SourceConfig::new(Vec::new());
        assert!(Source::parse("http://files.example:8000/a.bin", &any).is_ok());
        let cfg = SourceConfig::new(Vec::new())
            .with_http_hosts(&["Files.Example".into(), " 127.0.0.1 ".into()]);
        for ok in [
            "http://files.example:8000/a.bin",
            "https://FILES.example/b.bin",
            "http://127.0.0.1:9000/c.bin",
        ] {
            assert!(
                matches!(Source::parse(ok, &cfg), Ok(Source::Http(_))),
                "{ok}"
            );
        }
        for refused in [
            "http://169.254.169.254/latest/meta-data",
            "http://files.example.evil.test/a.bin",
            "http://user@other.example/a.bin",
            "http://[::1]:8000/a.bin",
        ] {
            let e = Source::parse(refused, &cfg).unwrap_err();
            assert!(
                matches!(e, SourceError::HostNotAllowed(_)),
                "{refused}: {e}"
            );
            assert!(!e.is_transient());
        }
        assert!(
            SourceConfig::new(Vec::new())
                .with_http_hosts(&[String::new()])
                .allowed_http_hosts
                .is_none(),
            "an empty list allows any host"
        );
    }
}
