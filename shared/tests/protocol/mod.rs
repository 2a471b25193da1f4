//! A `stateright` model of the part / commit / complete / GC protocol of
//! DESIGN.md ("Invariants"), at the level of its invariants: one upload
//! session of `parts` parts, `workers` workers that take fencing tokens from
//! the database and write staging inodes, RabbitMQ as an unordered,
//! duplicating, lossy multiset of part jobs, PostgreSQL as one serializable
//! store (each transaction one atomic step), completion under the session
//! row lock, the staging sweep and the garbage collector, and an S3 client
//! re-uploading an already committed part while the upload completes.
//!
//! [`Design`] switches between the real protocol and the two designs the
//! project exists to avoid. docs/protocol.md maps every [`Action`] to the
//! code that implements it.

use std::collections::{BTreeMap, BTreeSet};

use stateright::{Model, Property};

/// Which protocol the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    /// The real one: a fresh staging inode per attempt, completion reads the
    /// parts and marks the session completed in one locked transaction.
    Locked,
    /// Broken (a): completion reads the part list in one step and completes
    /// from that list in a later one; part commits can run in between.
    ReadOutsideLock,
    /// Broken (b): every attempt of a part writes into the part's one
    /// staging file (no fresh inode per attempt), so a retry or a zombie
    /// writes into the inode a committed part references.
    OverwriteInPlace,
}

/// Fault budgets: how many of each fault may still happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Faults {
    /// Worker processes killed (their unacked job is delivered again).
    pub crashes: u8,
    /// Extra deliveries of a job (a redelivery after a reconnect or the
    /// consumer timeout, a republish of a part whose worker stalled).
    pub duplicates: u8,
    /// Jobs lost (a purged queue, a lost publish); the reconciler republishes.
    pub losses: u8,
    /// Failed MooseFS writes (the attempt is retried through the retry queue).
    pub write_failures: u8,
    /// Client re-uploads of an already committed part (S3 UploadPart).
    pub reuploads: u8,
}

/// The model's bounds and switches.
#[derive(Clone, Debug)]
pub struct ProtocolModel {
    pub design: Design,
    pub workers: usize,
    pub parts: usize,
    /// Attempts per job before the worker gives up and fails the session
    /// (`max_attempts` of worker/src/run.rs; 3 = two retries).
    pub max_attempts: u8,
    pub faults: Faults,
    /// Whether the coordinator may expire (fail) the open session at any
    /// moment. Off for the liveness check: an always-enabled expiry would
    /// end every path with a finished session and prove nothing.
    pub expiry: bool,
    /// Whether the reconciler republishes parts whose job is gone.
    pub reconciler: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionState {
    Open,
    Completed,
    Failed,
}

/// A staging inode, named by the part and the token of the attempt that
/// created it (the staging file name carries both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeId {
    pub part: u8,
    pub token: u8,
}

/// A MooseFS inode: whose bytes it holds (`None`: a torn, failed write) and
/// whether it still exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Inode {
    pub data: Option<u8>,
    pub alive: bool,
}

/// An `upload_parts` row: the attempt counter (the last fencing token
/// handed out) and the committed attempt, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PartRow {
    pub attempts: u8,
    pub committed: Option<(u8, InodeId)>,
}

/// A part job message with its `x-attempt` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Job {
    pub part: u8,
    pub attempt: u8,
}

/// Where an attempt came from: a delivered job (held unacked) or the S3
/// client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    Queue(Job),
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Holds a fencing token; nothing written yet.
    Started,
    /// Its staging inode is written (every replica acknowledged).
    Written(InodeId),
}

/// One attempt in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempt {
    pub origin: Origin,
    pub part: u8,
    pub token: u8,
    pub phase: Phase,
}

/// The completed file: the single part's staging inode renamed into place,
/// or an assembly holding, per part, the bytes of the inode appended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FinalFile {
    Renamed(InodeId),
    Assembled(Vec<Option<u8>>),
}

/// The whole system: PostgreSQL, MooseFS, RabbitMQ, the workers, the
/// client and the (broken design's) completer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    // PostgreSQL
    pub session: SessionState,
    pub parts: Vec<PartRow>,
    pub abandoned: BTreeSet<InodeId>,
    pub completions: u8,
    pub final_file: Option<FinalFile>,
    /// Set if a commit ever replaced a committed token with one not newer.
    pub stale_commit: bool,
    // MooseFS
    pub inodes: BTreeMap<InodeId, Inode>,
    // RabbitMQ: ready jobs, kept sorted (a multiset).
    pub queue: Vec<Job>,
    pub workers: Vec<Option<Attempt>>,
    pub client: Option<Attempt>,
    /// Design (a) only: the part list a completion read outside the lock.
    pub snapshot: Option<Vec<Option<(u8, InodeId)>>>,
    pub faults: Faults,
}

/// Who runs an attempt's steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    Worker(usize),
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// RabbitMQ delivers a job; the worker starts an attempt (start_attempt:
    /// bumps the part's attempt counter = the fencing token), or finds the
    /// part committed / the session closed and acks.
    Deliver { worker: usize, job: Job },
    /// The client re-uploads a committed part: a new attempt (a newer
    /// token) that writes its fresh staging inode.
    Reupload { part: u8 },
    /// The attempt writes its staging inode.
    Write(Actor),
    /// The write fails: the torn inode is recorded abandoned, the job goes
    /// to the retry queue with attempt + 1, or the session fails.
    WriteFails { worker: usize },
    /// The part commit transaction (session row FOR SHARE, fence check),
    /// then the ack of the worker's job.
    Commit(Actor),
    /// The worker process dies; its unacked job is delivered again.
    Crash { worker: usize },
    /// A job a worker holds is delivered again (a stalled worker's job
    /// redelivered or republished).
    Duplicate { job: Job },
    /// A ready job is lost.
    Lose { job: Job },
    /// The reconciler republishes an uncommitted part that has no job.
    Republish { part: u8 },
    /// Completion in one transaction under the session row lock.
    Complete,
    /// Design (a): completion reads the part list outside the lock ...
    ReadParts,
    /// ... and later completes from what it read.
    CompleteFromRead,
    /// The coordinator expires the session (end_session, failed).
    Expire,
    /// A maintenance round's GC: the staging sweep records inodes no
    /// transaction recorded, of a session that ended; then the collector
    /// deletes every recorded-abandoned inode nothing references.
    CollectGarbage,
}

pub const COMPLETED_FILE_IS_WINNERS: &str = "completed file = each part's winning attempt";
pub const REFERENCED_NEVER_COLLECTED: &str = "no referenced inode is collected";
pub const STALE_NEVER_VISIBLE: &str = "no stale attempt's bytes are visible";
pub const COMPLETED_AT_MOST_ONCE: &str = "completed at most once";
pub const FINISHES: &str = "every session completes or fails";

impl ProtocolModel {
    /// The real protocol at the bounds the issue asks for: 2 workers, 3
    /// parts, 2 retries, and one of each other fault.
    pub fn standard(design: Design) -> ProtocolModel {
        ProtocolModel {
            design,
            workers: 2,
            parts: 3,
            max_attempts: 3,
            faults: Faults {
                crashes: 1,
                duplicates: 1,
                losses: 1,
                write_failures: 2,
                reuploads: 1,
            },
            expiry: false,
            reconciler: true,
        }
    }

    fn actor<'s>(&self, state: &'s mut State, actor: Actor) -> &'s mut Option<Attempt> {
        match actor {
            Actor::Worker(w) => &mut state.workers[w],
            Actor::Client => &mut state.client,
        }
    }

    fn all_committed(state: &State) -> bool {
        state.parts.iter().all(|p| p.committed.is_some())
    }

    /// Whether any job of `part` is ready or held by a worker.
    fn has_job(state: &State, part: u8) -> bool {
        state.queue.iter().any(|j| j.part == part)
            || state
                .workers
                .iter()
                .flatten()
                .any(|a| matches!(a.origin, Origin::Queue(j) if j.part == part))
    }

    fn push_job(state: &mut State, job: Job) {
        let at = state.queue.partition_point(|j| *j <= job);
        state.queue.insert(at, job);
    }

    fn take_job(state: &mut State, job: Job) -> bool {
        match state.queue.iter().position(|j| *j == job) {
            Some(i) => {
                state.queue.remove(i);
                true
            }
            None => false,
        }
    }

    /// end_session / finish_failed: the session fails and its committed
    /// parts' inodes are recorded abandoned (abandon_parts_in).
    fn fail_session(state: &mut State) {
        if state.session != SessionState::Open {
            return;
        }
        state.session = SessionState::Failed;
        let committed: Vec<InodeId> = state
            .parts
            .iter()
            .filter_map(|p| p.committed)
            .map(|c| c.1)
            .collect();
        state.abandoned.extend(committed);
    }

    /// The inode an attempt writes: a fresh one named by its token, or (in
    /// design (b)) the part's existing staging file if there is one.
    fn inode_to_write(&self, state: &State, part: u8, token: u8) -> InodeId {
        if self.design == Design::OverwriteInPlace {
            if let Some((id, _)) = state
                .inodes
                .iter()
                .find(|(id, inode)| id.part == part && inode.alive)
            {
                return *id;
            }
        }
        InodeId { part, token }
    }

    /// The part commit transaction (commit_parts_in).
    fn commit(state: &mut State, part: u8, token: u8, inode: InodeId) {
        if state.session != SessionState::Open {
            state.abandoned.insert(inode);
            return;
        }
        let row = &mut state.parts[part as usize];
        match row.committed {
            Some((committed, _)) if committed >= token => {
                state.abandoned.insert(inode);
            }
            replaced => {
                if let Some((old_token, old_inode)) = replaced {
                    state.stale_commit |= old_token >= token;
                    state.abandoned.insert(old_inode);
                }
                row.committed = Some((token, inode));
            }
        }
    }

    /// The completion's work on a part list read by itself (under the lock)
    /// or earlier (design (a)): rename or assemble, mark completed, record
    /// the parts of an assembly abandoned. An inode gone from MooseFS makes
    /// the completion fail with nothing written (it is retried).
    fn finish(&self, state: &mut State, list: &[Option<(u8, InodeId)>]) {
        let inodes: Vec<InodeId> = list.iter().map(|c| c.expect("all committed").1).collect();
        if inodes.iter().any(|i| !state.inodes[i].alive) {
            return;
        }
        state.final_file = Some(if self.parts == 1 {
            FinalFile::Renamed(inodes[0])
        } else {
            FinalFile::Assembled(inodes.iter().map(|i| state.inodes[i].data).collect())
        });
        state.session = SessionState::Completed;
        state.completions += 1;
        if self.parts > 1 {
            // abandon_parts_in reads the part rows as they are now.
            let current: Vec<InodeId> = state
                .parts
                .iter()
                .filter_map(|p| p.committed)
                .map(|c| c.1)
                .collect();
            state.abandoned.extend(current);
        }
    }

    /// Whether a part row of an open session or the completed file refers
    /// to `inode` (claim_abandoned's two NOT EXISTS).
    fn referenced(state: &State, inode: InodeId) -> bool {
        let by_part = state.session == SessionState::Open
            && state
                .parts
                .iter()
                .any(|p| p.committed.map(|c| c.1) == Some(inode));
        by_part || state.final_file == Some(FinalFile::Renamed(inode))
    }

    /// Inodes the sweep would record: left in staging by attempts that
    /// never committed, once the session ended.
    fn leftovers(state: &State) -> Vec<InodeId> {
        if state.session == SessionState::Open {
            return Vec::new();
        }
        state
            .inodes
            .iter()
            .filter(|(id, inode)| {
                inode.alive
                    && !state.abandoned.contains(id)
                    && state.final_file != Some(FinalFile::Renamed(**id))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Inodes the collector may delete now: recorded abandoned, still
    /// there, referenced by nothing (claim_abandoned).
    fn collectable(state: &State) -> Vec<InodeId> {
        state
            .abandoned
            .iter()
            .filter(|i| {
                state.inodes.get(i).is_some_and(|n| n.alive) && !Self::referenced(state, **i)
            })
            .copied()
            .collect()
    }

    fn attempt_actions(&self, state: &State, actor: Actor, actions: &mut Vec<Action>) {
        let attempt = match actor {
            Actor::Worker(w) => state.workers[w],
            Actor::Client => state.client,
        };
        let Some(attempt) = attempt else { return };
        match (attempt.phase, actor) {
            (Phase::Started, Actor::Worker(worker)) => {
                actions.push(Action::Write(actor));
                if state.faults.write_failures > 0 {
                    actions.push(Action::WriteFails { worker });
                }
            }
            (Phase::Started, Actor::Client) => actions.push(Action::Write(actor)),
            (Phase::Written(_), _) => actions.push(Action::Commit(actor)),
        }
        if let Actor::Worker(worker) = actor {
            if state.faults.crashes > 0 {
                actions.push(Action::Crash { worker });
            }
            if let (Origin::Queue(job), true) = (attempt.origin, state.faults.duplicates > 0) {
                actions.push(Action::Duplicate { job });
            }
        }
    }

    fn network_actions(&self, state: &State, actions: &mut Vec<Action>) {
        let mut ready: Vec<Job> = state.queue.clone();
        ready.dedup();
        // Idle workers are interchangeable: only the first takes a job.
        if let Some(worker) = state.workers.iter().position(Option::is_none) {
            for &job in &ready {
                actions.push(Action::Deliver { worker, job });
            }
        }
        if state.faults.losses > 0 {
            for &job in &ready {
                actions.push(Action::Lose { job });
            }
        }
        if self.reconciler && state.session == SessionState::Open {
            for (part, row) in state.parts.iter().enumerate() {
                if row.committed.is_none() && !Self::has_job(state, part as u8) {
                    actions.push(Action::Republish { part: part as u8 });
                }
            }
        }
    }

    fn coordinator_actions(&self, state: &State, actions: &mut Vec<Action>) {
        let open = state.session == SessionState::Open;
        if open && state.client.is_none() && state.faults.reuploads > 0 {
            for (part, row) in state.parts.iter().enumerate() {
                if row.committed.is_some() {
                    actions.push(Action::Reupload { part: part as u8 });
                }
            }
        }
        if open && Self::all_committed(state) {
            match self.design {
                Design::ReadOutsideLock if state.snapshot.is_none() => {
                    actions.push(Action::ReadParts)
                }
                Design::ReadOutsideLock => {}
                _ => actions.push(Action::Complete),
            }
        }
        if state.snapshot.is_some() {
            actions.push(Action::CompleteFromRead);
        }
        if open && self.expiry {
            actions.push(Action::Expire);
        }
        if !Self::leftovers(state).is_empty() || !Self::collectable(state).is_empty() {
            actions.push(Action::CollectGarbage);
        }
    }

    fn deliver(&self, state: &mut State, worker: usize, job: Job) {
        Self::take_job(state, job);
        let row = &mut state.parts[job.part as usize];
        if state.session != SessionState::Open || row.committed.is_some() {
            return; // already done: acked at once
        }
        row.attempts += 1;
        state.workers[worker] = Some(Attempt {
            origin: Origin::Queue(job),
            part: job.part,
            token: row.attempts,
            phase: Phase::Started,
        });
    }

    /// Creates or overwrites the attempt's staging inode with `data`.
    fn write(&self, state: &mut State, part: u8, token: u8, data: Option<u8>) -> InodeId {
        let inode = self.inode_to_write(state, part, token);
        state.inodes.insert(inode, Inode { data, alive: true });
        inode
    }

    fn write_fails(&self, state: &mut State, worker: usize) {
        let attempt = state.workers[worker].take().expect("a started attempt");
        state.faults.write_failures -= 1;
        let inode = self.write(state, attempt.part, attempt.token, None);
        state.abandoned.insert(inode); // abandon_attempt
        let Origin::Queue(job) = attempt.origin else {
            unreachable!("only workers' writes fail")
        };
        let next = job.attempt + 1;
        if next >= self.max_attempts {
            Self::fail_session(state); // and the job is dead-lettered
        } else {
            Self::push_job(
                state,
                Job {
                    part: job.part,
                    attempt: next,
                },
            );
        }
    }

    fn reupload(&self, state: &mut State, part: u8) {
        state.faults.reuploads -= 1;
        let row = &mut state.parts[part as usize];
        row.attempts += 1;
        let token = row.attempts;
        let inode = self.write(state, part, token, Some(token));
        state.client = Some(Attempt {
            origin: Origin::Client,
            part,
            token,
            phase: Phase::Written(inode),
        });
    }

    fn collect_garbage(state: &mut State) {
        let found = Self::leftovers(state);
        state.abandoned.extend(found);
        for inode in Self::collectable(state) {
            state.inodes.get_mut(&inode).expect("an inode").alive = false;
        }
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut queue: Vec<Job> = (0..self.parts as u8)
            .map(|part| Job { part, attempt: 0 })
            .collect();
        queue.sort();
        vec![State {
            session: SessionState::Open,
            parts: vec![
                PartRow {
                    attempts: 0,
                    committed: None
                };
                self.parts
            ],
            abandoned: BTreeSet::new(),
            completions: 0,
            final_file: None,
            stale_commit: false,
            inodes: BTreeMap::new(),
            queue,
            workers: vec![None; self.workers],
            client: None,
            snapshot: None,
            faults: self.faults,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        self.network_actions(state, actions);
        for worker in 0..self.workers {
            self.attempt_actions(state, Actor::Worker(worker), actions);
        }
        self.attempt_actions(state, Actor::Client, actions);
        self.coordinator_actions(state, actions);
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::Deliver { worker, job } => self.deliver(&mut state, worker, job),
            Action::Reupload { part } => self.reupload(&mut state, part),
            Action::Write(actor) => {
                let attempt = self.actor(&mut state, actor).expect("an attempt");
                let inode =
                    self.write(&mut state, attempt.part, attempt.token, Some(attempt.token));
                self.actor(&mut state, actor)
                    .as_mut()
                    .expect("an attempt")
                    .phase = Phase::Written(inode);
            }
            Action::WriteFails { worker } => self.write_fails(&mut state, worker),
            Action::Commit(actor) => {
                let attempt = self.actor(&mut state, actor).take().expect("an attempt");
                let Phase::Written(inode) = attempt.phase else {
                    unreachable!()
                };
                Self::commit(&mut state, attempt.part, attempt.token, inode);
            }
            Action::Crash { worker } => {
                state.faults.crashes -= 1;
                let attempt = state.workers[worker].take().expect("an attempt");
                if let Origin::Queue(job) = attempt.origin {
                    Self::push_job(&mut state, job);
                }
            }
            Action::Duplicate { job } => {
                state.faults.duplicates -= 1;
                Self::push_job(&mut state, job);
            }
            Action::Lose { job } => {
                state.faults.losses -= 1;
                Self::take_job(&mut state, job);
            }
            Action::Republish { part } => Self::push_job(&mut state, Job { part, attempt: 0 }),
            Action::Complete => {
                let list: Vec<_> = state.parts.iter().map(|p| p.committed).collect();
                self.finish(&mut state, &list);
            }
            Action::ReadParts => {
                state.snapshot = Some(state.parts.iter().map(|p| p.committed).collect());
            }
            Action::CompleteFromRead => {
                let list = state.snapshot.take().expect("a part list");
                if state.session == SessionState::Open {
                    self.finish(&mut state, &list);
                }
            }
            Action::Expire => Self::fail_session(&mut state),
            Action::CollectGarbage => Self::collect_garbage(&mut state),
        }
        // Workers are interchangeable: keep them in a canonical order.
        state.workers.sort_by_key(|w| w.map(|a| (a.part, a.token)));
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(COMPLETED_FILE_IS_WINNERS, |_, s: &State| {
                completed_file_is_winners(s)
            }),
            Property::always(REFERENCED_NEVER_COLLECTED, |_, s: &State| {
                referenced_never_collected(s)
            }),
            Property::always(STALE_NEVER_VISIBLE, |_, s: &State| stale_never_visible(s)),
            Property::always(COMPLETED_AT_MOST_ONCE, |_, s: &State| s.completions <= 1),
            Property::eventually(FINISHES, |_, s: &State| s.session != SessionState::Open),
            Property::sometimes("a session completes", |_, s: &State| {
                s.session == SessionState::Completed
            }),
            Property::sometimes(
                "a committed part is replaced or an attempt superseded",
                |_, s: &State| {
                    s.parts.iter().enumerate().any(|(p, row)| {
                        row.committed.is_some_and(|(t, _)| {
                            s.abandoned
                                .iter()
                                .any(|i| i.part as usize == p && i.token != t)
                        })
                    })
                },
            ),
            Property::sometimes("the collector deletes an inode", |_, s: &State| {
                s.inodes.values().any(|i| !i.alive)
            }),
        ]
    }
}

/// A completed file shows, for every part, the bytes of the attempt the
/// part row names as committed (the winner when the file completed: no
/// commit changes a part row of a finished session).
pub fn completed_file_is_winners(s: &State) -> bool {
    match &s.final_file {
        None => true,
        Some(FinalFile::Renamed(inode)) => {
            let shown = s.inodes.get(inode).filter(|i| i.alive).and_then(|i| i.data);
            s.parts[0].committed == Some((shown.unwrap_or(0), *inode)) && shown.is_some()
        }
        Some(FinalFile::Assembled(data)) => s
            .parts
            .iter()
            .zip(data)
            .all(|(row, shown)| row.committed.is_some() && row.committed.map(|c| c.0) == *shown),
    }
}

/// No inode a committed part of an open session or the completed file
/// refers to has been deleted.
pub fn referenced_never_collected(s: &State) -> bool {
    let alive = |i: &InodeId| s.inodes.get(i).is_some_and(|i| i.alive);
    let parts_ok = s.session != SessionState::Open
        || s.parts
            .iter()
            .filter_map(|p| p.committed)
            .all(|(_, i)| alive(&i));
    let file_ok = match &s.final_file {
        Some(FinalFile::Renamed(i)) => alive(i),
        _ => true,
    };
    parts_ok && file_ok
}

/// What a committed part's inode shows (while its session is open) is the
/// committed attempt's bytes, never an older (stale) or unfinished
/// attempt's; and no commit ever replaced a token with one not newer.
pub fn stale_never_visible(s: &State) -> bool {
    let parts_ok = s.session != SessionState::Open
        || s.parts
            .iter()
            .filter_map(|p| p.committed)
            .all(|(token, inode)| {
                s.inodes
                    .get(&inode)
                    .is_none_or(|i| !i.alive || i.data == Some(token))
            });
    parts_ok && !s.stale_commit
}

fn inode_name(i: &InodeId) -> String {
    format!("inode p{}t{}", i.part, i.token)
}

fn inode_names(v: &[&InodeId]) -> String {
    v.iter()
        .map(|i| inode_name(i))
        .collect::<Vec<_>>()
        .join(", ")
}

fn attempt_name(a: &Attempt) -> String {
    let by = if a.origin == Origin::Client {
        "the client"
    } else {
        "a worker"
    };
    format!("{by}'s attempt of part {} (token {})", a.part, a.token)
}

impl ProtocolModel {
    /// One step of a counterexample in words, from the state before it.
    pub fn describe(&self, before: &State, action: Action) -> String {
        let after = self
            .next_state(before, action)
            .expect("every action is enabled");
        let abandoned: Vec<&InodeId> = after.abandoned.difference(&before.abandoned).collect();
        let abandoned = inode_names(&abandoned);
        match action {
            Action::Write(_) | Action::WriteFails { .. } | Action::Commit(_) => {
                Self::describe_attempt(before, &after, action, &abandoned)
            }
            Action::Deliver { job, .. } => {
                let row = after.parts[job.part as usize];
                if row.attempts == before.parts[job.part as usize].attempts {
                    format!("a worker gets job part {}: nothing to do, acked", job.part)
                } else {
                    format!(
                        "a worker gets job part {} (x-attempt {}), takes token {}",
                        job.part, job.attempt, row.attempts
                    )
                }
            }
            Action::Reupload { part } => {
                let client = after.client.expect("the client");
                let Phase::Written(inode) = client.phase else {
                    unreachable!("a re-upload writes at once")
                };
                format!(
                    "the client re-uploads committed part {part}: token {}, writes {}",
                    client.token,
                    inode_name(&inode)
                )
            }
            Action::Crash { worker } => format!(
                "the worker running {} crashes; its job is requeued",
                attempt_name(&before.workers[worker].expect("an attempt"))
            ),
            Action::Duplicate { job } => {
                format!(
                    "job part {} is delivered again (a stalled worker holds it)",
                    job.part
                )
            }
            Action::Lose { job } => format!("job part {} is lost", job.part),
            Action::Republish { part } => format!("the reconciler republishes part {part}"),
            Action::Complete => format!(
                "completion under the lock: {:?}, recorded abandoned: [{abandoned}]",
                after.session
            ),
            Action::ReadParts => {
                let read = after.snapshot.as_ref().expect("a part list");
                let tokens: Vec<_> = read.iter().map(|c| c.map(|(t, _)| t)).collect();
                format!("completion reads the part list outside the lock: tokens {tokens:?}")
            }
            Action::CompleteFromRead => format!(
                "completion completes from the list it read: {:?}, file {:?}, \
                 recorded abandoned: [{abandoned}]",
                after.session, after.final_file
            ),
            Action::Expire => "the session expires (failed)".to_string(),
            Action::CollectGarbage => {
                let deleted: Vec<&InodeId> = after
                    .inodes
                    .iter()
                    .filter(|(id, i)| !i.alive && before.inodes[id].alive)
                    .map(|(id, _)| id)
                    .collect();
                format!(
                    "GC: the sweep records [{abandoned}], the collector deletes [{}]",
                    inode_names(&deleted)
                )
            }
        }
    }

    fn describe_attempt(before: &State, after: &State, action: Action, abandoned: &str) -> String {
        let actor = match action {
            Action::Write(actor) | Action::Commit(actor) => actor,
            Action::WriteFails { worker } => Actor::Worker(worker),
            _ => unreachable!("an attempt's step"),
        };
        let a = match actor {
            Actor::Worker(w) => before.workers[w],
            Actor::Client => before.client,
        }
        .expect("an attempt");
        let row = |s: &State| s.parts[a.part as usize].committed.map(|c| c.0);
        match action {
            Action::Write(_) => {
                let written = after
                    .workers
                    .iter()
                    .chain([&after.client])
                    .flatten()
                    .find_map(|b| match b.phase {
                        Phase::Written(i) if (b.part, b.token) == (a.part, a.token) => Some(i),
                        _ => None,
                    })
                    .expect("the written attempt");
                format!("{} writes {}", attempt_name(&a), inode_name(&written))
            }
            Action::WriteFails { .. } => format!(
                "{}: the write fails, [{abandoned}] recorded abandoned, {}",
                attempt_name(&a),
                if after.session == SessionState::Failed {
                    "out of attempts: session failed"
                } else {
                    "job to the retry queue"
                }
            ),
            _ => {
                let outcome = if row(after) == Some(a.token) && row(before) != Some(a.token) {
                    "it is the part now"
                } else if before.session != SessionState::Open {
                    "session not open"
                } else {
                    "superseded"
                };
                format!(
                    "{} commits: {outcome}; recorded abandoned: [{abandoned}]",
                    attempt_name(&a)
                )
            }
        }
    }
}
