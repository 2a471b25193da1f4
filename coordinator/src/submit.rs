//! `coordinator submit`: a producer for batch ingestion. Publishes one ingest
//! request per local file (in batch messages, with publisher confirms) to
//! `ingest.requests`, then, with `--wait`, follows `ingest.events` on a queue
//! of its own until every request has completed or failed, and prints a
//! summary.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use serde::Serialize;
use shared::queue::{
    connect, subscribe_events, EventBatch, IngestBatch, IngestRequest, Outgoing, Publisher,
    REQUESTS_QUEUE,
};

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Local files or directories (directories are walked recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Destination directory, relative to the MooseFS root.
    #[arg(long)]
    dest: String,
    /// Prefix of the generated request ids (default: a fresh one per run).
    #[arg(long)]
    request_prefix: Option<String>,
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=9))]
    goal: Option<u8>,
    #[arg(long)]
    overwrite: bool,
    /// Requests per batch message.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Wait for every request's completion or failure event.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    files: usize,
    bytes: u64,
    completed: usize,
    failed: usize,
    rejected: usize,
    seconds: f64,
    mib_per_second: f64,
    files_per_second: f64,
    failures: Vec<String>,
}

fn collect(path: &PathBuf, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for e in entries {
            collect(&e.path(), out)?;
        }
    } else if meta.is_file()
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    {
        out.push((std::fs::canonicalize(path)?, meta.len()));
    }
    Ok(())
}

pub async fn submit(args: SubmitArgs) -> Result<()> {
    let mut files = Vec::new();
    for p in &args.paths {
        collect(p, &mut files)?;
    }
    if files.is_empty() {
        bail!("no files to submit");
    }
    let prefix = args
        .request_prefix
        .clone()
        .unwrap_or_else(|| format!("submit-{}", uuid::Uuid::new_v4()));
    let requests = requests_for(&args, &files, &prefix);

    // Listen before publishing so no event is missed.
    let events = if args.wait {
        let conn = connect(&args.amqp_url, "coordinator submit").await?;
        let (channel, consumer) = subscribe_events(&conn, "submit").await?;
        Some((conn, channel, consumer))
    } else {
        None
    };

    let started = Instant::now();
    let publisher = Publisher::new(&args.amqp_url, "coordinator submit publisher");
    for chunk in requests.chunks(args.batch_size.max(1)) {
        let batch = IngestBatch {
            items: chunk.to_vec(),
        };
        publisher
            .publish_all(&[Outgoing::json(REQUESTS_QUEUE, &batch)?])
            .await
            .context("publishing ingest requests")?;
    }
    eprintln!("submitted {} requests (prefix {prefix})", requests.len());
    let Some((_conn, _channel, mut consumer)) = events else {
        return Ok(());
    };
    let mut summary = Summary {
        files: requests.len(),
        bytes: files.iter().map(|(_, s)| s).sum(),
        completed: 0,
        failed: 0,
        rejected: 0,
        seconds: 0.0,
        mib_per_second: 0.0,
        files_per_second: 0.0,
        failures: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let pending = requests.iter().map(|r| r.request_id.clone()).collect();
    summary
        .await_events(&mut consumer, pending, deadline)
        .await?;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.mib_per_second = summary.bytes as f64 / (1 << 20) as f64 / summary.seconds;
    summary.files_per_second = summary.files as f64 / summary.seconds;
    summary.print(args.json)?;
    if summary.failed + summary.rejected > 0 {
        bail!(
            "{} of {} requests did not complete",
            summary.failed + summary.rejected,
            summary.files
        );
    }
    Ok(())
}

/// One request per file, keeping the layout below the given directories
/// under `--dest`; request ids `<prefix>/<relative path>`.
fn requests_for(args: &SubmitArgs, files: &[(PathBuf, u64)], prefix: &str) -> Vec<IngestRequest> {
    let dest_dir = args.dest.trim_end_matches('/');
    let roots: Vec<PathBuf> = args
        .paths
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or(p.clone()))
        .collect();
    files
        .iter()
        .map(|(path, size)| {
            let rel = roots
                .iter()
                .find_map(|r| {
                    path.strip_prefix(r)
                        .ok()
                        .filter(|p| !p.as_os_str().is_empty())
                })
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| PathBuf::from(path.file_name().expect("a file has a name")));
            IngestRequest {
                request_id: format!("{prefix}/{}", rel.display()),
                source: format!("file://{}", path.display()),
                dest: format!("{dest_dir}/{}", rel.display()),
                size: Some(*size),
                md5: None,
                crc32c: None,
                goal: args.goal,
                overwrite: args.overwrite,
                part_size: None,
            }
        })
        .collect()
}

impl Summary {
    /// Counts the events of the `pending` request ids (others' events are
    /// skipped) until each has one, or `deadline`.
    async fn await_events(
        &mut self,
        consumer: &mut lapin::Consumer,
        mut pending: HashSet<String>,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        while !pending.is_empty() {
            let delivery = match tokio::time::timeout_at(deadline, consumer.next()).await {
                Err(_) => bail!("timed out with {} requests still pending", pending.len()),
                Ok(None) => bail!("event stream ended"),
                Ok(Some(d)) => d?,
            };
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            let Ok(batch) = EventBatch::parse(&delivery.data) else {
                continue;
            };
            for event in batch.events {
                if !pending.remove(&event.request_id) {
                    continue; // someone else's
                }
                match event.event.as_str() {
                    "upload.completed" => {
                        self.completed += 1;
                        continue;
                    }
                    "request.rejected" => self.rejected += 1,
                    _ => self.failed += 1,
                }
                self.failures.push(format!(
                    "{}: {}",
                    event.request_id,
                    event.error.unwrap_or_default()
                ));
            }
        }
        Ok(())
    }

    /// Prints the summary, as JSON or as lines for people.
    fn print(&self, json: bool) -> Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        println!("files:      {}", self.files);
        println!(
            "bytes:      {} ({:.1} MiB)",
            self.bytes,
            self.bytes as f64 / (1 << 20) as f64
        );
        println!("completed:  {}", self.completed);
        println!("failed:     {} (+{} rejected)", self.failed, self.rejected);
        println!(
            "time:       {:.2} s ({:.1} MiB/s, {:.0} files/s)",
            self.seconds, self.mib_per_second, self.files_per_second
        );
        for f in self.failures.iter().take(20) {
            println!("  failure: {f}");
        }
        Ok(())
    }
}
