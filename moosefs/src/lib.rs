//! A native MooseFS 3.0 client: talks to the master (metadata, chunk locks)
//! and to the chunkservers (data) directly, over their own TCP protocols,
//! without a FUSE mount or libmfsio. Tested against MooseFS 3.0.117.
//!
//! # What it guarantees
//!
//! - **A write returns only when every replica holds every byte.** Each
//!   chunk is streamed along the master's replica chain; `WRITE_FINISH` is
//!   sent only after the chain's set-up status (write id 0) and one OK status
//!   per data packet, matched in order. Anything else abandons the connection
//!   without `WRITE_FINISH` and the chunk is written again under a fresh
//!   lock and chain ([`WriteOptions::chunk_retry`]); a short or partial write
//!   is never reported as success.
//! - **Replicas are verified.** With [`WriteOptions::verify`] (the default)
//!   every replica's CRC table is read back after the lock is released and
//!   compared with the CRC-32 of every block sent: a difference is
//!   [`MfsError::ReplicaMismatch`]. [`MfsClient::replica_report`] does the
//!   same check for any file, as `mfsfileinfo -c` does.
//! - **Bounded everything.** Every answer from the network is decoded by a
//!   pure function that bounds each length before using it ([`decode`]):
//!   a broken or hostile peer gets a [`codec::ProtocolError`], never a panic
//!   or an unbounded allocation; every wait has a timeout; memory per write
//!   is a window of blocks per chunk in flight.
//! - **One master session, resumed.** Requests share one connection,
//!   matched by message id; a dropped link is re-established and the session
//!   resumed, and requests that may have been executed fail with
//!   [`MfsError::Disconnected`] instead of being repeated blindly.
//!
//! # Limits
//!
//! - MooseFS 3.0 only (the 3.0.117 wire protocol; no 4.x features); one
//!   master (a redirect to another leader is refused).
//! - Goals are plain copy counts 1..=9; named storage classes are refused.
//! - No ACLs, extended attributes, locks, quotas or client-side caching;
//!   directories are listed in one answer.
//! - [`MfsClient::append_slice`] concatenates by reference only at a chunk
//!   boundary (the destination's length must be a multiple of 64 MiB).
//!
//! # Example
//!
//! Connect, write a file, check its replicas, read it back:
//!
//! ```no_run
//! use moosefs::{ClientConfig, MfsClient, MfsPath, Name, WriteOptions};
//!
//! # async fn example() -> Result<(), moosefs::MfsError> {
//! let client = MfsClient::connect(ClientConfig::new("10.213.47.10:9421")).await?;
//!
//! let dir = client.mkdir_all(&MfsPath::parse("/example")?).await?;
//! let file = client.create(dir, &Name::parse("hello.txt")?, 0o644).await?;
//!
//! // Returns once every replica acknowledged every block and (verify is on
//! // by default) every replica's CRCs matched what was sent.
//! let data: &[u8] = b"hello, MooseFS";
//! let outcome = client
//!     .write_new_file(&file, data, &WriteOptions::default())
//!     .await?;
//! assert_eq!(outcome.length, data.len() as u64);
//!
//! // Ask each chunkserver again: every copy holds the same blocks.
//! for chunk in client.replica_report(file.inode).await? {
//!     assert!(chunk.copies_identical());
//!     println!("chunk {}: {} valid copies", chunk.index, chunk.valid_copies());
//! }
//!
//! // Read it back (from any replica, falling over to the others).
//! assert_eq!(client.read_all(file.inode).await?, data);
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! `codec` frames packets, `proto` holds the wire constants and records,
//! `decode` turns every answer into values; `config` is what a client is
//! told; `master` keeps the master session (`handshake` registers, `link`
//! is the connection actor); `chunkserver` speaks to chunkservers (a link
//! and its pool, the write chain); `client` offers the namespace operations,
//! `write`, `verify` and `read` stream file data, `report` compares
//! replicas; `path` validates names, `admin` asks what the master answers
//! only unregistered connections (`cservers`: the chunkserver list; the
//! open files of a session), `retry` paces every retry, `observe` is how the client reports
//! (an [`Observer`] for metrics, [`ClientStats`] counters).
//!
//! # Features
//!
//! - `test-hooks`: what exists only for tests (drop the master link, flush
//!   the open-inode list, drive a write chain directly and log its events).
//! - `test-support`: the `moosefs::testing` helpers for tests against a real
//!   cluster found through `MFS_MASTER` / `MFS_MOUNT`.

pub mod admin;
#[cfg(feature = "test-hooks")]
pub mod chunkserver;
#[cfg(not(feature = "test-hooks"))]
mod chunkserver;
pub mod client;
pub mod codec;
pub mod config;
pub mod cservers;
pub mod decode;
pub mod error;
pub mod master;
pub mod observe;
pub mod path;
pub mod proto;
pub mod read;
pub mod report;
pub mod retry;
mod verify;
pub mod write;

pub use chunkserver::ReplicaCrcTable;
pub use client::{CreatedFile, DirEntry, MfsClient, OpenedFile, StatFs};
pub use config::{ChunkserverTimeouts, ClientConfig, MasterConfig, WriteOptions};
pub use cservers::ChunkserverCount;
pub use error::MfsError;
pub use master::SessionInfo;
pub use observe::{ClientStats, NoObserver, Observer};
pub use path::{MfsPath, Name};
pub use proto::{Attr, CopyState, NodeType, Status, BLOCK_SIZE, CHUNK_SIZE};
pub use read::ReplicaChoice;
pub use report::{ChunkReport, CopyReport};
pub use write::WriteOutcome;

#[cfg(feature = "test-support")]
pub mod testing;
