//! Object tagging: PutObjectTagging, GetObjectTagging, DeleteObjectTagging,
//! and the tag sets of writes (`x-amz-tagging` on PutObject,
//! CreateMultipartUpload and CopyObject with `x-amz-tagging-directive:
//! REPLACE`). A tag set is checked with S3's limits before anything is
//! written: at most [`MAX_TAGS`] tags (`400 BadRequest` past it), keys of
//! 1..=128 and values of 0..=256 Unicode characters, keys unique (`400
//! InvalidTag`); a malformed `x-amz-tagging` header is `400
//! InvalidArgument`, S3's answer and message.
//!
//! Tags live with the object row (`s3_objects.tags`, migration 0010) and
//! reach it through the upload row, like Content-Type: the completion that
//! puts an upload at its key writes them (trigger `s3_object_on_completion`).
//! So an overwrite replaces the tags, and the tags of a tagging call belong
//! to the object at the key when its one statement runs: it is a single
//! `UPDATE` of the key's row, which PostgreSQL orders with a completion's
//! upsert of the same row by the row lock. A tagging call ordered before an
//! overwrite is replaced by the overwrite's tags; one ordered after it tags
//! the new object; none mixes the two objects.
//!
//! Stored and answered sorted by key (byte order), as S3 lists them.

use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::errors::db_error;
use super::objects::check_version;
use super::Endpoint;
use crate::index;

/// Most tags an object may have (S3's limit).
pub const MAX_TAGS: usize = 10;
/// Longest tag key, Unicode characters.
pub const MAX_KEY_CHARS: usize = 128;
/// Longest tag value, Unicode characters.
pub const MAX_VALUE_CHARS: usize = 256;

/// S3's message for an `x-amz-tagging` header it cannot read.
const BAD_HEADER: &str = "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded \
     URL query parameters without tag name duplicates.";

/// A checked tag set: sorted by key, keys unique, within S3's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(Vec<(String, String)>);

impl Tags {
    /// Checks a tag set against S3's limits.
    pub fn new(mut pairs: Vec<(String, String)>) -> S3Result<Tags> {
        if pairs.len() > MAX_TAGS {
            return Err(bad_request(&format!(
                "Object tags cannot be greater than {MAX_TAGS}"
            )));
        }
        for (k, v) in &pairs {
            if k.is_empty() || k.chars().count() > MAX_KEY_CHARS {
                return Err(s3_error!(
                    InvalidTag,
                    "The TagKey you have provided is invalid"
                ));
            }
            if v.chars().count() > MAX_VALUE_CHARS {
                return Err(s3_error!(
                    InvalidTag,
                    "The TagValue you have provided is invalid"
                ));
            }
        }
        pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(s3_error!(
                InvalidTag,
                "Cannot provide multiple Tags with the same key"
            ));
        }
        Ok(Tags(pairs))
    }

    /// The tags of a PutObjectTagging body.
    pub fn from_tagging(tagging: Tagging) -> S3Result<Tags> {
        let pairs = tagging
            .tag_set
            .into_iter()
            .map(|t| match (t.key, t.value) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(s3_error!(MalformedXML, "every Tag needs a Key and a Value")),
            })
            .collect::<S3Result<Vec<_>>>()?;
        Tags::new(pairs)
    }

    /// The tags of an `x-amz-tagging` header (URL query parameters:
    /// `k1=v1&k2&…`, a missing `=` giving an empty value); no header, or an
    /// empty one, is no tags.
    pub fn from_header(header: Option<&str>) -> S3Result<Tags> {
        let header = header.unwrap_or_default();
        if header.is_empty() {
            return Ok(Tags::default());
        }
        let bad = || s3_error!(InvalidArgument, "{BAD_HEADER}");
        let pairs = header
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                Ok((
                    url_decode(k).ok_or_else(bad)?,
                    url_decode(v).ok_or_else(bad)?,
                ))
            })
            .collect::<S3Result<Vec<_>>>()?;
        let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad());
        }
        Tags::new(pairs)
    }

    /// As stored (`tags` columns: an array of `{"Key", "Value"}`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.0
                .iter()
                .map(|(k, v)| serde_json::json!({"Key": k, "Value": v}))
                .collect(),
        )
    }

    /// The S3 tag set of a stored `tags` column.
    pub fn tag_set(stored: &serde_json::Value) -> TagSet {
        stored
            .as_array()
            .map(|tags| {
                tags.iter()
                    .map(|t| Tag {
                        key: t.get("Key").and_then(|k| k.as_str()).map(str::to_string),
                        value: t.get("Value").and_then(|v| v.as_str()).map(str::to_string),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The number of tags of a stored `tags` column.
pub fn tag_count(stored: &serde_json::Value) -> usize {
    stored.as_array().map_or(0, Vec::len)
}

/// `400 BadRequest`, S3's answer to too many tags (s3s has no such code).
fn bad_request(message: &str) -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("BadRequest".into()),
        message.to_string(),
    );
    e.set_status_code(http::StatusCode::BAD_REQUEST);
    e
}

/// Decodes one URL query component (`+` is a space, `%XX` a byte); `None`
/// if a `%` is not followed by two hex digits or the bytes are not UTF-8.
fn url_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Whether `x-amz-tagging-directive` says REPLACE (COPY is the default).
pub(super) fn replaces_tags(directive: Option<&TaggingDirective>) -> S3Result<bool> {
    match directive.map(|d| d.as_str()) {
        None => Ok(false),
        Some(d) if d == TaggingDirective::COPY => Ok(false),
        Some(d) if d == TaggingDirective::REPLACE => Ok(true),
        Some(d) => Err(s3_error!(InvalidArgument, "Unknown tagging directive: {d}")),
    }
}

pub(super) async fn put_object_tagging(
    ep: &Endpoint,
    req: S3Request<PutObjectTaggingInput>,
) -> S3Result<S3Response<PutObjectTaggingOutput>> {
    let input = req.input;
    check_version(input.version_id.as_deref())?;
    let tags = Tags::from_tagging(input.tagging)?;
    replace_tags(ep, &input.bucket, &input.key, &tags).await?;
    Ok(S3Response::new(PutObjectTaggingOutput {
        version_id: input.version_id,
    }))
}

/// Replaces the tags of object `bucket`/`key` (PutObjectTagging, and
/// DeleteObjectTagging with none): `NoSuchBucket`, `NoSuchKey`.
async fn replace_tags(ep: &Endpoint, bucket: &str, key: &str, tags: &Tags) -> S3Result<()> {
    ep.require_bucket(bucket).await?;
    let tagged = index::set_object_tags(ep.pool(), bucket, key, &tags.to_json())
        .await
        .map_err(db_error)?;
    if !tagged {
        return Err(s3_error!(NoSuchKey));
    }
    Ok(())
}

pub(super) async fn get_object_tagging(
    ep: &Endpoint,
    req: S3Request<GetObjectTaggingInput>,
) -> S3Result<S3Response<GetObjectTaggingOutput>> {
    let input = req.input;
    check_version(input.version_id.as_deref())?;
    ep.require_bucket(&input.bucket).await?;
    let stored = index::object_tags(ep.pool(), &input.bucket, &input.key)
        .await
        .map_err(db_error)?
        .ok_or_else(|| s3_error!(NoSuchKey))?;
    Ok(S3Response::new(GetObjectTaggingOutput {
        tag_set: Tags::tag_set(&stored),
        version_id: input.version_id,
    }))
}

pub(super) async fn delete_object_tagging(
    ep: &Endpoint,
    req: S3Request<DeleteObjectTaggingInput>,
) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
    let input = req.input;
    check_version(input.version_id.as_deref())?;
    replace_tags(ep, &input.bucket, &input.key, &Tags::default()).await?;
    Ok(S3Response::with_status(
        DeleteObjectTaggingOutput {
            version_id: input.version_id,
        },
        http::StatusCode::NO_CONTENT,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: std::fmt::Debug>(r: S3Result<T>) -> String {
        r.unwrap_err().code().as_str().to_string()
    }

    fn pairs(n: usize, key_len: usize, value_len: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                (
                    format!("{i}{}", "k".repeat(key_len - 1)),
                    "v".repeat(value_len),
                )
            })
            .collect()
    }

    #[test]
    fn limits_are_s3s() {
        assert_eq!(Tags::new(pairs(10, 128, 256)).unwrap().0.len(), 10);
        assert_eq!(code(Tags::new(pairs(11, 1, 1))), "BadRequest");
        assert_eq!(code(Tags::new(pairs(1, 129, 1))), "InvalidTag");
        assert_eq!(code(Tags::new(pairs(1, 1, 257))), "InvalidTag");
        assert_eq!(
            code(Tags::new(vec![(String::new(), "v".into())])),
            "InvalidTag"
        );
        assert_eq!(
            code(Tags::new(vec![
                ("a".into(), "1".into()),
                ("a".into(), "2".into())
            ])),
            "InvalidTag"
        );
        // Characters, not bytes: 128 three-byte characters are a valid key.
        let wide = "€".repeat(128);
        assert!(Tags::new(vec![(wide.clone(), "€".repeat(256))]).is_ok());
        assert_eq!(
            code(Tags::new(vec![(format!("{wide}€"), String::new())])),
            "InvalidTag"
        );
    }

    #[test]
    fn tags_are_sorted_by_key_bytes() {
        let tags = Tags::new(vec![
            ("foo".into(), "bar".into()),
            ("Z".into(), "1".into()),
            ("bar".into(), String::new()),
        ])
        .unwrap();
        let keys: Vec<_> = Tags::tag_set(&tags.to_json())
            .into_iter()
            .map(|t| t.key.unwrap())
            .collect();
        assert_eq!(keys, ["Z", "bar", "foo"]);
    }

    #[test]
    fn headers_are_url_query_parameters() {
        let tags = Tags::from_header(Some("foo=bar&bar&a%20b=c+d%2Be&k=%E2%82%AC")).unwrap();
        assert_eq!(
            tags.0,
            [
                ("a b".to_string(), "c d+e".to_string()),
                ("bar".to_string(), String::new()),
                ("foo".to_string(), "bar".to_string()),
                ("k".to_string(), "€".to_string()),
            ]
        );
        assert!(Tags::from_header(None).unwrap().0.is_empty());
        assert!(Tags::from_header(Some("")).unwrap().0.is_empty());
        for bad in ["a=1&a=2", "a=%zz", "a=%e2%82", "a=%4"] {
            assert_eq!(
                code(Tags::from_header(Some(bad))),
                "InvalidArgument",
                "{bad}"
            );
        }
        assert_eq!(code(Tags::from_header(Some("=v"))), "InvalidTag");
        let eleven: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            code(Tags::from_header(Some(&eleven.join("&")))),
            "BadRequest"
        );
    }

    #[test]
    fn tagging_directives() {
        let d = |s: &str| TaggingDirective::from(s.to_string());
        assert!(!replaces_tags(None).unwrap());
        assert!(!replaces_tags(Some(&d("COPY"))).unwrap());
        assert!(replaces_tags(Some(&d("REPLACE"))).unwrap());
        assert_eq!(code(replaces_tags(Some(&d("MOVE")))), "InvalidArgument");
    }
}
