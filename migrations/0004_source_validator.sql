-- The validator (strong ETag or Last-Modified) of an http(s) source at
-- validation: every part read is pinned to it (If-Match / If-Range), so a
-- source that changes between part reads fails the session instead of
-- yielding a mixed file. NULL: no validator (file sources, servers that send
-- neither header, sessions created before this column).
ALTER TABLE upload_sessions ADD COLUMN source_validator text;
