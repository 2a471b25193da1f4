//! The message schemas (serde_json) and the names of queues, exchanges
//! and headers they travel under.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Incoming ingest requests (single or batch).
pub const REQUESTS_QUEUE: &str = "ingest.requests";
/// One message per part to write.
pub const PARTS_QUEUE: &str = "ingest.parts";
/// Part jobs waiting to be retried; they dead-letter back to [`PARTS_QUEUE`].
pub const PARTS_RETRY_QUEUE: &str = "ingest.parts.delay";
/// Fanout exchange of completion and failure events; bind a queue of your
/// own to receive every event. Each message is an [`EventBatch`]: one or
/// more events, in the order they were recorded.
pub const EVENTS_EXCHANGE: &str = "ingest.events";
/// Events one message on [`EVENTS_EXCHANGE`] carries at most.
pub const EVENTS_PER_MESSAGE: usize = 256;
/// Durable queue bound to [`EVENTS_EXCHANGE`] for the producers' consumer.
pub const EVENTS_QUEUE: &str = "ingest.events";
/// Messages that cannot be processed, with the reason in the `x-reason` header.
pub const DEAD_QUEUE: &str = "ingest.dead";
/// Longest wait in [`PARTS_RETRY_QUEUE`]; each message carries its own,
/// shorter delay (`expiration`, from the retry module's backoff).
pub const RETRY_DELAY_CAP: Duration = Duration::from_secs(300);
/// Deliveries of one part job before it is dead-lettered by the broker.
pub const DELIVERY_LIMIT: i64 = 20;
/// Header carrying how many times a job was retried by a worker.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-reason";
/// Header a quorum queue sets on a redelivered message: how many earlier
/// deliveries were returned (nacked, or their consumer went away).
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Most requests in one message on [`REQUESTS_QUEUE`] (and in one
/// `POST /v1/batches`); a bigger batch is dead-lettered whole.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// One file to ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    /// Caller's idempotency key: a repeated id continues the existing session.
    pub request_id: String,
    /// `file:///…` under an allowed root, or `http(s)://…` (read with Range requests).
    pub source: String,
    /// Destination path, relative to the configured MooseFS root.
    pub dest: String,
    /// Declared size; must match the source.
    #[serde(default)]
    pub size: Option<u64>,
    /// Expected MD5 (hex) of the whole file.
    #[serde(default)]
    pub md5: Option<String>,
    /// Expected CRC-32C of the whole file.
    #[serde(default)]
    pub crc32c: Option<u32>,
    /// Copies in MooseFS (1..9); default from the coordinator's config.
    #[serde(default)]
    pub goal: Option<u8>,
    /// Replace an existing destination file.
    #[serde(default)]
    pub overwrite: bool,
    /// Part size in bytes (a multiple of 64 MiB keeps completion copy-free).
    #[serde(default)]
    pub part_size: Option<u64>,
}

/// A batch of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBatch {
    pub items: Vec<IngestRequest>,
}

/// What arrives on [`REQUESTS_QUEUE`]: one request or a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestMessage {
    Batch(IngestBatch),
    Single(IngestRequest),
}

impl RequestMessage {
    pub fn into_items(self) -> Vec<IngestRequest> {
        match self {
            RequestMessage::Batch(b) => b.items,
            RequestMessage::Single(r) => vec![r],
        }
    }
}

/// One part to write. Everything else is read from PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartJob {
    pub session_id: Uuid,
    pub part_number: i32,
}

/// Most single-part files whose jobs share one message (see [`PartMessage`]).
pub const PART_GROUP_MAX_JOBS: usize = 16;
/// Largest single-part file whose job is grouped with others; bigger files
/// get a message of their own, so that workers share them out.
pub const PART_GROUP_MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The part jobs of several single-part files, in one message: one delivery,
/// one PostgreSQL statement to start their attempts and one transaction to
/// commit and complete them all (each file still succeeds or fails alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartGroup {
    pub jobs: Vec<PartJob>,
}

/// What arrives on [`PARTS_QUEUE`]: one part job, or a group of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartMessage {
    Single(PartJob),
    Group(PartGroup),
}

/// Why a part message is malformed (its text is the dead letter's reason).
#[derive(Debug, thiserror::Error)]
pub enum MalformedPartMessage {
    #[error("malformed part job: not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("malformed part job: {0}")]
    Job(#[source] serde_json::Error),
    #[error("malformed part job group: {0}")]
    Group(#[source] serde_json::Error),
    #[error("malformed part job group: {0} jobs, expected 1 to {PART_GROUP_MAX_JOBS}")]
    GroupSize(usize),
    #[error(
        "malformed part job group: part {part_number} of session {session_id} is listed twice"
    )]
    ListedTwice { session_id: Uuid, part_number: i32 },
}

impl PartMessage {
    /// Parses a message body; the error says what is wrong with it.
    pub fn parse(body: &[u8]) -> Result<PartMessage, MalformedPartMessage> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(MalformedPartMessage::NotJson)?;
        if value.get("jobs").is_none() {
            return serde_json::from_value(value)
                .map(PartMessage::Single)
                .map_err(MalformedPartMessage::Job);
        }
        let group: PartGroup =
            serde_json::from_value(value).map_err(MalformedPartMessage::Group)?;
        if group.jobs.is_empty() || group.jobs.len() > PART_GROUP_MAX_JOBS {
            return Err(MalformedPartMessage::GroupSize(group.jobs.len()));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = group.jobs.iter().find(|j| !seen.insert(**j)) {
            return Err(MalformedPartMessage::ListedTwice {
                session_id: twice.session_id,
                part_number: twice.part_number,
            });
        }
        Ok(PartMessage::Group(group))
    }

    /// The jobs it carries.
    pub fn jobs(&self) -> &[PartJob] {
        match self {
            PartMessage::Single(job) => std::slice::from_ref(job),
            PartMessage::Group(group) => &group.jobs,
        }
    }
}

/// Published on [`EVENTS_QUEUE`] when a session ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadEvent {
    /// `upload.completed`, `upload.failed` or `upload.aborted`.
    pub event: String,
    pub session_id: Uuid,
    pub request_id: String,
    pub dest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub md5: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crc32c: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// `upload.completed` only: the file replaced one that was at `dest`
    /// (`overwrite`); of two uploads to one destination the later one says so.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub replaced: bool,
}

/// The body of every message on [`EVENTS_EXCHANGE`]: `{"events":[...]}`.
///
/// The relay joins the events it finds waiting in the outbox into as few
/// messages as it can (at most [`EVENTS_PER_MESSAGE`] each): a batch of
/// small files ends in one message per few hundred files, not one each,
/// which is most of what RabbitMQ spent per file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<UploadEvent>,
}

impl EventBatch {
    /// Parses an events message; a bare event (the format before batches)
    /// is read as a batch of one.
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice::<EventBatch>(body).or_else(|e| {
            serde_json::from_slice::<UploadEvent>(body)
                .map(|event| EventBatch {
                    events: vec![event],
                })
                .map_err(|_| e)
        })
    }
}
