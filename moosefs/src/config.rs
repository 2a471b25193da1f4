//! What a client is told: where the master is and how to talk to it
//! ([`MasterConfig`]), chunkserver timing ([`ChunkserverTimeouts`]), the
//! identity sent with namespace requests, and how writes behave
//! ([`WriteOptions`]). Plain values with their defaults, no I/O.

use std::time::Duration;

use crate::retry::RetryPolicy;

/// Everything the client needs to know.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub master: MasterConfig,
    pub chunkservers: ChunkserverTimeouts,
    /// Identity sent with namespace requests.
    pub uid: u32,
    pub gid: u32,
    /// Defaults for writes.
    pub write: WriteOptions,
}

impl ClientConfig {
    pub fn new(master_addr: impl Into<String>) -> Self {
        ClientConfig {
            master: MasterConfig::new(master_addr),
            chunkservers: ChunkserverTimeouts::default(),
            uid: 0,
            gid: 0,
            write: WriteOptions::default(),
        }
    }
}

/// How a write behaves.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Compare every replica's CRC table with what was sent (costs ~4 KiB per replica per chunk).
    pub verify: bool,
    /// Copies a write chain must have; `None` = the file's goal.
    pub required_copies: Option<u8>,
    /// Attempts of one chunk write (fresh lock and chain each time).
    pub chunk_retry: RetryPolicy,
    /// Chunks of one stream written at the same time.
    pub parallel_chunks: usize,
    /// Compute the MD5 of the stream (CRC-32C is always computed).
    pub compute_md5: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            verify: true,
            required_copies: None,
            chunk_retry: RetryPolicy::new(
                Duration::from_millis(100),
                Duration::from_secs(5),
                10,
                Duration::from_secs(120),
            ),
            parallel_chunks: 2,
            compute_md5: true,
        }
    }
}

/// How to reach and talk to the master.
#[derive(Clone)]
pub struct MasterConfig {
    /// `host:port` of the master's client port (9421).
    pub addr: String,
    /// Exported subfolder to use as the root (`/` = whole tree).
    pub subfolder: String,
    /// Export password, if the export requires one.
    pub password: Option<String>,
    /// Free-form description shown by `mfscli -SMS`.
    pub client_info: String,
    pub connect_timeout: Duration,
    /// Bound on one request's round trip. WRITE_CHUNK may be parked by the
    /// master for 30 s behind a lock, so keep this above 30 s.
    pub request_timeout: Duration,
    /// Send a NOP when nothing was sent for this long (the master drops a
    /// connection that is silent for 10 s).
    pub keepalive_after: Duration,
    /// The master sends a NOP every second; this much silence means the link is dead.
    pub read_idle_timeout: Duration,
    /// How long the supervisor keeps trying to reconnect before requests fail
    /// with [`crate::MfsError::MasterUnreachable`] (it keeps trying afterwards).
    pub reconnect_window: Duration,
    /// How often the list of inodes still open is sent (it releases the rest).
    pub sustained_interval: Duration,
}

impl MasterConfig {
    pub fn new(addr: impl Into<String>) -> Self {
        MasterConfig {
            addr: addr.into(),
            subfolder: "/".into(),
            password: None,
            client_info: format!("mfs-ingest {}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            keepalive_after: Duration::from_secs(2),
            read_idle_timeout: Duration::from_secs(10),
            reconnect_window: Duration::from_secs(30),
            sustained_interval: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for MasterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterConfig")
            .field("addr", &self.addr)
            .field("subfolder", &self.subfolder)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Timing of chunkserver links.
#[derive(Debug, Clone)]
pub struct ChunkserverTimeouts {
    pub connect: Duration,
    /// Longest wait for the next expected status while data is unacknowledged.
    pub status: Duration,
    /// Send a NOP when the link was idle this long (the chain gives up after 5 s).
    pub nop_every: Duration,
    /// Longest wait for one read packet or one small answer.
    pub read: Duration,
    /// Unacknowledged `WRITE_DATA` packets allowed in flight.
    pub window: usize,
}

impl Default for ChunkserverTimeouts {
    fn default() -> Self {
        ChunkserverTimeouts {
            connect: Duration::from_secs(3),
            status: Duration::from_secs(20),
            nop_every: Duration::from_secs(1),
            read: Duration::from_secs(20),
            window: 64,
        }
    }
}
