//! A written part's commit: alone (the session row shared with the other
//! parts' commits), or together with its session's completion in one
//! transaction when it is the last part, or the only part of one or of
//! many small files at once.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use uuid::Uuid;

use super::complete::{Completion, CompletionError, Finish, KeepWrites};
use super::{Ingest, PartError};
use crate::store::{CommitOutcome, Part, PartCommit, Session, SessionState};

impl Ingest {
    /// Commits a part of a multi-part session, the session row shared with
    /// the other parts' commits. If its own transaction sees every other part
    /// committed, it is the last one: the session row is then taken `FOR
    /// UPDATE` and the session completed in that same transaction (one
    /// commit, not two, between the last part and the finished file). If
    /// that completion cannot finish, the transaction rolls back and the part
    /// is committed alone, as any part is; its completion follows at once or
    /// from the reconciler. The bool says whether the session completed.
    #[tracing::instrument(name = "commit", level = "info", skip_all, fields(session = %commit.session_id, part = commit.part_number))]
    pub(super) async fn commit_one_of_many(
        &self,
        commit: &PartCommit<'_>,
    ) -> Result<(CommitOutcome, bool), PartError> {
        let (mut lock, committed) = self.store.commit_part_open(commit).await?;
        if committed.was_last() {
            let completion = async move {
                let session = lock.lock_session(commit.session_id).await?;
                self.complete_locked(lock, session, None, KeepWrites::Yes)
                    .await
            }
            .await;
            return match completion {
                Ok(c) => Ok((committed, matches!(c, Completion::Completed { .. }))),
                Err(e) => {
                    tracing::warn!(session = %commit.session_id, error = %e,
                        "completing together with the last part's commit failed; committing the part alone");
                    self.commit_then_complete(commit).await
                }
            };
        }
        lock.commit().await?;
        let committed = self
            .store
            .recount_after_commit(commit.session_id, committed)
            .await?;
        Ok((
            committed,
            self.complete_if_last(commit.session_id, committed).await,
        ))
    }

    /// Commits a part in its own transaction, then completes the session in
    /// another if it was the last part. The bool says whether it completed.
    async fn commit_then_complete(
        &self,
        commit: &PartCommit<'_>,
    ) -> Result<(CommitOutcome, bool), PartError> {
        let committed = self.store.commit_part(commit).await?;
        Ok((
            committed,
            self.complete_if_last(commit.session_id, committed).await,
        ))
    }

    /// Completes the session if `committed` says its last part is committed;
    /// whether it completed (a failed completion is retried later).
    async fn complete_if_last(&self, id: Uuid, committed: CommitOutcome) -> bool {
        committed.was_last() && matches!(self.complete(id).await, Ok(Completion::Completed { .. }))
    }

    /// Commits the only part of a session and completes the session in ONE
    /// transaction holding the session row `FOR UPDATE` (one transaction per
    /// small file instead of two). If the completion cannot finish (MooseFS or
    /// PostgreSQL trouble), that transaction rolls back and the part is
    /// committed alone, as any part is: its completion is then retried by the
    /// reconciler, and recognises a rename that already happened.
    #[tracing::instrument(name = "commit", level = "info", skip_all, fields(session = %commit.session_id, part = commit.part_number))]
    pub(super) async fn commit_single_part(
        &self,
        commit: &PartCommit<'_>,
    ) -> Result<(CommitOutcome, bool), PartError> {
        match self.commit_single_parts(std::slice::from_ref(commit)).await {
            Ok(mut one) => Ok(one.pop().expect("one result per commit")),
            Err(e) => {
                tracing::warn!(session = %commit.session_id, error = %e,
                    "completing together with the commit failed; committing the part alone");
                self.commit_then_complete(commit).await
            }
        }
    }

    /// Commits the only parts of several sessions and completes them, all in
    /// ONE transaction holding every session row `FOR UPDATE` (locked in id
    /// order, so two groups never wait on each other in a cycle). Each file
    /// still completes or fails on its own; any error rolls back the whole
    /// transaction (the caller then commits each part alone). One result per
    /// commit, in order.
    #[tracing::instrument(name = "commit_group", level = "info", skip_all, fields(parts = commits.len()))]
    pub(super) async fn commit_single_parts(
        &self,
        commits: &[PartCommit<'_>],
    ) -> Result<Vec<(CommitOutcome, bool)>, CompletionError> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        // Before anything is renamed, in a transaction of its own: which
        // inodes these sessions may put in place (a crash between a rename
        // and the commit below rolls the part back; the re-run recognises
        // its own file by this record, see `what_is_at_dest`).
        let placements: Vec<(Uuid, u32)> = commits
            .iter()
            .map(|c| (c.session_id, c.staging_inode))
            .collect();
        self.store.record_placements(&placements).await?;
        let ids: Vec<Uuid> = commits.iter().map(|c| c.session_id).collect();
        let (mut lock, sessions) = self.store.lock_sessions(&ids).await?;
        let states: Vec<Option<SessionState>> = commits
            .iter()
            .map(|c| sessions.get(&c.session_id).map(|s| s.state))
            .collect();
        let committed = lock.commit_parts(commits, &states).await?;
        let finishing_sessions = committed
            .iter()
            .zip(commits)
            .filter(|((_, part), _)| part.is_some())
            .map(|(_, c)| &sessions[&c.session_id]);
        let dests_unique = self
            .lock_destinations(&mut lock, finishing_sessions)
            .await?;
        // The files go in place (MooseFS only), then one statement records
        // every completed one.
        let at_once = if dests_unique { commits.len() } else { 1 };
        let finished = self
            .finish_group_files(&sessions, commits, &committed, at_once)
            .await?;
        let mut completed = vec![false; commits.len()];
        let mut done = Vec::new();
        let mut ended = Vec::new();
        for (i, finish, own_time) in &finished {
            let session = &sessions[&commits[*i].session_id];
            match finish {
                Finish::Completed(placed) => {
                    completed[*i] = true;
                    done.push(placed.done(session));
                    ended.push((SessionState::Completed, session.created_at, Some(*own_time)));
                }
                Finish::Failed(why) => {
                    self.finish_failed(&mut lock, session, why.clone()).await?;
                    ended.push((SessionState::Failed, session.created_at, None));
                }
            }
        }
        lock.complete_all(&done).await?;
        let committing = std::time::Instant::now();
        lock.commit().await?;
        count_group_ends(ended, committing.elapsed());
        Ok(committed
            .iter()
            .zip(completed)
            .map(|((outcome, part), completed)| match part {
                Some(_) => (
                    CommitOutcome::Committed {
                        all_committed: true,
                    },
                    completed,
                ),
                None => (*outcome, false),
            })
            .collect())
    }

    /// The MooseFS side of completing the files of a group whose parts
    /// `committed` recorded: side by side (`at_once`; one after the other
    /// when two go to the same destination). One `(index, finish, time)`
    /// per committed part.
    async fn finish_group_files(
        &self,
        sessions: &std::collections::HashMap<Uuid, Session>,
        commits: &[PartCommit<'_>],
        committed: &[(CommitOutcome, Option<Part>)],
        at_once: usize,
    ) -> Result<Vec<(usize, Finish, Duration)>, CompletionError> {
        let finishing = committed
            .iter()
            .enumerate()
            .filter_map(|(i, (_, part))| part.as_ref().map(|part| (i, part)))
            .map(|(i, part)| {
                let session = &sessions[&commits[i].session_id];
                async move {
                    let started = std::time::Instant::now();
                    if session.part_count != 1 {
                        return Err(CompletionError::NotSinglePart {
                            session: session.id,
                            parts: session.part_count,
                        });
                    }
                    let inode = part.staging_inode.unwrap_or_default() as u32;
                    let finish = self
                        .finish_file(session, std::slice::from_ref(part), &[inode])
                        .await?;
                    Ok((i, finish, started.elapsed()))
                }
            })
            .collect::<Vec<_>>();
        futures::stream::iter(finishing)
            .buffered(at_once.max(1))
            .try_collect()
            .await
            .inspect_err(|_| self.completion_failed())
    }
}

/// Counts the sessions a group commit ended (`(state, created, own time)`;
/// a completed one's duration is its own work plus the shared commit).
fn count_group_ends(
    ended: Vec<(
        SessionState,
        chrono::DateTime<chrono::Utc>,
        Option<Duration>,
    )>,
    commit_time: Duration,
) {
    let m = crate::metrics::metrics();
    for (state, created_at, own_time) in ended {
        if let Some(own_time) = own_time {
            m.completion_succeeded(own_time + commit_time);
        }
        crate::metrics::session_finished(state.as_str(), created_at);
    }
}
