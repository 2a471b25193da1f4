//! The edge of the pipeline: an ingest request checked (request id,
//! destination, fields, source, MooseFS) and its session created or found.

use uuid::Uuid;

use super::{Ingest, MAX_SIZE, SYSTEM_DIR};
use crate::limits::{self, DestLimitError, PartLimitError, RequestLimits};
use crate::moosefs::{MfsError, MfsPath};
use crate::queue::IngestRequest;
use crate::source::{Source, SourceError};
use crate::store::{NewSession, Session, StoreError};

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
}
