//! The producer side of `scripts/bench-backlog`: publishes one ingest
//! request per source file to `ingest.requests` (batch messages, publisher
//! confirms) as fast as the broker takes them, follows `ingest.events` on a
//! queue of its own (bound before the first publish), samples the depth of
//! the requests and parts queues while the backlog drains, and writes one
//! JSON report: when publishing ended, when each request's event arrived
//! (seconds since the first publish), the queue depths over time, and the
//! failures. The script turns that into rates per 10 % slice.
//!
//! Run by the script (`cargo build --release --example backlog_driver`);
//! not part of the services.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use serde::Serialize;
use shared::queue::{
    connect, subscribe_events, EventBatch, IngestBatch, IngestRequest, Outgoing, Publisher,
    PARTS_QUEUE, REQUESTS_QUEUE,
};

#[derive(Parser, Debug)]
struct Args {
    /// Directory of source files (walked recursively; names sorted).
    #[arg(long)]
    sources: PathBuf,
    /// Destination directory, relative to the MooseFS root; each file keeps
    /// its path below `--sources`.
    #[arg(long)]
    dest: String,
    /// Prefix of the request ids.
    #[arg(long)]
    prefix: String,
    /// Part size to ask for (default: the coordinator's).
    #[arg(long)]
    part_size: Option<u64>,
    #[arg(long, default_value_t = 3)]
    goal: u8,
    /// Requests per batch message.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Queue depth sampling interval, milliseconds.
    #[arg(long, default_value_t = 1000)]
    sample_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 7200)]
    timeout_secs: u64,
    /// Where to write the JSON report.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, env = "AMQP_URL")]
    amqp_url: String,
}

/// Queue depths (messages ready) at one moment.
#[derive(Debug, Serialize)]
struct DepthSample {
    t: f64,
    requests: u32,
    parts: u32,
    events_received: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    files: usize,
    bytes: u64,
    /// Seconds from the first publish until the broker confirmed the last.
    published_s: f64,
    /// Seconds from the first publish to the first `upload.completed`.
    first_completed_s: Option<f64>,
    /// Arrival of each request's completion event, seconds, ascending.
    completed_s: Vec<f64>,
    /// Event messages received (each carries one or more events).
    event_messages: usize,
    failures: Vec<String>,
    depths: Vec<DepthSample>,
}

fn collect(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let meta = e.metadata()?;
        if meta.is_dir() {
            collect(&e.path(), out)?;
        } else if meta.is_file() {
            out.push((e.path(), meta.len()));
        }
    }
    Ok(())
}

async fn depth(channel: &Channel, queue: &str) -> Result<u32> {
    let q = channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let root = std::fs::canonicalize(&args.sources)?;
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    if files.is_empty() {
        bail!("no files in {}", root.display());
    }
    let dest = args.dest.trim_end_matches('/');
    let requests: Vec<IngestRequest> = files
        .iter()
        .map(|(path, size)| {
            let rel = path.strip_prefix(&root).expect("below the root").display();
            IngestRequest {
                request_id: format!("{}/{rel}", args.prefix),
                source: format!("file://{}", path.display()),
                dest: format!("{dest}/{rel}"),
                size: Some(*size),
                md5: None,
                crc32c: None,
                goal: Some(args.goal),
                overwrite: false,
                part_size: args.part_size,
            }
        })
        .collect();

    let conn = connect(&args.amqp_url, "bench-backlog driver").await?;
    let (_events_channel, mut consumer) = subscribe_events(&conn, "bench-backlog").await?;
    let sampler_channel = conn.create_channel().await?;

    let started = Instant::now();
    // Publishing runs beside the event consumer: the first completions
    // arrive while the backlog is still being published.
    let publisher = Publisher::new(&args.amqp_url, "bench-backlog publisher");
    let batches: Vec<Outgoing> = requests
        .chunks(args.batch_size.max(1))
        .map(|chunk| {
            Outgoing::json(
                REQUESTS_QUEUE,
                &IngestBatch {
                    items: chunk.to_vec(),
                },
            )
        })
        .collect::<Result<_, _>>()?;
    let publishing = tokio::spawn(async move {
        for group in batches.chunks(20) {
            publisher.publish_all(group).await?;
        }
        anyhow::Ok(started.elapsed().as_secs_f64())
    });

    let mut pending: HashMap<String, ()> = requests
        .iter()
        .map(|r| (r.request_id.clone(), ()))
        .collect();
    let mut report = Report {
        files: requests.len(),
        bytes: files.iter().map(|(_, s)| s).sum(),
        published_s: 0.0,
        first_completed_s: None,
        completed_s: Vec::with_capacity(requests.len()),
        event_messages: 0,
        failures: Vec::new(),
        depths: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut sample = tokio::time::interval(Duration::from_millis(args.sample_ms));
    let mut publishing = Some(publishing);
    while !pending.is_empty() {
        tokio::select! {
            _ = sample.tick() => {
                let requests_depth = depth(&sampler_channel, REQUESTS_QUEUE).await?;
                let parts_depth = depth(&sampler_channel, PARTS_QUEUE).await?;
                report.depths.push(DepthSample {
                    t: started.elapsed().as_secs_f64(),
                    requests: requests_depth,
                    parts: parts_depth,
                    events_received: report.completed_s.len() + report.failures.len(),
                });
            }
            done = async { publishing.as_mut().expect("still publishing").await },
                if publishing.is_some() => {
                publishing = None;
                report.published_s = done.context("publisher task")??;
                eprintln!("published {} requests in {:.2} s", requests.len(), report.published_s);
            }
            delivery = tokio::time::timeout_at(deadline, consumer.next()) => {
                let delivery = match delivery {
                    Err(_) => bail!("timed out with {} requests still pending", pending.len()),
                    Ok(None) => bail!("event stream ended"),
                    Ok(Some(d)) => d?,
                };
                let t = started.elapsed().as_secs_f64();
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                report.event_messages += 1;
                let Ok(batch) = EventBatch::parse(&delivery.data) else {
                    continue;
                };
                for event in batch.events {
                    if pending.remove(&event.request_id).is_none() {
                        continue;
                    }
                    if event.event == "upload.completed" {
                        report.first_completed_s.get_or_insert(t);
                        report.completed_s.push(t);
                    } else {
                        report.failures.push(format!(
                            "{} {}: {}",
                            event.event,
                            event.request_id,
                            event.error.unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    if let Some(publishing) = publishing {
        report.published_s = publishing.await.context("publisher task")??;
    }
    std::fs::write(&args.out, serde_json::to_vec(&report)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "{} completed, {} failed in {:.1} s",
        report.completed_s.len(),
        report.failures.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
