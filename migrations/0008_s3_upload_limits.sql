-- Bounds on S3 uploads that never end (issue 14, hardening). Both indexes
-- hold only sessions still receiving parts, so they stay as small as the
-- uploads in progress whatever the history.
-- The coordinator's maintenance step 's3_expire' (Store::idle_pushed_sessions)
-- finds receiving sessions created before its cutoff, oldest first.
CREATE INDEX upload_sessions_receiving ON upload_sessions (created_at)
    WHERE state = 'receiving';
-- CreateMultipartUpload counts the receiving sessions of its access key
-- (source 's3-push:<key>') against S3_MAX_OPEN_UPLOADS_PER_KEY.
CREATE INDEX upload_sessions_receiving_source ON upload_sessions (source)
    WHERE state = 'receiving';
