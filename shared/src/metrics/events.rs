//! The events the system records, as named methods of [`Metrics`] (and, for
//! the process-wide ones called from many places, functions of this module):
//! one call per event, with typed label values, so a call site says what
//! happened and never names a metric or a label.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::labels::{
    method_label, AbandonReason, Component, DuplicateDetector, MaintenanceStep, PartJobOutcome,
    Queue, Renewal, RequestOutcome, RetryReason, RoundOutcome, S3LimitReason, Service, SessionEnd,
    StatusClass,
};
use super::{metrics, Metrics};

/// Adds one to the series of `v` labelled `label`.
fn inc(v: &IntCounterVec, label: &str) {
    v.with_label_values(&[label]).inc();
}

// ------------------------------------------------------------ requests and sessions

impl Metrics {
    /// One ingest request was handled with `outcome` (a session created
    /// counts in `sessions_created` too); `elapsed`: its share of the batch.
    pub fn request(&self, outcome: RequestOutcome, elapsed: Duration) {
        self.request_duration.observe(elapsed.as_secs_f64());
        if outcome == RequestOutcome::Created {
            self.sessions_created.inc();
        }
        inc(&self.requests, outcome.as_str());
    }

    /// A session was created without an ingest request: an upload pushed
    /// through the S3 endpoint.
    pub fn pushed_session_created(&self) {
        self.sessions_created.inc();
    }

    /// A completion finished its session successfully in `elapsed`.
    pub fn completion_succeeded(&self, elapsed: Duration) {
        self.completion_duration.observe(elapsed.as_secs_f64());
    }

    /// A completion could not run (it is retried).
    pub fn completion_failed(&self) {
        self.completion_errors.inc();
    }
}

/// A session ended in `state` (its state column; created at `created_at`).
pub fn session_finished(state: &str, created_at: chrono::DateTime<chrono::Utc>) {
    let m = metrics();
    let label = SessionEnd::of_state(state).as_str();
    m.sessions_finished.with_label_values(&[label]).inc();
    let secs = (chrono::Utc::now() - created_at).num_milliseconds().max(0) as f64 / 1000.0;
    m.session_duration.with_label_values(&[label]).observe(secs);
}

// ------------------------------------------------------------ parts

impl Metrics {
    /// A part attempt started (it took a fencing token).
    pub fn part_started(&self) {
        self.parts_started.inc();
    }

    /// A part of `size` bytes was committed.
    pub fn part_committed(&self, size: u64) {
        self.parts_committed.inc();
        self.part_size.observe(size as f64);
    }

    /// A part attempt's staging inode was recorded as abandoned.
    pub fn part_abandoned(&self, reason: AbandonReason) {
        inc(&self.parts_abandoned, reason.as_str());
    }

    /// A part job went to the delayed retry queue.
    pub fn part_retried(&self, reason: RetryReason) {
        inc(&self.parts_retried, reason.as_str());
    }

    /// A worker spent `elapsed` on a part job that ended with `outcome`.
    pub fn part_job_finished(&self, outcome: PartJobOutcome, elapsed: Duration) {
        self.part_duration
            .with_label_values(&[outcome.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// A duplicate part job was acknowledged without writing.
    pub fn duplicate_job(&self, by: DuplicateDetector) {
        inc(&self.duplicate_jobs, by.as_str());
    }

    /// `count` messages from `from` were sent to `ingest.dead`.
    pub fn dead_lettered(&self, from: Queue, count: u64) {
        self.dead_letters
            .with_label_values(&[from.as_str()])
            .inc_by(count);
    }

    /// A part lease renewal answered `answer`.
    pub fn lease_renewal(&self, answer: Renewal) {
        self.lease_renewals
            .with_label_values(&[answer.as_str()])
            .inc();
    }

    /// Worker `worker` started with room for `concurrency` part jobs (none
    /// in flight yet).
    pub fn worker_started(&self, worker: &str, concurrency: usize) {
        self.worker_concurrency
            .with_label_values(&[worker])
            .set(concurrency as i64);
        self.worker_in_flight.with_label_values(&[worker]).set(0);
    }
}

/// Counts a part job in flight on `worker` while alive.
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn new(worker: &str) -> InFlight {
        let g = metrics().worker_in_flight.with_label_values(&[worker]);
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// ------------------------------------------------------------ queues

impl Metrics {
    /// A message was published to `queue` (a queue or exchange).
    pub fn message_published(&self, queue: Queue) {
        inc(&self.queue_published, queue.as_str());
    }

    /// The broker confirmed a message published to `queue`.
    pub fn message_confirmed(&self, queue: Queue) {
        inc(&self.queue_confirmed, queue.as_str());
    }

    /// The broker refused (nacked) a message published to `queue`.
    pub fn message_nacked(&self, queue: Queue) {
        inc(&self.queue_nacked, queue.as_str());
    }

    /// The delivery counters of the queue called `queue`, created (at 0)
    /// now: a consumer takes them when it starts.
    pub fn deliveries(&self, queue: &str) -> Deliveries {
        let label = Queue::of(queue).as_str();
        Deliveries {
            consumed: self.queue_consumed.with_label_values(&[label]),
            redelivered: self.queue_redelivered.with_label_values(&[label]),
        }
    }
}

/// The delivery counters of one queue (see [`Metrics::deliveries`]).
pub struct Deliveries {
    consumed: IntCounter,
    redelivered: IntCounter,
}

impl Deliveries {
    /// A message was delivered; `redelivered`: the broker flagged it so.
    pub fn delivered(&self, redelivered: bool) {
        self.consumed.inc();
        if redelivered {
            self.redelivered.inc();
        }
    }
}

// ------------------------------------------------------------ maintenance

impl Metrics {
    /// A maintenance round ended with `outcome` after `elapsed`.
    pub fn maintenance_round(&self, outcome: RoundOutcome, elapsed: Duration) {
        inc(&self.maintenance_rounds, outcome.as_str());
        self.maintenance_duration.observe(elapsed.as_secs_f64());
    }

    /// A step of a maintenance round met an error.
    pub fn maintenance_error(&self, step: MaintenanceStep) {
        inc(&self.maintenance_errors, step.as_str());
    }

    /// The reconciler re-published `count` stale part jobs.
    pub fn parts_republished(&self, count: u64) {
        self.reconciler_republished.inc_by(count);
    }

    /// The reconciler completed a session someone else should have.
    pub fn reconciler_completed(&self) {
        self.reconciler_completed.inc();
    }

    /// The staging sweep recorded `swept` crashed attempts' files as
    /// abandoned and the collector deleted `deleted` abandoned inodes.
    pub fn garbage_collected(&self, swept: u64, deleted: u64) {
        self.gc_swept.inc_by(swept);
        self.gc_deleted.inc_by(deleted);
    }
}

// ------------------------------------------------------------ process-wide

/// Sets `mfs_ingest_build_info{component, version} 1`.
pub fn set_build_info(component: Component) {
    metrics()
        .build_info
        .with_label_values(&[component.as_str(), env!("CARGO_PKG_VERSION")])
        .set(1);
}

/// A call to `service` failed (error or timeout).
pub fn service_error(service: Service) {
    let m = metrics();
    m.service_errors
        .with_label_values(&[service.as_str()])
        .inc();
    m.down[service as usize].store(true, Ordering::Relaxed);
}

/// A connection to `service` was opened or a call succeeded: the first one
/// after a failure counts as a reconnect.
pub fn service_ok(service: Service) {
    let m = metrics();
    if m.down[service as usize].load(Ordering::Relaxed)
        && m.down[service as usize].swap(false, Ordering::Relaxed)
    {
        m.service_reconnects
            .with_label_values(&[service.as_str()])
            .inc();
    }
}

/// A PostgreSQL error: counted unless it only says "no such row".
pub fn postgres_error(e: &sqlx::Error) {
    if !matches!(e, sqlx::Error::RowNotFound) {
        service_error(Service::Postgres);
    }
}

/// One HTTP request: `route` is the route template (or `unmatched`).
pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let m = metrics();
    let method = method_label(method);
    {
        let mut seen = m.http_seen.lock().expect("http_seen lock");
        if !seen.contains(&(route.to_string(), method)) {
            for class in StatusClass::CREATED_FIRST {
                m.http_requests
                    .with_label_values(&[route, method, class.as_str()]);
            }
            seen.insert((route.to_string(), method));
        }
    }
    m.http_requests
        .with_label_values(&[route, method, StatusClass::of(status).as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[route, method])
        .observe(elapsed.as_secs_f64());
}

/// The S3 endpoint's operations (`operation` label values): their request
/// series are created at 0, so a rate is 0, not "no data", until the first.
pub fn s3_operations(operations: &[&str]) {
    for operation in operations {
        s3_operation_seen(operation);
    }
}

fn s3_operation_seen(operation: &str) {
    let m = metrics();
    let mut seen = m.s3_seen.lock().expect("s3_seen lock");
    if !seen.contains(operation) {
        for class in StatusClass::CREATED_FIRST {
            m.s3_requests
                .with_label_values(&[operation, class.as_str()]);
        }
        m.s3_duration.with_label_values(&[operation]);
        seen.insert(operation.to_string());
    }
}

/// One S3 request answered: `operation` is s3s's operation name (a fixed
/// set), `status` the HTTP status.
pub fn s3_request(operation: &str, status: u16, elapsed: Duration) {
    let m = metrics();
    s3_operation_seen(operation);
    m.s3_requests
        .with_label_values(&[operation, StatusClass::of(status).as_str()])
        .inc();
    m.s3_duration
        .with_label_values(&[operation])
        .observe(elapsed.as_secs_f64());
}

impl Metrics {
    /// `bytes` of an S3 object body were received and made durable.
    pub fn s3_received(&self, bytes: u64) {
        self.s3_received.inc_by(bytes);
    }

    /// A GetObject answer started with a body of `bytes`.
    pub fn s3_sent(&self, bytes: u64) {
        self.s3_sent.inc_by(bytes);
    }

    /// The S3 endpoint's limits refused a request.
    pub fn s3_refused(&self, reason: S3LimitReason) {
        self.s3_limited.with_label_values(&[reason.as_str()]).inc();
    }
}
