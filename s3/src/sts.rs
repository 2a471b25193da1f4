//! STS AssumeRole on the S3 endpoint: temporary credentials of an access
//! key. It owns the `POST /` route (an s3s [`S3Route`]: form body,
//! `Action=AssumeRole`) and the rows of `s3_session_keys` it mints.
//!
//! s3s checks the request's SigV4 signature (service `sts`) before the route
//! runs. The caller must be a live permanent key sending no session token: a
//! session key cannot assume a role (no role chaining). There are no IAM
//! roles: `RoleArn` is required but only recorded, and the session key acts
//! for its caller (the parent): the parent's buckets, the parent's per-key
//! upload cap, refused once the parent is revoked ([`crate::keys`]).
//! `DurationSeconds` is 900..=43200 (default 3600). A session policy
//! (`Policy`, `PolicyArns`) is refused: it could only narrow the grant, and
//! ignoring it would grant more than was asked for.
//!
//! The secret and session token of a session key are derived from the
//! server key like a permanent key's secret, never stored. Errors of an STS
//! request are answered in STS's format (`<ErrorResponse><Error>…`) by
//! [`crate::server`], which wraps every error document of a request
//! [`is_sts_request`] says is one (s3s's own signature errors included).

use http::{HeaderMap, Method, Uri};
use s3s::dto::{AssumeRoleOutput, AssumedRoleUser, Credentials, Timestamp};
use s3s::route::S3Route;
use s3s::{s3_error, Body, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use sqlx::PgPool;

use crate::keys::{self, ServerKey};

/// STS's XML namespace.
pub const STS_XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
/// The STS API version clients send.
pub const STS_VERSION: &str = "2011-06-15";
/// Shortest and longest validity of temporary credentials, seconds.
pub const MIN_DURATION_SECS: i64 = 900;
pub const MAX_DURATION_SECS: i64 = 43200;
/// Validity when the request names none, seconds.
pub const DEFAULT_DURATION_SECS: i64 = 3600;
/// Largest form body read (s3s reads at most 8 KiB to hash an STS body).
const MAX_BODY: usize = 16 << 10;
/// Expired session keys are kept this long (answering `ExpiredToken`
/// rather than `InvalidAccessKeyId`), then deleted.
const KEEP_EXPIRED: &str = "1 day";

/// Whether a request is an STS call: `POST /` with a form body (S3 has no
/// `POST /`; a browser upload is `POST /bucket` with a multipart form).
pub fn is_sts_request(method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
    method == Method::POST
        && uri.path() == "/"
        && headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
}

/// An STS error: its code, `400`.
fn sts_error(code: &'static str, message: impl Into<String>) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::Custom(code.into()), message.into());
    e.set_status_code(http::StatusCode::BAD_REQUEST);
    e
}

/// The parameters of an AssumeRole call, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRoleParams {
    pub role_arn: String,
    pub role_session_name: String,
    pub duration_secs: i64,
}

/// Whether `name` is a valid `RoleSessionName`: 2..=64 of `[\w+=,.@-]`.
fn valid_session_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
}

/// Parses and checks an AssumeRole form body.
pub fn parse_assume_role(body: &[u8]) -> S3Result<AssumeRoleParams> {
    let mut action = None;
    let mut version = None;
    let mut role_arn = None;
    let mut session_name = None;
    let mut duration = None;
    for (k, v) in form_urlencoded::parse(body) {
        match &*k {
            "Action" => action = Some(v.into_owned()),
            "Version" => version = Some(v.into_owned()),
            "RoleArn" => role_arn = Some(v.into_owned()),
            "RoleSessionName" => session_name = Some(v.into_owned()),
            "DurationSeconds" => duration = Some(v.into_owned()),
            "Policy" => {
                return Err(sts_error(
                    "ValidationError",
                    "session policies (Policy) are not supported: the credentials get every \
                     bucket of the calling key",
                ))
            }
            k if k.starts_with("PolicyArns.") => {
                return Err(sts_error(
                    "ValidationError",
                    "session policies (PolicyArns) are not supported: the credentials get \
                     every bucket of the calling key",
                ))
            }
            // Tags, ExternalId, SourceIdentity …: nothing here reads them.
            _ => {}
        }
    }
    match action.as_deref() {
        Some("AssumeRole") => {}
        Some(other) => {
            return Err(sts_error(
                "InvalidAction",
                format!("Could not find operation {other} for version {STS_VERSION}"),
            ))
        }
        None => return Err(sts_error("MissingAction", "Missing Action")),
    }
    match version.as_deref() {
        Some(STS_VERSION) => {}
        Some(other) => {
            return Err(sts_error(
                "InvalidAction",
                format!("Could not find operation AssumeRole for version {other}"),
            ))
        }
        None => {
            return Err(sts_error(
                "MissingParameter",
                "The request must contain the parameter Version",
            ))
        }
    }
    let role_arn = role_arn.ok_or_else(|| {
        sts_error(
            "MissingParameter",
            "The request must contain the parameter RoleArn",
        )
    })?;
    if role_arn.is_empty() || role_arn.len() > 2048 {
        return Err(sts_error(
            "ValidationError",
            "1 validation error detected: Value at 'roleArn' failed to satisfy constraint: \
             Member must have length between 1 and 2048",
        ));
    }
    let role_session_name = session_name.ok_or_else(|| {
        sts_error(
            "MissingParameter",
            "The request must contain the parameter RoleSessionName",
        )
    })?;
    if !valid_session_name(&role_session_name) {
        return Err(sts_error(
            "ValidationError",
            "1 validation error detected: Value at 'roleSessionName' failed to satisfy \
             constraint: Member must have length between 2 and 64 and match [\\w+=,.@-]*",
        ));
    }
    let duration_secs = match duration {
        None => DEFAULT_DURATION_SECS,
        Some(d) => match d.parse::<i64>() {
            Ok(d) if (MIN_DURATION_SECS..=MAX_DURATION_SECS).contains(&d) => d,
            _ => {
                return Err(sts_error(
                    "ValidationError",
                    format!(
                        "1 validation error detected: Value '{d}' at 'durationSeconds' failed \
                         to satisfy constraint: Member must be between {MIN_DURATION_SECS} and \
                         {MAX_DURATION_SECS}"
                    ),
                ))
            }
        },
    };
    Ok(AssumeRoleParams {
        role_arn,
        role_session_name,
        duration_secs,
    })
}

/// The `POST /` route answering `Action=AssumeRole`.
pub struct AssumeRoleRoute {
    pub pool: PgPool,
    pub server: ServerKey,
}

impl AssumeRoleRoute {
    async fn assume_role(&self, mut req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let token = keys::session_token_of(&req.headers, &req.uri);
        let caller = keys::principal(
            &self.pool,
            &self.server,
            req.credentials.as_ref(),
            token.as_deref(),
        )
        .await?;
        if caller.session_key.is_some() {
            return Err(s3_error!(
                AccessDenied,
                "temporary credentials cannot assume a role (no role chaining): call \
                 AssumeRole with a permanent access key"
            ));
        }
        let body = req
            .input
            .store_all_limited(MAX_BODY)
            .await
            .map_err(|e| sts_error("ValidationError", format!("reading the form body: {e}")))?;
        let params = parse_assume_role(&body)?;

        let (id, salt) = keys::new_key_id("MFT");
        let db = |e: sqlx::Error| s3_error!(ServiceUnavailable, "PostgreSQL: {e}");
        sqlx::query(&format!(
            "DELETE FROM s3_session_keys WHERE expires_at < now() - interval '{KEEP_EXPIRED}'"
        ))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let expires_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            "INSERT INTO s3_session_keys
                 (access_key_id, parent_key_id, salt, role_arn, role_session_name, expires_at)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
             RETURNING expires_at",
        )
        .bind(&id)
        .bind(&caller.key)
        .bind(&salt)
        .bind(&params.role_arn)
        .bind(&params.role_session_name)
        .bind(params.duration_secs as f64)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        tracing::info!(session_key = %id, parent = %caller.key, role_arn = %params.role_arn,
            session = %params.role_session_name, %expires_at, "AssumeRole: session key minted");

        let output = AssumeRoleOutput {
            assumed_role_user: Some(AssumedRoleUser {
                arn: format!(
                    "arn:aws:sts::mfs-ingest:assumed-role/{}/{}",
                    params.role_arn.rsplit('/').next().unwrap_or_default(),
                    params.role_session_name
                ),
                assumed_role_id: format!("{id}:{}", params.role_session_name),
            }),
            credentials: Some(Credentials {
                access_key_id: id.clone(),
                // Whole seconds: STS answers them so.
                expiration: Timestamp::from(std::time::SystemTime::from(
                    chrono::DateTime::<chrono::Utc>::from_timestamp(expires_at.timestamp(), 0)
                        .unwrap_or(expires_at),
                )),
                secret_access_key: self.server.session_secret(&id, &salt),
                session_token: self.server.session_token(&id, &salt),
            }),
            ..Default::default()
        };
        let mut xml = Vec::new();
        {
            use s3s::xml::Serialize;
            let mut ser = s3s::xml::Serializer::new(&mut xml);
            ser.decl()
                .and_then(|()| output.serialize(&mut ser))
                .map_err(|e| s3_error!(InternalError, "serializing: {e:?}"))?;
        }
        let mut response = S3Response::new(Body::from(xml));
        response.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/xml"),
        );
        Ok(response)
    }
}

#[async_trait::async_trait]
impl S3Route for AssumeRoleRoute {
    fn is_match(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        _: &mut http::Extensions,
    ) -> bool {
        is_sts_request(method, uri, headers)
    }

    /// Everything is checked by [`Self::call`] (which answers why).
    async fn check_access(&self, _req: &mut S3Request<Body>) -> S3Result<()> {
        Ok(())
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        crate::service::timed("AssumeRole", self.assume_role(req)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> String {
        parse_assume_role(body.as_bytes())
            .unwrap_err()
            .code()
            .as_str()
            .to_string()
    }

    const BASE: &str = "Action=AssumeRole&Version=2011-06-15&RoleArn=example&RoleSessionName=test";

    #[test]
    fn assume_role_parameters() {
        let p = parse_assume_role(BASE.as_bytes()).unwrap();
        assert_eq!(p.role_arn, "example");
        assert_eq!(p.role_session_name, "test");
        assert_eq!(p.duration_secs, 3600);
        let p = parse_assume_role(format!("{BASE}&DurationSeconds=900").as_bytes()).unwrap();
        assert_eq!(p.duration_secs, 900);
        let p = parse_assume_role(format!("{BASE}&DurationSeconds=43200").as_bytes()).unwrap();
        assert_eq!(p.duration_secs, 43200);
        for bad in ["899", "43201", "-1", "x", ""] {
            assert_eq!(
                code(&format!("{BASE}&DurationSeconds={bad}")),
                "ValidationError",
                "{bad}"
            );
        }
        assert_eq!(code(&format!("{BASE}&Policy=%7B%7D")), "ValidationError");
        assert_eq!(
            code(&format!("{BASE}&PolicyArns.member.1.arn=arn%3Aaws%3Aiam")),
            "ValidationError"
        );
        assert_eq!(
            code("Action=GetCallerIdentity&Version=2011-06-15"),
            "InvalidAction"
        );
        assert_eq!(code("Version=2011-06-15"), "MissingAction");
        assert_eq!(
            code("Action=AssumeRole&RoleArn=a&RoleSessionName=ab"),
            "MissingParameter"
        );
        assert_eq!(
            code("Action=AssumeRole&Version=2011-06-15&RoleSessionName=ab"),
            "MissingParameter"
        );
        assert_eq!(
            code("Action=AssumeRole&Version=2011-06-15&RoleArn=a"),
            "MissingParameter"
        );
        for bad in ["a", "has space", "slash/", &"x".repeat(65)] {
            assert_eq!(
                code(&format!(
                    "Action=AssumeRole&Version=2011-06-15&RoleArn=a&RoleSessionName={bad}"
                )),
                "ValidationError",
                "{bad}"
            );
        }
        let p = parse_assume_role(
            b"Action=AssumeRole&Version=2011-06-15&RoleArn=a&RoleSessionName=u%40x.y%2Bz%3D1%2C-_",
        )
        .unwrap();
        assert_eq!(p.role_session_name, "u@x.y+z=1,-_");
        assert_eq!(
            parse_assume_role(b"").unwrap_err().status_code(),
            Some(http::StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn sts_requests_are_form_posts_to_the_root() {
        let form = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            h
        };
        let root: Uri = "/".parse().unwrap();
        let ct = form("application/x-www-form-urlencoded; charset=utf-8");
        assert!(is_sts_request(&Method::POST, &root, &ct));
        assert!(is_sts_request(
            &Method::POST,
            &root,
            &form("application/x-www-form-urlencoded")
        ));
        assert!(!is_sts_request(&Method::GET, &root, &ct));
        assert!(!is_sts_request(
            &Method::POST,
            &"/bucket".parse().unwrap(),
            &ct
        ));
        assert!(!is_sts_request(
            &Method::POST,
            &root,
            &form("multipart/form-data; boundary=x")
        ));
        assert!(!is_sts_request(&Method::POST, &root, &HeaderMap::new()));
    }
}
