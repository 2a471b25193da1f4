//! `http(s)://` sources: the size and validator by `HEAD`, parts by `GET`
//! with `Range`, pinned to the version seen at validation.
//!
//! Redirects are followed here, at most [`MAX_REDIRECTS`] of them, each hop
//! checked by [`check_url`] (and its addresses by the client's
//! [`super::guard::GuardedResolver`]) before it is requested. Every part
//! read sends the validator taken at validation as `If-Match` /
//! `If-Unmodified-Since` and `If-Range`, and checks the answer: a `412`, a
//! different validator, or a full body where a range was asked means the
//! source changed (the session fails); a `206` whose `Content-Range` is not
//! exactly the range asked for is refused.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::io::AsyncReadExt;

use super::guard::{self, AllowedHosts, GuardedResolver};
use super::{masked, SourceConfig, SourceError, SourceReader, SourceVersion};

/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;

/// What identifies one version of an HTTP source: a strong `ETag`, or else
/// its `Last-Modified` date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validator {
    ETag(String),
    LastModified(String),
}

impl Validator {
    /// The validator of a response: a strong `ETag` (weak ones cannot pin a
    /// range), else `Last-Modified`, else none.
    pub fn from_headers(headers: &HeaderMap) -> Option<Validator> {
        let text = |name: HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(etag) = text(header::ETAG) {
            if etag.len() >= 2 && etag.starts_with('"') && etag.ends_with('"') {
                return Some(Validator::ETag(etag));
            }
        }
        text(header::LAST_MODIFIED).map(Validator::LastModified)
    }

    /// The form stored with the session.
    pub fn to_stored(&self) -> String {
        match self {
            Validator::ETag(v) => format!("etag:{v}"),
            Validator::LastModified(v) => format!("last-modified:{v}"),
        }
    }

    /// Reads [`Validator::to_stored`]'s form back.
    pub fn from_stored(stored: &str) -> Option<Validator> {
        if let Some(v) = stored.strip_prefix("etag:") {
            Some(Validator::ETag(v.to_string()))
        } else {
            stored
                .strip_prefix("last-modified:")
                .map(|v| Validator::LastModified(v.to_string()))
        }
    }

    /// Headers that make the server refuse (`412`) or answer in full
    /// (`If-Range`) if the source is no longer this version.
    fn preconditions(&self, headers: &mut HeaderMap) {
        let (name, value) = match self {
            Validator::ETag(v) => (header::IF_MATCH, v),
            Validator::LastModified(v) => (header::IF_UNMODIFIED_SINCE, v),
        };
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value.clone());
            headers.insert(header::IF_RANGE, value);
        }
    }

    /// Why a response is not of this version, if it says so.
    fn differs_in(&self, headers: &HeaderMap) -> Option<String> {
        let now = Validator::from_headers(headers)?;
        match (self, &now) {
            (Validator::ETag(a), Validator::ETag(b)) if a != b => {
                Some(format!("its ETag is now {b}, was {a}"))
            }
            (Validator::LastModified(a), Validator::LastModified(b)) if a != b => {
                Some(format!("its Last-Modified is now {b}, was {a}"))
            }
            _ => None,
        }
    }
}

/// The HTTP client for sources: no automatic redirects, no proxies (a proxy
/// would resolve names past the guard), names resolved by the guard.
pub fn client(allowed: &AllowedHosts, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver {
            allowed: allowed.clone(),
        }))
        .build()
        .expect("HTTP client")
}

/// Checks a URL (the source's or a redirect's) before anything is sent:
/// scheme, host in the allow-list if one is set, and an IP literal's
/// address unless its host is named. Names are checked when resolved.
pub fn check_url(url: &url::Url, cfg: &SourceConfig) -> Result<(), SourceError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SourceError::UnsupportedScheme(url.scheme().to_string()));
    }
    let Some(host) = url.host_str() else {
        return Err(SourceError::Invalid {
            url: masked(url),
            reason: "no host".into(),
        });
    };
    let allowed = &cfg.allowed_http_hosts;
    let named = guard::is_named(allowed, host);
    if allowed.is_some() && !named {
        return Err(SourceError::HostNotAllowed(host.to_string()));
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    if !named && literal.is_some_and(guard::is_denied) {
        return Err(SourceError::AddressNotAllowed(host.to_string()));
    }
    Ok(())
}

/// Sends a request, following redirects (each hop checked first).
async fn send(
    cfg: &SourceConfig,
    method: Method,
    url: &url::Url,
    headers: &HeaderMap,
) -> Result<reqwest::Response, SourceError> {
    let refused = || SourceError::RedirectRefused(masked(url));
    let mut current = url.clone();
    for hop in 0..=MAX_REDIRECTS {
        check_url(&current, cfg).map_err(|e| if hop == 0 { e } else { refused() })?;
        let request = cfg
            .http
            .request(method.clone(), current.clone())
            .headers(headers.clone())
            .send();
        let resp = tokio::time::timeout(cfg.timeout, request)
            .await
            .map_err(|_| SourceError::Timeout(cfg.timeout))?
            .map_err(|e| match guard::refused_in(&e) {
                Some(_) if hop > 0 => refused(),
                Some(r) => SourceError::AddressNotAllowed(r.host.clone()),
                None => http_error(url, e.to_string()),
            })?;
        let follow = matches!(
            resp.status(),
            StatusCode::MOVED_PERMANENTLY
                | StatusCode::FOUND
                | StatusCode::SEE_OTHER
                | StatusCode::TEMPORARY_REDIRECT
                | StatusCode::PERMANENT_REDIRECT
        );
        if !follow {
            return Ok(resp);
        }
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(refused)?;
        current = current.join(location).map_err(|_| refused())?;
    }
    Err(refused())
}

/// The size and validator of an HTTP source (`HEAD`).
pub async fn probe(url: &url::Url, cfg: &SourceConfig) -> Result<SourceVersion, SourceError> {
    let resp = send(cfg, Method::HEAD, url, &HeaderMap::new()).await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(SourceError::Missing(masked(url)));
    }
    if !resp.status().is_success() {
        return Err(http_error(url, format!("HEAD answered {}", resp.status())));
    }
    let size = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| http_error(url, "no Content-Length".into()))?;
    Ok(SourceVersion {
        size,
        validator: Validator::from_headers(resp.headers()),
    })
}

/// `len` bytes at `offset` of the source as it was at validation.
pub async fn open_range(
    url: &url::Url,
    offset: u64,
    len: u64,
    version: &SourceVersion,
    cfg: &SourceConfig,
) -> Result<SourceReader, SourceError> {
    if len == 0 {
        return Ok(Box::pin(tokio::io::empty()));
    }
    let last = offset + len - 1;
    let mut headers = HeaderMap::new();
    let range = HeaderValue::from_str(&format!("bytes={offset}-{last}")).expect("ASCII");
    headers.insert(header::RANGE, range);
    if let Some(v) = &version.validator {
        v.preconditions(&mut headers);
    }
    let resp = send(cfg, Method::GET, url, &headers).await?;
    let status = resp.status();
    let changed = |detail: String| SourceError::Changed {
        url: masked(url),
        detail,
    };
    if status == StatusCode::NOT_FOUND {
        return Err(SourceError::Missing(masked(url)));
    }
    if status == StatusCode::PRECONDITION_FAILED {
        return Err(changed(
            "the server answered 412 Precondition Failed".into(),
        ));
    }
    if let Some(why) = version
        .validator
        .as_ref()
        .and_then(|v| v.differs_in(resp.headers()))
    {
        return Err(changed(why));
    }
    match status {
        StatusCode::PARTIAL_CONTENT => {
            check_content_range(resp.headers(), offset, last, version.size).map_err(|e| {
                SourceError::BadRange {
                    url: masked(url),
                    detail: e.to_string(),
                }
            })?;
        }
        // The whole body is the range asked for only from offset 0; with a
        // validator sent as If-Range, a full answer elsewhere means the
        // source is no longer that version.
        StatusCode::OK if offset == 0 => {}
        StatusCode::OK if version.validator.is_some() => {
            return Err(changed(
                "the server answered the whole body to a range pinned by If-Range".into(),
            ));
        }
        _ => {
            return Err(http_error(
                url,
                format!("range request answered {status} (the server must support Range)"),
            ))
        }
    }
    let stream = resp
        .bytes_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = tokio_util::io::StreamReader::new(stream);
    Ok(Box::pin(reader.take(len)))
}

/// A 206 answer whose `Content-Range` is not the range asked for.
#[derive(Debug, thiserror::Error)]
enum ContentRangeMismatch {
    #[error("a 206 answer without Content-Range")]
    Missing,
    #[error("Content-Range {raw:?} is not the range asked for (bytes {first}-{last}/{total})")]
    Other {
        raw: String,
        first: u64,
        last: u64,
        total: u64,
    },
}

/// Checks `Content-Range: bytes <first>-<last>/<total>` against what was
/// asked.
fn check_content_range(
    headers: &HeaderMap,
    first: u64,
    last: u64,
    total: u64,
) -> Result<(), ContentRangeMismatch> {
    let raw = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .ok_or(ContentRangeMismatch::Missing)?;
    let parsed = (|| {
        let rest = raw.trim().strip_prefix("bytes ")?;
        let (range, size) = rest.split_once('/')?;
        let (a, b) = range.split_once('-')?;
        Some((
            a.trim().parse::<u64>().ok()?,
            b.trim().parse::<u64>().ok()?,
            size.trim().parse::<u64>().ok()?,
        ))
    })();
    match parsed {
        Some(got) if got == (first, last, total) => Ok(()),
        _ => Err(ContentRangeMismatch::Other {
            raw: raw.to_string(),
            first,
            last,
            total,
        }),
    }
}

fn http_error(url: &url::Url, detail: String) -> SourceError {
    SourceError::Http {
        url: masked(url),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn content_range_must_be_exactly_the_range_asked_for() {
        let ok = headers(&[(header::CONTENT_RANGE, "bytes 100-199/1000")]);
        assert!(check_content_range(&ok, 100, 199, 1000).is_ok());
        for wrong in [
            "bytes 0-99/1000",
            "bytes 100-198/1000",
            "bytes 100-199/999",
            "bytes 100-199/*",
            "bytes */1000",
            "100-199/1000",
            "bytes 100-199",
        ] {
            let h = headers(&[(header::CONTENT_RANGE, wrong)]);
            assert!(check_content_range(&h, 100, 199, 1000).is_err(), "{wrong}");
        }
        assert!(check_content_range(&HeaderMap::new(), 100, 199, 1000).is_err());
    }

    #[test]
    fn validators_prefer_a_strong_etag_and_round_trip() {
        let lm = "Tue, 15 Nov 1994 12:45:26 GMT";
        let strong = headers(&[(header::ETAG, "\"abc\""), (header::LAST_MODIFIED, lm)]);
        let weak = headers(&[(header::ETAG, "W/\"abc\""), (header::LAST_MODIFIED, lm)]);
        assert_eq!(
            Validator::from_headers(&strong),
            Some(Validator::ETag("\"abc\"".into()))
        );
        assert_eq!(
            Validator::from_headers(&weak),
            Some(Validator::LastModified(lm.into()))
        );
        assert_eq!(Validator::from_headers(&HeaderMap::new()), None);
        for v in [
            Validator::ETag("\"x:y\"".into()),
            Validator::LastModified(lm.into()),
        ] {
            assert_eq!(Validator::from_stored(&v.to_stored()), Some(v));
        }
        let pinned = Validator::ETag("\"abc\"".into());
        assert!(pinned.differs_in(&strong).is_none());
        assert!(pinned
            .differs_in(&headers(&[(header::ETAG, "\"def\"")]))
            .is_some());
        let mut sent = HeaderMap::new();
        pinned.preconditions(&mut sent);
        assert_eq!(sent[header::IF_MATCH], "\"abc\"");
        assert_eq!(sent[header::IF_RANGE], "\"abc\"");
    }
}
