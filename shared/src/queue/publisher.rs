//! Outgoing messages and the publisher: publisher confirms, reconnects,
//! and events coalesced into few messages.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use tokio::sync::Mutex;

use super::topology::string;
use super::*;

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
                let label = crate::metrics::Queue::of(if m.exchange.is_empty() {
                    &m.queue
                } else {
                    &m.exchange
                });
                metrics.message_published(label);
                confirms.push((m.queue.as_str(), label, confirm));
            }
            for (queue, label, confirm) in confirms {
                match confirm.await? {
                    Confirmation::Ack(_) => {
                        metrics.message_confirmed(label);
                    }
                    _ => {
                        metrics.message_nacked(label);
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
