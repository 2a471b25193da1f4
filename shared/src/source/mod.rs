//! Where ingested bytes come from: `file://` URLs confined to configured
//! roots, `http(s)://` URLs read with Range requests, and `s3://` objects
//! of allowed S3-compatible stores. Parsing checks the scheme and
//! confinement without touching the filesystem or the network;
//! [`Source::probe`] takes the size (and an HTTP source's validator, an S3
//! object's ETag) at
//! validation, and [`Source::open_range`] reads one part of that same
//! version, under the part's deadline and minimum throughput.
//!
//! - [`file`]: opening beneath a root (`openat2`), never by path.
//! - [`guard`]: which hosts and addresses an HTTP source may reach.
//! - [`http`]: redirects checked hop by hop, ranges pinned to a validator.
//! - [`limits`]: the per-part deadline and minimum throughput.
//! - [`s3`]: objects of allowed stores, every part read pinned to the ETag.

pub mod file;
pub mod guard;
pub mod http;
pub mod limits;
pub mod s3;

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncRead;

pub use file::FileSource;
pub use http::Validator;
pub use limits::{PartLimits, PartReadLimitError};
pub use s3::{S3ConfigError, S3Settings, S3Source};

use file::OpenBeneathError;

/// Why a source cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid source URL {url:?}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("unsupported source URL scheme {0:?} (use file://, http(s):// or s3://)")]
    UnsupportedScheme(String),
    #[error("source {0} is outside the allowed source roots")]
    OutsideRoots(String),
    #[error("source {0}: a symbolic link or `..` below the source root was refused")]
    Escape(String),
    #[error("source host {0} is not in the allowed HTTP source hosts")]
    HostNotAllowed(String),
    #[error("source host {0} is (or resolves to) a loopback, private, link-local or reserved address; name it in INGEST_HTTP_SOURCE_HOSTS to allow it")]
    AddressNotAllowed(String),
    #[error(
        "source {0} redirects to a host or address that is not allowed (or more than 5 times)"
    )]
    RedirectRefused(String),
    #[error("source {url} changed since the upload was created: {detail}")]
    Changed { url: String, detail: String },
    #[error("source {url} answered a wrong range: {detail}")]
    BadRange { url: String, detail: String },
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
    #[error("s3:// sources are off here: the operator turns them on with INGEST_S3_SOURCES=true and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a store other than AWS S3)")]
    S3NotConfigured,
    #[error("S3 endpoint {0} is not allowed: name it in {ENDPOINTS_VAR}", ENDPOINTS_VAR = s3::ENDPOINTS_VAR)]
    EndpointNotAllowed(String),
    #[error("the store refused access to {url} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the key's permissions): {detail}")]
    AccessDenied { url: String, detail: String },
    #[error("source {url}: {detail}")]
    Store { url: String, detail: String },
}

impl SourceError {
    /// Whether trying again later may help (network trouble, server errors).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Http { .. }
                | SourceError::Timeout(_)
                | SourceError::Io { .. }
                | SourceError::Store { .. }
        )
    }
}

/// A validated source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(FileSource),
    Http(url::Url),
    S3(S3Source),
}

/// One version of a source: its size, and for HTTP its validator (for S3
/// its ETag), as seen
/// at validation. Part reads refuse any other version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceVersion {
    pub size: u64,
    pub validator: Option<Validator>,
}

impl SourceVersion {
    /// How `now` differs from this version, if it does.
    pub fn change_to(&self, now: &SourceVersion) -> Option<String> {
        if now.size != self.size {
            return Some(format!(
                "source changed size: {} bytes now, {} when the upload was created",
                now.size, self.size
            ));
        }
        match (&self.validator, &now.validator) {
            (Some(Validator::ETag(then)), Some(Validator::ETag(now))) if then != now => {
                Some(format!(
                "source changed since the upload was created: its ETag is {now} now, was {then}"
            ))
            }
            (Some(then), Some(now)) if then != now => Some(format!(
                "source changed since the upload was created: {} now, {} then",
                now.to_stored(),
                then.to_stored()
            )),
            _ => None,
        }
    }
}

/// A byte stream of part of a source.
pub type SourceReader = Pin<Box<dyn AsyncRead + Send>>;

/// Shared settings for reading sources.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `file://` sources must be inside one of these directories (each
    /// root as configured and canonical).
    pub allowed_roots: Vec<PathBuf>,
    /// `http(s)://` sources must name one of these hosts (lower case, no
    /// port); `None` allows any host whose addresses are all public.
    pub allowed_http_hosts: guard::AllowedHosts,
    /// Connects only through [`guard::GuardedResolver`], follows no
    /// redirects by itself, uses no proxy.
    pub http: reqwest::Client,
    pub timeout: Duration,
    /// Deadline and minimum throughput of each part read.
    pub part_limits: PartLimits,
    /// `s3://` sources' endpoints, credentials and client; `None`: no
    /// credentials configured, `s3://` sources refused.
    pub s3: Option<Arc<s3::S3Config>>,
}

impl SourceConfig {
    pub fn new(allowed_roots: Vec<PathBuf>) -> Self {
        let timeout = Duration::from_secs(30);
        let mut roots = Vec::new();
        for root in allowed_roots {
            if let Ok(real) = std::fs::canonicalize(&root) {
                if real != root {
                    roots.push(real);
                }
            }
            roots.push(root);
        }
        SourceConfig {
            allowed_roots: roots,
            allowed_http_hosts: None,
            http: http::client(&None, timeout),
            timeout,
            part_limits: PartLimits::default(),
            s3: None,
        }
    }

    /// How `s3://` sources are read (see [`s3`]): without credentials they
    /// are refused.
    pub fn with_s3(mut self, settings: &S3Settings) -> Result<Self, S3ConfigError> {
        self.s3 = s3::S3Config::new(settings, self.timeout)?.map(Arc::new);
        Ok(self)
    }

    /// Only these hosts may be named by `http(s)://` sources, whatever
    /// their addresses (loopback and private ones included); an empty list
    /// allows any host whose addresses are all public.
    pub fn with_http_hosts(mut self, hosts: &[String]) -> Self {
        let hosts: Vec<String> = hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        self.allowed_http_hosts = (!hosts.is_empty()).then(|| Arc::new(hosts));
        self.http = http::client(&self.allowed_http_hosts, self.timeout);
        self
    }

    pub fn with_part_limits(mut self, limits: PartLimits) -> Self {
        self.part_limits = limits;
        self
    }
}

impl Source {
    /// Parses and confines a source URL (no filesystem or network access).
    pub fn parse(raw: &str, cfg: &SourceConfig) -> Result<Source, SourceError> {
        check_raw_url(raw)?;
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
                // Confinement is lexical here; opening beneath the root
                // (no symbolic links, no `..`) keeps it at every read.
                let lexical = lexically_normal(&path);
                let outside = || SourceError::OutsideRoots(path.display().to_string());
                let root = cfg
                    .allowed_roots
                    .iter()
                    .find(|root| lexical.starts_with(root))
                    .ok_or_else(outside)?;
                let relative = lexical.strip_prefix(root).map_err(|_| outside())?;
                check_file_path(raw, &lexical, relative)?;
                if relative.as_os_str().is_empty() {
                    return Err(SourceError::NotAFile(path.display().to_string()));
                }
                Ok(Source::File(FileSource {
                    root: root.clone(),
                    relative: relative.to_path_buf(),
                }))
            }
            "http" | "https" => {
                http::check_url(&url, cfg)?;
                Ok(Source::Http(url))
            }
            "s3" => Ok(Source::S3(S3Source::parse(raw, cfg)?)),
            other => Err(SourceError::UnsupportedScheme(other.to_string())),
        }
    }

    fn display(&self) -> String {
        match self {
            Source::File(f) => f.path().display().to_string(),
            Source::Http(u) => masked(u),
            Source::S3(s) => s.shown.clone(),
        }
    }

    /// The source's current size and validator (opened beneath its root;
    /// `HEAD` for HTTP, redirects checked hop by hop).
    pub async fn probe(&self, cfg: &SourceConfig) -> Result<SourceVersion, SourceError> {
        match self {
            Source::File(f) => {
                let f = f.clone();
                let (_, size) = open_file(f).await?;
                Ok(SourceVersion {
                    size,
                    validator: None,
                })
            }
            Source::Http(url) => http::probe(url, cfg).await,
            Source::S3(s) => s3::probe(s, cfg).await,
        }
    }

    /// The source's current size in bytes.
    pub async fn size(&self, cfg: &SourceConfig) -> Result<u64, SourceError> {
        Ok(self.probe(cfg).await?.size)
    }

    /// Reads `len` bytes at `offset` of `version` of the source. The stream
    /// yields at most `len` bytes; a source that has fewer yields fewer (the
    /// caller checks the count). It fails (an I/O error holding a
    /// [`PartReadLimitError`]) when the part's deadline passes or the source
    /// falls below the minimum throughput, counted from this call.
    pub async fn open_range(
        &self,
        offset: u64,
        len: u64,
        version: &SourceVersion,
        cfg: &SourceConfig,
    ) -> Result<SourceReader, SourceError> {
        let started = tokio::time::Instant::now();
        let limits = cfg.part_limits;
        let open = async {
            match self {
                Source::File(f) => file_range(f, offset, len, version).await,
                Source::Http(url) => http::open_range(url, offset, len, version, cfg).await,
                Source::S3(s) => s3::open_range(s, offset, len, version, cfg).await,
            }
        };
        let reader = if limits.deadline.is_zero() {
            open.await?
        } else {
            tokio::time::timeout(limits.deadline, open)
                .await
                .map_err(|_| SourceError::Timeout(limits.deadline))??
        };
        Ok(Box::pin(limits::LimitedReader::new(
            reader, limits, started,
        )))
    }

    /// Human-readable location for errors.
    pub fn describe(&self) -> String {
        self.display()
    }
}

/// Opens a file source beneath its root on the blocking pool: the file and
/// its size, both from the one descriptor.
async fn open_file(f: FileSource) -> Result<(std::fs::File, u64), SourceError> {
    let shown = f.path().display().to_string();
    let opened = tokio::task::spawn_blocking(move || f.open())
        .await
        .map_err(|e| OpenBeneathError::Io(std::io::Error::other(e)));
    match opened.and_then(|r| r) {
        Ok(opened) => Ok(opened),
        Err(OpenBeneathError::Missing) => Err(SourceError::Missing(shown)),
        Err(OpenBeneathError::Escape) => Err(SourceError::Escape(shown)),
        Err(OpenBeneathError::NotAFile) => Err(SourceError::NotAFile(shown)),
        Err(OpenBeneathError::Io(error)) => Err(SourceError::Io { url: shown, error }),
    }
}

/// A range of a file source: opened beneath its root, its size checked on
/// that descriptor, positioned and the first piece read in ONE hand-off to
/// the blocking pool (a small file's only one).
async fn file_range(
    f: &FileSource,
    offset: u64,
    len: u64,
    version: &SourceVersion,
) -> Result<SourceReader, SourceError> {
    let shown = f.path().display().to_string();
    let (file, size) = open_file(f.clone()).await?;
    if size != version.size {
        return Err(SourceError::Changed {
            url: shown,
            detail: format!("its size is now {size} bytes, was {}", version.size),
        });
    }
    let (file, first) = blocking_io(move || {
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(offset))?;
        let first = read_piece(&file, len.min(FILE_READ_BYTES))?;
        Ok((file, first))
    })
    .await
    .map_err(|error| SourceError::Io { url: shown, error })?;
    Ok(Box::pin(file_range_reader(file, first, len)))
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

/// The URL without its password.
pub(crate) fn masked(url: &url::Url) -> String {
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

/// Longest accepted source URL, in bytes.
pub const MAX_SOURCE_URL_BYTES: usize = 8192;
/// Longest name of one path component on Linux filesystems.
const MAX_FILE_NAME_BYTES: usize = 255;
/// Longest path the kernel accepts (`PATH_MAX`, its NUL included).
const MAX_FILE_PATH_BYTES: usize = 4095;

/// A source URL as received: bounded, and no control characters (the URL
/// parser would drop tabs and newlines silently, and a NUL byte cannot be
/// stored or opened).
fn check_raw_url(raw: &str) -> Result<(), SourceError> {
    let invalid = |reason: String| SourceError::Invalid {
        url: raw
            .chars()
            .take(200)
            .collect::<String>()
            .escape_debug()
            .to_string(),
        reason,
    };
    if raw.len() > MAX_SOURCE_URL_BYTES {
        return Err(invalid(format!("longer than {MAX_SOURCE_URL_BYTES} bytes")));
    }
    match raw.chars().find(|c| c.is_control()) {
        Some(c) => Err(invalid(format!(
            "contains the control character U+{:04X}",
            c as u32
        ))),
        None => Ok(()),
    }
}

/// A `file://` path the kernel can open: no NUL byte (`%00` decodes to
/// one), no component over 255 bytes, the whole under `PATH_MAX`.
fn check_file_path(raw: &str, path: &Path, relative: &Path) -> Result<(), SourceError> {
    use std::os::unix::ffi::OsStrExt;
    let invalid = |reason: &str| SourceError::Invalid {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(invalid("the path contains a NUL byte"));
    }
    if path.as_os_str().len() > MAX_FILE_PATH_BYTES {
        return Err(invalid("the path is longer than 4095 bytes"));
    }
    if relative
        .components()
        .any(|c| c.as_os_str().len() > MAX_FILE_NAME_BYTES)
    {
        return Err(invalid("a path component is longer than 255 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
