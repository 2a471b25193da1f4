//! `worker run`: consumes part jobs and writes each part into a fresh staging
//! inode in MooseFS. Per job: duplicate check (Redis marker), lease (Redis),
//! fencing token (PostgreSQL), write + verify, commit, and only then the ack.
//! Failures are retried through the delayed retry queue, bounded by an
//! attempt header; poison messages go to the dead-letter queue with the
//! reason. SIGTERM/SIGINT stop consumption and let in-flight parts finish.
//! Metrics (served on `WORKER_HTTP_ADDR`, contract in docs/operations.md):
//! parts in flight and the concurrency per worker, part outcomes and
//! durations, retries, dead letters and suppressed duplicates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::AMQPValue;
use shared::config::ServiceArgs;
use shared::idempotency::{part_done_key, part_lease_key, Idempotency, Lease, PartClaim};
use shared::ingest::{AttemptHooks, Ingest, PartError, PartOutcome, WriteBudget};
use shared::jobs::{
    header_i64, Outgoing, PartJob, Publisher, ATTEMPT_HEADER, PARTS_QUEUE, PARTS_RETRY_QUEUE,
};
use shared::metrics::{metrics, InFlight};

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    services: ServiceArgs,
    /// Parts handled at the same time (also the RabbitMQ prefetch).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// MiB of parts written at the same time: small parts all run at once,
    /// 64 MiB parts one at a time (0 = no bound beyond --concurrency).
    #[arg(long, env = "WORKER_MAX_IN_FLIGHT_MIB", default_value_t = 64)]
    max_in_flight_mib: u32,
    /// Runtime threads: 1 runs every part on one thread (least CPU per
    /// part); more spread hashing over cores.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Metrics and health listener.
    #[arg(long, env = "WORKER_HTTP_ADDR", default_value = "127.0.0.1:9101")]
    http_addr: SocketAddr,
    /// Name of this worker in leases and part rows (default: host-pid).
    #[arg(long, env = "WORKER_ID")]
    worker_id: Option<String>,
    /// Attempts of one part job before its session fails.
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 8)]
    max_attempts: i64,
    /// Lifetime of a part lease in Redis, seconds.
    #[arg(long, env = "WORKER_LEASE_SECS", default_value_t = 30)]
    lease_secs: u64,
    /// How long a shutdown waits for in-flight parts, seconds.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE_SECS", default_value_t = 60)]
    shutdown_grace_secs: u64,
}

/// What a handler needs.
struct WorkerCtx {
    ingest: Ingest,
    idempotency: Idempotency,
    publisher: Publisher,
    worker_id: String,
    max_attempts: i64,
    lease_ttl: Duration,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let worker_id = args.worker_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    tracing::info!(
        worker_id,
        concurrency = args.concurrency,
        http_addr = %args.http_addr,
        config = %args.services.describe(),
        "starting worker"
    );
    shared::metrics::set_build_info("worker");
    let m = metrics();
    m.worker_concurrency
        .with_label_values(&[worker_id.as_str()])
        .set(args.concurrency as i64);
    m.worker_in_flight
        .with_label_values(&[worker_id.as_str()])
        .set(0);
    let mut ingest = args
        .services
        .ingest(
            &format!("mfs-ingest worker {worker_id}"),
            args.concurrency as u32 + 2,
        )
        .await
        .context("starting the worker")?;
    if args.max_in_flight_mib > 0 {
        ingest.write_budget = WriteBudget::mib(args.max_in_flight_mib);
    }
    let ctx = Arc::new(WorkerCtx {
        idempotency: Idempotency::new(&args.services.redis_url),
        publisher: Publisher::new(
            &args.services.amqp_url,
            &format!("worker {worker_id} publisher"),
        ),
        ingest: ingest.clone(),
        worker_id: worker_id.clone(),
        max_attempts: args.max_attempts,
        lease_ttl: Duration::from_secs(args.lease_secs),
    });

    let shutdown = shared::process::shutdown_on_signals();
    let http = crate::http::serve(args.http_addr, shutdown.clone()).await?;

    let handler_ctx = ctx.clone();
    shared::jobs::consume_until(
        &args.services.amqp_url,
        &format!("worker-{worker_id}"),
        PARTS_QUEUE,
        args.concurrency,
        shutdown.clone(),
        Duration::from_secs(args.shutdown_grace_secs),
        move |delivery| {
            let ctx = handler_ctx.clone();
            async move { handle(&ctx, delivery).await }
        },
    )
    .await;
    tracing::info!("worker stopped consuming; closing");
    ingest.mfs.close().await;
    let _ = http.await;
    Ok(())
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers, the duplicate is harmless.
        tracing::warn!(error = %e, "ack failed");
    }
}

async fn requeue(delivery: &Delivery) {
    shared::jobs::requeue(delivery).await;
}

/// Pacing of part retries through the delay queue (attempts are bounded by
/// `--max-attempts`).
const PART_RETRY: shared::retry::RetryPolicy = shared::retry::RetryPolicy::new(
    Duration::from_secs(1),
    Duration::from_secs(60),
    u32::MAX,
    Duration::from_secs(24 * 3600),
);

/// Hands the job to the retry queue (it comes back after the retry delay)
/// and acks the original; if that publish fails the original is requeued.
/// `reason` labels `mfs_ingest_parts_retried_total`.
async fn retry_later(ctx: &WorkerCtx, delivery: &Delivery, attempt: i64, reason: &str) {
    let message = Outgoing {
        exchange: String::new(),
        queue: PARTS_RETRY_QUEUE.into(),
        payload: delivery.data.clone(),
        headers: vec![(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(attempt))],
        // Exponential backoff with jitter, from the one retry module.
        expiration: Some(shared::retry::delay_before_attempt(
            &PART_RETRY,
            attempt as u32,
        )),
    };
    match ctx.publisher.publish_all(&[message]).await {
        Ok(()) => {
            metrics().parts_retried.with_label_values(&[reason]).inc();
            ack(delivery).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish the retry; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            requeue(delivery).await;
        }
    }
}

async fn dead_letter(ctx: &WorkerCtx, delivery: &Delivery, reason: &str) {
    let message = Outgoing::dead_letter(&delivery.data, PARTS_QUEUE, reason);
    match ctx.publisher.publish_all(&[message]).await {
        Ok(()) => {
            metrics()
                .dead_letters
                .with_label_values(&[PARTS_QUEUE])
                .inc();
            ack(delivery).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot dead-letter; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            requeue(delivery).await;
        }
    }
}

async fn handle(ctx: &WorkerCtx, delivery: Delivery) {
    let _in_flight = InFlight::new(&ctx.worker_id);
    let job: PartJob = match serde_json::from_slice(&delivery.data) {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!(error = %e, "malformed part job");
            dead_letter(ctx, &delivery, &format!("malformed part job: {e}")).await;
            return;
        }
    };
    let attempt = header_i64(&delivery.properties, ATTEMPT_HEADER).unwrap_or(0);
    let done_key = part_done_key(job.session_id, job.part_number);
    let lease_key = part_lease_key(job.session_id, job.part_number);
    let lease = match ctx
        .idempotency
        .claim_part(&done_key, &lease_key, &ctx.worker_id, ctx.lease_ttl)
        .await
    {
        PartClaim::Done => {
            tracing::debug!(?job, "duplicate job suppressed");
            metrics().duplicate_jobs.with_label_values(&["redis"]).inc();
            ack(&delivery).await;
            return;
        }
        PartClaim::Lease(lease) => lease,
    };
    if lease == Lease::Held {
        // Someone is writing this part; look again later (bounded like any retry).
        if attempt + 1 >= ctx.max_attempts * 4 {
            ack(&delivery).await; // the holder commits it, or the reconciler re-publishes
        } else {
            retry_later(ctx, &delivery, attempt + 1, "lease_held").await;
        }
        return;
    }
    let started = std::time::Instant::now();
    let result = ctx
        .ingest
        .run_part(&job, &ctx.worker_id, &AttemptHooks::default())
        .await;
    let outcome = match &result {
        Ok(PartOutcome::Committed { .. }) => "committed",
        Ok(PartOutcome::Discarded) => "discarded",
        Ok(PartOutcome::AlreadyDone) => "already_done",
        Err(_) => "failed",
    };
    metrics()
        .part_duration
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(outcome) => {
            tracing::info!(session = %job.session_id, part = job.part_number, ?outcome,
                elapsed_ms = started.elapsed().as_millis() as u64, "part done");
            let done = !matches!(outcome, PartOutcome::Discarded);
            ctx.idempotency
                .finish_part(&done_key, &lease_key, &ctx.worker_id, done)
                .await;
            ack(&delivery).await;
            return;
        }
        Err(PartError::SessionFailed(why)) => {
            tracing::warn!(session = %job.session_id, part = job.part_number, %why, "session failed");
            ack(&delivery).await;
        }
        Err(PartError::Transient(why)) => {
            let next = attempt + 1;
            if next >= ctx.max_attempts {
                let reason = format!(
                    "part {} failed after {next} attempts: {why}",
                    job.part_number
                );
                tracing::error!(session = %job.session_id, %reason, "giving up on part");
                let _ = ctx.ingest.fail_session(job.session_id, &reason).await;
                dead_letter(ctx, &delivery, &reason).await;
            } else {
                tracing::warn!(session = %job.session_id, part = job.part_number, attempt = next, %why, "part attempt failed; retrying");
                retry_later(ctx, &delivery, next, "error").await;
            }
        }
    }
    if lease == Lease::Acquired {
        ctx.idempotency
            .finish_part(&done_key, &lease_key, &ctx.worker_id, false)
            .await;
    }
}
