//! The RabbitMQ side of the pipeline. Queues are durable quorum queues;
//! messages are persistent; consumers ack only after their effect is
//! committed.
//!
//! - `messages`: the message schemas (serde_json) and queue names;
//! - `topology`: the queues and exchanges declared, connections, headers;
//! - `publisher`: outgoing messages and the publisher with confirms;
//! - `consumer`: consuming until shutdown, and requeueing a delivery.
//!
//! Also reachable as `shared::queue` (its former name), so that the
//! binaries and tests keep their paths.

use std::time::Duration;

mod consumer;
mod messages;
mod publisher;
mod topology;

pub use consumer::*;
pub use messages::*;
pub use publisher::*;
pub use topology::*;

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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

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
            let err = PartMessage::parse(bad.as_bytes()).unwrap_err().to_string();
            assert!(err.starts_with("malformed part job"), "{bad}: {err}");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
