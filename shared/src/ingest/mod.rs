//! The pipeline core, in rooms by step. [`Ingest`] is the thin entry point
//! both binaries hold; each step lives in its own module:
//!
//! - `request`: a request checked at the edge and its session created (submit);
//! - `attempt`: one attempt of one part (fencing token, fresh staging inode, write);
//! - `commit`: the part's commit, alone or together with its session's completion;
//! - `complete`: a session completed (or failed) in one locked transaction;
//! - `assemble`: the final file built from the parts, and whole-file digests;
//! - `staging`: where staging files live, the directory cache, the write budget.
//!
//! Garbage collection of what the steps abandon is [`crate::gc`].

use std::sync::Arc;
use std::time::Duration;

use crate::limits::RequestLimits;
use crate::source::SourceConfig;
use crate::store::Store;
use moosefs::{MfsClient, MfsPath};

mod assemble;
mod attempt;
mod commit;
mod complete;
mod request;
mod staging;

/// Re-exported from the store, which sizes its transactions' idle timeout by it.
pub use crate::store::DEFAULT_COMPLETION_DEADLINE_SECS;
#[cfg(feature = "test-hooks")]
pub use attempt::AttemptHooks;
pub use attempt::PartError;
pub use complete::{Completion, CompletionError};
pub use request::{RequestError, ValidRequest};
pub use staging::{DirCache, WriteBudget};

/// Name of the system's own directory under the MooseFS root.
pub const SYSTEM_DIR: &str = ".mfs-ingest";

/// Largest accepted file.
pub const MAX_SIZE: u64 = 1 << 40;

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
