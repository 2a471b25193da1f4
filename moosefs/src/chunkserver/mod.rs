//! Talking to chunkservers: a [`CsLink`] to one server (block reads with CRC
//! checks, the replica CRC table) pooled in a [`CsPool`], and a
//! [`WriteSession`] streaming one chunk's blocks along a replica chain, with
//! `WRITE_FINISH` only after every replica's status.
//!
//! Public only with the `test-hooks` feature (tests drive a chain directly);
//! the client uses it through `MfsClient`'s reads, writes and reports.

mod chain;
mod link;

pub use chain::{AckedBlock, RawBlock, WriteSession, WriteTarget, WRITE_DATA_HEADER};
pub use link::{CsLink, CsPool, ReplicaCrcTable};

#[cfg(feature = "test-hooks")]
pub use crate::config::ChunkserverTimeouts;
#[cfg(feature = "test-hooks")]
pub use chain::{PendingBlock, SessionEvent};
