//! The pipeline's domain logic, shared by the coordinator and the worker:
//! validating an ingest request into a session, running one part attempt
//! (fresh staging inode, fencing token from PostgreSQL, commit), completing a
//! session in one locked transaction, ending sessions, and the garbage
//! collector that deletes only staging inodes recorded as abandoned.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use md5::Digest;
use uuid::Uuid;

use crate::jobs::{IngestRequest, PartJob};
use crate::limits::{self, DestLimitError, PartLimitError, RequestLimits};
use crate::moosefs::{
    CreatedFile, MfsClient, MfsError, MfsPath, Name, ReplicaChoice, WriteOptions, CHUNK_SIZE,
};
use crate::source::{Source, SourceConfig, SourceError, SourceVersion, Validator};
use crate::store::{
    state, AttemptStart, CommitOutcome, NewSession, PartCommit, Session, Store, StoreError,
};

/// Name of the system's own directory under the MooseFS root.
pub const SYSTEM_DIR: &str = ".mfs-ingest";
/// Largest accepted file.
pub const MAX_SIZE: u64 = 1 << 40;
/// Default bound on the MooseFS work of one completion (it runs under the
/// session row lock), seconds.
pub const DEFAULT_COMPLETION_DEADLINE_SECS: u64 = 900;

/// Settings both binaries share.
#[derive(Clone)]
pub struct IngestConfig {
    /// MooseFS subtree the system writes under.
    pub root: MfsPath,
    pub default_goal: u8,
    pub default_part_size: u64,
    /// What one request may ask for (parts, destination, deliveries).
    pub limits: RequestLimits,
    pub sources: SourceConfig,
    /// Bound on the MooseFS work of one completion under the session row
    /// lock (assembly, MD5 read, rename); on expiry the completion rolls back
    /// and is retried. Keep it below the pool's idle-in-transaction timeout.
    pub completion_deadline: Duration,
}

impl IngestConfig {
    pub fn staging_root(&self) -> MfsPath {
        self.root
            .join(&Name::parse(SYSTEM_DIR).expect("valid"))
            .join(&Name::parse("staging").expect("valid"))
    }

    /// Where the staging files of sessions with this goal live: a few fixed
    /// directories, so a part costs no MKDIR, and no SETGOAL either (a new
    /// inode inherits its directory's goal, set when the directory is made).
    pub fn staging_dir(&self, goal: u8) -> MfsPath {
        self.staging_root()
            .join(&Name::parse(&format!("goal-{goal}")).expect("valid name"))
    }

    /// A part attempt's staging file: `<session>-p<part>-t<token>`, unique per
    /// attempt (the token is the attempt counter).
    pub fn staging_file(&self, goal: u8, session: Uuid, part: i32, token: i32) -> MfsPath {
        self.staging_dir(goal)
            .join(&Name::parse(&format!("{session}-p{part:05}-t{token}")).expect("valid name"))
    }

    /// The file a multi-part session is assembled in before its rename.
    pub fn assembly_file(&self, goal: u8, session: Uuid) -> MfsPath {
        self.staging_dir(goal)
            .join(&Name::parse(&format!("{session}-assembly")).expect("valid name"))
    }

    pub fn dest_path(&self, dest: &str) -> Result<MfsPath, MfsError> {
        let rel = MfsPath::parse(dest)?;
        let mut full = self.root.clone();
        for c in rel.components() {
            full = full.join(c);
        }
        Ok(full)
    }
}

/// Everything a pipeline step needs.
#[derive(Clone)]
pub struct Ingest {
    pub cfg: Arc<IngestConfig>,
    pub store: Store,
    pub mfs: MfsClient,
    /// Inodes of directories this process created or found (staging and
    /// destination parents), so each part does not walk every path again.
    pub dirs: DirCache,
    /// Bytes of parts being written at once (see [`WriteBudget`]).
    pub write_budget: WriteBudget,
}

/// A bound on the bytes of parts a process writes at the same time, so that
/// many small parts run side by side while big parts take turns (parallel
/// 64 MiB chunk writes only make the chunkservers' one disk and CPUs thrash).
/// Counted in MiB; a part bigger than the whole budget takes all of it.
/// The default is unbounded.
#[derive(Clone, Default)]
pub struct WriteBudget(Option<(Arc<tokio::sync::Semaphore>, u32)>);

impl WriteBudget {
    pub fn mib(limit: u32) -> WriteBudget {
        let limit = limit.max(1);
        WriteBudget(Some((
            Arc::new(tokio::sync::Semaphore::new(limit as usize)),
            limit,
        )))
    }

    /// Waits until `bytes` fit; the permit gives them back when dropped.
    pub async fn reserve(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let (sem, limit) = self.0.as_ref()?;
        let mib = u32::try_from(bytes.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .clamp(1, *limit);
        sem.clone().acquire_many_owned(mib).await.ok()
    }
}

/// Directory path → inode, forgotten whenever an operation under a cached
/// directory fails (it may have been removed meanwhile).
#[derive(Clone, Default)]
pub struct DirCache(Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>);

impl DirCache {
    /// The directory's inode, creating missing directories (`mkdir -p`).
    pub async fn ensure(&self, mfs: &MfsClient, path: &MfsPath) -> Result<u32, MfsError> {
        self.ensure_with_goal(mfs, path, None).await
    }

    /// Like [`DirCache::ensure`], and sets the directory's goal (not
    /// recursively) when it is not cached yet.
    pub async fn ensure_with_goal(
        &self,
        mfs: &MfsClient,
        path: &MfsPath,
        goal: Option<u8>,
    ) -> Result<u32, MfsError> {
        let key = path.to_string();
        if let Some(inode) = self.0.lock().expect("dir cache").get(&key) {
            return Ok(*inode);
        }
        let inode = mfs.mkdir_all(path).await?;
        if let Some(goal) = goal {
            mfs.set_goal(inode, goal, false).await?;
        }
        self.0.lock().expect("dir cache").insert(key, inode);
        Ok(inode)
    }

    /// The inode of an existing directory (nothing is created). Walks from
    /// the deepest cached ancestor and caches every directory it finds, so a
    /// directory that does not exist yet costs one LOOKUP (of its first
    /// missing component), not one per component. `NotDirectory` if a
    /// component is a file.
    pub async fn existing(&self, mfs: &MfsClient, path: &MfsPath) -> Result<u32, MfsError> {
        let components = path.components();
        let mut prefix = MfsPath::root();
        let mut inode = crate::moosefs::proto::ROOT_INODE;
        let mut depth = 0;
        {
            let cache = self.0.lock().expect("dir cache");
            for name in components {
                let next = prefix.join(name);
                let Some(cached) = cache.get(&next.to_string()) else {
                    break;
                };
                (prefix, inode, depth) = (next, *cached, depth + 1);
            }
        }
        for name in &components[depth..] {
            prefix = prefix.join(name);
            let (child, attr) = mfs.lookup(inode, name).await.map_err(|e| match e {
                MfsError::NotFound(_) => MfsError::NotFound(path.to_string()),
                other => other,
            })?;
            if !attr.is_dir() {
                return Err(MfsError::NotDirectory(prefix.to_string()));
            }
            self.0
                .lock()
                .expect("dir cache")
                .insert(prefix.to_string(), child);
            inode = child;
        }
        Ok(inode)
    }

    pub fn forget(&self) {
        self.0.lock().expect("dir cache").clear();
    }
}

/// Requests of one batch checked against their sources and MooseFS at once.
const SUBMIT_CHECKS_AT_ONCE: usize = 16;

/// The request id and destination of a request (checked before anything
/// else): the destination's length, characters and depth against the
/// limits, then its names.
fn parse_request_head(
    req: &IngestRequest,
    limits: &RequestLimits,
) -> Result<MfsPath, RequestError> {
    let id = req.request_id.trim();
    if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()) {
        return Err(RequestError::BadRequestId);
    }
    limits::check_dest(&req.dest, limits)?;
    MfsPath::parse(&req.dest).map_err(|e| RequestError::BadDest(e.to_string()))
}

/// A destination as sessions record it (relative to the root, no leading slash).
fn normalized_dest(dest: &MfsPath) -> String {
    dest.to_string().trim_start_matches('/').to_string()
}

/// Whether a repeated request asks for what its session already is.
fn same_request(existing: &Session, req: &IngestRequest, dest: &MfsPath) -> bool {
    existing.dest == normalized_dest(dest)
        && existing.source == req.source
        && existing.overwrite == req.overwrite
        && req
            .size
            .is_none_or(|s| i64::try_from(s) == Ok(existing.size))
        && req.goal.is_none_or(|g| i16::from(g) == existing.goal)
        && req
            .part_size
            .is_none_or(|p| i64::try_from(p) == Ok(existing.part_size))
        && req.md5.as_ref().map(|m| m.to_ascii_lowercase()) == existing.expected_md5
        && req.crc32c.map(i64::from) == existing.expected_crc32c
}

/// Why a request was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request_id must be 1..=200 printable characters")]
    BadRequestId,
    #[error("invalid dest: {0}")]
    BadDest(String),
    #[error("{0}")]
    DestLimit(#[from] DestLimitError),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("declared size {declared} does not match the source's size {actual}")]
    SizeMismatch { declared: u64, actual: u64 },
    #[error("{field} of {bytes} bytes is larger than the limit of {MAX_SIZE} bytes")]
    TooLarge { field: &'static str, bytes: u64 },
    #[error("md5 must be 32 hexadecimal digits")]
    BadMd5,
    #[error("goal must be between 1 and 9")]
    BadGoal,
    #[error(
        "goal {goal} asks for more copies than the {servers} chunkservers the MooseFS master knows"
    )]
    GoalAboveChunkservers { goal: u8, servers: u32 },
    #[error("{0}")]
    Parts(#[from] PartLimitError),
    #[error("destination {0} exists (set \"overwrite\": true to replace it)")]
    DestExists(String),
    #[error("destination {0} is a directory")]
    DestIsDirectory(String),
    #[error("the same request_id was used for a different request (existing session {0})")]
    Conflict(Uuid),
    #[error("MooseFS: {0}")]
    Mfs(#[from] MfsError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl RequestError {
    /// Whether the request itself is at fault (4xx), not the system (5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, RequestError::Mfs(_) | RequestError::Store(_))
            && !matches!(self, RequestError::Source(e) if e.is_transient())
    }
}

/// Failures of a part attempt.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// Trying again may succeed (network, MooseFS, database trouble).
    #[error("{0}")]
    Transient(String),
    /// The session cannot succeed; it has been marked failed.
    #[error("{0}")]
    SessionFailed(String),
}

/// How a part job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartOutcome {
    /// Committed; `completed` if this commit also completed the session.
    Committed { completed: bool },
    /// Nothing to do: committed already or the session is not open.
    AlreadyDone,
    /// Written, but a newer attempt or the session's end won: recorded as abandoned.
    Discarded,
}

/// How a completion attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Completed { final_inode: u32 },
    NotReady,
    AlreadyFinished,
    Failed(String),
}

/// Whether a completion transaction that does not finish its session
/// still commits: yes when it also recorded the session's last part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepWrites {
    Yes,
    No,
}

/// What the MooseFS side of a completion decided, before it is recorded.
enum Finish {
    Completed {
        md5: Option<String>,
        crc: u32,
        final_inode: u32,
        /// A foreign file at the destination was replaced (`overwrite`).
        replaced: bool,
    },
    Failed(String),
}

/// What a completion found at its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtDest {
    Nothing,
    Directory,
    /// The session's committed single part itself (renamed by a run that
    /// did not commit).
    ThisFile(u32),
    /// A file an earlier run of this session's completion put there
    /// (recorded inode, the session's length and CRC-32C): replaced.
    Ours,
    /// Anything else: replaced only with `overwrite`.
    Foreign,
}

/// A completion check that did not pass: why the session fails.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CheckFailed(String);

/// A verified file in the staging directory, ready to be renamed into place.
struct FinalFile {
    /// Its staging directory's inode and its name there.
    dir: u32,
    name: Name,
    inode: u32,
    md5: Option<String>,
}

/// Why the data's MD5 (if known) is not the one the upload asked for.
fn md5_mismatch(session: &Session, actual: Option<&str>) -> Option<String> {
    match (&session.expected_md5, actual) {
        (Some(expected), Some(actual)) if expected != actual => Some(format!(
            "md5 mismatch: expected {expected}, the data has {actual}"
        )),
        _ => None,
    }
}

/// The size and CRC-32C checks of a completion, before anything moves: the
/// committed parts add up to the session's size and their combined CRC-32C
/// is the expected one (if one was given). The whole-file CRC-32C, or why
/// the session fails.
fn verify_parts(session: &Session, parts: &[crate::store::Part]) -> Result<u32, CheckFailed> {
    let total: i64 = parts.iter().map(|p| p.size).sum();
    if total != session.size {
        return Err(CheckFailed(format!(
            "size mismatch: the parts hold {total} bytes, the upload has {}",
            session.size
        )));
    }
    // Whole-file CRC-32C from the parts' CRCs, no data read.
    let crc = match parts {
        [one] => one.crc32c.unwrap_or(0) as u32,
        _ => parts.iter().fold(0u32, |crc, p| {
            crc32c::crc32c_combine(crc, p.crc32c.unwrap_or(0) as u32, p.size as usize)
        }),
    };
    match session.expected_crc32c {
        Some(expected) if expected as u32 != crc => Err(CheckFailed(format!(
            "crc32c mismatch: expected {:08x}, the data has {crc:08x}",
            expected as u32
        ))),
        _ => Ok(crc),
    }
}

impl Completion {
    /// The session state this completion ends in, if it ends the session.
    fn final_state(&self) -> Option<&'static str> {
        match self {
            Completion::Completed { .. } => Some(state::COMPLETED),
            Completion::Failed(_) => Some(state::FAILED),
            Completion::NotReady | Completion::AlreadyFinished => None,
        }
    }
}

/// Test hooks into a part attempt.
#[derive(Clone, Default)]
pub struct AttemptHooks {
    /// Runs after the staging file is written, before the commit.
    pub before_commit:
        Option<Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>>,
}

fn transient(e: impl std::fmt::Display) -> PartError {
    PartError::Transient(e.to_string())
}

/// A source that may work later is a transient failure; one that never
/// will (refused, changed, gone) fails the session.
fn source_failure(e: SourceError) -> PartError {
    if e.is_transient() {
        transient(e)
    } else {
        PartError::SessionFailed(e.to_string())
    }
}

/// A job found nothing to do (committed already, or its session is not open).
fn already_done() -> PartOutcome {
    crate::metrics::metrics()
        .duplicate_jobs
        .with_label_values(&["postgres"])
        .inc();
    PartOutcome::AlreadyDone
}

/// A part attempt whose staging file is written and verified, waiting for
/// its commit. Holds the created file open (see [`CreatedFile`]) until then.
struct WrittenPart {
    job: PartJob,
    start: AttemptStart,
    file: CreatedFile,
    staging_path: String,
    md5: Option<String>,
    crc32c: u32,
}

impl WrittenPart {
    fn commit<'a>(&'a self, worker: &'a str) -> PartCommit<'a> {
        PartCommit {
            session_id: self.job.session_id,
            part_number: self.job.part_number,
            token: self.start.token,
            staging_inode: self.file.inode,
            staging_path: &self.staging_path,
            md5: self.md5.as_deref(),
            crc32c: self.crc32c,
            worker,
        }
    }

    /// What the commit made of it (counted in the part metrics).
    fn outcome(&self, (committed, completed): (CommitOutcome, bool)) -> PartOutcome {
        let m = crate::metrics::metrics();
        match committed {
            CommitOutcome::Committed { .. } => {
                m.parts_committed.inc();
                m.part_size.observe(self.start.size as f64);
                PartOutcome::Committed { completed }
            }
            CommitOutcome::Superseded => {
                m.parts_abandoned.with_label_values(&["superseded"]).inc();
                PartOutcome::Discarded
            }
            CommitOutcome::SessionClosed => {
                m.parts_abandoned
                    .with_label_values(&["session_closed"])
                    .inc();
                PartOutcome::Discarded
            }
        }
    }
}

impl Ingest {
    /// Validates a request against the source and MooseFS and creates (or
    /// finds) its session. A repeated `request_id` returns the existing session.
    pub async fn submit(&self, req: &IngestRequest) -> Result<(Session, bool), RequestError> {
        self.submit_batch(std::slice::from_ref(req))
            .await
            .pop()
            .expect("one result per request")
    }

    /// [`Ingest::submit`] for many requests at once (a batch message): one
    /// query finds the request ids seen before, the sources and destinations
    /// are checked concurrently (destination parents looked up once, then
    /// cached), and every new session is created in ONE transaction. One
    /// result per request, in order; a refused request changes nothing.
    pub async fn submit_batch(
        &self,
        reqs: &[IngestRequest],
    ) -> Vec<Result<(Session, bool), RequestError>> {
        let started = std::time::Instant::now();
        let results = self.submit_batch_unmeasured(reqs).await;
        let m = crate::metrics::metrics();
        let per_request = started.elapsed().as_secs_f64() / reqs.len().max(1) as f64;
        for result in &results {
            m.request_duration.observe(per_request);
            let outcome = match result {
                Ok((_, true)) => {
                    m.sessions_created.inc();
                    "created"
                }
                Ok((_, false)) => "duplicate",
                Err(e) if e.is_client_error() => "rejected",
                Err(_) => "error",
            };
            m.requests.with_label_values(&[outcome]).inc();
        }
        results
    }

    async fn submit_batch_unmeasured(
        &self,
        reqs: &[IngestRequest],
    ) -> Vec<Result<(Session, bool), RequestError>> {
        use futures::StreamExt;
        // Request ids and destinations first: a repeated request is answered
        // from its session before anything else is looked at.
        let mut results: Vec<Option<Result<(Session, bool), RequestError>>> =
            reqs.iter().map(|_| None).collect();
        let mut dests = Vec::with_capacity(reqs.len());
        for (slot, req) in results.iter_mut().zip(reqs) {
            match parse_request_head(req, &self.cfg.limits) {
                Ok(dest) => dests.push(Some(dest)),
                Err(e) => {
                    *slot = Some(Err(e));
                    dests.push(None);
                }
            }
        }
        // Only ids that passed their checks reach PostgreSQL (a NUL byte in
        // one would fail the whole query, and every request with it).
        let ids: Vec<&str> = reqs
            .iter()
            .zip(&dests)
            .filter(|(_, dest)| dest.is_some())
            .map(|(r, _)| r.request_id.as_str())
            .collect();
        let existing = match self.store.sessions_by_request(&ids).await {
            Ok(found) => found,
            Err(e) => {
                return e
                    .for_each(reqs.len())
                    .into_iter()
                    .map(|e| Err(e.into()))
                    .collect()
            }
        };
        for ((slot, req), dest) in results.iter_mut().zip(reqs).zip(&dests) {
            if let (None, Some(dest), Some(session)) = (&slot, dest, existing.get(&req.request_id))
            {
                *slot = Some(if same_request(session, req, dest) {
                    Ok((session.clone(), false))
                } else {
                    Err(RequestError::Conflict(session.id))
                });
            }
        }
        // The rest against their sources and MooseFS, a few at a time.
        let checks: Vec<(usize, MfsPath)> = results
            .iter()
            .zip(dests)
            .enumerate()
            .filter(|(_, (slot, _))| slot.is_none())
            .filter_map(|(i, (_, dest))| Some((i, dest?)))
            .collect();
        let checked: Vec<(usize, Result<NewSession, RequestError>)> = futures::stream::iter(checks)
            .map(|(i, dest)| async move { (i, self.check_new_request(&reqs[i], dest).await) })
            .buffered(SUBMIT_CHECKS_AT_ONCE)
            .collect()
            .await;
        let mut new_sessions = Vec::new();
        let mut new_slots = Vec::new();
        for (i, checked) in checked {
            match checked {
                Ok(new) => {
                    new_sessions.push(new);
                    new_slots.push(i);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !new_sessions.is_empty() {
            match self.store.create_sessions(&new_sessions).await {
                Ok(created) => {
                    for ((i, new), (session, was_created)) in
                        new_slots.into_iter().zip(&new_sessions).zip(created)
                    {
                        // The same request id came twice (in this batch, or
                        // from another coordinator meanwhile).
                        results[i] = Some(
                            if !was_created
                                && (session.dest != new.dest || session.source != new.source)
                            {
                                Err(RequestError::Conflict(session.id))
                            } else {
                                Ok((session, was_created))
                            },
                        );
                    }
                }
                Err(e) => {
                    for (i, e) in new_slots.iter().zip(e.for_each(new_slots.len())) {
                        results[*i] = Some(Err(e.into()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every request has a result"))
            .collect()
    }

    /// The checks of a request seen for the first time: fields, the source
    /// (its size), and that the destination does not exist unless it may be
    /// overwritten.
    async fn check_new_request(
        &self,
        req: &IngestRequest,
        dest: MfsPath,
    ) -> Result<NewSession, RequestError> {
        if dest.is_root() {
            return Err(RequestError::BadDest("dest is the root directory".into()));
        }
        if dest.components()[0].as_str() == SYSTEM_DIR {
            return Err(RequestError::BadDest(format!("{SYSTEM_DIR} is reserved")));
        }
        if let Some(md5) = &req.md5 {
            if md5.len() != 32 || !md5.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(RequestError::BadMd5);
            }
        }
        let goal = req.goal.unwrap_or(self.cfg.default_goal);
        if !(1..=9).contains(&goal) {
            return Err(RequestError::BadGoal);
        }
        let limits = &self.cfg.limits;
        if let Some(asked) = req.part_size {
            limits::check_part_size(asked, limits)?;
        }
        if let Some(declared) = req.size.filter(|&s| s > MAX_SIZE) {
            return Err(RequestError::TooLarge {
                field: "size",
                bytes: declared,
            });
        }
        let source = Source::parse(&req.source, &self.cfg.sources)?;
        let version = source.probe(&self.cfg.sources).await?;
        let actual = version.size;
        if let Some(declared) = req.size {
            if declared != actual {
                return Err(RequestError::SizeMismatch { declared, actual });
            }
        }
        if actual > MAX_SIZE {
            return Err(RequestError::TooLarge {
                field: "the source",
                bytes: actual,
            });
        }
        let part_size =
            limits::choose_part_size(actual, req.part_size, self.cfg.default_part_size, limits)?;
        let servers = self.mfs.chunkserver_count().await?.known;
        if u32::from(goal) > servers {
            return Err(RequestError::GoalAboveChunkservers { goal, servers });
        }
        let full_dest = self.cfg.dest_path(&req.dest)?;
        self.check_dest(&full_dest, &req.dest, req.overwrite)
            .await?;
        Ok(NewSession {
            request_id: req.request_id.clone(),
            source: req.source.clone(),
            dest: normalized_dest(&dest),
            size: actual,
            part_size,
            goal,
            overwrite: req.overwrite,
            expected_md5: req.md5.as_ref().map(|m| m.to_ascii_lowercase()),
            expected_crc32c: req.crc32c,
            source_validator: version.validator.map(|v| v.to_stored()),
        })
    }

    /// What is at a destination may take the file: nothing, or a file if
    /// `overwrite`; never a directory (a rename onto it could only fail).
    /// The completion checks again under its lock.
    async fn check_dest(
        &self,
        full_dest: &MfsPath,
        dest: &str,
        overwrite: bool,
    ) -> Result<(), RequestError> {
        match self.dest_entry(full_dest, dest).await? {
            Some(attr) if attr.is_dir() => Err(RequestError::DestIsDirectory(dest.to_string())),
            Some(_) if !overwrite => Err(RequestError::DestExists(dest.to_string())),
            _ => Ok(()),
        }
    }

    /// What exists at a destination (its attributes), if anything: its
    /// parent directory from the cache (one LOOKUP per component the first
    /// time), then one LOOKUP. A stale cached parent (removed meanwhile)
    /// reads as "does not exist".
    async fn dest_entry(
        &self,
        full_dest: &MfsPath,
        dest: &str,
    ) -> Result<Option<crate::moosefs::Attr>, RequestError> {
        let (parent_path, name) = full_dest.split_last().expect("dest is not the root");
        let parent = match self.dirs.existing(&self.mfs, &parent_path).await {
            Ok(inode) => inode,
            Err(MfsError::NotFound(_)) => return Ok(None),
            // A file where a directory should be.
            Err(MfsError::NotDirectory(_)) => {
                return Err(RequestError::BadDest(format!(
                    "a parent of {dest} is a file"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        match self.mfs.lookup(parent, name).await {
            Ok((_, attr)) => Ok(Some(attr)),
            Err(MfsError::NotFound(_)) => Ok(None),
            Err(e) => {
                self.dirs.forget();
                Err(e.into())
            }
        }
    }

    /// Runs one attempt of a part: fencing token from PostgreSQL, a fresh
    /// staging inode, the source range streamed into it (every replica
    /// acknowledged and verified), then the commit. Completes the session if
    /// this was its last part.
    pub async fn run_part(
        &self,
        job: &PartJob,
        worker: &str,
        hooks: &AttemptHooks,
    ) -> Result<PartOutcome, PartError> {
        let Some(start) = self
            .store
            .start_attempt(job, worker)
            .await
            .map_err(transient)?
        else {
            return Ok(already_done());
        };
        let written = self.write_attempt(*job, start).await?;
        if let Some(hook) = &hooks.before_commit {
            hook().await;
        }
        let commit = written.commit(worker);
        let committed = if written.start.part_count == 1 {
            self.commit_single_part(&commit).await?
        } else {
            self.commit_one_of_many(&commit).await?
        };
        Ok(written.outcome(committed))
    }

    /// Runs one attempt of each of several parts of single-part files (a
    /// [`crate::jobs::PartGroup`]): their fencing tokens in one statement,
    /// the writes side by side, then ONE transaction that commits and
    /// completes every file written (each still completes or fails alone;
    /// if that transaction cannot finish, each is committed on its own).
    /// One result per job, in order.
    pub async fn run_parts_together(
        &self,
        jobs: &[PartJob],
        worker: &str,
    ) -> Vec<Result<PartOutcome, PartError>> {
        let starts = match self.store.start_attempts(jobs, worker).await {
            Ok(starts) => starts,
            Err(e) => return jobs.iter().map(|_| Err(transient(&e))).collect(),
        };
        let writes =
            futures::future::join_all(jobs.iter().zip(starts).map(|(job, start)| async move {
                match start {
                    Some(start) => self.write_attempt(*job, start).await.map(Some),
                    None => Ok(None),
                }
            }))
            .await;
        let mut results: Vec<Option<Result<PartOutcome, PartError>>> = Vec::new();
        let mut together: Vec<(usize, WrittenPart)> = Vec::new();
        for (i, write) in writes.into_iter().enumerate() {
            match write {
                Ok(Some(w)) if w.start.part_count == 1 => {
                    results.push(None);
                    together.push((i, w));
                }
                Ok(Some(w)) => {
                    // Not a single-part file: committed the usual way.
                    let commit = w.commit(worker);
                    results.push(Some(
                        self.commit_one_of_many(&commit).await.map(|c| w.outcome(c)),
                    ));
                }
                Ok(None) => results.push(Some(Ok(already_done()))),
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let commits: Vec<PartCommit<'_>> = together.iter().map(|(_, w)| w.commit(worker)).collect();
        let committed = match self.commit_single_parts(&commits).await {
            Ok(all) => all.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::warn!(parts = commits.len(), error = %e,
                    "committing the group together failed; committing each part alone");
                let mut each = Vec::with_capacity(commits.len());
                for commit in &commits {
                    each.push(self.commit_single_part(commit).await);
                }
                each
            }
        };
        for ((i, w), c) in together.iter().zip(committed) {
            results[*i] = Some(c.map(|c| w.outcome(c)));
        }
        results
            .into_iter()
            .map(|r| r.expect("every job has a result"))
            .collect()
    }

    /// The attempt up to its commit: the source checked, a fresh staging
    /// inode written (every replica acknowledged and verified). A failed
    /// write's inode is recorded as abandoned. The source is read pinned to
    /// the version seen at validation and under the part's deadline and
    /// minimum throughput ([`crate::source::PartLimits`]); a read cut short
    /// by those ends the chunk being written (its lock released) and is
    /// retried like any transient failure.
    async fn write_attempt(
        &self,
        job: PartJob,
        start: AttemptStart,
    ) -> Result<WrittenPart, PartError> {
        crate::metrics::metrics().parts_started.inc();
        let (source, pinned) = self.check_source(&job, &start).await?;

        let _budget = self.write_budget.reserve(start.size as u64).await;
        let goal = start.goal as u8;
        let dir_inode = self.staging_dir_inode(goal).await.map_err(transient)?;
        let staging = self
            .cfg
            .staging_file(goal, job.session_id, job.part_number, start.token);
        let name = staging.file_name().expect("staging file has a name");
        let staging_path = staging.to_string();
        let file = match self.mfs.create(dir_inode, name, 0o644).await {
            Ok(f) => f,
            Err(e @ MfsError::NotFound(_)) => {
                self.dirs.forget();
                return Err(transient(e));
            }
            // A previous try of this very attempt created it: a new attempt
            // (new token, new name) is the clean way forward.
            Err(e) => return Err(transient(e)),
        };
        // The error and the reason its inode is abandoned.
        let written: Result<_, (PartError, &str)> = async {
            let reader = source
                .open_range(
                    start.part_offset as u64,
                    start.size as u64,
                    &pinned,
                    &self.cfg.sources,
                )
                .await
                .map_err(|e| (source_failure(e), "attempt failed"))?;
            let opts = WriteOptions {
                required_copies: Some(start.goal as u8),
                // Only a single part's MD5 is the file's; a multi-part file's
                // MD5 is computed at completion, and only if it was asked for.
                compute_md5: start.part_count == 1,
                ..self.mfs.config().write.clone()
            };
            let outcome = self
                .mfs
                .write_new_file(&file, reader, &opts)
                .await
                .map_err(|e| match &e {
                    MfsError::Source(io) if crate::source::PartReadLimitError::is_in(io) => {
                        (transient(e), "source too slow")
                    }
                    _ => (transient(e), "attempt failed"),
                })?;
            if outcome.length != start.size as u64 {
                let why = format!(
                    "source ended early: part {} has {} of {} bytes",
                    job.part_number, outcome.length, start.size
                );
                return Err((PartError::SessionFailed(why), "attempt failed"));
            }
            Ok(outcome)
        }
        .await;
        match written {
            Ok(outcome) => Ok(WrittenPart {
                job,
                md5: outcome.md5_hex(),
                crc32c: outcome.crc32c,
                start,
                file,
                staging_path,
            }),
            Err((e, reason)) => {
                // The staging inode is nobody's: record it for the collector.
                let _ = self
                    .store
                    .abandon_attempt(
                        job.session_id,
                        job.part_number,
                        start.token,
                        file.inode,
                        &staging_path,
                        reason,
                    )
                    .await;
                crate::metrics::metrics()
                    .parts_abandoned
                    .with_label_values(&[if reason == "source too slow" {
                        "source_too_slow"
                    } else {
                        "attempt_failed"
                    }])
                    .inc();
                Err(match e {
                    PartError::SessionFailed(why) => self.fail_session(job.session_id, &why).await,
                    other => other,
                })
            }
        }
    }

    /// An attempt's source: parsed, and its size and validator now compared
    /// with the version the upload was created from (a different one fails
    /// the session).
    async fn check_source(
        &self,
        job: &PartJob,
        start: &AttemptStart,
    ) -> Result<(Source, SourceVersion), PartError> {
        let pinned = SourceVersion {
            size: start.session_size as u64,
            validator: start
                .source_validator
                .as_deref()
                .and_then(Validator::from_stored),
        };
        let checked = async {
            let source = Source::parse(&start.source, &self.cfg.sources)?;
            let now = source.probe(&self.cfg.sources).await?;
            Ok::<_, SourceError>((source, now))
        }
        .await;
        match checked {
            Ok((source, now)) => match pinned.change_to(&now) {
                None => Ok((source, pinned)),
                Some(why) => Err(self.fail_session(job.session_id, &why).await),
            },
            Err(e) => match source_failure(e) {
                PartError::SessionFailed(why) => Err(self.fail_session(job.session_id, &why).await),
                other => Err(other),
            },
        }
    }

    /// Commits a part of a multi-part session, the session row shared with
    /// the other parts' commits. If its own transaction sees every other part
    /// committed, it is the last one: the session row is then taken `FOR
    /// UPDATE` and the session completed in that same transaction (one
    /// commit, not two, between the last part and the finished file). If
    /// that completion cannot finish, the transaction rolls back and the part
    /// is committed alone, as any part is; its completion follows at once or
    /// from the reconciler. The bool says whether the session completed.
    async fn commit_one_of_many(
        &self,
        commit: &PartCommit<'_>,
    ) -> Result<(CommitOutcome, bool), PartError> {
        let (mut tx, committed) = self
            .store
            .commit_part_open(commit)
            .await
            .map_err(transient)?;
        if committed.was_last() {
            let completion = async move {
                let session = Store::lock_session_in(&mut tx, commit.session_id).await?;
                self.complete_locked(tx, session, None, KeepWrites::Yes)
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
        tx.commit().await.map_err(transient)?;
        let committed = self
            .store
            .recount_after_commit(commit.session_id, committed)
            .await
            .map_err(transient)?;
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
        let committed = self.store.commit_part(commit).await.map_err(transient)?;
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
    async fn commit_single_part(
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
    async fn commit_single_parts(
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
        let (mut tx, sessions) = self.store.lock_sessions(&ids).await?;
        let states: Vec<Option<&str>> = commits
            .iter()
            .map(|c| sessions.get(&c.session_id).map(|s| s.state.as_str()))
            .collect();
        let committed = Store::commit_parts_in(&mut tx, commits, &states).await?;
        let finishing_sessions = committed
            .iter()
            .zip(commits)
            .filter(|((_, part), _)| part.is_some())
            .map(|(_, c)| &sessions[&c.session_id]);
        let dests_unique = self.lock_destinations(&mut tx, finishing_sessions).await?;
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
                Finish::Completed {
                    md5,
                    crc,
                    final_inode,
                    replaced,
                } => {
                    completed[*i] = true;
                    done.push(crate::store::SessionDone {
                        session,
                        md5: md5.as_deref(),
                        crc32c: *crc,
                        final_inode: *final_inode,
                        replaced: *replaced,
                    });
                    ended.push((state::COMPLETED, session.created_at, Some(*own_time)));
                }
                Finish::Failed(why) => {
                    self.finish_failed(&mut tx, session, why.clone()).await?;
                    ended.push((state::FAILED, session.created_at, None));
                }
            }
        }
        Store::complete_all_in(&mut tx, &done).await?;
        let committing = std::time::Instant::now();
        tx.commit().await?;
        let commit_time = committing.elapsed();
        let m = crate::metrics::metrics();
        for (state, created_at, own_time) in ended {
            if let Some(own_time) = own_time {
                // Its own work plus the commit that made it visible.
                m.completion_duration
                    .observe((own_time + commit_time).as_secs_f64());
            }
            crate::metrics::session_finished(state, created_at);
        }
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
        committed: &[(CommitOutcome, Option<crate::store::Part>)],
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
                        return Err(CompletionError::Internal(format!(
                            "session {} has {} parts, not one",
                            session.id, session.part_count
                        )));
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

    /// Takes the destination locks of `sessions` in `tx` (see
    /// [`Store::lock_destinations_in`]): completions to one destination
    /// run one after the other, each seeing what the one before it left.
    /// Whether the destinations are all different.
    async fn lock_destinations<'s>(
        &self,
        tx: &mut crate::store::Tx,
        sessions: impl Iterator<Item = &'s Session>,
    ) -> Result<bool, CompletionError> {
        let mut dests = Vec::new();
        for session in sessions {
            dests.push(self.cfg.dest_path(&session.dest)?.to_string());
        }
        Store::lock_destinations_in(tx, &dests).await?;
        let count = dests.len();
        dests.sort_unstable();
        dests.dedup();
        Ok(dests.len() == count)
    }

    /// Marks a session failed (if still open) and returns the error to report.
    pub async fn fail_session(&self, id: Uuid, why: &str) -> PartError {
        match self.end_session(id, state::FAILED, why).await {
            Ok(_) => PartError::SessionFailed(why.to_string()),
            Err(e) => transient(e),
        }
    }

    /// Ends an open session as failed or aborted; its parts' staging inodes
    /// are recorded as abandoned. Returns false if it was not open.
    pub async fn end_session(
        &self,
        id: Uuid,
        new_state: &'static str,
        why: &str,
    ) -> Result<bool, StoreError> {
        let (mut tx, session) = self.store.lock_session(id).await?;
        let Some(session) = session.filter(|s| s.state == state::OPEN) else {
            tx.rollback().await?;
            return Ok(false);
        };
        Store::end_in(&mut tx, &session, new_state, why).await?;
        Store::abandon_parts_in(&mut tx, id).await?;
        tx.commit().await?;
        crate::metrics::session_finished(new_state, session.created_at);
        Ok(true)
    }

    /// Completes a session if every part is committed: one transaction holds
    /// the session row `FOR UPDATE` from reading the parts until the state
    /// says completed. The MooseFS work is idempotent (safe to re-run after a
    /// crash before the commit).
    pub async fn complete(&self, id: Uuid) -> Result<Completion, CompletionError> {
        let (tx, session) = self.store.lock_session(id).await?;
        self.complete_locked(tx, session, None, KeepWrites::No)
            .await
    }

    /// The completion inside a transaction that holds the session row
    /// `FOR UPDATE` (`session` as read under that lock); it commits or rolls
    /// back that transaction (commits it also when the session does not
    /// finish if `keep` says the transaction holds other writes that must
    /// stand). `parts`: the session's parts if this transaction already read
    /// (or wrote) all of them.
    async fn complete_locked(
        &self,
        mut tx: crate::store::Tx,
        session: Option<Session>,
        parts: Option<Vec<crate::store::Part>>,
        keep: KeepWrites,
    ) -> Result<Completion, CompletionError> {
        let started = std::time::Instant::now();
        let created_at = session.as_ref().map(|s| s.created_at);
        let completion = match self.complete_in_tx(&mut tx, session, parts).await {
            Ok(c) => c,
            Err(e) => {
                self.completion_failed();
                return Err(e);
            }
        };
        match (completion.final_state(), created_at) {
            (Some(state), Some(created_at)) => {
                tx.commit().await?;
                if state == state::COMPLETED {
                    crate::metrics::metrics()
                        .completion_duration
                        .observe(started.elapsed().as_secs_f64());
                }
                crate::metrics::session_finished(state, created_at);
            }
            _ if keep == KeepWrites::Yes => tx.commit().await?,
            _ => tx.rollback().await?,
        }
        Ok(completion)
    }

    /// Counts a completion that failed (it is retried).
    fn completion_failed(&self) {
        crate::metrics::metrics().completion_errors.inc();
        // A cached directory may be gone: look paths up afresh next time.
        self.dirs.forget();
    }

    /// The completion's work inside a transaction that holds the session
    /// row `FOR UPDATE`; the caller commits it (`Completed`, `Failed`) or
    /// rolls it back (`NotReady`, `AlreadyFinished`: nothing was written).
    async fn complete_in_tx(
        &self,
        tx: &mut crate::store::Tx,
        session: Option<Session>,
        known_parts: Option<Vec<crate::store::Part>>,
    ) -> Result<Completion, CompletionError> {
        let Some(session) = session else {
            return Ok(Completion::AlreadyFinished);
        };
        if session.state != state::OPEN {
            return Ok(Completion::AlreadyFinished);
        }
        let id = session.id;
        let parts = match known_parts {
            Some(parts) if parts.len() == session.part_count as usize => parts,
            _ => Store::parts_in(tx, id).await?,
        };
        let mut inodes = Vec::with_capacity(parts.len());
        for p in &parts {
            match (p.committed_token, p.staging_inode) {
                (Some(_), Some(inode)) => inodes.push(inode as u32),
                _ => return Ok(Completion::NotReady),
            }
        }
        self.lock_destinations(tx, std::iter::once(&session))
            .await?;
        let finish = self.finish_file(&session, &parts, &inodes).await?;
        self.record_finish(tx, &session, parts.len(), finish).await
    }

    /// The MooseFS side of a completion, nothing recorded yet, bounded by
    /// the completion deadline (it runs under the session row lock): see
    /// [`Ingest::finish_file_unbounded`].
    async fn finish_file(
        &self,
        session: &Session,
        parts: &[crate::store::Part],
        inodes: &[u32],
    ) -> Result<Finish, CompletionError> {
        let deadline = self.cfg.completion_deadline;
        tokio::time::timeout(deadline, self.finish_file_unbounded(session, parts, inodes))
            .await
            .map_err(|_| CompletionError::Deadline(deadline))?
    }

    /// Every check that can fail runs before anything at the destination
    /// changes: the size and the whole-file CRC-32C (combined from the
    /// parts'), what is at the destination (a directory, a foreign file
    /// without `overwrite`), the MD5 (a single part's from its write, an
    /// assembly's read from the assembled staging file). Only then is the
    /// verified file renamed into place. Recognises a file a crashed run of
    /// this session already put in place (see [`Ingest::what_is_at_dest`]).
    async fn finish_file_unbounded(
        &self,
        session: &Session,
        parts: &[crate::store::Part],
        inodes: &[u32],
    ) -> Result<Finish, CompletionError> {
        let dest = self.cfg.dest_path(&session.dest)?;
        let (parent_path, dest_name) = dest.split_last().expect("dest is not the root");
        let parent = match self.dirs.ensure(&self.mfs, &parent_path).await {
            Ok(p) => p,
            Err(MfsError::NotDirectory(_)) => {
                let why = format!("a parent of {} is a file", session.dest);
                return Ok(Finish::Failed(why));
            }
            Err(e) => return Err(e.into()),
        };
        let crc = match verify_parts(session, parts) {
            Ok(crc) => crc,
            Err(CheckFailed(why)) => return Ok(Finish::Failed(why)),
        };
        let single_md5 = match parts {
            [one] => one.md5.clone(),
            _ => None,
        };
        // A single part's MD5 is known from its write: checked before
        // anything else (an assembly's after it is built, below).
        if let Some(why) = md5_mismatch(session, single_md5.as_deref()) {
            return Ok(Finish::Failed(why));
        }
        let replaced = match self
            .what_is_at_dest(session, inodes, crc, parent, dest_name)
            .await?
        {
            AtDest::Directory => {
                let why = format!("destination {} is a directory", session.dest);
                return Ok(Finish::Failed(why));
            }
            AtDest::ThisFile(final_inode) => {
                return Ok(Finish::Completed {
                    md5: single_md5,
                    crc,
                    final_inode,
                    replaced: false,
                })
            }
            AtDest::Foreign if !session.overwrite => {
                let why = format!(
                    "destination {} exists (set \"overwrite\": true to replace it)",
                    session.dest
                );
                return Ok(Finish::Failed(why));
            }
            AtDest::Foreign => true,
            AtDest::Nothing | AtDest::Ours => false,
        };
        let file = match self.verified_final_file(session, parts, inodes).await? {
            Ok(file) => file,
            Err(CheckFailed(why)) => return Ok(Finish::Failed(why)),
        };
        if parts.len() > 1 {
            // A single part's inode was recorded before the lock.
            self.store
                .record_placements(&[(session.id, file.inode)])
                .await?;
        }
        self.mfs
            .rename(file.dir, &file.name, parent, dest_name)
            .await?;
        Ok(Finish::Completed {
            md5: file.md5,
            crc,
            final_inode: file.inode,
            replaced,
        })
    }

    /// The verified file to put in place, still in the staging directory:
    /// a single part (its MD5 checked already), or the parts assembled and
    /// the assembly's MD5 read and checked if one was asked for (a
    /// mismatching assembly is removed). Its directory inode, name, inode
    /// and MD5, or why the session fails.
    async fn verified_final_file(
        &self,
        session: &Session,
        parts: &[crate::store::Part],
        inodes: &[u32],
    ) -> Result<Result<FinalFile, CheckFailed>, CompletionError> {
        if let [one] = parts {
            let (dir, name) = self.staging_location(&one.staging_path).await?;
            let md5 = one.md5.clone();
            return Ok(Ok(FinalFile {
                dir,
                name,
                inode: inodes[0],
                md5,
            }));
        }
        let (dir, name, inode) = self.assemble(session, parts, inodes).await?;
        let md5 = match &session.expected_md5 {
            Some(_) => Some(self.md5_of(inode).await?),
            None => None,
        };
        if let Some(why) = md5_mismatch(session, md5.as_deref()) {
            // Only the assembly, never anything at the destination.
            let _ = self.mfs.unlink(dir, &name).await;
            return Ok(Err(CheckFailed(why)));
        }
        Ok(Ok(FinalFile {
            dir,
            name,
            inode,
            md5,
        }))
    }

    /// What is at a session's destination. A file is this session's own
    /// only by inode identity: the committed single part itself
    /// ([`AtDest::ThisFile`]), or an inode a run of this session's
    /// completion recorded before renaming it there (a run that crashed
    /// before its commit) whose length and whole-file CRC-32C are the
    /// session's ([`AtDest::Ours`]; the read happens only in that case).
    /// Anything else, a file with the right length and CRC included, is
    /// [`AtDest::Foreign`]: a 32-bit CRC is forgeable.
    async fn what_is_at_dest(
        &self,
        session: &Session,
        inodes: &[u32],
        crc: u32,
        parent: u32,
        dest_name: &Name,
    ) -> Result<AtDest, CompletionError> {
        let (inode, attr) = match self.mfs.lookup(parent, dest_name).await {
            Ok(found) => found,
            Err(MfsError::NotFound(_)) => return Ok(AtDest::Nothing),
            Err(e) => return Err(e.into()),
        };
        if attr.is_dir() {
            return Ok(AtDest::Directory);
        }
        if attr.length != session.size as u64 {
            return Ok(AtDest::Foreign);
        }
        if inodes.len() == 1 && inode == inodes[0] {
            return Ok(AtDest::ThisFile(inode));
        }
        if self.store.placed(session.id, inode).await? && self.crc32c_of(inode).await? == crc {
            return Ok(AtDest::Ours);
        }
        Ok(AtDest::Foreign)
    }

    /// Records what [`Ingest::finish_file`] decided, in the transaction
    /// holding the session row.
    async fn record_finish(
        &self,
        tx: &mut crate::store::Tx,
        session: &Session,
        part_count: usize,
        finish: Finish,
    ) -> Result<Completion, CompletionError> {
        match finish {
            Finish::Completed {
                md5,
                crc,
                final_inode,
                replaced,
            } => {
                let done = crate::store::SessionDone {
                    session,
                    md5: md5.as_deref(),
                    crc32c: crc,
                    final_inode,
                    replaced,
                };
                Store::complete_in(tx, done).await?;
                // A single part IS the final file; the parts of an assembly are garbage.
                if part_count > 1 {
                    Store::abandon_parts_in(tx, session.id).await?;
                }
                Ok(Completion::Completed { final_inode })
            }
            Finish::Failed(why) => self.finish_failed(tx, session, why).await,
        }
    }

    async fn finish_failed(
        &self,
        tx: &mut crate::store::Tx,
        session: &Session,
        why: String,
    ) -> Result<Completion, CompletionError> {
        Store::end_in(tx, session, state::FAILED, &why).await?;
        Store::abandon_parts_in(tx, session.id).await?;
        Ok(Completion::Failed(why))
    }

    /// The (cached) inode of the staging directory for `goal`, made with that
    /// goal if missing.
    async fn staging_dir_inode(&self, goal: u8) -> Result<u32, MfsError> {
        self.dirs
            .ensure_with_goal(&self.mfs, &self.cfg.staging_dir(goal), Some(goal))
            .await
    }

    /// The directory inode and name of a recorded staging path.
    async fn staging_location(
        &self,
        path: &Option<String>,
    ) -> Result<(u32, Name), CompletionError> {
        let path = path.as_deref().ok_or_else(|| {
            CompletionError::Internal("committed part without a staging path".into())
        })?;
        let path = MfsPath::parse(path)?;
        let (dir, name) = path
            .split_last()
            .ok_or_else(|| CompletionError::Internal("empty staging path".into()))?;
        Ok((self.dirs.ensure(&self.mfs, &dir).await?, name.clone()))
    }

    /// Builds the final file in a temporary file of the session's staging
    /// directory (chunk references only, APPEND_SLICE, when every part but
    /// the last is a whole number of chunks, a streamed copy otherwise) and
    /// checks its length; the caller verifies it further and renames it into
    /// place. Returns its directory inode, name and inode.
    async fn assemble(
        &self,
        session: &Session,
        parts: &[crate::store::Part],
        inodes: &[u32],
    ) -> Result<(u32, Name, u32), CompletionError> {
        let goal = session.goal as u8;
        let staging_dir = self.staging_dir_inode(goal).await?;
        let assembly = self.cfg.assembly_file(goal, session.id);
        let name = assembly
            .file_name()
            .expect("assembly file has a name")
            .clone();
        match self.mfs.unlink(staging_dir, &name).await {
            Ok(()) | Err(MfsError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let file = self.mfs.create(staging_dir, &name, 0o644).await?;
        let zero_copy = parts[..parts.len() - 1]
            .iter()
            .all(|p| (p.size as u64).is_multiple_of(CHUNK_SIZE));
        if zero_copy {
            for inode in inodes {
                self.mfs.append_slice(file.inode, *inode).await?;
            }
        } else {
            let opts = WriteOptions {
                required_copies: Some(session.goal as u8),
                compute_md5: false,
                ..self.mfs.config().write.clone()
            };
            for (p, inode) in parts.iter().zip(inodes) {
                let (mut sink, source) = tokio::io::duplex(1 << 20);
                let mfs = self.mfs.clone();
                let inode = *inode;
                let reader = tokio::spawn(async move {
                    mfs.read_to(inode, 0, None, &mut sink, ReplicaChoice::Any)
                        .await
                });
                self.mfs
                    .write_stream(file.inode, p.part_offset as u64, source, &opts)
                    .await?;
                reader
                    .await
                    .map_err(|e| CompletionError::Internal(e.to_string()))??;
            }
        }
        let length = self.mfs.getattr(file.inode).await?.length;
        if length != session.size as u64 {
            return Err(CompletionError::Internal(format!(
                "assembled file has {length} bytes, expected {}",
                session.size
            )));
        }
        Ok((staging_dir, name, file.inode))
    }

    /// Streams a file through `consume` (for whole-file digests).
    async fn digest_file(
        &self,
        inode: u32,
        consume: impl FnMut(&[u8]) + Unpin,
    ) -> Result<(), MfsError> {
        let mut sink = DigestSink(consume);
        self.mfs
            .read_to(inode, 0, None, &mut sink, ReplicaChoice::Any)
            .await?;
        Ok(())
    }

    async fn crc32c_of(&self, inode: u32) -> Result<u32, MfsError> {
        let mut crc = 0u32;
        self.digest_file(inode, |b| crc = crc32c::crc32c_append(crc, b))
            .await?;
        Ok(crc)
    }

    async fn md5_of(&self, inode: u32) -> Result<String, MfsError> {
        let mut h = md5::Md5::new();
        self.digest_file(inode, |b| h.update(b)).await?;
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// An `AsyncWrite` that hands every buffer to a function.
struct DigestSink<F>(F);

impl<F: FnMut(&[u8]) + Unpin> tokio::io::AsyncWrite for DigestSink<F> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        (self.0)(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Why a completion could not run (it is retried later; nothing was committed).
#[derive(Debug, thiserror::Error)]
pub enum CompletionError {
    #[error("MooseFS: {0}")]
    Mfs(#[from] MfsError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
    #[error("the completion's MooseFS work did not finish within its deadline of {0:?}")]
    Deadline(Duration),
}

impl From<sqlx::Error> for CompletionError {
    fn from(e: sqlx::Error) -> Self {
        CompletionError::Store(StoreError::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn write_budget_lets_small_parts_share_and_big_parts_take_turns() {
        let budget = WriteBudget::mib(128);
        let big_a = budget.reserve(64 << 20).await.expect("bounded");
        let big_b = budget.reserve(64 << 20).await.expect("bounded");
        // A third big part waits for one of the first two.
        let third = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(64 << 20).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "a third 64 MiB part must wait");
        drop(big_a);
        let big_c = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("released budget is handed on")
            .unwrap();
        drop((big_b, big_c));
        // Small parts count one MiB each; a part over the limit takes all of it.
        let smalls: Vec<_> =
            futures::future::join_all((0..128).map(|_| budget.reserve(65536))).await;
        assert!(smalls.iter().all(Option::is_some));
        drop(smalls);
        let huge = tokio::time::timeout(Duration::from_secs(5), budget.reserve(1 << 40))
            .await
            .expect("a part over the limit still runs");
        assert!(huge.is_some());
        assert!(
            WriteBudget::default().reserve(1 << 40).await.is_none(),
            "unbounded"
        );
    }
}
