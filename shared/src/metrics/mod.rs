//! Prometheus metrics of both binaries: one process-wide registry and every
//! metric the system exports, defined (and registered) together in
//! [`Metrics`], so the set is fixed, documented and testable.
//!
//! # Contract
//!
//! The full list (name, type, labels, meaning) is the table "Metrics" in
//! `docs/operations.md`; `shared/tests/dashboards.rs` fails when that table,
//! this module, the dashboards or the alert rules disagree. The rules:
//!
//! - Every name starts with `mfs_ingest_`; values are in base units
//!   (`_seconds`, `_bytes`); counters end in `_total`; a histogram exports
//!   `_bucket`, `_sum` and `_count`.
//! - Labels are bounded: fixed value sets (`state`, `outcome`, `reason`,
//!   `queue`, `service`, `status`, `method`), MooseFS operations (`op`, about
//!   20), chunkservers (`server`, IP:port, one per chunkserver), HTTP route
//!   templates (`route`, never the raw path) and worker ids (`worker`). Never
//!   a session id, path, request id or part number.
//! - Label values known in advance are created at start with value 0, so a
//!   rate or ratio is 0, not "no data", until the first event.
//! - Gauges computed from PostgreSQL (`mfs_ingest_pending_parts`, …) are
//!   exported by every coordinator with the same value: aggregate them with
//!   `max`, not `sum`.
//!
//! # Recording
//!
//! The metrics are private: a call site records an event by its name, with
//! typed label values — `metrics().part_retried(RetryReason::LeaseHeld)`,
//! `metrics().request(RequestOutcome::Duplicate, elapsed)` — or, for the
//! process-wide events called from many places, a function of this module
//! (`service_error`, `session_finished`, `http_request`, `set_backlog`, …).
//! MooseFS client events arrive through [`MfsObserver`].
//!
//! # Rooms
//!
//! - this file: the registry, the exposition, the families table (every
//!   metric's name, type, labels, help and buckets) and the series created
//!   at start;
//! - `labels`: the closed label value sets, as enums;
//! - `events`: the named events;
//! - `backlog`: the backlog gauges computed from PostgreSQL;
//! - `mfs`: the MooseFS client's [`Observer`](moosefs::Observer);
//! - `family`: what a family is ([`Family`], [`Kind`]) and registration,
//!   which keeps the registry and [`families()`] in step.

mod backlog;
mod events;
mod family;
mod labels;
mod mfs;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry, TextEncoder,
};

pub use backlog::{set_backlog, BacklogValues};
pub use events::{
    http_request, postgres_error, s3_operations, s3_request, service_error, service_ok,
    session_finished, set_build_info, Deliveries, InFlight,
};
pub use labels::{
    AbandonReason, Component, DuplicateDetector, MaintenanceStep, MfsOutcome, PartJobOutcome,
    Queue, Renewal, RequestOutcome, RetryReason, RoundOutcome, S3LimitReason, Service, SessionEnd,
    StatusClass,
};
pub use mfs::{mfs_observer, MfsObserver};

use family::Builder;
pub use family::{Family, Kind};
use mfs::MfsOp;

/// Prefix of every metric name.
pub const PREFIX: &str = "mfs_ingest_";

/// The process-wide registry every metric is registered in.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::new)
}

/// Every metric in the Prometheus text format.
pub fn render() -> String {
    metrics();
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry().gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family, after registering all of them.
pub fn families() -> &'static [Family] {
    &metrics().families
}

/// Every series name the binaries export (histograms as `_bucket`, `_sum`,
/// `_count`), sorted. Registers every metric first.
pub fn all_metric_names() -> Vec<String> {
    let mut names: Vec<String> = families().iter().flat_map(|f| f.series_names()).collect();
    names.sort();
    names
}

// ------------------------------------------------------------ buckets

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const PART_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
const SESSION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    21600.0, 86400.0,
];
const COMPLETION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// 64 KiB (one MooseFS block) to 16 GiB, ×4.
/// S3 request latency: small objects in milliseconds, 64 MiB parts in
/// seconds, long completions in minutes.
const S3_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

const SIZE_BUCKETS: &[f64] = &[
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
    17179869184.0,
];
const CHAIN_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];

// ------------------------------------------------------------ the metrics

/// Every metric of the system. Get it with [`metrics()`].
pub struct Metrics {
    families: Vec<Family>,

    // Requests and sessions
    requests: IntCounterVec,
    request_duration: Histogram,
    sessions_created: IntCounter,
    sessions_finished: IntCounterVec,
    session_duration: HistogramVec,
    completion_duration: Histogram,
    completion_errors: IntCounter,

    // Parts (workers)
    parts_started: IntCounter,
    parts_committed: IntCounter,
    parts_retried: IntCounterVec,
    parts_abandoned: IntCounterVec,
    part_duration: HistogramVec,
    part_size: Histogram,
    worker_in_flight: IntGaugeVec,
    worker_concurrency: IntGaugeVec,
    duplicate_jobs: IntCounterVec,
    dead_letters: IntCounterVec,
    lease_renewals: IntCounterVec,

    // MooseFS
    mfs_request_duration: HistogramVec,
    mfs_requests: IntCounterVec,
    mfs_write_statuses: IntCounterVec,
    mfs_chain_length: Histogram,
    mfs_chunkserver_errors: IntCounterVec,
    mfs_master_reconnects: IntCounter,
    mfs_chunk_write_retries: IntCounter,
    mfs_replica_mismatches: IntCounter,
    mfs_written_bytes: IntCounter,

    // Queues
    queue_published: IntCounterVec,
    queue_confirmed: IntCounterVec,
    queue_nacked: IntCounterVec,
    queue_consumed: IntCounterVec,
    queue_redelivered: IntCounterVec,

    // Backlog (computed from PostgreSQL by the coordinator)
    pending_parts: IntGauge,
    oldest_pending_part_age: Gauge,
    open_sessions: IntGauge,
    oldest_open_session_age: Gauge,
    outbox_pending: IntGauge,
    oldest_outbox_message_age: Gauge,
    gc_pending_inodes: IntGauge,

    // Services
    service_errors: IntCounterVec,
    service_reconnects: IntCounterVec,

    // Maintenance
    gc_deleted: IntCounter,
    gc_swept: IntCounter,
    reconciler_republished: IntCounter,
    reconciler_completed: IntCounter,
    maintenance_rounds: IntCounterVec,
    maintenance_errors: IntCounterVec,
    maintenance_duration: Histogram,

    // HTTP
    http_requests: IntCounterVec,
    http_duration: HistogramVec,

    // S3 endpoint
    s3_requests: IntCounterVec,
    s3_duration: HistogramVec,
    s3_received: IntCounter,
    s3_sent: IntCounter,
    s3_limited: IntCounterVec,

    build_info: IntGaugeVec,

    mfs_ops: Mutex<HashMap<&'static str, MfsOp>>,
    http_seen: Mutex<HashSet<(String, &'static str)>>,
    s3_seen: Mutex<HashSet<String>>,
    down: [AtomicBool; 3],
}

/// The metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut b = Builder::default();
        let mut m = Metrics {
            requests: b.counter_vec(
                "mfs_ingest_requests_total",
                "Ingest requests validated (HTTP API and ingest.requests), by outcome: created a session, duplicate of an existing request_id, rejected (bad input, nothing changed), error (our side failed; retried).",
                &["outcome"],
            ),
            request_duration: b.histogram(
                "mfs_ingest_request_duration_seconds",
                "Time to validate an ingest request and create its session.",
                LATENCY_BUCKETS,
            ),
            sessions_created: b.counter(
                "mfs_ingest_sessions_created_total",
                "Upload sessions created.",
            ),
            sessions_finished: b.counter_vec(
                "mfs_ingest_sessions_finished_total",
                "Upload sessions that ended, by final state (completed, failed, aborted).",
                &["state"],
            ),
            session_duration: b.histogram_vec(
                "mfs_ingest_session_duration_seconds",
                "Time from a session's creation to its end, by final state.",
                &["state"],
                SESSION_BUCKETS,
            ),
            completion_duration: b.histogram(
                "mfs_ingest_completion_duration_seconds",
                "Duration of successful completions: the locked transaction that checks the parts, assembles the file and renames it into place.",
                COMPLETION_BUCKETS,
            ),
            completion_errors: b.counter(
                "mfs_ingest_completion_errors_total",
                "Completions that could not run (MooseFS or PostgreSQL trouble); the reconciler retries them.",
            ),
            parts_started: b.counter(
                "mfs_ingest_parts_started_total",
                "Part attempts started (a fencing token was taken).",
            ),
            parts_committed: b.counter(
                "mfs_ingest_parts_committed_total",
                "Parts committed in PostgreSQL after every replica acknowledged them.",
            ),
            parts_retried: b.counter_vec(
                "mfs_ingest_parts_retried_total",
                "Part jobs sent to the delayed retry queue, by reason (error: the attempt failed; lease_held: another worker is on it).",
                &["reason"],
            ),
            parts_abandoned: b.counter_vec(
                "mfs_ingest_parts_abandoned_total",
                "Part attempts whose written staging inode was recorded as abandoned, by reason (attempt_failed, source_too_slow: the part deadline or minimum throughput cut the source read, superseded by a newer attempt, session_closed).",
                &["reason"],
            ),
            part_duration: b.histogram_vec(
                "mfs_ingest_part_duration_seconds",
                "Time a worker spent on one part job, by outcome (committed, discarded, already_done, failed).",
                &["outcome"],
                PART_BUCKETS,
            ),
            part_size: b.histogram(
                "mfs_ingest_part_size_bytes",
                "Size of committed parts.",
                SIZE_BUCKETS,
            ),
            worker_in_flight: b.gauge_vec(
                "mfs_ingest_worker_parts_in_flight",
                "Part jobs a worker is working on now.",
                &["worker"],
            ),
            worker_concurrency: b.gauge_vec(
                "mfs_ingest_worker_concurrency",
                "Part jobs a worker works on at most at once (its configured concurrency and prefetch).",
                &["worker"],
            ),
            duplicate_jobs: b.counter_vec(
                "mfs_ingest_duplicate_jobs_suppressed_total",
                "Duplicate part jobs acknowledged without writing, by what recognised them (redis: done marker; postgres: part already committed or session no longer open).",
                &["by"],
            ),
            dead_letters: b.counter_vec(
                "mfs_ingest_dead_letters_total",
                "Messages sent to ingest.dead, by the queue they came from.",
                &["queue"],
            ),
            lease_renewals: b.counter_vec(
                "mfs_ingest_lease_renewals_total",
                "Renewals of part leases while attempts run, by outcome (renewed; lost: another worker holds it or it expired; unknown: Redis did not answer).",
                &["outcome"],
            ),
            mfs_request_duration: b.histogram_vec(
                "mfs_ingest_mfs_request_duration_seconds",
                "Latency of MooseFS master requests, by operation.",
                &["op"],
                LATENCY_BUCKETS,
            ),
            mfs_requests: b.counter_vec(
                "mfs_ingest_mfs_requests_total",
                "MooseFS master requests, by operation and outcome (ok, status: a MooseFS error status such as ENOENT, timeout, disconnected).",
                &["op", "outcome"],
            ),
            mfs_write_statuses: b.counter_vec(
                "mfs_ingest_mfs_write_statuses_total",
                "CSTOCL_WRITE_STATUS answers from head chunkservers (write id 0 included), by status name.",
                &["status"],
            ),
            mfs_chain_length: b.histogram(
                "mfs_ingest_mfs_write_chain_length",
                "Chunkservers in the chain of each chunk write session.",
                CHAIN_BUCKETS,
            ),
            mfs_chunkserver_errors: b.counter_vec(
                "mfs_ingest_mfs_chunkserver_errors_total",
                "Chunk write sessions that failed on a chunkserver (connect, I/O, bad or missing status), by chunkserver IP:port.",
                &["server"],
            ),
            mfs_master_reconnects: b.counter(
                "mfs_ingest_mfs_master_reconnects_total",
                "Times the MooseFS master session was re-established.",
            ),
            mfs_chunk_write_retries: b.counter(
                "mfs_ingest_mfs_chunk_write_retries_total",
                "Chunk writes retried with a fresh lock and chain.",
            ),
            mfs_replica_mismatches: b.counter(
                "mfs_ingest_mfs_replica_mismatches_total",
                "Replicas whose CRCs did not match the written data (caught before a part was reported done).",
            ),
            mfs_written_bytes: b.counter(
                "mfs_ingest_mfs_written_bytes_total",
                "Bytes acknowledged by every replica of a chain.",
            ),
            queue_published: b.counter_vec(
                "mfs_ingest_queue_published_total",
                "Messages published to RabbitMQ, by queue or exchange.",
                &["queue"],
            ),
            queue_confirmed: b.counter_vec(
                "mfs_ingest_queue_confirmed_total",
                "Published messages the broker confirmed (publisher confirms), by queue or exchange.",
                &["queue"],
            ),
            queue_nacked: b.counter_vec(
                "mfs_ingest_queue_nacked_total",
                "Published messages the broker refused (nack), by queue or exchange.",
                &["queue"],
            ),
            queue_consumed: b.counter_vec(
                "mfs_ingest_queue_consumed_total",
                "Messages delivered to this process, by queue.",
                &["queue"],
            ),
            queue_redelivered: b.counter_vec(
                "mfs_ingest_queue_redelivered_total",
                "Deliveries flagged redelivered by the broker (an earlier delivery was not acked), by queue.",
                &["queue"],
            ),
            pending_parts: b.int_gauge(
                "mfs_ingest_pending_parts",
                "Uncommitted parts of open sessions (from PostgreSQL; the real backlog).",
            ),
            oldest_pending_part_age: b.gauge(
                "mfs_ingest_oldest_pending_part_age_seconds",
                "Age of the oldest uncommitted part of an open session (since its session was created); 0 when none.",
            ),
            open_sessions: b.int_gauge(
                "mfs_ingest_open_sessions",
                "Sessions in state open or completing.",
            ),
            oldest_open_session_age: b.gauge(
                "mfs_ingest_oldest_open_session_age_seconds",
                "Age of the oldest open or completing session; 0 when none.",
            ),
            outbox_pending: b.int_gauge(
                "mfs_ingest_outbox_pending_messages",
                "Outbox rows not yet confirmed by RabbitMQ.",
            ),
            oldest_outbox_message_age: b.gauge(
                "mfs_ingest_oldest_outbox_message_age_seconds",
                "Age of the oldest unsent outbox row; 0 when none.",
            ),
            gc_pending_inodes: b.int_gauge(
                "mfs_ingest_gc_pending_inodes",
                "Abandoned staging inodes not deleted yet.",
            ),
            service_errors: b.counter_vec(
                "mfs_ingest_service_errors_total",
                "Failed calls to PostgreSQL, Redis or RabbitMQ (errors and timeouts), by service.",
                &["service"],
            ),
            service_reconnects: b.counter_vec(
                "mfs_ingest_service_reconnects_total",
                "Recoveries: the first connection or successful call after a failure, by service.",
                &["service"],
            ),
            gc_deleted: b.counter(
                "mfs_ingest_gc_deleted_inodes_total",
                "Abandoned staging inodes deleted (or found gone) by the garbage collector.",
            ),
            gc_swept: b.counter(
                "mfs_ingest_gc_swept_inodes_total",
                "Staging files no transaction recorded (attempts that crashed) found by the sweep and recorded as abandoned.",
            ),
            reconciler_republished: b.counter(
                "mfs_ingest_reconciler_republished_parts_total",
                "Part jobs re-published by the reconciler because they stayed uncommitted too long.",
            ),
            reconciler_completed: b.counter(
                "mfs_ingest_reconciler_completed_sessions_total",
                "Sessions whose completion the reconciler had to run (the completing process died or failed).",
            ),
            maintenance_rounds: b.counter_vec(
                "mfs_ingest_maintenance_rounds_total",
                "Reconciler / garbage-collector rounds, by outcome (ok, error).",
                &["outcome"],
            ),
            maintenance_errors: b.counter_vec(
                "mfs_ingest_maintenance_errors_total",
                "Errors in maintenance rounds, by step (republish, complete, expire, s3_expire, sweep, gc); each step runs whatever the others met.",
                &["step"],
            ),
            maintenance_duration: b.histogram(
                "mfs_ingest_maintenance_round_duration_seconds",
                "Duration of reconciler / garbage-collector rounds.",
                COMPLETION_BUCKETS,
            ),
            http_requests: b.counter_vec(
                "mfs_ingest_http_requests_total",
                "HTTP requests to the coordinator, by route template, method and status class.",
                &["route", "method", "status"],
            ),
            http_duration: b.histogram_vec(
                "mfs_ingest_http_request_duration_seconds",
                "HTTP request latency at the coordinator, by route template and method.",
                &["route", "method"],
                LATENCY_BUCKETS,
            ),
            s3_requests: b.counter_vec(
                "mfs_ingest_s3_requests_total",
                "S3 requests answered by the S3 endpoint, by operation (s3s's name, e.g. PutObject) and status class.",
                &["operation", "status"],
            ),
            s3_duration: b.histogram_vec(
                "mfs_ingest_s3_request_duration_seconds",
                "Time to answer an S3 request (a GET's body streams after it), by operation.",
                &["operation"],
                S3_BUCKETS,
            ),
            s3_received: b.counter(
                "mfs_ingest_s3_received_bytes_total",
                "Object bytes received in PutObject and UploadPart bodies and made durable.",
            ),
            s3_sent: b.counter(
                "mfs_ingest_s3_sent_bytes_total",
                "Object bytes GetObject answered with (the lengths of the bodies started).",
            ),
            s3_limited: b.counter_vec(
                "mfs_ingest_s3_limited_requests_total",
                "S3 requests refused by the endpoint's limits, by reason (concurrency, body_size, error, timeout).",
                &["reason"],
            ),
            build_info: b.gauge_vec(
                "mfs_ingest_build_info",
                "Always 1: the component (coordinator, worker) and version of this process.",
                &["component", "version"],
            ),
            families: Vec::new(),
            mfs_ops: Mutex::new(HashMap::new()),
            http_seen: Mutex::new(HashSet::new()),
            s3_seen: Mutex::new(HashSet::new()),
            down: Default::default(),
        };
        m.create_known_series();
        m.families = b.families;
        m
    }

    /// Creates the series of the label values known in advance, at 0 (see
    /// the contract above).
    fn create_known_series(&self) {
        fn create<L: Copy>(v: &IntCounterVec, values: &[L], label: impl Fn(L) -> &'static str) {
            for value in values {
                v.with_label_values(&[label(*value)]);
            }
        }
        create(&self.requests, RequestOutcome::ALL, RequestOutcome::as_str);
        create(&self.s3_limited, S3LimitReason::ALL, S3LimitReason::as_str);
        create(&self.sessions_finished, SessionEnd::ALL, SessionEnd::as_str);
        for state in SessionEnd::ALL {
            self.session_duration.with_label_values(&[state.as_str()]);
        }
        create(&self.parts_retried, RetryReason::ALL, RetryReason::as_str);
        create(
            &self.parts_abandoned,
            AbandonReason::ALL,
            AbandonReason::as_str,
        );
        for outcome in PartJobOutcome::ALL {
            self.part_duration.with_label_values(&[outcome.as_str()]);
        }
        create(
            &self.duplicate_jobs,
            DuplicateDetector::ALL,
            DuplicateDetector::as_str,
        );
        create(
            &self.dead_letters,
            &Queue::DEAD_LETTER_SOURCES,
            Queue::as_str,
        );
        mfs::create_write_statuses(&self.mfs_write_statuses);
        let queues: Vec<Queue> = Queue::named().collect();
        for v in [
            &self.queue_published,
            &self.queue_confirmed,
            &self.queue_nacked,
        ] {
            create(v, &queues, Queue::as_str);
        }
        create(&self.service_errors, Service::ALL, Service::as_str);
        create(&self.service_reconnects, Service::ALL, Service::as_str);
        create(
            &self.maintenance_rounds,
            RoundOutcome::ALL,
            RoundOutcome::as_str,
        );
        create(
            &self.maintenance_errors,
            MaintenanceStep::ALL,
            MaintenanceStep::as_str,
        );
        create(&self.lease_renewals, Renewal::ALL, Renewal::as_str);
    }
}
