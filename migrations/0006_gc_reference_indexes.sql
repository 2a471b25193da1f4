-- Found by coordinator/tests/query_plans.rs (issue 15, part 3): the garbage
-- collector's claim (Store::claim_abandoned) asks, for each abandoned inode,
-- whether a part of an open session or a completed file still references it.
-- Neither column had an index, so every GC round read the whole
-- upload_parts and upload_sessions tables (sequential scans at 100,000
-- sessions, and linear in the history). Both lookups now go through these.
CREATE INDEX upload_parts_staging_inode ON upload_parts (staging_inode)
    WHERE staging_inode IS NOT NULL;
CREATE INDEX upload_sessions_completed_final_inode ON upload_sessions (final_inode)
    WHERE state = 'completed';
