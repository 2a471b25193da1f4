//! The one error type of the MooseFS client.

use std::net::SocketAddr;
use std::time::Duration;

use crate::codec::ProtocolError;
use crate::proto::Status;

/// Everything a MooseFS operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MfsError {
    #[error("MooseFS master {addr} unreachable: {error}")]
    MasterUnreachable { addr: String, error: std::io::Error },
    #[error("MooseFS master refused the session: {0}")]
    SessionRefused(String),
    #[error("connection to the MooseFS master was lost")]
    Disconnected,
    #[error("MooseFS client is closed")]
    Closed,
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { after: Duration, what: String },
    #[error("{op}: {status}")]
    Status { op: &'static str, status: Status },
    #[error("chunkserver {server}: {detail}")]
    Chunkserver { server: SocketAddr, detail: String },
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("is a directory: {0}")]
    IsDirectory(String),
    #[error("not a directory: {0}")]
    NotDirectory(String),
    #[error("not a regular file: {0}")]
    NotAFile(String),
    #[error("directory not empty: {0}")]
    DirectoryNotEmpty(String),
    #[error("reading the data source failed: {0}")]
    Source(std::io::Error),
    #[error("writing the read data to its sink failed: {0}")]
    Sink(std::io::Error),
    #[error(
        "write of chunk {chunk_index} of inode {inode} failed after {attempts} attempts: {last_error}"
    )]
    WriteFailed {
        inode: u32,
        chunk_index: u32,
        attempts: u32,
        last_error: String,
    },
    #[error(
        "chunk {chunk_id:016X} (inode {inode}, index {chunk_index}): replicas do not match what was written: {detail}"
    )]
    ReplicaMismatch {
        inode: u32,
        chunk_index: u32,
        chunk_id: u64,
        detail: String,
    },
    #[error("read of inode {inode} failed after {attempts} attempts: {last_error}")]
    ReadFailed {
        inode: u32,
        attempts: u32,
        last_error: String,
    },
}

impl MfsError {
    pub(crate) fn status(op: &'static str, status: Status) -> Self {
        MfsError::Status { op, status }
    }

    /// The MooseFS status behind this error, if it is one.
    pub fn mfs_status(&self) -> Option<Status> {
        match self {
            MfsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the failure is about the link or a server's temporary state,
    /// so the same operation may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        match self {
            MfsError::Disconnected
            | MfsError::Timeout { .. }
            | MfsError::Chunkserver { .. }
            | MfsError::MasterUnreachable { .. } => true,
            MfsError::Status { status, .. } => status.is_transient(),
            _ => false,
        }
    }
}

pub type Result<T, E = MfsError> = std::result::Result<T, E>;
