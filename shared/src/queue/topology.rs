//! The queues and exchanges (declared idempotently), connections and
//! consumer channels, and reading message headers.

use std::collections::BTreeMap;

use lapin::options::{BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::*;

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

pub(super) fn string(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// A subscription to `ingest.events` (the fanout every upload's outcome is
/// published to) through a queue of its own, exclusive and auto-deleted,
/// declared and bound on a new channel of `conn`: the channel and its
/// consumer (tagged `consumer_tag`). Open it before publishing what the
/// events are awaited for, so that none is missed.
pub async fn subscribe_events(
    conn: &Connection,
    consumer_tag: &str,
) -> Result<(Channel, lapin::Consumer), JobsError> {
    let channel = conn.create_channel().await?;
    declare_topology(&channel).await?;
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().as_str(),
            EVENTS_EXCHANGE,
            "",
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().as_str(),
            consumer_tag,
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
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
