//! A native MooseFS 3.0 client: talks to the master (metadata, chunk
//! locks) and to the chunkservers (data) directly, without a FUSE mount.
//!
//! Layout: `codec` frames packets, `proto` holds the wire constants and
//! records, `master` keeps the master session, `chunkserver` speaks to
//! chunkservers (write chains, reads, CRC tables), `client` offers the
//! namespace operations, `write` and `read` stream file data, `path`
//! validates names, `cservers` asks for the chunkserver list, `decode` turns
//! every answer into values (bounded), `retry` paces every retry.

pub mod chunkserver;
pub mod client;
pub mod codec;
pub mod cservers;
pub mod decode;
pub mod error;
pub mod master;
pub mod observe;
pub mod path;
pub mod proto;
pub mod read;
pub mod retry;
pub mod write;

pub use chunkserver::{ChunkserverTimeouts, ReplicaCrcTable};
pub use client::{
    ChunkReport, ClientConfig, ClientStats, CopyReport, CreatedFile, DirEntry, MfsClient, StatFs,
};
pub use cservers::ChunkserverCount;
pub use error::MfsError;
pub use master::{MasterConfig, SessionInfo};
pub use observe::{NoObserver, Observer};
pub use path::{MfsPath, Name};
pub use proto::{Attr, CopyState, NodeType, Status, BLOCK_SIZE, CHUNK_SIZE};
pub use read::ReplicaChoice;
pub use write::{WriteOptions, WriteOutcome};

#[cfg(feature = "test-support")]
pub mod testing;
