//! The coordinator's background work: the ingest-request consumer, the
//! outbox relay (publisher confirms, `FOR UPDATE SKIP LOCKED`, so several
//! coordinators can run), the reconciler / garbage-collector loop, and the
//! backlog gauges computed from PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use shared::gc::SweepGrace;
use shared::ingest::{Completion, Ingest};
use shared::metrics::{metrics, MaintenanceStep, Queue, RoundOutcome, Service};
use shared::queue::{
    JobsError, Outgoing, Publisher, RequestMessage, UploadEvent, MAX_BATCH_ITEMS, REQUESTS_QUEUE,
};
use shared::store::{OutboxRelayError, OutboxRow, SessionState, Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Abandoned rows the collector takes per round.
const GC_BATCH: i64 = 500;

/// Timing of the background loops.
#[derive(Debug, Clone)]
pub struct Intervals {
    /// Re-publish a part job uncommitted this long after its last publish.
    pub part_stale_after: Duration,
    /// Complete sessions whose parts were all committed this long ago.
    pub completion_stale_after: Duration,
    /// Fail open sessions older than this.
    pub session_max_age: Duration,
    /// Abort S3 uploads receiving parts with no activity (creation or
    /// part commit) for this long.
    pub s3_upload_expiry: Duration,
    /// Staging leftovers of ended sessions are collected after this.
    pub staging_grace: Duration,
    /// Staging files of no known session are collected once unchanged this long.
    pub orphan_grace: Duration,
    /// Pause between reconciler / GC rounds.
    pub tick: Duration,
    /// Pause between updates of the backlog gauges.
    pub stats: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            part_stale_after: Duration::from_secs(120),
            completion_stale_after: Duration::from_secs(10),
            session_max_age: Duration::from_secs(24 * 3600),
            s3_upload_expiry: Duration::from_secs(7 * 24 * 3600),
            staging_grace: Duration::from_secs(60),
            orphan_grace: Duration::from_secs(24 * 3600),
            tick: Duration::from_secs(5),
            stats: Duration::from_secs(5),
        }
    }
}

/// Longest a coordinator works on one `ingest.requests` message (a batch of
/// up to 1000 requests whose sources are looked at 16 at a time) before
/// the attempt counts as failed; well under RabbitMQ's 30 min consumer timeout.
const REQUEST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest pause before a failed request message goes back to its queue.
const REQUEST_REQUEUE_DELAY_CAP: Duration = Duration::from_secs(60);

/// Which delivery of a request message this is, of how many allowed.
#[derive(Debug, Clone, Copy)]
struct Delivered {
    number: u32,
    limit: u32,
}

impl Delivered {
    fn of(delivery: &Delivery, limit: u32) -> Self {
        let earlier = shared::queue::earlier_deliveries(&delivery.properties);
        Delivered {
            number: earlier.saturating_add(1),
            limit: limit.max(1),
        }
    }

    /// No further delivery is allowed after this one.
    fn is_last(&self) -> bool {
        self.number >= self.limit
    }

    fn gave_up(&self, why: impl std::fmt::Display) -> String {
        format!(
            "gave up after {} deliveries (the limit is {}): {why}",
            self.number, self.limit
        )
    }

    /// Pause before giving the message back: 1 s, doubling, capped.
    fn requeue_delay(&self) -> Duration {
        let doublings = self.number.saturating_sub(1).min(6);
        (Duration::from_secs(1) * (1 << doublings)).min(REQUEST_REQUEUE_DELAY_CAP)
    }
}

/// Handles one message of `ingest.requests`: each item becomes (or finds) a
/// session (all new sessions of the message in one transaction); an item
/// that is refused goes to the dead-letter queue with the reason and a
/// `request.rejected` event; a message that is not a request at all, or a
/// batch over [`MAX_BATCH_ITEMS`], is dead-lettered whole. Acked only after
/// everything is committed. Deliveries are bounded
/// (`INGEST_REQUEST_MAX_DELIVERIES`, counted by the quorum queue's
/// `x-delivery-count`): a message that fails on our side, panics or hangs
/// is retried with growing pauses, and dead-lettered with the reason on
/// its last allowed delivery.
pub async fn handle_request(ingest: &Ingest, publisher: &Publisher, delivery: Delivery) {
    use futures::FutureExt;
    let delivered = Delivered::of(&delivery, ingest.cfg.limits.max_request_deliveries);
    if delivered.number > delivered.limit {
        // Earlier deliveries never reached an outcome (e.g. the process died).
        let reason = delivered.gave_up("no earlier delivery was handled to the end");
        dead_letter_whole(publisher, &delivery, &reason).await;
        return;
    }
    let handled = std::panic::AssertUnwindSafe(tokio::time::timeout(
        REQUEST_MESSAGE_TIMEOUT,
        handle_delivery(ingest, publisher, &delivery, delivered),
    ))
    .catch_unwind()
    .await;
    let why = match handled {
        Ok(Ok(())) => return,
        Ok(Err(_)) => format!("not handled within {REQUEST_MESSAGE_TIMEOUT:?}"),
        Err(panic) => format!("handling it panicked: {}", panic_text(panic.as_ref())),
    };
    tracing::error!(delivery = delivered.number, limit = delivered.limit, %why, "ingest request message failed");
    if delivered.is_last() {
        dead_letter_whole(publisher, &delivery, &delivered.gave_up(why)).await;
    } else {
        tokio::time::sleep(delivered.requeue_delay()).await;
        shared::queue::requeue(&delivery).await;
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Dead-letters a whole request message with `reason` (acked once
/// published; requeued if that fails).
async fn dead_letter_whole(publisher: &Publisher, delivery: &Delivery, reason: &str) {
    tracing::warn!(%reason, "ingest request message dead-lettered");
    let published = publisher
        .publish_all(&[Outgoing::dead_letter(
            &delivery.data,
            REQUESTS_QUEUE,
            reason,
        )])
        .await
        .is_ok();
    if published {
        metrics().dead_lettered(Queue::Requests, 1);
    }
    finish(delivery, published).await;
}

/// One delivery's work (see [`handle_request`]).
async fn handle_delivery(
    ingest: &Ingest,
    publisher: &Publisher,
    delivery: &Delivery,
    delivered: Delivered,
) {
    let items = match serde_json::from_slice::<RequestMessage>(&delivery.data) {
        Ok(message) => message.into_items(),
        Err(e) => {
            let reason = format!("malformed ingest request: {e}");
            dead_letter_whole(publisher, delivery, &reason).await;
            return;
        }
    };
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        let reason = format!(
            "a batch has 1..={MAX_BATCH_ITEMS} items, this one has {} items; nothing was created",
            items.len()
        );
        dead_letter_whole(publisher, delivery, &reason).await;
        return;
    }
    let mut rejected = Vec::new();
    let results = ingest.submit_batch(&items).await;
    for (item, result) in items.into_iter().zip(results) {
        match result {
            Ok((session, created)) => {
                tracing::info!(request_id = %item.request_id, session = %session.id, created, "ingest request accepted");
            }
            Err(e) if e.is_client_error() => {
                tracing::warn!(request_id = %item.request_id, error = %e, "ingest request refused");
                rejected.push((item, e.to_string()));
            }
            Err(e) if delivered.is_last() => {
                tracing::error!(request_id = %item.request_id, error = %e, "ingest request failed on its last delivery");
                rejected.push((item, delivered.gave_up(e)));
            }
            Err(e) => {
                // Our side (or the source's server) is down: leave the message for later.
                tracing::error!(request_id = %item.request_id, error = %e, delivery = delivered.number, "cannot process ingest request now");
                tokio::time::sleep(delivered.requeue_delay()).await;
                shared::queue::requeue(delivery).await;
                return;
            }
        }
    }
    let mut out = Vec::new();
    for (item, reason) in &rejected {
        let body = serde_json::to_vec(item).expect("request encodes");
        out.push(Outgoing::dead_letter(&body, REQUESTS_QUEUE, reason));
        out.push(rejection_event(&item.request_id, &item.dest, reason));
    }
    let published = out.is_empty() || publisher.publish_all(&out).await.is_ok();
    if published && !rejected.is_empty() {
        metrics().dead_lettered(Queue::Requests, rejected.len() as u64);
    }
    finish(delivery, published).await;
}

fn rejection_event(request_id: &str, dest: &str, reason: &str) -> Outgoing {
    let event = UploadEvent {
        event: "request.rejected".into(),
        session_id: uuid::Uuid::nil(),
        request_id: request_id.to_string(),
        dest: dest.to_string(),
        size: 0,
        md5: None,
        crc32c: None,
        error: Some(reason.to_string()),
        replaced: false,
    };
    Outgoing::event(&event)
}

/// Acks when the outcome was recorded, else requeues.
async fn finish(delivery: &Delivery, recorded: bool) {
    let res = if recorded {
        delivery.acker.ack(BasicAckOptions::default()).await
    } else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "ack/nack failed; the message will be redelivered");
    }
}

/// Publishes outbox rows until `shutdown`: woken by `NOTIFY outbox`, and at
/// least every second. A row is deleted only after the broker confirmed it.
pub async fn run_outbox_relay(
    store: Store,
    publisher: Arc<Publisher>,
    shutdown: CancellationToken,
) {
    let mut listener = None;
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        if listener.is_none() {
            match sqlx::postgres::PgListener::connect_with(&store.pool).await {
                Ok(mut l) => {
                    if l.listen("outbox").await.is_ok() {
                        listener = Some(l);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot LISTEN for outbox notifications"),
            }
        }
        match relay_once(&store, &publisher).await {
            Ok(n) if n >= RELAY_BATCH => {
                delay = Duration::from_millis(100);
                continue; // there is more
            }
            Ok(_) => delay = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "outbox relay failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        let wait = async {
            match listener.as_mut() {
                Some(l) => {
                    if l.recv().await.is_err() {
                        listener = None;
                        return;
                    }
                    // One pass publishes every row committed so far: let a few
                    // more commits land, then drop the notifications they
                    // sent (each insert statement sends one), so that a burst
                    // costs a few passes rather than one empty pass per row.
                    tokio::time::sleep(RELAY_GATHER).await;
                    while l.next_buffered().is_some() {}
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::timeout(Duration::from_secs(1), wait) => {}
        }
    }
}

/// Rows one relay pass claims at most.
const RELAY_BATCH: usize = 500;

/// How long the relay lets notifications gather after the first one.
const RELAY_GATHER: Duration = Duration::from_millis(2);

/// Publishes one batch of unsent rows; returns how many.
pub async fn relay_once(
    store: &Store,
    publisher: &Publisher,
) -> Result<usize, OutboxRelayError<JobsError>> {
    store
        .relay_outbox(RELAY_BATCH as i64, |rows: Vec<OutboxRow>| async move {
            // Events waiting side by side leave as one message (up to
            // EVENTS_PER_MESSAGE events); everything else one message per row.
            let messages = Outgoing::coalesce(
                rows.iter()
                    .map(|r| (r.exchange.as_str(), r.routing_key.as_str(), &r.payload)),
            );
            publisher.publish_all(&messages).await
        })
        .await
}

/// The reconciler and garbage collector, one round every `tick`.
pub async fn run_maintenance(ingest: Ingest, intervals: Intervals, shutdown: CancellationToken) {
    let m = metrics();
    while !shutdown.is_cancelled() {
        let started = std::time::Instant::now();
        let report = maintenance_round(&ingest, &intervals).await;
        for (step, error) in &report.errors {
            tracing::warn!(step, %error, "maintenance step failed");
        }
        let outcome = if report.errors.is_empty() {
            RoundOutcome::Ok
        } else {
            RoundOutcome::Error
        };
        m.maintenance_round(outcome, started.elapsed());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(intervals.tick) => {}
        }
    }
}

/// What went wrong in one maintenance round: `(step, error)`, each also
/// counted in `mfs_ingest_maintenance_errors_total{step}`. Empty = all well.
#[derive(Debug, Default)]
pub struct RoundReport {
    pub errors: Vec<(&'static str, String)>,
}

impl RoundReport {
    fn failed(&mut self, step: MaintenanceStep, error: impl std::fmt::Display) {
        metrics().maintenance_error(step);
        self.errors.push((step.as_str(), error.to_string()));
    }
}

/// One round: re-publish stale parts, complete forgotten sessions, expire
/// old ones, abort idle S3 uploads, collect staging leftovers, delete
/// abandoned inodes. Every step runs whatever the others did; a failing
/// item does not stop its step.
pub async fn maintenance_round(ingest: &Ingest, intervals: &Intervals) -> RoundReport {
    let mut report = RoundReport::default();
    republish_stale(ingest, intervals, &mut report).await;
    complete_forgotten(ingest, intervals, &mut report).await;
    expire_old(ingest, intervals, &mut report).await;
    expire_s3_uploads(ingest, intervals, &mut report).await;
    collect_staging(ingest, intervals, &mut report).await;
    report
}

async fn republish_stale(ingest: &Ingest, intervals: &Intervals, report: &mut RoundReport) {
    match ingest
        .store
        .republish_stale_parts(intervals.part_stale_after)
        .await
    {
        Ok(republished) => {
            metrics().parts_republished(republished);
            if republished > 0 {
                tracing::info!(republished, "re-published stale part jobs");
            }
        }
        Err(e) => report.failed(MaintenanceStep::Republish, e),
    }
}

async fn complete_forgotten(ingest: &Ingest, intervals: &Intervals, report: &mut RoundReport) {
    let ids = match ingest
        .store
        .sessions_awaiting_completion(intervals.completion_stale_after)
        .await
    {
        Ok(ids) => ids,
        Err(e) => return report.failed(MaintenanceStep::Complete, e),
    };
    for id in ids {
        match ingest.complete(id).await {
            Ok(outcome) => {
                if matches!(outcome, Completion::Completed { .. }) {
                    metrics().reconciler_completed();
                }
                tracing::info!(session = %id, ?outcome, "reconciler completed a session")
            }
            Err(e) => tracing::warn!(session = %id, error = %e, "completion failed; will retry"),
        }
    }
}

async fn expire_old(ingest: &Ingest, intervals: &Intervals, report: &mut RoundReport) {
    let ids = match ingest
        .store
        .expired_sessions(intervals.session_max_age)
        .await
    {
        Ok(ids) => ids,
        Err(e) => return report.failed(MaintenanceStep::Expire, e),
    };
    let why = format!(
        "expired: not completed within {:?}",
        intervals.session_max_age
    );
    for id in ids {
        match ingest.end_session(id, SessionState::Failed, &why).await {
            Ok(true) => tracing::warn!(session = %id, "session expired"),
            Ok(false) => {}
            Err(e) => report.failed(MaintenanceStep::Expire, format!("session {id}: {e}")),
        }
    }
}

/// S3 uploads receiving parts with no activity for `s3_upload_expiry`
/// (created, or a part committed, before then) are aborted as
/// AbortMultipartUpload does: state `aborted`, `upload.aborted` event,
/// their parts' staging inodes recorded abandoned (the collector of this
/// same round deletes them).
async fn expire_s3_uploads(ingest: &Ingest, intervals: &Intervals, report: &mut RoundReport) {
    let idle = intervals.s3_upload_expiry;
    let ids = match ingest
        .store
        .idle_pushed_sessions(idle, S3_EXPIRE_BATCH)
        .await
    {
        Ok(ids) => ids,
        Err(e) => return report.failed(MaintenanceStep::S3Expire, e),
    };
    let why = format!(
        "expired: no part of this upload arrived within {}s (S3_UPLOAD_EXPIRY_SECS)",
        idle.as_secs()
    );
    for id in ids {
        match ingest.store.expire_pushed_session(id, idle, &why).await {
            Ok(Some(session)) => {
                shared::metrics::session_finished(
                    SessionState::Aborted.as_str(),
                    session.created_at,
                );
                tracing::warn!(session = %id, dest = session.dest, "idle S3 upload aborted");
            }
            Ok(None) => {}
            Err(e) => report.failed(MaintenanceStep::S3Expire, format!("upload {id}: {e}")),
        }
    }
}

/// Idle S3 uploads one round aborts at most.
const S3_EXPIRE_BATCH: i64 = 100;

/// The staging sweep, then the collector: the collector runs whatever the
/// sweep met.
async fn collect_staging(ingest: &Ingest, intervals: &Intervals, report: &mut RoundReport) {
    let grace = SweepGrace {
        ended: intervals.staging_grace,
        orphan: intervals.orphan_grace,
    };
    let mut swept = 0;
    match ingest.sweep_staging(grace).await {
        Ok(sweep) => {
            swept = sweep.recorded;
            for failure in sweep.failures {
                report.failed(MaintenanceStep::Sweep, failure);
            }
        }
        Err(e) => report.failed(MaintenanceStep::Sweep, e),
    }
    let mut deleted = 0;
    match ingest.collect_garbage_batch(GC_BATCH).await {
        Ok(gc) => {
            deleted = gc.deleted;
            for failure in gc.failures {
                report.failed(MaintenanceStep::Gc, failure);
            }
        }
        Err(e) => report.failed(MaintenanceStep::Gc, e),
    }
    metrics().garbage_collected(swept, deleted);
    if swept > 0 || deleted > 0 {
        tracing::info!(swept, deleted, "garbage collected");
    }
}

/// Updates the backlog gauges (pending parts and the oldest one's age, open
/// sessions, unsent outbox rows, undeleted abandoned inodes) from PostgreSQL
/// every `every` until `shutdown`. Like pgmq's queue metrics, they come from
/// the truth, not from the broker; every coordinator exports the same values.
pub async fn run_backlog_gauges(store: Store, every: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Err(e) = update_backlog_gauges(&store).await {
            tracing::warn!(error = %e, "cannot update the backlog gauges");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Why the backlog gauges were not updated.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error("the backlog query timed out")]
    TimedOut,
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// One update of the backlog gauges.
pub async fn update_backlog_gauges(store: &Store) -> Result<(), BacklogError> {
    let values = tokio::time::timeout(Duration::from_secs(10), store.backlog())
        .await
        .map_err(|_| {
            shared::metrics::service_error(Service::Postgres);
            BacklogError::TimedOut
        })??;
    shared::metrics::set_backlog(&values);
    Ok(())
}
