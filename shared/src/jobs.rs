//! Message schemas (serde_json) and the RabbitMQ side of the pipeline: queue
//! topology, a publisher with publisher confirms that reconnects, and the
//! dead-letter helper. Queues are durable quorum queues; messages are
//! persistent; consumers ack only after their effect is committed.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
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

/// Failures of the messaging layer.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not confirm the publish to {0}")]
    Nacked(String),
    #[error("timed out after {0:?} talking to RabbitMQ")]
    Timeout(Duration),
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
}

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

impl PartMessage {
    /// Parses a message body; the error (the dead letter's reason) says
    /// what is wrong with it.
    pub fn parse(body: &[u8]) -> Result<PartMessage, String> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| format!("malformed part job: not JSON: {e}"))?;
        if value.get("jobs").is_none() {
            return serde_json::from_value(value)
                .map(PartMessage::Single)
                .map_err(|e| format!("malformed part job: {e}"));
        }
        let group: PartGroup =
            serde_json::from_value(value).map_err(|e| format!("malformed part job group: {e}"))?;
        if group.jobs.is_empty() || group.jobs.len() > PART_GROUP_MAX_JOBS {
            return Err(format!(
                "malformed part job group: {} jobs, expected 1 to {PART_GROUP_MAX_JOBS}",
                group.jobs.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = group.jobs.iter().find(|j| !seen.insert(**j)) {
            return Err(format!(
                "malformed part job group: part {} of session {} is listed twice",
                twice.part_number, twice.session_id
            ));
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

fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = BTreeMap::new();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    for (k, v) in extra {
        args.insert(ShortString::from(*k), v.clone());
    }
    FieldTable::from(args)
}

fn string(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// Declares every queue (idempotent).
pub async fn declare_topology(channel: &Channel) -> Result<(), JobsError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let to_dead = [
        ("x-dead-letter-exchange", string("")),
        ("x-dead-letter-routing-key", string(DEAD_QUEUE)),
    ];
    channel
        .queue_declare(DEAD_QUEUE, durable, quorum_args(&[]))
        .await?;
    channel
        .queue_declare(REQUESTS_QUEUE, durable, quorum_args(&to_dead))
        .await?;
    let mut parts_args = to_dead.to_vec();
    parts_args.push(("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)));
    channel
        .queue_declare(PARTS_QUEUE, durable, quorum_args(&parts_args))
        .await?;
    channel
        .queue_declare(
            PARTS_RETRY_QUEUE,
            durable,
            quorum_args(&[
                ("x-dead-letter-exchange", string("")),
                ("x-dead-letter-routing-key", string(PARTS_QUEUE)),
                (
                    "x-message-ttl",
                    AMQPValue::LongLongInt(
                        i64::try_from(RETRY_DELAY_CAP.as_millis()).expect("300 s in ms fits"),
                    ),
                ),
            ]),
        )
        .await?;
    channel
        .exchange_declare(
            EVENTS_EXCHANGE,
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(EVENTS_QUEUE, durable, quorum_args(&[]))
        .await?;
    channel
        .queue_bind(
            EVENTS_QUEUE,
            EVENTS_EXCHANGE,
            "",
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Opens a connection with a bounded connect time.
pub async fn connect(amqp_url: &str, name: &str) -> Result<Connection, JobsError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let limit = Duration::from_secs(10);
    let result = tokio::time::timeout(limit, Connection::connect(amqp_url, props))
        .await
        .map_err(|_| JobsError::Timeout(limit))
        .and_then(|r| r.map_err(JobsError::from));
    // Failures are counted once by the caller's operation (publish, consume).
    if result.is_ok() {
        crate::metrics::service_ok(crate::metrics::Service::RabbitMq);
    }
    result
}

/// Opens a channel for consuming with per-consumer prefetch (quorum queues
/// refuse global QoS).
pub async fn consumer_channel(conn: &Connection, prefetch: u16) -> Result<Channel, JobsError> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    Ok(channel)
}

/// Reads a header as an integer (any AMQP integer type; `None` for
/// anything else). Callers clamp the value to what they expect: headers
/// come from whoever published the message.
pub fn header_i64(props: &BasicProperties, name: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// How many earlier deliveries of this message were returned to its
/// (quorum) queue, from the broker's `x-delivery-count`; 0 on the first.
pub fn earlier_deliveries(props: &BasicProperties) -> u32 {
    header_i64(props, DELIVERY_COUNT_HEADER)
        .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// Reads a header as a string.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A message to publish: to a queue through the default exchange
/// (`exchange` empty, `queue` = routing key), or to a named exchange.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub queue: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, AMQPValue)>,
    /// Per-message TTL (used to delay retries).
    pub expiration: Option<Duration>,
}

impl Outgoing {
    pub fn json<T: Serialize>(queue: &str, body: &T) -> Result<Self, JobsError> {
        Ok(Outgoing {
            exchange: String::new(),
            queue: queue.to_string(),
            payload: serde_json::to_vec(body)?,
            headers: Vec::new(),
            expiration: None,
        })
    }

    pub fn with_header(mut self, name: &str, value: AMQPValue) -> Self {
        self.headers.push((name.to_string(), value));
        self
    }

    /// One event for [`EVENTS_EXCHANGE`] (an [`EventBatch`] of one).
    pub fn event(event: &UploadEvent) -> Self {
        Self::events_message(serde_json::json!({ "events": [event] }))
    }

    fn events_message(body: serde_json::Value) -> Self {
        Outgoing {
            exchange: EVENTS_EXCHANGE.to_string(),
            queue: String::new(),
            payload: serde_json::to_vec(&body).expect("events encode"),
            headers: Vec::new(),
            expiration: None,
        }
    }

    /// The messages for stored outgoing rows `(exchange, routing key,
    /// body)`, in order: every row not for [`EVENTS_EXCHANGE`] as it is, and
    /// the events of all event rows (each an [`EventBatch`], or a bare event
    /// stored before batches) joined into messages of at most
    /// [`EVENTS_PER_MESSAGE`] events, after the other rows.
    pub fn coalesce<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a str, &'a serde_json::Value)>,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut events: Vec<&serde_json::Value> = Vec::new();
        for (exchange, routing_key, body) in rows {
            if exchange != EVENTS_EXCHANGE {
                out.push(Outgoing {
                    exchange: exchange.to_string(),
                    queue: routing_key.to_string(),
                    payload: serde_json::to_vec(body).expect("json encodes"),
                    headers: Vec::new(),
                    expiration: None,
                });
                continue;
            }
            match body.get("events").and_then(|e| e.as_array()) {
                Some(list) => events.extend(list),
                None => events.push(body),
            }
        }
        out.extend(
            events
                .chunks(EVENTS_PER_MESSAGE)
                .map(|chunk| Self::events_message(serde_json::json!({ "events": chunk }))),
        );
        out
    }

    /// A dead letter: the original body with the reason attached.
    pub fn dead_letter(payload: &[u8], source_queue: &str, reason: &str) -> Self {
        Outgoing {
            exchange: String::new(),
            queue: DEAD_QUEUE.to_string(),
            payload: payload.to_vec(),
            headers: vec![
                (REASON_HEADER.to_string(), string(reason)),
                ("x-source-queue".to_string(), string(source_queue)),
            ],
            expiration: None,
        }
    }
}

/// Publishes with publisher confirms over one channel, reconnecting when the
/// connection dropped. Every publish is bounded by a timeout.
pub struct Publisher {
    amqp_url: String,
    name: String,
    state: Mutex<Option<(Connection, Channel)>>,
    timeout: Duration,
}

impl Publisher {
    pub fn new(amqp_url: &str, name: &str) -> Self {
        Publisher {
            amqp_url: amqp_url.to_string(),
            name: name.to_string(),
            state: Mutex::new(None),
            timeout: Duration::from_secs(15),
        }
    }

    async fn channel(
        &self,
        state: &mut Option<(Connection, Channel)>,
    ) -> Result<Channel, JobsError> {
        if let Some((conn, ch)) = state.as_ref() {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let conn = connect(&self.amqp_url, &self.name).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        declare_topology(&ch).await?;
        *state = Some((conn, ch.clone()));
        Ok(ch)
    }

    /// Publishes every message and waits for the broker's confirms; fails if
    /// any was not confirmed (the caller keeps them to retry).
    pub async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), JobsError> {
        let metrics = crate::metrics::metrics();
        let mut state = self.state.lock().await;
        let result = tokio::time::timeout(self.timeout, async {
            let channel = self.channel(&mut state).await?;
            let mut confirms = Vec::with_capacity(messages.len());
            for m in messages {
                let mut headers = BTreeMap::new();
                for (k, v) in &m.headers {
                    headers.insert(ShortString::from(k.as_str()), v.clone());
                }
                let mut props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from("application/json"))
                    .with_headers(FieldTable::from(headers));
                if let Some(ttl) = m.expiration {
                    props = props.with_expiration(ShortString::from(ttl.as_millis().to_string()));
                }
                let confirm = channel
                    .basic_publish(
                        &m.exchange,
                        &m.queue,
                        BasicPublishOptions::default(),
                        &m.payload,
                        props,
                    )
                    .await?;
                let label = crate::metrics::queue_label(if m.exchange.is_empty() {
                    &m.queue
                } else {
                    &m.exchange
                });
                metrics.queue_published.with_label_values(&[label]).inc();
                confirms.push((m.queue.as_str(), label, confirm));
            }
            for (queue, label, confirm) in confirms {
                match confirm.await? {
                    Confirmation::Ack(_) => {
                        metrics.queue_confirmed.with_label_values(&[label]).inc();
                    }
                    _ => {
                        metrics.queue_nacked.with_label_values(&[label]).inc();
                        return Err(JobsError::Nacked(queue.to_string()));
                    }
                }
            }
            Ok(())
        })
        .await
        .unwrap_or(Err(JobsError::Timeout(self.timeout)));
        if let Err(e) = &result {
            if !matches!(e, JobsError::Nacked(_) | JobsError::Encode(_)) {
                crate::metrics::service_error(crate::metrics::Service::RabbitMq);
            }
            // Start over on a fresh connection next time.
            if let Some((conn, _)) = state.take() {
                let _ = conn.close(0, "publish failed").await;
            }
        }
        result
    }
}

/// Gives a delivery back to its queue (nack with requeue); failures mean the
/// channel is gone, and the broker redelivers anyway.
pub async fn requeue(delivery: &lapin::message::Delivery) {
    let _ = delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..lapin::options::BasicNackOptions::default()
        })
        .await;
}

/// Consumes `queue` until `shutdown` is cancelled: per-consumer prefetch,
/// manual acks, one task per delivery (at most `prefetch` at once), and a
/// reconnect with growing delay whenever the connection or channel drops
/// (deliveries not yet acked come back from the broker: handlers must expect
/// duplicates). On shutdown it stops taking deliveries and waits up to
/// `grace` for the running handlers.
pub async fn consume_until<F, Fut>(
    amqp_url: &str,
    name: &str,
    queue: &str,
    prefetch: u16,
    shutdown: tokio_util::sync::CancellationToken,
    grace: Duration,
    handler: F,
) where
    F: Fn(lapin::message::Delivery) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt;
    let metrics = crate::metrics::metrics();
    let queue_label = crate::metrics::queue_label(queue);
    let consumed = metrics.queue_consumed.with_label_values(&[queue_label]);
    let redelivered = metrics.queue_redelivered.with_label_values(&[queue_label]);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let session = async {
            let conn = connect(amqp_url, name).await?;
            let channel = consumer_channel(&conn, prefetch).await?;
            declare_topology(&channel).await?;
            let consumer = channel
                .basic_consume(
                    queue,
                    name,
                    lapin::options::BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, JobsError>((conn, channel, consumer))
        };
        let (conn, channel, mut consumer) = match session.await {
            Ok(s) => s,
            Err(e) => {
                crate::metrics::service_error(crate::metrics::Service::RabbitMq);
                tracing::warn!(%queue, error = %e, retry_in = ?delay, "cannot consume; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        tracing::info!(%queue, prefetch, "consuming");
        delay = Duration::from_millis(200);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    consumed.inc();
                    if delivery.redelivered {
                        redelivered.inc();
                    }
                    tracker.spawn(handler.clone()(delivery));
                }
                Some(Err(e)) => {
                    tracing::warn!(%queue, error = %e, "consumer failed; reconnecting");
                    crate::metrics::service_error(crate::metrics::Service::RabbitMq);
                    break;
                }
                None => {
                    tracing::warn!(%queue, "consumer ended; reconnecting");
                    crate::metrics::service_error(crate::metrics::Service::RabbitMq);
                    break;
                }
            }
        }
        if shutdown.is_cancelled() {
            // Stop deliveries, let running handlers ack, then close.
            let _ = channel
                .basic_cancel(name, lapin::options::BasicCancelOptions::default())
                .await;
            tracker.close();
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!(%queue, "handlers still running after {grace:?}; their messages will be redelivered");
            }
            let _ = channel.close(200, "shutdown").await;
            let _ = conn.close(200, "shutdown").await;
            return;
        }
        let _ = conn.close(0, "reconnecting").await;
    }
    tracker.close();
    let _ = tokio::time::timeout(grace, tracker.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> UploadEvent {
        UploadEvent {
            event: "upload.completed".into(),
            session_id: Uuid::from_u128(n as u128),
            request_id: format!("r{n}"),
            dest: format!("d/{n}"),
            size: n as u64,
            md5: None,
            crc32c: Some(n as u32),
            error: None,
            replaced: false,
        }
    }

    #[test]
    fn event_rows_are_joined_into_few_messages_in_order() {
        // 600 stored events (one a bare event from before batches, one row
        // holding two) among three job rows.
        let mut rows: Vec<(String, String, serde_json::Value)> = Vec::new();
        let mut n = 0;
        while n < 600 {
            let body = match n {
                7 => serde_json::to_value(event(n)).unwrap(),
                100 => {
                    n += 1;
                    serde_json::json!({ "events": [event(n - 1), event(n)] })
                }
                _ => serde_json::from_slice(&Outgoing::event(&event(n)).payload).unwrap(),
            };
            rows.push((EVENTS_EXCHANGE.into(), String::new(), body));
            if n % 250 == 0 {
                rows.push((
                    String::new(),
                    PARTS_QUEUE.into(),
                    serde_json::json!({ "n": n }),
                ));
            }
            n += 1;
        }
        let out = Outgoing::coalesce(rows.iter().map(|(e, k, b)| (e.as_str(), k.as_str(), b)));
        let jobs: Vec<_> = out.iter().filter(|m| m.exchange.is_empty()).collect();
        assert_eq!(jobs.len(), 3);
        assert!(jobs.iter().all(|m| m.queue == PARTS_QUEUE));
        let batches: Vec<EventBatch> = out
            .iter()
            .filter(|m| m.exchange == EVENTS_EXCHANGE)
            .map(|m| EventBatch::parse(&m.payload).unwrap())
            .collect();
        let sizes: Vec<usize> = batches.iter().map(|b| b.events.len()).collect();
        assert_eq!(
            sizes,
            [
                EVENTS_PER_MESSAGE,
                EVENTS_PER_MESSAGE,
                600 - 2 * EVENTS_PER_MESSAGE
            ]
        );
        let all: Vec<UploadEvent> = batches.into_iter().flat_map(|b| b.events).collect();
        assert_eq!(all, (0..600).map(event).collect::<Vec<_>>());
    }

    #[test]
    fn an_events_message_parses_as_a_batch_and_a_bare_event_as_one() {
        let one = Outgoing::event(&event(3));
        assert_eq!(one.exchange, EVENTS_EXCHANGE);
        assert_eq!(EventBatch::parse(&one.payload).unwrap().events, [event(3)]);
        let bare = serde_json::to_vec(&event(4)).unwrap();
        assert_eq!(EventBatch::parse(&bare).unwrap().events, [event(4)]);
        assert!(EventBatch::parse(br#"{"events":[{"event":1}]}"#).is_err());
        assert!(EventBatch::parse(b"[]").is_err());
    }

    #[test]
    fn single_and_batch_requests_parse() {
        let single: RequestMessage = serde_json::from_str(
            r#"{"request_id":"r1","source":"file:///x","dest":"a/b","size":3}"#,
        )
        .unwrap();
        assert_eq!(single.clone().into_items().len(), 1);
        let batch: RequestMessage = serde_json::from_str(
            r#"{"items":[{"request_id":"r1","source":"file:///x","dest":"a"},{"request_id":"r2","source":"file:///y","dest":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(batch.into_items().len(), 2);
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_rejected() {
        for bad in [
            r#"{"request_id":"r1","source":"file:///x","dest":"a","colour":"red"}"#,
            r#"{"request_id":1,"source":"file:///x","dest":"a"}"#,
            r#"{"request_id":"r1","dest":"a"}"#,
            r#"{"request_id":"r1","source":"file:///x","dest":"a","size":"big"}"#,
        ] {
            assert!(
                serde_json::from_str::<RequestMessage>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn part_messages_are_single_jobs_or_groups() {
        let a = r#"{"session_id":"00000000-0000-0000-0000-000000000001","part_number":0}"#;
        let b = r#"{"session_id":"00000000-0000-0000-0000-000000000002","part_number":0}"#;
        match PartMessage::parse(a.as_bytes()).unwrap() {
            PartMessage::Single(job) => assert_eq!(job.part_number, 0),
            other => panic!("{other:?}"),
        }
        let group = PartMessage::parse(format!(r#"{{"jobs":[{a},{b}]}}"#).as_bytes()).unwrap();
        assert_eq!(group.jobs().len(), 2);
        // What the coordinator publishes parses back to the same jobs.
        let body = serde_json::to_vec(&PartGroup {
            jobs: group.jobs().to_vec(),
        })
        .unwrap();
        assert_eq!(PartMessage::parse(&body).unwrap(), group);
    }

    #[test]
    fn bad_part_messages_say_what_is_wrong() {
        let a = r#"{"session_id":"00000000-0000-0000-0000-000000000001","part_number":0}"#;
        let too_many = format!(r#"{{"jobs":[{}]}}"#, vec![a; 17].join(","));
        for (bad, says) in [
            ("[garbage".to_string(), "not JSON"),
            (
                r#"{"session_id":"nope","part_number":0}"#.into(),
                "malformed part job: ",
            ),
            (format!(r#"{{"jobs":[{a}],"colour":1}}"#), "unknown field"),
            (r#"{"jobs":[]}"#.into(), "0 jobs"),
            (too_many, "17 jobs"),
            (format!(r#"{{"jobs":[{a},{a}]}}"#), "listed twice"),
        ] {
            let err = PartMessage::parse(bad.as_bytes()).unwrap_err();
            assert!(err.starts_with("malformed part job"), "{bad}: {err}");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
