//! How the client reports what it does: the [`Observer`] hooks for what
//! happens on the wire (request latencies, write statuses, chain lengths,
//! chunkserver errors, reconnects), so a metrics layer can count them
//! without this crate depending on it, and the [`ClientStats`] counters.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::Status;

/// Receives client events. Every method has a no-op default.
pub trait Observer: Send + Sync {
    /// A master request finished: `outcome` is `ok`, `status` (a MooseFS
    /// error status), `timeout` or `disconnected`.
    fn master_request(&self, _op: &'static str, _seconds: f64, _outcome: &'static str) {}
    /// A `CSTOCL_WRITE_STATUS` arrived (write id 0 included).
    fn write_status(&self, _status: Status) {}
    /// A chunk write session started along a chain of this many servers.
    fn chain_length(&self, _servers: usize) {}
    /// A chunkserver link failed (connect, I/O, bad or missing status).
    fn chunkserver_error(&self, _server: SocketAddrV4) {}
    /// The master link was re-established.
    fn master_reconnect(&self) {}
    /// Bytes acknowledged by every replica of a chain.
    fn bytes_written(&self, _bytes: u64) {}
    /// A chunk write was retried with a fresh lock and chain.
    fn chunk_write_retry(&self) {}
    /// A replica's CRCs did not match what was written.
    fn replica_mismatch(&self) {}
}

/// Reports nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// Counters of what the client did; read them for metrics.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub bytes_written: AtomicU64,
    pub chunk_writes: AtomicU64,
    pub chunk_write_retries: AtomicU64,
    pub chunks_verified: AtomicU64,
    pub replica_mismatches: AtomicU64,
    pub bytes_read: AtomicU64,
}

impl ClientStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
