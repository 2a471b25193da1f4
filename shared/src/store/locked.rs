//! [`SessionLock`]: the transaction that holds session rows locked (`FOR
//! SHARE` by a part commit, `FOR UPDATE` by a completion) while its holder
//! does MooseFS work. The parts a completion acts on are read through it,
//! under the lock: that is the invariant the design rests on. The guard owns
//! the transaction; only the methods below run statements in it, and it
//! ends by [`SessionLock::commit`] or [`SessionLock::rollback`] (dropped,
//! it rolls back).

use std::collections::HashMap;

use uuid::Uuid;

use super::abandoned::abandon_parts_in;
use super::outbox::enqueue;
use super::parts::{commit_parts_in, CommitOutcome, Part, PartCommit, PARTS_OF_SESSION};
use super::placements::lock_destinations_in;
use super::{Session, SessionState, Store, StoreError, Tx};
use crate::queue::{Outgoing, UploadEvent, EVENTS_EXCHANGE};

/// A session whose file is in place, as [`SessionLock::complete_all`] records it.
#[derive(Debug, Clone, Copy)]
pub struct SessionDone<'a> {
    pub session: &'a Session,
    pub md5: Option<&'a str>,
    pub crc32c: u32,
    pub final_inode: u32,
    /// Whether it replaced a file that was at the destination.
    pub replaced: bool,
}

impl Store {
    /// Opens the completion transaction: the session row locked `FOR UPDATE`
    /// until the transaction ends.
    pub async fn lock_session(
        &self,
        id: Uuid,
    ) -> Result<(SessionLock, Option<Session>), StoreError> {
        let mut lock = SessionLock {
            tx: self.pool.begin().await?,
        };
        let session = lock.lock_session(id).await?;
        Ok((lock, session))
    }

    /// [`Store::lock_session`] for several sessions, locked in id order (two
    /// transactions locking overlapping sets never wait on each other in a
    /// cycle). Sessions that do not exist are missing from the map.
    pub async fn lock_sessions(
        &self,
        ids: &[Uuid],
    ) -> Result<(SessionLock, HashMap<Uuid, Session>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let sessions: Vec<Session> = sqlx::query_as(
            "SELECT * FROM upload_sessions WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        let sessions = sessions.into_iter().map(|s| (s.id, s)).collect();
        Ok((SessionLock { tx }, sessions))
    }
}

impl Store {
    /// Records a written staging file as the part, in one transaction: the
    /// session row is held `FOR SHARE` (completion takes it `FOR UPDATE`, so
    /// the two never interleave); see `commit_parts_in`.
    pub async fn commit_part(&self, c: &PartCommit<'_>) -> Result<CommitOutcome, StoreError> {
        let (lock, outcome) = self.commit_part_open(c).await?;
        lock.commit().await?;
        self.recount_after_commit(c.session_id, outcome).await
    }

    /// [`Store::commit_part`] up to, not including, the commit: the part is
    /// recorded in a transaction holding the session row `FOR SHARE`, which
    /// is returned still open. `Committed { all_committed }` says whether
    /// every part is committed as this transaction sees it: true means this
    /// was the last part (the caller may complete the session in the same
    /// transaction, see [`SessionLock::lock_session`]); false may be wrong
    /// only when other parts commit at the same time, which
    /// [`Store::recount_after_commit`] settles.
    pub async fn commit_part_open(
        &self,
        c: &PartCommit<'_>,
    ) -> Result<(SessionLock, CommitOutcome), StoreError> {
        let (SessionLock { mut tx }, state) = self.share_session(c.session_id).await?;
        let mut one = commit_parts_in(&mut tx, std::slice::from_ref(c), &[state]).await?;
        let (outcome, _) = one.pop().expect("one result per commit");
        if !matches!(outcome, CommitOutcome::Committed { .. }) {
            return Ok((SessionLock { tx }, outcome));
        }
        let remaining = Self::uncommitted_parts(&mut *tx, c.session_id).await?;
        Ok((
            SessionLock { tx },
            CommitOutcome::Committed {
                all_committed: remaining == 0,
            },
        ))
    }

    /// A transaction holding only the advisory locks of `dests` (full
    /// MooseFS paths): what a completion to one of them takes, so whatever
    /// the holder does to those paths never interleaves with a completion.
    pub async fn lock_destinations(&self, dests: &[String]) -> Result<SessionLock, StoreError> {
        let mut lock = SessionLock {
            tx: self.pool.begin().await?,
        };
        lock.lock_destinations(dests).await?;
        Ok(lock)
    }
}

/// A transaction holding session rows locked; see the module documentation.
#[must_use = "a lock rolls back when dropped: commit or roll it back"]
pub struct SessionLock {
    pub(super) tx: Tx,
}

impl SessionLock {
    /// Records parts in this transaction, which holds their sessions' rows
    /// locked (`session_states[i]` as read under that lock for
    /// `commits[i]`); see [`Store::commit_part`] for what a commit does.
    /// One result per commit, in order.
    pub async fn commit_parts(
        &mut self,
        commits: &[PartCommit<'_>],
        session_states: &[Option<SessionState>],
    ) -> Result<Vec<(CommitOutcome, Option<Part>)>, StoreError> {
        commit_parts_in(&mut self.tx, commits, session_states).await
    }

    /// Records the committed parts' staging inodes of a session as
    /// abandoned (after its completion their chunks belong to the final
    /// file; after its end they are nobody's).
    pub async fn abandon_parts(&mut self, id: Uuid) -> Result<(), StoreError> {
        abandon_parts_in(&mut self.tx, id).await
    }

    /// Takes the advisory locks of `dests` (full MooseFS paths) in this
    /// transaction: completions to one destination run one after the other.
    pub async fn lock_destinations(&mut self, dests: &[String]) -> Result<(), StoreError> {
        lock_destinations_in(&mut self.tx, dests).await
    }

    /// The transaction's connection, for a room that keeps tables of its own
    /// (the S3 endpoint's uploads and parts) and must write them under the
    /// same locks, in the same transaction.
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }

    /// Commits: the locks are released and every write stands.
    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }

    /// Rolls back: the locks are released and nothing written stands.
    pub async fn rollback(self) -> Result<(), StoreError> {
        Ok(self.tx.rollback().await?)
    }

    /// Takes the session row `FOR UPDATE` inside `tx`. In a transaction
    /// that holds it `FOR SHARE` (from [`Store::commit_part_open`]) this
    /// waits for the other holders, the commits of the same session, to
    /// end; a commit of the same part waiting for this transaction's part
    /// row would deadlock with it, and PostgreSQL then aborts one of the two.
    pub async fn lock_session(&mut self, id: Uuid) -> Result<Option<Session>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM upload_sessions WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *self.tx)
                .await?,
        )
    }

    /// The parts, read inside the completion transaction.
    pub async fn parts(&mut self, id: Uuid) -> Result<Vec<Part>, StoreError> {
        Ok(sqlx::query_as(PARTS_OF_SESSION)
            .bind(id)
            .fetch_all(&mut *self.tx)
            .await?)
    }

    /// Marks a locked session completed and queues its event.
    pub async fn complete(&mut self, done: SessionDone<'_>) -> Result<(), StoreError> {
        self.complete_all(&[done]).await
    }

    /// Marks locked sessions completed and queues their events, in one
    /// statement: one outbox row holding the events of
    /// every session the statement updated, in the order given
    /// ([`crate::queue::EventBatch`]).
    pub async fn complete_all(&mut self, done: &[SessionDone<'_>]) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let events = done
            .iter()
            .map(|d| {
                serde_json::to_value(UploadEvent {
                    event: "upload.completed".into(),
                    session_id: d.session.id,
                    request_id: d.session.request_id.clone(),
                    dest: d.session.dest.clone(),
                    size: d.session.size as u64,
                    md5: d.md5.map(str::to_string),
                    crc32c: Some(d.crc32c),
                    error: None,
                    replaced: d.replaced,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "WITH v AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[],
                                      $5::jsonb[]) WITH ORDINALITY
                          AS v(id, md5, crc32c, final_inode, event, ord)),
             completed AS (
                 UPDATE upload_sessions s
                    SET state = 'completed', md5 = v.md5, crc32c = v.crc32c,
                        final_inode = v.final_inode, updated_at = now(),
                        finished_at = clock_timestamp()
                   FROM v
                  WHERE s.id = v.id
                 RETURNING s.id)
             INSERT INTO outbox (exchange, routing_key, payload)
             SELECT $6, '', jsonb_build_object('events', jsonb_agg(v.event ORDER BY v.ord))
               FROM v JOIN completed USING (id)
             HAVING count(*) > 0",
        )
        .bind(done.iter().map(|d| d.session.id).collect::<Vec<_>>())
        .bind(done.iter().map(|d| d.md5).collect::<Vec<Option<&str>>>())
        .bind(done.iter().map(|d| d.crc32c as i64).collect::<Vec<_>>())
        .bind(
            done.iter()
                .map(|d| d.final_inode as i64)
                .collect::<Vec<_>>(),
        )
        .bind(events)
        .bind(EVENTS_EXCHANGE)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Ends a locked session as failed or aborted and queues its event.
    pub async fn end(
        &mut self,
        session: &Session,
        new_state: SessionState,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE upload_sessions SET state = $2, error = $3, updated_at = now(),
                    finished_at = clock_timestamp()
              WHERE id = $1",
        )
        .bind(session.id)
        .bind(new_state.as_str())
        .bind(error)
        .execute(&mut *self.tx)
        .await?;
        let event = UploadEvent {
            event: format!("upload.{new_state}"),
            session_id: session.id,
            request_id: session.request_id.clone(),
            dest: session.dest.clone(),
            size: session.size as u64,
            md5: None,
            crc32c: None,
            error: Some(error.to_string()),
            replaced: false,
        };
        enqueue(&mut self.tx, &Outgoing::event(&event)).await
    }
}
