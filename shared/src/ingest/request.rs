//! The edge of the pipeline: an ingest request checked (request id,
//! destination, fields, source, MooseFS) and its session created or found.

use futures::StreamExt;
use uuid::Uuid;

use super::{Ingest, MAX_SIZE, SYSTEM_DIR};
use crate::domain::{Dest, Goal, PartSize};
use crate::limits::{self, DestLimitError, PartLimitError, RequestLimits};
use crate::queue::IngestRequest;
use crate::source::{Source, SourceError};
use crate::store::{NewSession, Session, StoreError};
use moosefs::{MfsError, MfsPath};

/// Requests of one batch checked against their sources and MooseFS at once.
const SUBMIT_CHECKS_AT_ONCE: usize = 16;

/// The request id and destination of a request (checked before anything
/// else): the destination's length, characters and depth against the
/// limits, then its names.
fn parse_request_head(req: &IngestRequest, limits: &RequestLimits) -> Result<Dest, RequestError> {
    let id = req.request_id.trim();
    if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()) {
        return Err(RequestError::BadRequestId);
    }
    limits::check_dest(&req.dest, limits)?;
    Dest::parse(&req.dest).map_err(|e| RequestError::BadDest(e.to_string()))
}

/// Whether a repeated request asks for what its session already is.
fn same_request(existing: &Session, req: &IngestRequest, dest: &Dest) -> bool {
    existing.dest == dest.to_stored()
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

/// A request seen for the first time whose fields passed every check that
/// needs neither the source nor MooseFS: what [`Ingest::check_new_request`]
/// then checks against them.
#[derive(Debug, Clone)]
pub struct ValidRequest<'a> {
    pub request: &'a IngestRequest,
    pub dest: Dest,
    pub goal: Goal,
    /// The part size asked for, within the limits.
    pub part_size: Option<u64>,
    /// The declared size, within [`MAX_SIZE`].
    pub declared_size: Option<u64>,
    /// The expected MD5, lower case.
    pub md5: Option<String>,
}

impl<'a> ValidRequest<'a> {
    /// The field checks, in the order their errors are reported: the
    /// destination's place, the MD5's form, the goal, the part size, the
    /// declared size.
    pub fn parse(
        request: &'a IngestRequest,
        dest: Dest,
        default_goal: u8,
        limits: &RequestLimits,
    ) -> Result<ValidRequest<'a>, RequestError> {
        if dest.path().is_root() {
            return Err(RequestError::BadDest("dest is the root directory".into()));
        }
        if dest.path().components()[0].as_str() == SYSTEM_DIR {
            return Err(RequestError::BadDest(format!("{SYSTEM_DIR} is reserved")));
        }
        if let Some(md5) = &request.md5 {
            if md5.len() != 32 || !md5.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(RequestError::BadMd5);
            }
        }
        let goal = Goal::new(request.goal.unwrap_or(default_goal)).ok_or(RequestError::BadGoal)?;
        if let Some(asked) = request.part_size {
            limits::check_part_size(asked, limits)?;
        }
        if let Some(declared) = request.size.filter(|&s| s > MAX_SIZE) {
            return Err(RequestError::TooLarge {
                field: "size",
                bytes: declared,
            });
        }
        Ok(ValidRequest {
            request,
            dest,
            goal,
            part_size: request.part_size,
            declared_size: request.size,
            md5: request.md5.as_ref().map(|m| m.to_ascii_lowercase()),
        })
    }
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
    #[tracing::instrument(name = "submit", level = "info", skip_all, fields(requests = reqs.len()))]
    pub async fn submit_batch(
        &self,
        reqs: &[IngestRequest],
    ) -> Vec<Result<(Session, bool), RequestError>> {
        let started = std::time::Instant::now();
        let results = self.submit_batch_unmeasured(reqs).await;
        let m = crate::metrics::metrics();
        let per_request = started.elapsed().div_f64(reqs.len().max(1) as f64);
        for result in &results {
            let outcome = match result {
                Ok((_, true)) => crate::metrics::RequestOutcome::Created,
                Ok((_, false)) => crate::metrics::RequestOutcome::Duplicate,
                Err(e) if e.is_client_error() => crate::metrics::RequestOutcome::Rejected,
                Err(_) => crate::metrics::RequestOutcome::Error,
            };
            m.request(outcome, per_request);
        }
        results
    }

    async fn submit_batch_unmeasured(
        &self,
        reqs: &[IngestRequest],
    ) -> Vec<Result<(Session, bool), RequestError>> {
        // Request ids and destinations first: a repeated request is answered
        // from its session before anything else is looked at.
        let mut batch = Batch::new(reqs.len());
        let dests: Vec<Option<Dest>> = reqs
            .iter()
            .enumerate()
            .map(|(i, req)| batch.settle_err(i, parse_request_head(req, &self.cfg.limits)))
            .collect();
        if let Err(e) = self.answer_repeats(&mut batch, reqs, &dests).await {
            return e
                .for_each(reqs.len())
                .into_iter()
                .map(|e| Err(e.into()))
                .collect();
        }
        // The rest against their sources and MooseFS, a few at a time.
        let checks: Vec<(usize, Dest)> = dests
            .into_iter()
            .enumerate()
            .filter(|(i, _)| batch.is_open(*i))
            .filter_map(|(i, dest)| Some((i, dest?)))
            .collect();
        let checked: Vec<(usize, Result<NewSession, RequestError>)> = futures::stream::iter(checks)
            .map(|(i, dest)| async move {
                let valid =
                    ValidRequest::parse(&reqs[i], dest, self.cfg.default_goal, &self.cfg.limits);
                let new = match valid {
                    Ok(valid) => self.check_new_request(valid).await,
                    Err(e) => Err(e),
                };
                (i, new)
            })
            .buffered(SUBMIT_CHECKS_AT_ONCE)
            .collect()
            .await;
        let mut new_sessions = Vec::new();
        for (i, checked) in checked {
            if let Some(new) = batch.settle_err(i, checked) {
                new_sessions.push((i, new));
            }
        }
        self.create_new(&mut batch, new_sessions).await;
        batch.into_results()
    }

    /// Answers the requests whose id was seen before from their sessions:
    /// the session if the request is the same, a conflict if not.
    async fn answer_repeats(
        &self,
        batch: &mut Batch,
        reqs: &[IngestRequest],
        dests: &[Option<Dest>],
    ) -> Result<(), StoreError> {
        // Only ids that passed their checks reach PostgreSQL (a NUL byte in
        // one would fail the whole query, and every request with it).
        let ids: Vec<&str> = reqs
            .iter()
            .zip(dests)
            .filter(|(_, dest)| dest.is_some())
            .map(|(r, _)| r.request_id.as_str())
            .collect();
        let existing = self.store.sessions_by_request(&ids).await?;
        for (i, (req, dest)) in reqs.iter().zip(dests).enumerate() {
            if let (true, Some(dest), Some(session)) =
                (batch.is_open(i), dest, existing.get(&req.request_id))
            {
                batch.settle(
                    i,
                    if same_request(session, req, dest) {
                        Ok((session.clone(), false))
                    } else {
                        Err(RequestError::Conflict(session.id))
                    },
                );
            }
        }
        Ok(())
    }

    /// Creates the checked new sessions in ONE transaction. The same request
    /// id may have come twice (in this batch, or from another coordinator
    /// meanwhile): the second gets the first's session, or a conflict.
    async fn create_new(&self, batch: &mut Batch, new_sessions: Vec<(usize, NewSession)>) {
        if new_sessions.is_empty() {
            return;
        }
        let (slots, news): (Vec<usize>, Vec<NewSession>) = new_sessions.into_iter().unzip();
        match self.store.create_sessions(&news).await {
            Ok(created) => {
                for ((i, new), (session, was_created)) in slots.into_iter().zip(&news).zip(created)
                {
                    let same = session.dest == new.dest.to_stored() && session.source == new.source;
                    batch.settle(
                        i,
                        if was_created || same {
                            Ok((session, was_created))
                        } else {
                            Err(RequestError::Conflict(session.id))
                        },
                    );
                }
            }
            Err(e) => {
                for (i, e) in slots.iter().zip(e.for_each(slots.len())) {
                    batch.settle(*i, Err(e.into()));
                }
            }
        }
    }

    /// The checks of a request seen for the first time that need its source
    /// (its size) and MooseFS (the chunkservers for its goal, and that the
    /// destination does not exist unless it may be overwritten).
    #[tracing::instrument(name = "request", level = "info", skip_all, fields(request_id = %valid.request.request_id))]
    async fn check_new_request(&self, valid: ValidRequest<'_>) -> Result<NewSession, RequestError> {
        let req = valid.request;
        let source = Source::parse(&req.source, &self.cfg.sources)?;
        let version = source.probe(&self.cfg.sources).await?;
        let actual = version.size;
        if let Some(declared) = valid.declared_size {
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
        let part_size = PartSize::allowed(limits::choose_part_size(
            actual,
            valid.part_size,
            self.cfg.default_part_size,
            &self.cfg.limits,
        )?);
        let servers = self.mfs.chunkserver_count().await?.known;
        if u32::from(valid.goal.copies()) > servers {
            return Err(RequestError::GoalAboveChunkservers {
                goal: valid.goal.copies(),
                servers,
            });
        }
        let full_dest = valid.dest.under(&self.cfg.root);
        self.check_dest(&full_dest, &req.dest, req.overwrite)
            .await?;
        Ok(NewSession {
            request_id: req.request_id.clone(),
            source: req.source.clone(),
            dest: valid.dest,
            size: actual,
            part_size,
            goal: valid.goal,
            overwrite: req.overwrite,
            expected_md5: valid.md5,
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
    ) -> Result<Option<moosefs::Attr>, RequestError> {
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
}

/// The results of a batch's requests as they are settled, one slot each.
struct Batch {
    results: Vec<Option<Result<(Session, bool), RequestError>>>,
}

impl Batch {
    fn new(len: usize) -> Batch {
        Batch {
            results: (0..len).map(|_| None).collect(),
        }
    }

    /// Whether request `i` still waits for its result.
    fn is_open(&self, i: usize) -> bool {
        self.results[i].is_none()
    }

    fn settle(&mut self, i: usize, result: Result<(Session, bool), RequestError>) {
        self.results[i] = Some(result);
    }

    /// Settles request `i` with the error of `step`, if it failed; its value otherwise.
    fn settle_err<T>(&mut self, i: usize, step: Result<T, RequestError>) -> Option<T> {
        step.map_err(|e| self.settle(i, Err(e))).ok()
    }

    fn into_results(self) -> Vec<Result<(Session, bool), RequestError>> {
        self.results
            .into_iter()
            .map(|r| r.expect("every request has a result"))
            .collect()
    }
}
