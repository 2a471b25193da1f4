//! `s3://` sources: objects in an S3-compatible store (AWS S3, MinIO, Ceph
//! RGW, …) read through the `object_store` crate's S3 client, pinned to the
//! ETag seen at validation.
//!
//! A request names an object as `s3://BUCKET/KEY` (the key percent-decoded;
//! `%3F` for `?`, `%23` for `#`, `%25` for `%`), read from the default store:
//! `AWS_ENDPOINT_URL` if set, else AWS S3 in `AWS_REGION`. It may name
//! another store with `s3://BUCKET/KEY?endpoint=URL` (URL percent-encoded),
//! but only one named in `INGEST_S3_SOURCE_ENDPOINTS`: any other is refused
//! before anything is sent. One set of credentials, from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
//! `AWS_SESSION_TOKEN`), signs every request; without them `s3://` sources
//! are refused (no instance-metadata lookups).
//!
//! Requests go through the sources' own HTTP client ([`GuardedConnector`]):
//! only to the endpoint's host (checked on every request), no redirects, no
//! proxy, names resolved by [`guard::GuardedResolver`] (an endpoint
//! named in the configuration may be on any address; AWS's own endpoint
//! must resolve to public addresses only). Every call runs under the
//! source timeout and is retried by [`moosefs::retry`] a bounded number of
//! times (`object_store`'s own retries are off). The size and ETag come
//! from one `HEAD` at validation; every part read is a ranged `GET` with
//! `If-Match` set to that ETag, and the answer's ETag, range and size are
//! checked again: an object changed mid-ingest fails the session, never
//! mixes versions.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use moosefs::retry::{retry, AttemptError, RetryPolicy};
use object_store::client::{HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest};
use object_store::client::{HttpResponse, HttpResponseBody, HttpService};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::io::AsyncReadExt;

use super::guard::{self, AllowedHosts};
use super::http::Validator;
use super::{SourceConfig, SourceError, SourceReader, SourceVersion};

/// The variable that lists the stores requests may name.
pub const ENDPOINTS_VAR: &str = "INGEST_S3_SOURCE_ENDPOINTS";

/// Longest object key S3 allows, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// Attempts per store call (the first included), and their pacing.
const RETRY: RetryPolicy = RetryPolicy::new(
    Duration::from_millis(200),
    Duration::from_secs(2),
    3,
    Duration::from_secs(30),
);

/// The settings `s3://` sources are read with (from the environment).
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Whether `s3://` sources are on (`INGEST_S3_SOURCES`); off, they are
    /// refused whatever credentials the environment holds.
    pub enabled: bool,
    /// The store `s3://BUCKET/KEY` reads from (`AWS_ENDPOINT_URL`); `None`:
    /// AWS S3 in `region`.
    pub default_endpoint: Option<String>,
    /// Further stores requests may name with `?endpoint=`.
    pub endpoints: Vec<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

/// Why the S3 source settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("S3 source endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")]
    HalfCredentials,
    #[error("INGEST_S3_SOURCES is on but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")]
    NoCredentials,
}

/// An S3 endpoint: `scheme://host[:port]`, as [`url::Origin`] serialises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub origin: String,
    /// The host, as the URL parser normalised it (IPv6 in brackets).
    host: String,
    /// `host[:port]` as requests carry it.
    authority: String,
    https: bool,
}

impl Endpoint {
    /// Parses an endpoint URL: `http` or `https`, a host, no credentials,
    /// path, query or fragment.
    pub fn parse(raw: &str) -> Result<Endpoint, S3ConfigError> {
        let bad = |reason: &str| S3ConfigError::Endpoint {
            endpoint: raw.to_string(),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must be an http:// or https:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not carry credentials"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must have no path, query or fragment"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| bad("has no host"))?
            .to_string();
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        Ok(Endpoint {
            origin: url.origin().ascii_serialization(),
            host,
            authority,
            https: url.scheme() == "https",
        })
    }

    /// AWS S3's regional endpoint.
    fn aws(region: &str) -> Endpoint {
        Endpoint::parse(&format!("https://s3.{region}.amazonaws.com"))
            .expect("a region is a host label")
    }
}

/// The S3 source configuration in force: the endpoints, credentials and the
/// HTTP client every store request goes through.
pub struct S3Config {
    default: Endpoint,
    /// Whether the default is AWS S3 (no endpoint configured).
    default_is_aws: bool,
    /// Endpoints a request may name (the configured default included).
    allowed: Vec<Endpoint>,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for S3Config {
    /// Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("default", &self.default.origin)
            .field("allowed", &self.describe_allowed())
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// The endpoints requests may name, comma-separated (for the start-up
    /// configuration line).
    pub fn describe_allowed(&self) -> String {
        let names: Vec<&str> = self.allowed.iter().map(|e| e.origin.as_str()).collect();
        names.join(",")
    }

    /// The store `s3://BUCKET/KEY` reads from.
    pub fn default_origin(&self) -> &str {
        &self.default.origin
    }

    /// `None` when `s3://` sources are off (they are then refused); on,
    /// they need both credentials.
    pub fn new(s: &S3Settings, timeout: Duration) -> Result<Option<S3Config>, S3ConfigError> {
        if !s.enabled {
            return Ok(None);
        }
        let set = |v: &Option<String>| v.as_ref().filter(|v| !v.is_empty()).cloned();
        let (id, secret) = match (set(&s.access_key_id), set(&s.secret_access_key)) {
            (Some(id), Some(secret)) => (id, secret),
            (None, None) => return Err(S3ConfigError::NoCredentials),
            _ => return Err(S3ConfigError::HalfCredentials),
        };
        let region = if s.region.trim().is_empty() {
            "us-east-1".to_string()
        } else {
            s.region.trim().to_string()
        };
        if !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(S3ConfigError::Endpoint {
                endpoint: format!("AWS_REGION={region}"),
                reason: "a region is letters, digits and '-'".into(),
            });
        }
        let mut allowed = Vec::new();
        for raw in &s.endpoints {
            if raw.trim().is_empty() {
                continue;
            }
            let e = Endpoint::parse(raw)?;
            if !allowed.contains(&e) {
                allowed.push(e);
            }
        }
        let configured = s
            .default_endpoint
            .as_deref()
            .filter(|e| !e.trim().is_empty());
        let (default, default_is_aws) = match configured {
            Some(raw) => (Endpoint::parse(raw)?, false),
            None => (Endpoint::aws(&region), true),
        };
        // Configured endpoints are open whatever their addresses; AWS's
        // own is not named, so it must resolve to public addresses.
        let mut named: Vec<String> = allowed.iter().map(|e| e.host.clone()).collect();
        if !default_is_aws {
            named.push(default.host.clone());
            if !allowed.contains(&default) {
                allowed.push(default.clone());
            }
        }
        let named: AllowedHosts = Some(Arc::new(named));
        Ok(Some(S3Config {
            default,
            default_is_aws,
            allowed,
            region,
            access_key_id: id,
            secret_access_key: secret,
            session_token: set(&s.session_token),
            http: client(&named, timeout),
        }))
    }

    /// The endpoint `?endpoint=` names, if it is allowed.
    fn allowed_endpoint(&self, raw: &str) -> Result<Endpoint, SourceError> {
        let e = Endpoint::parse(raw).map_err(|_| SourceError::EndpointNotAllowed(raw.into()))?;
        self.allowed
            .iter()
            .find(|a| **a == e)
            .cloned()
            .ok_or(SourceError::EndpointNotAllowed(e.origin))
    }

    /// A store client for one bucket of one endpoint (no I/O).
    fn store(&self, src: &S3Source) -> Result<object_store::aws::AmazonS3, SourceError> {
        let endpoint = src.endpoint.as_ref().unwrap_or(&self.default);
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&src.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_allow_http(!endpoint.https)
            // Path-style (`endpoint/bucket/key`): every request goes to the
            // endpoint's own host, the one the connector lets through.
            .with_virtual_hosted_style_request(false)
            // Retries are moosefs::retry's, around each call.
            .with_retry(RetryConfig {
                max_retries: 0,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            })
            .with_http_connector(GuardedConnector {
                client: self.http.clone(),
                authority: endpoint.authority.clone(),
            });
        if !(self.default_is_aws && src.endpoint.is_none()) {
            b = b.with_endpoint(&endpoint.origin);
        }
        if let Some(token) = &self.session_token {
            b = b.with_token(token);
        }
        b.build().map_err(|e| SourceError::Invalid {
            url: src.shown.clone(),
            reason: e.to_string(),
        })
    }
}

/// The HTTP client for stores: no automatic redirects, no proxies, names
/// resolved by the guard.
fn client(named: &AllowedHosts, timeout: Duration) -> reqwest::Client {
    super::http::client(named, timeout)
}

/// `object_store`'s HTTP transport for sources: the guarded client, and
/// only to the endpoint's host.
#[derive(Debug, Clone)]
struct GuardedConnector {
    client: reqwest::Client,
    authority: String,
}

impl HttpConnector for GuardedConnector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.clone()))
    }
}

/// A request to a host other than the endpoint's.
#[derive(Debug, thiserror::Error)]
#[error("request to {0} refused: not the S3 source endpoint")]
struct OtherHost(String);

#[async_trait]
impl HttpService for GuardedConnector {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase());
        if authority.as_deref() != Some(self.authority.as_str()) {
            let shown = authority.unwrap_or_default();
            return Err(HttpError::new(HttpErrorKind::Unknown, OtherHost(shown)));
        }
        let url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        let mut request = reqwest::Request::new(parts.method, url);
        *request.headers_mut() = parts.headers;
        *request.body_mut() = Some(reqwest::Body::wrap(body));
        let response = self.client.execute(request).await.map_err(http_error)?;
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let body = http_body_util::BodyExt::map_err(body, http_error);
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// A transport error as `object_store` classifies them (a refusal by the
/// address guard is final).
fn http_error(e: reqwest::Error) -> HttpError {
    let kind = if guard::refused_in(&e).is_some() {
        HttpErrorKind::Unknown
    } else if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_body() {
        HttpErrorKind::Interrupted
    } else if e.is_decode() {
        HttpErrorKind::Decode
    } else {
        HttpErrorKind::Request
    };
    HttpError::new(kind, e)
}

/// Whether the address guard or the connector refused the request (found
/// among the error's causes).
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<OtherHost>() || err.is::<guard::AddressRefused>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An `s3://` source: an object of a bucket of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Source {
    /// The store the URL named; `None`: the default one.
    pub endpoint: Option<Endpoint>,
    pub bucket: String,
    pub key: String,
    /// The URL as given (it holds no secrets), for messages.
    pub shown: String,
}

impl S3Source {
    /// Parses `s3://BUCKET/KEY[?endpoint=URL]` (no I/O).
    pub fn parse(raw: &str, cfg: &SourceConfig) -> Result<S3Source, SourceError> {
        let invalid = |reason: &str| SourceError::Invalid {
            url: raw.to_string(),
            reason: reason.to_string(),
        };
        let s3 = cfg.s3.as_ref().ok_or(SourceError::S3NotConfigured)?;
        let rest = raw
            .get(5..)
            .filter(|_| raw[..5].eq_ignore_ascii_case("s3://"))
            .ok_or_else(|| invalid("not an s3:// URL"))?;
        if rest.contains('#') {
            return Err(invalid(
                "a fragment (`#`) is not allowed; write `%23` in a key",
            ));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (bucket, key) = path
            .split_once('/')
            .ok_or_else(|| invalid("no object key (s3://BUCKET/KEY)"))?;
        check_bucket(bucket).map_err(|r| invalid(&r))?;
        let key = percent_encoding::percent_decode_str(key)
            .decode_utf8()
            .map_err(|_| invalid("the key is not UTF-8 once percent-decoded"))?
            .into_owned();
        check_key(&key).map_err(|r| invalid(&r))?;
        let mut endpoint = None;
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if name != "endpoint" || endpoint.is_some() {
                return Err(invalid(
                    "the only query parameter is one `endpoint=` (write `%3F` for `?` in a key)",
                ));
            }
            endpoint = Some(s3.allowed_endpoint(&value)?);
        }
        if query.is_some() && endpoint.is_none() {
            return Err(invalid("an empty query (write `%3F` for `?` in a key)"));
        }
        Ok(S3Source {
            endpoint,
            bucket: bucket.to_string(),
            key,
            shown: raw.to_string(),
        })
    }

    fn path(&self) -> ObjectPath {
        ObjectPath::parse(&self.key).expect("checked at parse")
    }

    /// The store's answer as a [`SourceError`].
    fn error(&self, e: object_store::Error) -> SourceError {
        let url = self.shown.clone();
        match e {
            object_store::Error::NotFound { .. } => SourceError::Missing(url),
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => SourceError::AccessDenied {
                url,
                detail: source.to_string(),
            },
            object_store::Error::Precondition { .. } => SourceError::Changed {
                url,
                detail: "its ETag no longer matches the one seen when the upload was created (412 Precondition Failed)".into(),
            },
            // The address guard's refusal is final, not a network error.
            other if refused(&other) => SourceError::AddressNotAllowed(url),
            other => SourceError::Store {
                url,
                detail: other.to_string(),
            },
        }
    }

    /// One store call under the timeout, retried while it fails in a way
    /// that may pass.
    async fn call<T, Fut>(&self, cfg: &SourceConfig, op: impl Fn() -> Fut) -> Result<T, SourceError>
    where
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        retry(&RETRY, |_| async {
            let e = match tokio::time::timeout(cfg.timeout, op()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => self.error(e),
                Err(_) => SourceError::Timeout(cfg.timeout),
            };
            Err(if e.is_transient() {
                AttemptError::Transient(e)
            } else {
                AttemptError::Permanent(e)
            })
        })
        .await
        .map_err(|r| r.error)
    }
}

/// S3's bucket naming rules: 3 to 63 lower-case letters, digits, `.` and
/// `-`, starting and ending with a letter or digit.
fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok_len = (3..=63).contains(&bucket.len());
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ok_ends = bucket
        .bytes()
        .next()
        .zip(bucket.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "bucket {bucket:?}: 3 to 63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit"
        ))
    }
}

/// A key the store client names exactly: 1 to 1024 bytes, no empty, `.` or
/// `..` segment, no leading or trailing `/`, no control character.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("the key must be 1 to {MAX_KEY_BYTES} bytes"));
    }
    match ObjectPath::parse(key) {
        Ok(p) if p.as_ref() == key => Ok(()),
        _ => Err(
            "keys with an empty, `.` or `..` segment, a leading or trailing `/`, or a control character cannot be read"
                .into(),
        ),
    }
}

/// The client of the store `src` names, from the configured S3 sources.
fn store_for(
    src: &S3Source,
    cfg: &SourceConfig,
) -> Result<object_store::aws::AmazonS3, SourceError> {
    cfg.s3
        .as_ref()
        .ok_or(SourceError::S3NotConfigured)?
        .store(src)
}

/// The object's size and ETag (`HEAD`).
pub async fn probe(src: &S3Source, cfg: &SourceConfig) -> Result<SourceVersion, SourceError> {
    let store = store_for(src, cfg)?;
    let path = src.path();
    let meta = src.call(cfg, || store.head(&path)).await?;
    let etag = meta
        .e_tag
        .filter(|e| !e.is_empty())
        .ok_or_else(|| SourceError::Invalid {
            url: src.shown.clone(),
            reason: "the store answered no ETag: its part reads could not be pinned to one version"
                .into(),
        })?;
    Ok(SourceVersion {
        size: meta.size,
        validator: Some(Validator::ETag(etag)),
    })
}

/// `len` bytes at `offset` of the object as it was at validation: a ranged
/// `GET` with `If-Match` set to the pinned ETag.
pub async fn open_range(
    src: &S3Source,
    offset: u64,
    len: u64,
    version: &SourceVersion,
    cfg: &SourceConfig,
) -> Result<SourceReader, SourceError> {
    let Some(Validator::ETag(etag)) = &version.validator else {
        return Err(SourceError::Invalid {
            url: src.shown.clone(),
            reason: "no ETag was recorded when the upload was created".into(),
        });
    };
    if len == 0 {
        return Ok(Box::pin(tokio::io::empty()));
    }
    let store = store_for(src, cfg)?;
    let path = src.path();
    let wanted: Range<u64> = offset..offset + len;
    let got = src
        .call(cfg, || {
            store.get_opts(
                &path,
                GetOptions {
                    if_match: Some(etag.clone()),
                    range: Some(GetRange::Bounded(wanted.clone())),
                    ..Default::default()
                },
            )
        })
        .await?;
    // A store that ignores If-Match still names the version it sent.
    let changed = |detail: String| SourceError::Changed {
        url: src.shown.clone(),
        detail,
    };
    match got.meta.e_tag.as_deref() {
        Some(now) if now == etag => {}
        now => {
            return Err(changed(format!(
                "its ETag is now {}, was {etag}",
                now.unwrap_or("(none)")
            )))
        }
    }
    if got.meta.size != version.size {
        return Err(changed(format!(
            "its size is now {} bytes, was {}",
            got.meta.size, version.size
        )));
    }
    if got.range != wanted {
        return Err(SourceError::BadRange {
            url: src.shown.clone(),
            detail: format!(
                "the store answered bytes {}..{} for {}..{}",
                got.range.start, got.range.end, wanted.start, wanted.end
            ),
        });
    }
    let stream = got
        .into_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = tokio_util::io::StreamReader::new(stream);
    Ok(Box::pin(reader.take(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoints: &[&str], default: Option<&str>) -> SourceConfig {
        SourceConfig::new(Vec::new())
            .with_s3(&S3Settings {
                enabled: true,
                default_endpoint: default.map(str::to_string),
                endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
                region: "eu-west-1".into(),
                access_key_id: Some("id".into()),
                secret_access_key: Some("secret".into()),
                session_token: None,
            })
            .unwrap()
    }

    #[test]
    fn endpoints_are_compared_by_origin() {
        let a = Endpoint::parse("http://Store.Example:9000/").unwrap();
        assert_eq!(a.origin, "http://store.example:9000");
        assert_eq!(a.authority, "store.example:9000");
        assert_eq!(
            Endpoint::parse("https://s3.example:443").unwrap().origin,
            "https://s3.example"
        );
        for bad in [
            "ftp://store.example",
            "http://user:pw@store.example",
            "http://store.example/bucket",
            "http://store.example/?x=1",
            "store.example:9000",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s3_urls_name_a_bucket_a_key_and_maybe_an_allowed_endpoint() {
        let cfg = cfg(&["http://127.0.0.1:9000", "https://minio.example"], None);
        let src = S3Source::parse("s3://my-bucket/dir/a%3Fb%23c%25.bin", &cfg).unwrap();
        assert_eq!(src.bucket, "my-bucket");
        assert_eq!(src.key, "dir/a?b#c%.bin");
        assert_eq!(src.endpoint, None);
        let named = S3Source::parse(
            "s3://my-bucket/k?endpoint=http%3A%2F%2F127.0.0.1%3A9000",
            &cfg,
        )
        .unwrap();
        assert_eq!(named.endpoint.unwrap().origin, "http://127.0.0.1:9000");
        let named =
            S3Source::parse("s3://my-bucket/k?endpoint=https://MINIO.example:443/", &cfg).unwrap();
        assert_eq!(named.endpoint.unwrap().origin, "https://minio.example");
        for refused in [
            "s3://my-bucket/k?endpoint=http://127.0.0.1:9001",
            "s3://my-bucket/k?endpoint=http://169.254.169.254",
            "s3://my-bucket/k?endpoint=http://10.0.0.1:9000",
            "s3://my-bucket/k?endpoint=https://127.0.0.1:9000",
            "s3://my-bucket/k?endpoint=not-a-url",
        ] {
            let e = S3Source::parse(refused, &cfg).unwrap_err();
            assert!(
                matches!(e, SourceError::EndpointNotAllowed(_)),
                "{refused}: {e}"
            );
            assert!(!e.is_transient());
        }
        for invalid in [
            "s3://my-bucket",
            "s3://my-bucket/",
            "s3://My_Bucket/k",
            "s3://ab/k",
            "s3://-bucket/k",
            "s3://my-bucket/a//b",
            "s3://my-bucket/a/../b",
            "s3://my-bucket/./b",
            "s3://my-bucket/a/",
            "s3://my-bucket//a",
            "s3://my-bucket/a%00b",
            "s3://my-bucket/a%FFb",
            "s3://my-bucket/a#frag",
            "s3://my-bucket/a?x=1",
            "s3://my-bucket/a?",
            "s3://my-bucket/a?endpoint=http://127.0.0.1:9000&endpoint=http://127.0.0.1:9000",
        ] {
            let e = S3Source::parse(invalid, &cfg).unwrap_err();
            assert!(matches!(e, SourceError::Invalid { .. }), "{invalid}: {e}");
        }
        let long = format!("s3://my-bucket/{}", "k".repeat(MAX_KEY_BYTES + 1));
        assert!(S3Source::parse(&long, &cfg).is_err());
    }

    #[test]
    fn s3_sources_are_off_unless_turned_on() {
        let none = SourceConfig::new(Vec::new());
        let e = S3Source::parse("s3://my-bucket/k", &none).unwrap_err();
        assert!(matches!(e, SourceError::S3NotConfigured), "{e}");
        assert!(e.to_string().contains("INGEST_S3_SOURCES"), "{e}");
        assert!(!e.is_transient());
        // Credentials in the environment (exported for aws-cli, say) do not
        // turn them on.
        let keys_only = S3Settings {
            access_key_id: Some("id".into()),
            secret_access_key: Some("secret".into()),
            ..Default::default()
        };
        let cfg = SourceConfig::new(Vec::new()).with_s3(&keys_only).unwrap();
        assert!(cfg.s3.is_none());
        let e = S3Source::parse("s3://my-bucket/k", &cfg).unwrap_err();
        assert!(matches!(e, SourceError::S3NotConfigured), "{e}");
        // On, both credentials are needed.
        let half = S3Settings {
            enabled: true,
            access_key_id: Some("id".into()),
            ..Default::default()
        };
        assert!(matches!(
            SourceConfig::new(Vec::new()).with_s3(&half),
            Err(S3ConfigError::HalfCredentials)
        ));
        let bare = S3Settings {
            enabled: true,
            ..Default::default()
        };
        assert!(matches!(
            SourceConfig::new(Vec::new()).with_s3(&bare),
            Err(S3ConfigError::NoCredentials)
        ));
    }

    #[test]
    fn the_default_endpoint_is_aws_or_the_configured_one() {
        let aws = cfg(&[], None);
        let s3 = aws.s3.as_ref().unwrap();
        assert_eq!(s3.default.origin, "https://s3.eu-west-1.amazonaws.com");
        assert!(s3.allowed.is_empty(), "AWS itself cannot be named");
        let own = cfg(&[], Some("http://127.0.0.1:9000"));
        let s3 = own.s3.as_ref().unwrap();
        assert_eq!(s3.default.origin, "http://127.0.0.1:9000");
        assert!(
            S3Source::parse("s3://my-bucket/k?endpoint=http://127.0.0.1:9000", &own).is_ok(),
            "the default store may be named"
        );
    }

    #[tokio::test]
    async fn the_connector_sends_only_to_the_endpoint_host() {
        let connector = GuardedConnector {
            client: client(&None, Duration::from_secs(5)),
            authority: "127.0.0.1:9".into(),
        };
        let req = http::Request::builder()
            .uri("http://169.254.169.254/latest/meta-data/")
            .body(object_store::client::HttpRequestBody::empty())
            .unwrap();
        let e = connector.call(req).await.unwrap_err();
        assert!(e.to_string().contains("not the S3 source endpoint"), "{e}");
    }
}
