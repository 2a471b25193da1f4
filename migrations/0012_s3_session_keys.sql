-- Temporary credentials of the S3 endpoint (STS AssumeRole, s3/src/sts.rs).
-- A session key acts for its parent, a permanent key of s3_access_keys: the
-- parent's buckets, the parent's per-key upload cap. Its secret and session
-- token are never stored: both are HMAC-SHA256 of the server key
-- (S3_KEY_SECRET) over the key id and salt, each with its own label, derived
-- again on each request. A session key is refused once expires_at is past or
-- its parent is revoked. Rows expired for a day are deleted by AssumeRole.
CREATE TABLE s3_session_keys (
    access_key_id     text PRIMARY KEY,
    parent_key_id     text NOT NULL REFERENCES s3_access_keys (access_key_id),
    salt              text NOT NULL,
    -- Recorded only: there are no IAM roles.
    role_arn          text NOT NULL,
    role_session_name text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL
);

CREATE INDEX s3_session_keys_parent ON s3_session_keys (parent_key_id);
CREATE INDEX s3_session_keys_expires ON s3_session_keys (expires_at);
