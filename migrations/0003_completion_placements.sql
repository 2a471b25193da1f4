-- Files a completion put (or was about to put) at a session's destination,
-- recorded in their own transaction BEFORE the MooseFS rename. After a crash
-- between that rename and the completion's commit, the re-run recognises the
-- file at the destination as this session's own by its inode, never by its
-- content (a 32-bit CRC is forgeable): a foreign file is never adopted.
-- No foreign key: a completion transaction holds the session row FOR UPDATE
-- while another connection records here, and a key check would wait on it.
CREATE TABLE completion_placements (
    session_id  uuid   NOT NULL,
    inode       bigint NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, inode)
);
