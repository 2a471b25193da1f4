-- Cheaper per file (issue 3's small-file benchmark):
--
-- * The outbox holds only unsent messages: the relay deletes what the broker
--   confirmed, so the table and its index stay as small as the backlog
--   instead of growing by one row per message forever.
-- * A statement-level trigger wakes the relay (LISTEN outbox) on every insert,
--   instead of a separate pg_notify round trip from each transaction.
-- * Abandoned inodes are looked up by session (the staging sweep, status).

DROP INDEX outbox_unsent;
DELETE FROM outbox WHERE sent_at IS NOT NULL;
ALTER TABLE outbox DROP COLUMN sent_at;

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE INDEX abandoned_inodes_session ON abandoned_inodes (session_id);
