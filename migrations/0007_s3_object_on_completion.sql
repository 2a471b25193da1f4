-- The S3 endpoint's object row is written by the transaction that marks the
-- upload's session completed (issue 14). Before, the endpoint wrote it after
-- the pipeline's completion had committed: an endpoint that died in between
-- left a completed session whose object was not listed, and a completion run
-- by the coordinator's reconciler (an upload frozen by an endpoint that died
-- before completing it) never wrote it at all, since the coordinator has no
-- S3 code. A trigger is the one hook that every completion runs, whatever
-- process runs it, without the pipeline knowing S3: the session row carries
-- the file (final_inode, size, finished_at), the upload row (written at the
-- freeze, under the same session lock) the rest. If the row cannot be
-- written, the completion rolls back: both happen or neither.

-- The x-amz-checksum-* values of a PutObject, recorded at its freeze (they
-- were an UPDATE of the object row after the completion).
ALTER TABLE s3_uploads ADD COLUMN checksums jsonb NOT NULL DEFAULT '{}';

-- Records (or replaces) the object a completed S3 upload put in place. Of
-- two completions of one key the later one's row stays (their finish times
-- follow the order their destination lock gave them). Sessions that are not
-- S3 uploads have no s3_uploads row: one index probe, nothing written.
CREATE FUNCTION s3_object_on_completion() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO s3_objects (bucket, key, session_id, inode, size, etag, content_type,
                            metadata, checksums, last_modified)
    SELECT u.bucket, u.key, u.upload_id, NEW.final_inode, NEW.size, u.etag, u.content_type,
           u.metadata, u.checksums, NEW.finished_at
      FROM s3_uploads u
     WHERE u.upload_id = NEW.id
    ON CONFLICT (bucket, key) DO UPDATE
       SET session_id = EXCLUDED.session_id, inode = EXCLUDED.inode, size = EXCLUDED.size,
           etag = EXCLUDED.etag, content_type = EXCLUDED.content_type,
           metadata = EXCLUDED.metadata, checksums = EXCLUDED.checksums,
           last_modified = EXCLUDED.last_modified
     WHERE s3_objects.last_modified <= EXCLUDED.last_modified;
    RETURN NULL;
END
$$;

-- Row level with a WHEN clause: the pipeline's other updates of a session
-- row (and completions of sessions that were completed already) never call
-- the function.
CREATE TRIGGER s3_object_on_completion
    AFTER UPDATE OF state ON upload_sessions
    FOR EACH ROW
    WHEN (NEW.state = 'completed' AND OLD.state IS DISTINCT FROM 'completed')
    EXECUTE FUNCTION s3_object_on_completion();
