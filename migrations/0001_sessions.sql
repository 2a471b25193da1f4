-- Upload sessions, their parts, staging inodes to garbage-collect, and the
-- outbox of messages to publish. PostgreSQL is the truth (DESIGN.md).

CREATE TABLE upload_sessions (
    id              uuid PRIMARY KEY,
    request_id      text NOT NULL UNIQUE,
    source          text NOT NULL,
    dest            text NOT NULL,
    size            bigint NOT NULL CHECK (size >= 0),
    part_size       bigint NOT NULL CHECK (part_size > 0),
    part_count      integer NOT NULL CHECK (part_count >= 1),
    goal            smallint NOT NULL CHECK (goal BETWEEN 1 AND 9),
    overwrite       boolean NOT NULL DEFAULT false,
    state           text NOT NULL DEFAULT 'open'
                    CHECK (state IN ('open', 'completing', 'completed', 'aborted', 'failed')),
    expected_md5    text,
    expected_crc32c bigint,
    md5             text,
    crc32c          bigint,
    final_inode     bigint,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

CREATE INDEX upload_sessions_open ON upload_sessions (created_at) WHERE state IN ('open', 'completing');

CREATE TABLE upload_parts (
    session_id      uuid NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    part_number     integer NOT NULL CHECK (part_number >= 0),
    part_offset     bigint NOT NULL CHECK (part_offset >= 0),
    size            bigint NOT NULL CHECK (size >= 0),
    -- Fencing: starting an attempt bumps this counter and gets the new value as
    -- its token; a commit only wins over a commit with a smaller token.
    attempts        integer NOT NULL DEFAULT 0,
    committed_token integer,
    staging_inode   bigint,
    staging_path    text,
    md5             text,
    crc32c          bigint,
    worker          text,
    published_at    timestamptz NOT NULL DEFAULT now(),
    committed_at    timestamptz,
    PRIMARY KEY (session_id, part_number)
);

CREATE INDEX upload_parts_pending ON upload_parts (published_at) WHERE committed_token IS NULL;

-- Staging inodes nothing references any more (replaced attempts, attempts that
-- committed too late, parts of completed files). Only these are deleted.
CREATE TABLE abandoned_inodes (
    id            bigserial PRIMARY KEY,
    inode         bigint NOT NULL,
    path          text NOT NULL,
    session_id    uuid,
    part_number   integer,
    fencing_token integer,
    reason        text NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);

CREATE INDEX abandoned_inodes_pending ON abandoned_inodes (id) WHERE deleted_at IS NULL;

-- Messages written in the same transaction as the state they announce and
-- published (with publisher confirms) by the outbox relay.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    exchange    text NOT NULL,
    routing_key text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);

CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
