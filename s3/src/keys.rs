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
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"mfs-ingest s3 secret v1\0");
        mac.update(access_key_id.as_bytes());
        mac.update(b"\0");
        mac.update(salt.as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        hex[..40].to_string()
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
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::rng();
    let id: String = std::iter::once("MFS".to_string())
        .chain((0..17).map(|_| (ALPHABET[rng.random_range(0..ALPHABET.len())] as char).to_string()))
        .collect();
    let salt: String = (0..16)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect();
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

/// The buckets a live key may use (`None`: no such live key).
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

/// SigV4 secrets from PostgreSQL and the server key.
pub struct KeyAuth {
    pub pool: PgPool,
    pub server: ServerKey,
}

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let salt: Option<String> = sqlx::query_scalar(
            "SELECT salt FROM s3_access_keys WHERE access_key_id = $1 AND revoked_at IS NULL",
        )
        .bind(access_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| s3_error!(ServiceUnavailable, "key lookup failed: {e}"))?;
        match salt {
            Some(salt) => Ok(SecretKey::from(self.server.secret(access_key, &salt))),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Refuses anonymous requests and buckets the key is not allowed: the
/// bucket a request names, and the bucket a copy reads from.
pub struct KeyAccess {
    pub pool: PgPool,
}

impl KeyAccess {
    /// The buckets the request's live key may use.
    async fn allowed(&self, credentials: Option<&Credentials>) -> S3Result<Vec<String>> {
        let Some(credentials) = credentials else {
            return Err(s3_error!(AccessDenied, "anonymous requests are refused"));
        };
        allowed_buckets(&self.pool, &credentials.access_key)
            .await
            .map_err(|e| s3_error!(ServiceUnavailable, "key lookup failed: {e}"))?
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))
    }

    /// The source of a copy (`x-amz-copy-source`) must be a bucket the key
    /// may use, like the destination.
    async fn check_copy_source(
        &self,
        credentials: Option<&Credentials>,
        source: &CopySource,
    ) -> S3Result<()> {
        let CopySource::Bucket { bucket, .. } = source else {
            return Err(s3_error!(
                NotImplemented,
                "copy sources other than bucket/key are not implemented"
            ));
        };
        if allows(&self.allowed(credentials).await?, bucket) {
            Ok(())
        } else {
            Err(s3_error!(
                AccessDenied,
                "this access key may not use bucket {bucket}"
            ))
        }
    }
}

#[async_trait::async_trait]
impl S3Access for KeyAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let allowed = self.allowed(cx.credentials()).await?;
        match cx.s3_path() {
            // ListBuckets: answered with the key's buckets only.
            S3Path::Root => Ok(()),
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => {
                if allows(&allowed, bucket) {
                    Ok(())
                } else {
                    Err(s3_error!(
                        AccessDenied,
                        "this access key may not use bucket {bucket}"
                    ))
                }
            }
        }
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        self.check_copy_source(req.credentials.as_ref(), &req.input.copy_source)
            .await
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        self.check_copy_source(req.credentials.as_ref(), &req.input.copy_source)
            .await
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
