//! The part-job handler of `worker run` ([`crate::app`] consumes the jobs):
//! writes each part into a fresh staging inode in MooseFS. Per job: duplicate check (Redis marker), lease (Redis),
//! fencing token (PostgreSQL), write + verify, commit, and only then the ack.
//! Failures are retried through the delayed retry queue, bounded by an
//! attempt header; poison messages go to the dead-letter queue with the
//! reason. SIGTERM/SIGINT stop consumption and let in-flight parts finish.
//! Metrics (served on `WORKER_HTTP_ADDR`, contract in docs/operations.md):
//! parts in flight and the concurrency per worker, part outcomes and
//! durations, retries, dead letters and suppressed duplicates.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::AMQPValue;
use shared::idempotency::{part_done_key, part_lease_key, Idempotency, Lease, PartClaim};
use shared::ingest::{Ingest, PartError, PartOutcome};
use shared::metrics::{metrics, DuplicateDetector, InFlight, PartJobOutcome, Queue, RetryReason};
use shared::queue::{
    header_i64, Outgoing, PartJob, PartMessage, Publisher, ATTEMPT_HEADER, PARTS_QUEUE,
    PARTS_RETRY_QUEUE,
};

use crate::config::Config;

/// What a handler needs.
pub(crate) struct WorkerCtx {
    pub(crate) ingest: Ingest,
    idempotency: Idempotency,
    publisher: Publisher,
    pub(crate) worker_id: String,
    max_attempts: i64,
    lease_ttl: Duration,
}

impl WorkerCtx {
    /// The handler's context for `worker_id` on `ingest`, as `config` says.
    pub(crate) fn new(config: &Config, ingest: Ingest, worker_id: String) -> WorkerCtx {
        WorkerCtx {
            idempotency: Idempotency::new(&config.services.redis_url),
            publisher: Publisher::new(
                &config.services.amqp_url,
                &format!("worker {worker_id} publisher"),
            ),
            ingest,
            worker_id,
            max_attempts: config.max_attempts,
            lease_ttl: Duration::from_secs(config.lease_secs),
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers, the duplicate is harmless.
        tracing::warn!(error = %e, "ack failed");
    }
}

async fn requeue(delivery: &Delivery) {
    shared::queue::requeue(delivery).await;
}

/// Pacing of part retries through the delay queue (attempts are bounded by
/// `--max-attempts`).
const PART_RETRY: moosefs::retry::RetryPolicy = moosefs::retry::RetryPolicy::new(
    Duration::from_secs(1),
    Duration::from_secs(60),
    u32::MAX,
    Duration::from_secs(24 * 3600),
);

/// How many times more than `--max-attempts` a job whose lease another
/// worker holds is looked at again (see [`next_for_held`]).
const HELD_RETRY_FACTOR: i64 = 4;

/// The attempt number a message's `x-attempt` header claims, clamped to
/// what this worker itself ever writes there: 0 ..= max_attempts ×
/// [`HELD_RETRY_FACTOR`]. Headers come from whoever published the message;
/// a missing, negative, huge or non-integer value never costs more than
/// the largest real attempt.
fn attempt_from_header(header: Option<i64>, max_attempts: i64) -> i64 {
    header
        .unwrap_or(0)
        .clamp(0, max_attempts.saturating_mul(HELD_RETRY_FACTOR))
}

/// A job for the retry queue: it comes back to the work queue after the
/// retry delay of `attempt`.
fn retry_message(payload: Vec<u8>, attempt: i64) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        queue: PARTS_RETRY_QUEUE.into(),
        payload,
        headers: vec![(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(attempt))],
        // Exponential backoff with jitter, from the one retry module.
        expiration: Some(moosefs::retry::delay_before_attempt(
            &PART_RETRY,
            u32::try_from(attempt.max(0)).unwrap_or(u32::MAX),
        )),
    }
}

async fn dead_letter(ctx: &WorkerCtx, delivery: &Delivery, reason: &str) {
    let message = Outgoing::dead_letter(&delivery.data, PARTS_QUEUE, reason);
    match ctx.publisher.publish_all(&[message]).await {
        Ok(()) => {
            metrics().dead_lettered(Queue::Parts, 1);
            ack(delivery).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot dead-letter; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            requeue(delivery).await;
        }
    }
}

pub(crate) async fn handle(ctx: &WorkerCtx, delivery: Delivery) {
    let message = match PartMessage::parse(&delivery.data) {
        Ok(message) => message,
        Err(malformed) => {
            let reason = malformed.to_string();
            tracing::warn!(%reason, "malformed part job");
            dead_letter(ctx, &delivery, &reason).await;
            return;
        }
    };
    let attempt = attempt_from_header(
        header_i64(&delivery.properties, ATTEMPT_HEADER),
        ctx.max_attempts,
    );
    handle_jobs(ctx, delivery, message.jobs(), attempt).await;
}

/// Redis's answer for one job, with its keys.
struct Claimed {
    job: PartJob,
    done_key: String,
    lease_key: String,
    lease: Lease,
}

/// Asks Redis about every job, in one round trip. Jobs marked done are
/// counted as duplicates and left out.
async fn claim(ctx: &WorkerCtx, jobs: &[PartJob]) -> Vec<Claimed> {
    let keys: Vec<(String, String)> = jobs
        .iter()
        .map(|job| {
            (
                part_done_key(job.session_id, job.part_number),
                part_lease_key(job.session_id, job.part_number),
            )
        })
        .collect();
    let key_refs: Vec<(&str, &str)> = keys.iter().map(|(d, l)| (d.as_str(), l.as_str())).collect();
    let answers = ctx
        .idempotency
        .claim_parts(&key_refs, &ctx.worker_id, ctx.lease_ttl)
        .await;
    jobs.iter()
        .zip(keys)
        .zip(answers)
        .filter_map(|((job, (done_key, lease_key)), claim)| match claim {
            PartClaim::Done => {
                tracing::debug!(?job, "duplicate job suppressed");
                metrics().duplicate_job(DuplicateDetector::Redis);
                None
            }
            PartClaim::Lease(lease) => Some(Claimed {
                job: *job,
                done_key,
                lease_key,
                lease,
            }),
        })
        .collect()
}

/// Tells Redis how the attempts ended, in one round trip: done markers for
/// the parts that need no more work, and our leases released.
async fn finish(ctx: &WorkerCtx, ended: &[(&Claimed, bool)]) {
    let parts: Vec<(&str, &str, bool)> = ended
        .iter()
        .filter(|(c, done)| *done || c.lease == Lease::Acquired)
        .map(|(c, done)| (c.done_key.as_str(), c.lease_key.as_str(), *done))
        .collect();
    ctx.idempotency.finish_parts(&parts, &ctx.worker_id).await;
}

fn outcome_label(result: &Result<PartOutcome, PartError>) -> PartJobOutcome {
    match result {
        Ok(PartOutcome::Committed { .. }) => PartJobOutcome::Committed,
        Ok(PartOutcome::Discarded) => PartJobOutcome::Discarded,
        Ok(PartOutcome::AlreadyDone) => PartJobOutcome::AlreadyDone,
        Err(_) => PartJobOutcome::Failed,
    }
}

/// What to do with a job after its attempt.
enum Next {
    /// Done with (committed, nothing to do, or its session ended).
    Finished,
    /// Try again later, as attempt `attempt`; `reason` labels the metric.
    Retry { attempt: i64, reason: RetryReason },
    /// Out of attempts: its session was failed; dead-letter it with `reason`.
    GiveUp(String),
}

/// Records one attempt's end (metrics, log) and says what comes next, and
/// whether the part needs no more work (for Redis, see [`finish`]).
async fn settle(
    ctx: &WorkerCtx,
    claimed: &Claimed,
    attempt: i64,
    started: std::time::Instant,
    result: Result<PartOutcome, PartError>,
) -> (Next, bool) {
    let job = claimed.job;
    metrics().part_job_finished(outcome_label(&result), started.elapsed());
    let (done, next) = match result {
        Ok(outcome) => {
            tracing::info!(session = %job.session_id, part = job.part_number, ?outcome,
                elapsed_ms = started.elapsed().as_millis() as u64, "part done");
            (!matches!(outcome, PartOutcome::Discarded), Next::Finished)
        }
        Err(PartError::SessionFailed(why)) => {
            tracing::warn!(session = %job.session_id, part = job.part_number, %why, "session failed");
            (false, Next::Finished)
        }
        Err(why) => {
            let next = attempt.saturating_add(1);
            if next >= ctx.max_attempts {
                let reason = format!(
                    "part {} failed after {next} attempts: {why}",
                    job.part_number
                );
                tracing::error!(session = %job.session_id, %reason, "giving up on part");
                let _ = ctx.ingest.fail_session(job.session_id, &reason).await;
                (false, Next::GiveUp(reason))
            } else {
                tracing::warn!(session = %job.session_id, part = job.part_number, attempt = next, %why, "part attempt failed; retrying");
                (
                    false,
                    Next::Retry {
                        attempt: next,
                        reason: RetryReason::Error,
                    },
                )
            }
        }
    };
    (next, done)
}

/// What a job whose lease someone else holds becomes: looked at again
/// later (bounded like any retry), or left to its holder and the reconciler.
fn next_for_held(ctx: &WorkerCtx, attempt: i64) -> Next {
    let next = attempt.saturating_add(1);
    if next >= ctx.max_attempts.saturating_mul(HELD_RETRY_FACTOR) {
        Next::Finished
    } else {
        Next::Retry {
            attempt: next,
            reason: RetryReason::LeaseHeld,
        }
    }
}

/// The jobs of one message (one job, or a group of single-part files'
/// jobs): claimed together, written side by side, single-part files
/// committed in one transaction. Jobs that must be tried again leave the
/// message: each goes to the retry queue as a message of its own (or to the
/// dead-letter queue), and the delivery is acked only once they are all
/// published; if that fails the whole delivery is requeued (its committed
/// jobs are then recognised as done).
async fn handle_jobs(ctx: &WorkerCtx, delivery: Delivery, jobs: &[PartJob], attempt: i64) {
    let _in_flight: Vec<InFlight> = jobs.iter().map(|_| InFlight::new(&ctx.worker_id)).collect();
    let claimed = claim(ctx, jobs).await;
    let (held, ours): (Vec<&Claimed>, Vec<&Claimed>) =
        claimed.iter().partition(|c| c.lease == Lease::Held);
    let mut after: Vec<(PartJob, Next)> = held
        .iter()
        .map(|c| (c.job, next_for_held(ctx, attempt)))
        .collect();
    if !ours.is_empty() {
        let started = std::time::Instant::now();
        let ours_jobs: Vec<PartJob> = ours.iter().map(|c| c.job).collect();
        // Our leases are renewed while the attempts run (a part may take
        // longer than one lease lifetime); leases Redis did not answer for
        // (`Unknown`) are not ours to renew.
        let leases: Vec<&str> = ours
            .iter()
            .filter(|c| c.lease == Lease::Acquired)
            .map(|c| c.lease_key.as_str())
            .collect();
        let results = ctx
            .idempotency
            .renewing_while(
                &leases,
                &ctx.worker_id,
                ctx.lease_ttl,
                ctx.ingest.run_parts_together(&ours_jobs, &ctx.worker_id),
            )
            .await;
        let mut ended = Vec::with_capacity(ours.len());
        for (c, result) in ours.iter().zip(results) {
            let (next, done) = settle(ctx, c, attempt, started, result).await;
            after.push((c.job, next));
            ended.push((*c, done));
        }
        finish(ctx, &ended).await;
    }
    let mut messages = Vec::new();
    let mut retries: Vec<RetryReason> = Vec::new();
    let mut dead = 0;
    for (job, next) in after {
        let body = serde_json::to_vec(&job).expect("a part job serializes");
        match next {
            Next::Finished => {}
            Next::Retry { attempt, reason } => {
                messages.push(retry_message(body, attempt));
                retries.push(reason);
            }
            Next::GiveUp(reason) => {
                messages.push(Outgoing::dead_letter(&body, PARTS_QUEUE, &reason));
                dead += 1;
            }
        }
    }
    if messages.is_empty() {
        ack(&delivery).await;
        return;
    }
    match ctx.publisher.publish_all(&messages).await {
        Ok(()) => {
            for reason in retries {
                metrics().part_retried(reason);
            }
            if dead > 0 {
                metrics().dead_lettered(Queue::Parts, dead);
            }
            ack(&delivery).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish the retries; requeueing the message");
            tokio::time::sleep(Duration::from_secs(1)).await;
            requeue(&delivery).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_attempt_headers_are_clamped() {
        for (header, want) in [
            (None, 0),
            (Some(-1), 0),
            (Some(i64::MIN), 0),
            (Some(3), 3),
            (Some(32), 32),
            (Some(33), 32),
            (Some(i64::MAX), 32),
        ] {
            assert_eq!(attempt_from_header(header, 8), want, "{header:?}");
        }
    }

    #[test]
    fn retry_messages_of_any_attempt_are_built_at_once() {
        let started = std::time::Instant::now();
        for attempt in [i64::MIN, -2, -1, 0, 1, 40, i64::MAX] {
            let m = retry_message(b"{}".to_vec(), attempt);
            assert!(
                m.expiration.unwrap() <= Duration::from_secs(78),
                "{attempt}"
            );
        }
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
