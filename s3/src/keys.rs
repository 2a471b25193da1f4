//! Access keys: creating, listing and revoking them (`worker s3 keys …`),
//! SigV4 secret lookup for s3s ([`KeyAuth`]) and the per-bucket access check
//! ([`KeyAccess`]: the bucket of the path, and the source bucket of a copy).
//!
//! A secret is never stored. It is derived, `hex(HMAC-SHA256(server key,
//! "mfs-ingest s3 secret v1" ‖ 0 ‖ access key id ‖ 0 ‖ salt))[..40]`, from
//! the server key every endpoint instance is given (`S3_KEY_SECRET`, at least
//! 32 bytes) and the key's random salt in `s3_access_keys`. SigV4 needs the
//! secret itself to check a signature, so an instance derives it again for
//! each request; PostgreSQL alone (a dump, a replica) holds nothing that
//! signs a request. Rotating the server key invalidates every key.
//!
//! Session keys (temporary credentials minted by STS AssumeRole,
//! [`crate::sts`]) live in `s3_session_keys`: their secret and their session
//! token are derived the same way with labels of their own, never stored.
//! [`KeyAuth`] finds permanent keys, then live session keys (expired: `400
//! ExpiredToken`; parent revoked: `403 InvalidAccessKeyId`). s3s does not
//! check `x-amz-security-token`, so [`KeyAccess`] does: a session key's
//! requests must carry its token (header, or `X-Amz-Security-Token` of a
//! presigned URL), a permanent key's must carry none. A session key acts for
//! its parent: the parent's buckets, and the parent is the request's
//! [`Principal`] (its `created_by`, its per-key upload cap).

use std::cell::RefCell;

use hmac::{Hmac, Mac};
use rand::Rng;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::Credentials;
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{CopyObjectInput, CopySource, UploadPartCopyInput};
use s3s::path::S3Path;
use s3s::{s3_error, S3Request, S3Result};
use sha2::Sha256;
use sqlx::PgPool;
use subtle::ConstantTimeEq;

/// Shortest accepted server key, bytes.
pub const MIN_SERVER_KEY_BYTES: usize = 32;
/// A key allowed every bucket.
pub const ALL_BUCKETS: &str = "*";

/// The server key secrets are derived from.
#[derive(Clone)]
pub struct ServerKey(std::sync::Arc<[u8]>);

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("S3_KEY_SECRET must be at least {MIN_SERVER_KEY_BYTES} bytes")]
    ServerKeyTooShort,
    #[error("invalid bucket name {0:?} for a key (3..63 of a-z 0-9 . -, or '*')")]
    BadBucket(String),
    #[error("no such access key: {0}")]
    NoSuchKey(String),
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
}

impl ServerKey {
    pub fn new(key: &str) -> Result<ServerKey, KeyError> {
        if key.len() < MIN_SERVER_KEY_BYTES {
            return Err(KeyError::ServerKeyTooShort);
        }
        Ok(ServerKey(key.as_bytes().into()))
    }

    /// The secret of `access_key_id` with `salt`.
    pub fn secret(&self, access_key_id: &str, salt: &str) -> String {
        self.derive(b"mfs-ingest s3 secret v1", access_key_id, salt)[..40].to_string()
    }

    /// The secret of the session key `access_key_id` with `salt`.
    pub fn session_secret(&self, access_key_id: &str, salt: &str) -> String {
        self.derive(b"mfs-ingest s3 session secret v1", access_key_id, salt)[..40].to_string()
    }

    /// The session token of the session key `access_key_id` with `salt`
    /// (64 hex digits).
    pub fn session_token(&self, access_key_id: &str, salt: &str) -> String {
        self.derive(b"mfs-ingest s3 session token v1", access_key_id, salt)
    }

    /// `hex(HMAC-SHA256(server key, label ‖ 0 ‖ id ‖ 0 ‖ salt))`.
    fn derive(&self, label: &[u8], access_key_id: &str, salt: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(b"\0");
        mac.update(access_key_id.as_bytes());
        mac.update(b"\0");
        mac.update(salt.as_bytes());
        let digest = mac.finalize().into_bytes();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An access key as listed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccessKey {
    pub access_key_id: String,
    pub buckets: Vec<String>,
    pub description: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Whether a name is acceptable as a bucket of a key (S3's rules, simplified:
/// 3..=63 of lowercase letters, digits, `.` and `-`, starting and ending with
/// a letter or digit).
pub fn valid_bucket_name(name: &str) -> bool {
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && ends_ok(name.chars().next())
        && ends_ok(name.chars().last())
        && !name.contains("..")
}

/// Creates a key allowed `buckets`; returns it with its secret (shown once).
pub async fn create(
    pool: &PgPool,
    server: &ServerKey,
    buckets: &[String],
    description: &str,
) -> Result<(String, String), KeyError> {
    for b in buckets {
        if b != ALL_BUCKETS && !valid_bucket_name(b) {
            return Err(KeyError::BadBucket(b.clone()));
        }
    }
    let (id, salt) = new_key_id("MFS");
    sqlx::query(
        "INSERT INTO s3_access_keys (access_key_id, salt, buckets, description)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(&salt)
    .bind(buckets)
    .bind(description)
    .execute(pool)
    .await?;
    let secret = server.secret(&id, &salt);
    Ok((id, secret))
}

/// A new key id (`prefix` and 17 base-32 letters, 20 characters like AWS's)
/// and a new random salt.
pub(crate) fn new_key_id(prefix: &str) -> (String, String) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::rng();
    let id: String = std::iter::once(prefix.to_string())
        .chain((0..17).map(|_| (ALPHABET[rng.random_range(0..ALPHABET.len())] as char).to_string()))
        .collect();
    let salt: String = (0..16)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect();
    (id, salt)
}

pub async fn list(pool: &PgPool) -> Result<Vec<AccessKey>, KeyError> {
    Ok(sqlx::query_as(
        "SELECT access_key_id, buckets, description, created_at, revoked_at
           FROM s3_access_keys ORDER BY created_at, access_key_id",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn revoke(pool: &PgPool, access_key_id: &str) -> Result<(), KeyError> {
    let done = sqlx::query(
        "UPDATE s3_access_keys SET revoked_at = COALESCE(revoked_at, now())
          WHERE access_key_id = $1",
    )
    .bind(access_key_id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(KeyError::NoSuchKey(access_key_id.to_string()));
    }
    Ok(())
}

/// A session key as listed (`worker s3 keys list`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionKey {
    pub access_key_id: String,
    pub parent_key_id: String,
    pub role_arn: String,
    pub role_session_name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Session keys not expired for more than a day (older rows are deleted).
pub async fn list_sessions(pool: &PgPool) -> Result<Vec<SessionKey>, KeyError> {
    Ok(sqlx::query_as(
        "SELECT access_key_id, parent_key_id, role_arn, role_session_name, created_at, expires_at
           FROM s3_session_keys ORDER BY created_at, access_key_id",
    )
    .fetch_all(pool)
    .await?)
}

/// The buckets a live permanent key may use (`None`: no such live key).
pub async fn allowed_buckets(
    pool: &PgPool,
    access_key_id: &str,
) -> Result<Option<Vec<String>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT buckets FROM s3_access_keys WHERE access_key_id = $1 AND revoked_at IS NULL",
    )
    .bind(access_key_id)
    .fetch_optional(pool)
    .await
}

/// Whether `allowed` (a key's buckets) covers `bucket`.
pub fn allows(allowed: &[String], bucket: &str) -> bool {
    allowed.iter().any(|b| b == ALL_BUCKETS || b == bucket)
}

/// What an access key id names, as far as signing and access go.
#[derive(Debug, Clone)]
pub(crate) enum KeyKind {
    /// A live permanent key.
    Permanent { salt: String, buckets: Vec<String> },
    /// A session key whose parent is live.
    Session {
        salt: String,
        parent: String,
        buckets: Vec<String>,
        expired: bool,
    },
}

tokio::task_local! {
    /// The key row the request being served looked up: its signature check
    /// ([`KeyAuth`]) and its access check ([`KeyAccess`]) read the same
    /// row, once (see [`with_request_memo`]).
    static LOOKED_UP: RefCell<Option<(String, Option<KeyKind>)>>;
}

/// Runs one request's handling with its own memo of the key lookup: the
/// signature check and then the access check of that request ask for the
/// same access key id, and the second answer is the first's (one query
/// per request instead of two). Nothing outlives the request: a key
/// revoked after its request was checked is refused from the next request
/// on, as before.
pub async fn with_request_memo<F: std::future::Future>(f: F) -> F::Output {
    LOOKED_UP.scope(RefCell::new(None), f).await
}

/// [`lookup_row`], through the request's memo when there is one.
pub(crate) async fn lookup(pool: &PgPool, access_key_id: &str) -> S3Result<Option<KeyKind>> {
    let memo = LOOKED_UP.try_with(|m| match &*m.borrow() {
        Some((id, kind)) if id == access_key_id => Some(kind.clone()),
        _ => None,
    });
    if let Ok(Some(kind)) = memo {
        return Ok(kind);
    }
    let kind = lookup_row(pool, access_key_id).await?;
    let _ = LOOKED_UP.try_with(|m| {
        *m.borrow_mut() = Some((access_key_id.to_string(), kind.clone()));
    });
    Ok(kind)
}

/// Looks `access_key_id` up: permanent keys first, then session keys
/// (`None`: neither, or a session key whose parent is revoked).
async fn lookup_row(pool: &PgPool, access_key_id: &str) -> S3Result<Option<KeyKind>> {
    let db = |e: sqlx::Error| s3_error!(ServiceUnavailable, "key lookup failed: {e}");
    let permanent: Option<(String, Vec<String>)> = sqlx::query_as(
        "SELECT salt, buckets FROM s3_access_keys WHERE access_key_id = $1 AND revoked_at IS NULL",
    )
    .bind(access_key_id)
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    if let Some((salt, buckets)) = permanent {
        return Ok(Some(KeyKind::Permanent { salt, buckets }));
    }
    let session: Option<(String, String, Vec<String>, bool)> = sqlx::query_as(
        "SELECT s.salt, s.parent_key_id, p.buckets, s.expires_at <= now()
           FROM s3_session_keys s JOIN s3_access_keys p ON p.access_key_id = s.parent_key_id
          WHERE s.access_key_id = $1 AND p.revoked_at IS NULL",
    )
    .bind(access_key_id)
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    Ok(
        session.map(|(salt, parent, buckets, expired)| KeyKind::Session {
            salt,
            parent,
            buckets,
            expired,
        }),
    )
}

fn expired_token() -> s3s::S3Error {
    s3_error!(ExpiredToken, "The provided token has expired.")
}

/// SigV4 secrets from PostgreSQL and the server key: permanent keys, then
/// live session keys.
pub struct KeyAuth {
    pub pool: PgPool,
    pub server: ServerKey,
}

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match lookup(&self.pool, access_key).await? {
            Some(KeyKind::Permanent { salt, .. }) => {
                Ok(SecretKey::from(self.server.secret(access_key, &salt)))
            }
            Some(KeyKind::Session { expired: true, .. }) => Err(expired_token()),
            Some(KeyKind::Session { salt, .. }) => Ok(SecretKey::from(
                self.server.session_secret(access_key, &salt),
            )),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Who a request acts for, put in its extensions by [`KeyAccess`]: the
/// permanent key that signed it, or the parent of the session key that did.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The permanent key (the parent, for a session key).
    pub key: String,
    /// The buckets it may use.
    pub buckets: Vec<String>,
    /// The session key that signed the request, if one did.
    pub session_key: Option<String>,
}

impl Principal {
    /// The principal of a request whose access was checked.
    pub fn of<T>(req: &S3Request<T>) -> S3Result<&Principal> {
        req.extensions
            .get::<Principal>()
            .ok_or_else(|| s3_error!(AccessDenied, "anonymous requests are refused"))
    }
}

/// The session token a request carries: `x-amz-security-token`, or the
/// query parameter of a presigned URL (`X-Amz-Security-Token` in SigV4's,
/// `x-amz-security-token` in SigV2's).
pub(crate) fn session_token_of(headers: &http::HeaderMap, uri: &http::Uri) -> Option<String> {
    if let Some(v) = headers.get("x-amz-security-token") {
        return Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-security-token"))
        .map(|(_, v)| v.into_owned())
}

/// Resolves the request's key into its [`Principal`], checking its session
/// token (required for a session key, refused for a permanent one).
pub(crate) async fn principal(
    pool: &PgPool,
    server: &ServerKey,
    credentials: Option<&Credentials>,
    token: Option<&str>,
) -> S3Result<Principal> {
    let Some(credentials) = credentials else {
        return Err(s3_error!(AccessDenied, "anonymous requests are refused"));
    };
    let id = &credentials.access_key;
    match lookup(pool, id).await? {
        None => Err(s3_error!(InvalidAccessKeyId)),
        Some(KeyKind::Permanent { buckets, .. }) => {
            if token.is_some() {
                return Err(s3_error!(
                    InvalidToken,
                    "a security token was sent with a permanent access key"
                ));
            }
            Ok(Principal {
                key: id.clone(),
                buckets,
                session_key: None,
            })
        }
        Some(KeyKind::Session { expired: true, .. }) => Err(expired_token()),
        Some(KeyKind::Session {
            salt,
            parent,
            buckets,
            ..
        }) => {
            let Some(token) = token else {
                // AWS's answer to a temporary key without its token.
                return Err(s3_error!(
                    InvalidAccessKeyId,
                    "temporary credentials need their session token (x-amz-security-token)"
                ));
            };
            let expected = server.session_token(id, &salt);
            if !bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
                return Err(s3_error!(
                    InvalidToken,
                    "The provided token is malformed or otherwise invalid."
                ));
            }
            Ok(Principal {
                key: parent,
                buckets,
                session_key: Some(id.clone()),
            })
        }
    }
}

/// Resolves the request's [`Principal`] (session token checked) and
/// refuses buckets it may not use: the bucket a request names, and the
/// bucket a copy reads from.
pub struct KeyAccess {
    pub pool: PgPool,
    pub server: ServerKey,
}

/// Refuses `bucket` unless `principal` may use it.
fn check_bucket(principal: &Principal, bucket: &str) -> S3Result<()> {
    if allows(&principal.buckets, bucket) {
        Ok(())
    } else {
        Err(s3_error!(
            AccessDenied,
            "this access key may not use bucket {bucket}"
        ))
    }
}

/// The source of a copy (`x-amz-copy-source`) must be a bucket the key may
/// use, like the destination.
fn check_copy_source<T>(req: &S3Request<T>, source: &CopySource) -> S3Result<()> {
    let CopySource::Bucket { bucket, .. } = source else {
        return Err(s3_error!(
            NotImplemented,
            "copy sources other than bucket/key are not implemented"
        ));
    };
    check_bucket(Principal::of(req)?, bucket)
}

#[async_trait::async_trait]
impl S3Access for KeyAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let token = session_token_of(cx.headers(), cx.uri());
        let principal =
            principal(&self.pool, &self.server, cx.credentials(), token.as_deref()).await?;
        match cx.s3_path() {
            // ListBuckets: answered with the key's buckets only.
            S3Path::Root => {}
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => {
                check_bucket(&principal, bucket)?;
            }
        }
        cx.extensions_mut().insert(principal);
        Ok(())
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        check_copy_source(req, &req.input.copy_source)
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        check_copy_source(req, &req.input.copy_source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_depend_on_every_input_and_are_40_hex_digits() {
        let a = ServerKey::new(&"a".repeat(32)).unwrap();
        let b = ServerKey::new(&"b".repeat(32)).unwrap();
        let s = a.secret("MFSKEY", "salt1");
        assert_eq!(s.len(), 40);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(s, a.secret("MFSKEY", "salt1"));
        assert_ne!(s, a.secret("MFSKEY", "salt2"));
        assert_ne!(s, a.secret("MFSKEZ", "salt1"));
        assert_ne!(s, b.secret("MFSKEY", "salt1"));
        // A session key's secret and token: their own labels, so neither is
        // the permanent secret of the same id and salt, nor each other.
        let (ss, st) = (
            a.session_secret("MFSKEY", "salt1"),
            a.session_token("MFSKEY", "salt1"),
        );
        assert_eq!(ss.len(), 40);
        assert_eq!(st.len(), 64);
        assert_ne!(ss, s);
        assert!(!st.starts_with(&s) && !st.starts_with(&ss));
        assert_ne!(st, a.session_token("MFSKEY", "salt2"));
        assert_ne!(st, b.session_token("MFSKEY", "salt1"));
    }

    #[test]
    fn session_tokens_from_the_header_or_either_presigned_query() {
        let uri = |q: &str| -> http::Uri { format!("/b/k?{q}").parse().unwrap() };
        let none = http::HeaderMap::new();
        let mut header = http::HeaderMap::new();
        header.insert("x-amz-security-token", "tok".parse().unwrap());
        assert_eq!(
            session_token_of(&header, &uri("a=b")).as_deref(),
            Some("tok")
        );
        let v4 = uri("X-Amz-Credential=x&X-Amz-Security-Token=ab%2Bc&X-Amz-Signature=s");
        assert_eq!(session_token_of(&none, &v4).as_deref(), Some("ab+c"));
        let v2 = uri("AWSAccessKeyId=x&Signature=s&x-amz-security-token=t2&Expires=1");
        assert_eq!(session_token_of(&none, &v2).as_deref(), Some("t2"));
        assert_eq!(session_token_of(&none, &uri("list-type=2")), None);
        assert_eq!(session_token_of(&none, &"/b/k".parse().unwrap()), None);
    }

    #[test]
    fn short_server_keys_are_refused() {
        assert!(matches!(
            ServerKey::new("short"),
            Err(KeyError::ServerKeyTooShort)
        ));
    }

    #[test]
    fn bucket_names_and_wildcards() {
        assert!(valid_bucket_name("photos-2026"));
        assert!(!valid_bucket_name("Photos"));
        assert!(!valid_bucket_name("ab"));
        assert!(!valid_bucket_name("-ab"));
        assert!(!valid_bucket_name("a..b"));
        let allowed = vec!["photos".to_string()];
        assert!(allows(&allowed, "photos"));
        assert!(!allows(&allowed, "other"));
        assert!(allows(&[ALL_BUCKETS.to_string()], "other"));
    }
}
