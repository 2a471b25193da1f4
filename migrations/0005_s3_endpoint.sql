-- The S3 endpoint (issue 14, s3/ crate). An S3 upload (PutObject, or a
-- multipart upload) is an upload session like any other. Its parts arrive
-- pushed by the client, in any order and size, so while it receives them the
-- session is in the new state 'receiving': it has no upload_parts rows yet
-- (the reconciler, which only looks at 'open' sessions, never republishes a
-- job for a part no worker could read), its parts live in s3_parts under
-- their own fencing tokens, and its staging files are named after it (the
-- staging sweep leaves the files of a session that has not ended alone).
-- Complete freezes the chosen parts into upload_parts (committed, in order)
-- and the session becomes 'open' with every part committed; the pipeline's
-- one locked completion then puts the file in place.
ALTER TABLE upload_sessions DROP CONSTRAINT upload_sessions_state_check;
ALTER TABLE upload_sessions ADD CONSTRAINT upload_sessions_state_check
    CHECK (state IN ('receiving', 'open', 'completing', 'completed', 'aborted', 'failed'));

-- Access keys. The secret is never stored: it is HMAC-SHA256(server key,
-- access key id, salt), derived again on each request from the server key
-- the endpoint is given (S3_KEY_SECRET). Revoking sets revoked_at.
CREATE TABLE s3_access_keys (
    access_key_id text PRIMARY KEY,
    salt          text NOT NULL,
    -- Buckets the key may use; '*' = every bucket (and creating any).
    buckets       text[] NOT NULL,
    description   text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE TABLE s3_buckets (
    name       text PRIMARY KEY,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per S3 upload; upload_id is its session's id.
CREATE TABLE s3_uploads (
    upload_id    uuid PRIMARY KEY REFERENCES upload_sessions (id),
    bucket       text NOT NULL REFERENCES s3_buckets (name),
    key          text COLLATE "C" NOT NULL,
    multipart    boolean NOT NULL,
    content_type text,
    metadata     jsonb NOT NULL DEFAULT '{}',
    -- Set by Complete in the transaction that freezes the parts: the ETag a
    -- repeated Complete answers, and the (PartNumber, ETag) list it was for.
    etag         text,
    completed_parts jsonb,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX s3_uploads_by_key ON s3_uploads (bucket, key, created_at) WHERE etag IS NULL;

-- Parts as the client numbers them (1..10000), each attempt under a fencing
-- token: starting an attempt bumps `attempts` and takes it as its token; a
-- commit wins only over a commit with a smaller token.
CREATE TABLE s3_parts (
    upload_id       uuid NOT NULL REFERENCES s3_uploads (upload_id) ON DELETE CASCADE,
    part_number     integer NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
    attempts        integer NOT NULL DEFAULT 0,
    committed_token integer,
    staging_inode   bigint,
    staging_path    text,
    size            bigint,
    md5             text,
    crc32c          bigint,
    committed_at    timestamptz,
    PRIMARY KEY (upload_id, part_number)
);

-- The namespace: ListObjectsV2 reads this index, never MooseFS. Keys sort
-- bytewise (COLLATE "C"), as S3 lists them.
CREATE TABLE s3_objects (
    bucket        text NOT NULL REFERENCES s3_buckets (name),
    key           text COLLATE "C" NOT NULL,
    session_id    uuid NOT NULL,
    inode         bigint NOT NULL,
    size          bigint NOT NULL,
    etag          text NOT NULL,
    content_type  text,
    metadata      jsonb NOT NULL DEFAULT '{}',
    checksums     jsonb NOT NULL DEFAULT '{}',
    -- The session's finished_at: of two completions of one key, the later
    -- one's row wins (completions of one key are serialized by their lock).
    last_modified timestamptz NOT NULL,
    PRIMARY KEY (bucket, key)
);
