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
//! Instrumentation sites call the small helpers below (`service_error`,
//! `http_request`, …) or the fields of [`metrics()`] directly; MooseFS client
//! events arrive through [`MfsObserver`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::moosefs::{Observer, Status};

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

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family as registered: what the contract documents.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Family {
    /// The series names Prometheus stores for this family.
    pub fn series_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{}{s}", self.name))
                .collect(),
            _ => vec![self.name.to_string()],
        }
    }
}

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

// ------------------------------------------------------------ label values

/// Session end states (`state` label).
pub const SESSION_STATES: &[&str] = &["completed", "failed", "aborted"];
/// Outcomes of an ingest request (`outcome` label).
pub const REQUEST_OUTCOMES: &[&str] = &["created", "duplicate", "rejected", "error"];
/// Outcomes of a part job handled by a worker (`outcome` label).
pub const PART_OUTCOMES: &[&str] = &["committed", "discarded", "already_done", "failed"];
/// Why a part job went to the retry queue (`reason` label).
pub const RETRY_REASONS: &[&str] = &["error", "lease_held"];
/// Why a part attempt's staging inode was abandoned (`reason` label).
pub const ABANDON_REASONS: &[&str] = &[
    "attempt_failed",
    "source_too_slow",
    "superseded",
    "session_closed",
];
/// Where a duplicate part job was recognised (`by` label).
pub const DUPLICATE_DETECTORS: &[&str] = &["redis", "postgres"];
/// Queues and exchanges (`queue` label); anything else is `other`.
pub const QUEUES: &[&str] = &[
    "ingest.requests",
    "ingest.parts",
    "ingest.parts.retry",
    "ingest.events",
    "ingest.dead",
];
/// Queues whose messages can be dead-lettered by the system.
pub const DEAD_LETTER_SOURCES: &[&str] = &["ingest.requests", "ingest.parts"];
/// Outcomes of a MooseFS master request (`outcome` label), as the client reports them.
pub const MFS_OUTCOMES: [&str; 4] = ["ok", "status", "timeout", "disconnected"];
/// Write statuses created at start (others appear when they happen).
pub const WRITE_STATUSES: &[&str] = &[
    "OK",
    "NOCHUNK",
    "CHUNKBUSY",
    "NOTDONE",
    "WRONGVERSION",
    "NOSPACE",
    "IO",
    "BNUMTOOBIG",
    "WRONGSIZE",
    "WRONGOFFSET",
    "CANTCONNECT",
    "DISCONNECTED",
    "CRC",
];
/// HTTP status classes created for every route and method when it is first
/// seen (`1xx` and `3xx` appear only when they happen).
pub const STATUS_CLASSES: &[&str] = &["2xx", "4xx", "5xx"];
/// Outcomes of a maintenance round (`outcome` label).
pub const ROUND_OUTCOMES: &[&str] = &["ok", "error"];
/// Steps of a maintenance round (`step` label).
pub const MAINTENANCE_STEPS: &[&str] = &["republish", "complete", "expire", "sweep", "gc"];
/// Outcomes of a lease renewal (`outcome` label).
pub const LEASE_RENEWAL_OUTCOMES: &[&str] = &["renewed", "lost", "unknown"];

/// External services (`service` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Postgres,
    Redis,
    RabbitMq,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Postgres, Service::Redis, Service::RabbitMq];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::Redis => "redis",
            Service::RabbitMq => "rabbitmq",
        }
    }
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
    pub requests: IntCounterVec,
    pub request_duration: Histogram,
    pub sessions_created: IntCounter,
    pub sessions_finished: IntCounterVec,
    pub session_duration: HistogramVec,
    pub completion_duration: Histogram,
    pub completion_errors: IntCounter,

    // Parts (workers)
    pub parts_started: IntCounter,
    pub parts_committed: IntCounter,
    pub parts_retried: IntCounterVec,
    pub parts_abandoned: IntCounterVec,
    pub part_duration: HistogramVec,
    pub part_size: Histogram,
    pub worker_in_flight: IntGaugeVec,
    pub worker_concurrency: IntGaugeVec,
    pub duplicate_jobs: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub lease_renewals: IntCounterVec,

    // MooseFS
    pub mfs_request_duration: HistogramVec,
    pub mfs_requests: IntCounterVec,
    pub mfs_write_statuses: IntCounterVec,
    pub mfs_chain_length: Histogram,
    pub mfs_chunkserver_errors: IntCounterVec,
    pub mfs_master_reconnects: IntCounter,
    pub mfs_chunk_write_retries: IntCounter,
    pub mfs_replica_mismatches: IntCounter,
    pub mfs_written_bytes: IntCounter,

    // Queues
    pub queue_published: IntCounterVec,
    pub queue_confirmed: IntCounterVec,
    pub queue_nacked: IntCounterVec,
    pub queue_consumed: IntCounterVec,
    pub queue_redelivered: IntCounterVec,

    // Backlog (computed from PostgreSQL by the coordinator)
    pub pending_parts: IntGauge,
    pub oldest_pending_part_age: Gauge,
    pub open_sessions: IntGauge,
    pub oldest_open_session_age: Gauge,
    pub outbox_pending: IntGauge,
    pub oldest_outbox_message_age: Gauge,
    pub gc_pending_inodes: IntGauge,

    // Services
    pub service_errors: IntCounterVec,
    pub service_reconnects: IntCounterVec,

    // Maintenance
    pub gc_deleted: IntCounter,
    pub gc_swept: IntCounter,
    pub reconciler_republished: IntCounter,
    pub reconciler_completed: IntCounter,
    pub maintenance_rounds: IntCounterVec,
    pub maintenance_errors: IntCounterVec,
    pub maintenance_duration: Histogram,

    // HTTP
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,

    pub build_info: IntGaugeVec,

    mfs_ops: Mutex<HashMap<&'static str, MfsOp>>,
    http_seen: Mutex<HashSet<(String, &'static str)>>,
    down: [AtomicBool; 3],
}

#[derive(Clone)]
struct MfsOp {
    duration: Histogram,
    /// One counter per [`MFS_OUTCOMES`] entry, in that order.
    outcomes: [IntCounter; 4],
}

struct Builder {
    families: Vec<Family>,
}

impl Builder {
    fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        labels: &'static [&'static str],
        help: &'static str,
    ) {
        assert!(name.starts_with(PREFIX), "{name} lacks the prefix");
        self.families.push(Family {
            name,
            kind,
            labels,
            help,
        });
    }

    fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
        registry()
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn counter(&mut self, name: &'static str, help: &'static str) -> IntCounter {
        self.add(name, Kind::Counter, &[], help);
        Self::register(IntCounter::new(name, help).expect("valid counter"))
    }

    fn counter_vec(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> IntCounterVec {
        self.add(name, Kind::Counter, labels, help);
        Self::register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
    }

    fn int_gauge(&mut self, name: &'static str, help: &'static str) -> IntGauge {
        self.add(name, Kind::Gauge, &[], help);
        Self::register(IntGauge::new(name, help).expect("valid gauge"))
    }

    fn gauge(&mut self, name: &'static str, help: &'static str) -> Gauge {
        self.add(name, Kind::Gauge, &[], help);
        Self::register(Gauge::new(name, help).expect("valid gauge"))
    }

    fn gauge_vec(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> IntGaugeVec {
        self.add(name, Kind::Gauge, labels, help);
        Self::register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
    }

    fn histogram(&mut self, name: &'static str, help: &'static str, buckets: &[f64]) -> Histogram {
        self.add(name, Kind::Histogram, &[], help);
        Self::register(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid histogram"),
        )
    }

    fn histogram_vec(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &[f64],
    ) -> HistogramVec {
        self.add(name, Kind::Histogram, labels, help);
        Self::register(
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid histogram"),
        )
    }
}

fn init_counters(v: &IntCounterVec, values: &[&str]) {
    for value in values {
        v.with_label_values(&[*value]);
    }
}

/// The metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut b = Builder {
            families: Vec::new(),
        };
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
                "Errors in maintenance rounds, by step (republish, complete, expire, sweep, gc); each step runs whatever the others met.",
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
            build_info: b.gauge_vec(
                "mfs_ingest_build_info",
                "Always 1: the component (coordinator, worker) and version of this process.",
                &["component", "version"],
            ),
            families: Vec::new(),
            mfs_ops: Mutex::new(HashMap::new()),
            http_seen: Mutex::new(HashSet::new()),
            down: Default::default(),
        };
        init_counters(&m.requests, REQUEST_OUTCOMES);
        init_counters(&m.sessions_finished, SESSION_STATES);
        for s in SESSION_STATES {
            m.session_duration.with_label_values(&[*s]);
        }
        init_counters(&m.parts_retried, RETRY_REASONS);
        init_counters(&m.parts_abandoned, ABANDON_REASONS);
        for o in PART_OUTCOMES {
            m.part_duration.with_label_values(&[*o]);
        }
        init_counters(&m.duplicate_jobs, DUPLICATE_DETECTORS);
        init_counters(&m.dead_letters, DEAD_LETTER_SOURCES);
        init_counters(&m.mfs_write_statuses, WRITE_STATUSES);
        for v in [&m.queue_published, &m.queue_confirmed, &m.queue_nacked] {
            init_counters(v, QUEUES);
        }
        let services: Vec<&str> = Service::ALL.iter().map(|s| s.as_str()).collect();
        init_counters(&m.service_errors, &services);
        init_counters(&m.service_reconnects, &services);
        init_counters(&m.maintenance_rounds, ROUND_OUTCOMES);
        init_counters(&m.maintenance_errors, MAINTENANCE_STEPS);
        init_counters(&m.lease_renewals, LEASE_RENEWAL_OUTCOMES);
        m.families = b.families;
        m
    }
}

// ------------------------------------------------------------ helpers

/// The `queue` label of a queue or exchange name.
pub fn queue_label(name: &str) -> &'static str {
    QUEUES
        .iter()
        .find(|q| **q == name)
        .copied()
        .unwrap_or("other")
}

/// Sets `mfs_ingest_build_info{component, version} 1`.
pub fn set_build_info(component: &str) {
    metrics()
        .build_info
        .with_label_values(&[component, env!("CARGO_PKG_VERSION")])
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

/// A session ended in `state` (created at `created_at`).
pub fn session_finished(state: &str, created_at: chrono::DateTime<chrono::Utc>) {
    let m = metrics();
    let label = SESSION_STATES
        .iter()
        .find(|s| **s == state)
        .copied()
        .unwrap_or("failed");
    m.sessions_finished.with_label_values(&[label]).inc();
    let secs = (chrono::Utc::now() - created_at).num_milliseconds().max(0) as f64 / 1000.0;
    m.session_duration.with_label_values(&[label]).observe(secs);
}

/// One HTTP request: `route` is the route template (or `unmatched`).
pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let m = metrics();
    let method = match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    {
        let mut seen = m.http_seen.lock().expect("http_seen lock");
        if !seen.contains(&(route.to_string(), method)) {
            for c in STATUS_CLASSES {
                m.http_requests.with_label_values(&[route, method, c]);
            }
            seen.insert((route.to_string(), method));
        }
    }
    m.http_requests
        .with_label_values(&[route, method, class])
        .inc();
    m.http_duration
        .with_label_values(&[route, method])
        .observe(elapsed.as_secs_f64());
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

/// Values of the backlog gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct BacklogValues {
    pub pending_parts: i64,
    pub oldest_pending_part_secs: f64,
    pub open_sessions: i64,
    pub oldest_open_session_secs: f64,
    pub outbox_pending: i64,
    pub oldest_outbox_secs: f64,
    pub gc_pending: i64,
}

/// Sets the backlog gauges.
pub fn set_backlog(v: &BacklogValues) {
    let m = metrics();
    m.pending_parts.set(v.pending_parts);
    m.oldest_pending_part_age.set(v.oldest_pending_part_secs);
    m.open_sessions.set(v.open_sessions);
    m.oldest_open_session_age.set(v.oldest_open_session_secs);
    m.outbox_pending.set(v.outbox_pending);
    m.oldest_outbox_message_age.set(v.oldest_outbox_secs);
    m.gc_pending_inodes.set(v.gc_pending);
}

// ------------------------------------------------------------ MooseFS

/// Counts the MooseFS client's wire events (see [`Observer`]).
pub struct MfsObserver;

/// The observer to pass to `MfsClient::connect_observed`.
pub fn mfs_observer() -> Arc<dyn Observer> {
    Arc::new(MfsObserver)
}

impl Metrics {
    fn mfs_op(&self, op: &'static str) -> MfsOp {
        let mut ops = self.mfs_ops.lock().expect("mfs_ops lock");
        ops.entry(op)
            .or_insert_with(|| {
                // "write chunk end" -> "write_chunk_end"
                let label = op.replace(' ', "_");
                MfsOp {
                    duration: self.mfs_request_duration.with_label_values(&[&label]),
                    outcomes: MFS_OUTCOMES
                        .map(|o| self.mfs_requests.with_label_values(&[label.as_str(), o])),
                }
            })
            .clone()
    }
}

impl Observer for MfsObserver {
    fn master_request(&self, op: &'static str, seconds: f64, outcome: &'static str) {
        let m = metrics();
        let op = m.mfs_op(op);
        op.duration.observe(seconds);
        // An outcome the client adds later counts as the last one, "disconnected".
        let i = MFS_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(MFS_OUTCOMES.len() - 1);
        op.outcomes[i].inc();
    }

    fn write_status(&self, status: Status) {
        metrics()
            .mfs_write_statuses
            .with_label_values(&[status.name()])
            .inc();
    }

    fn chain_length(&self, servers: usize) {
        metrics().mfs_chain_length.observe(servers as f64);
    }

    fn chunkserver_error(&self, server: SocketAddrV4) {
        metrics()
            .mfs_chunkserver_errors
            .with_label_values(&[&server.to_string()])
            .inc();
    }

    fn master_reconnect(&self) {
        metrics().mfs_master_reconnects.inc();
    }

    fn bytes_written(&self, bytes: u64) {
        metrics().mfs_written_bytes.inc_by(bytes);
    }

    fn chunk_write_retry(&self) {
        metrics().mfs_chunk_write_retries.inc();
    }

    fn replica_mismatch(&self) {
        metrics().mfs_replica_mismatches.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_with_its_type() {
        let text = render();
        for f in families() {
            // Families without any label value yet have no series; they
            // still must be registered.
            if !f.labels.is_empty() && !text.contains(&format!("{} ", f.name)) {
                continue;
            }
            assert!(
                text.contains(&format!("# TYPE {} {}", f.name, f.kind.as_str())),
                "{} missing from the exposition",
                f.name
            );
        }
        for name in all_metric_names() {
            assert!(name.starts_with(PREFIX));
            assert!(!name.contains("__"), "{name}");
        }
    }

    /// The registry is the truth: once every labelled family has a series,
    /// what it gathers is exactly [`families()`], with the same types.
    #[test]
    fn registry_and_families_agree() {
        use prometheus::core::Collector;
        use prometheus::proto::MetricType;
        let m = metrics();
        fn touch<C: Collector>(c: &C, make: impl Fn(&[&str])) {
            let n = c.desc()[0].variable_labels.len();
            make(&vec!["test"; n]);
        }
        for v in [
            &m.requests,
            &m.sessions_finished,
            &m.parts_retried,
            &m.parts_abandoned,
            &m.duplicate_jobs,
            &m.dead_letters,
            &m.mfs_requests,
            &m.mfs_write_statuses,
            &m.mfs_chunkserver_errors,
            &m.queue_published,
            &m.queue_confirmed,
            &m.queue_nacked,
            &m.queue_consumed,
            &m.queue_redelivered,
            &m.service_errors,
            &m.service_reconnects,
            &m.maintenance_rounds,
            &m.maintenance_errors,
            &m.lease_renewals,
            &m.http_requests,
        ] {
            touch(v, |l| {
                v.with_label_values(l);
            });
        }
        for v in [
            &m.session_duration,
            &m.part_duration,
            &m.mfs_request_duration,
            &m.http_duration,
        ] {
            touch(v, |l| {
                v.with_label_values(l);
            });
        }
        for v in [&m.worker_in_flight, &m.worker_concurrency, &m.build_info] {
            touch(v, |l| {
                v.with_label_values(l);
            });
        }
        let gathered: HashMap<String, MetricType> = registry()
            .gather()
            .iter()
            .map(|f| (f.name().to_string(), f.get_field_type()))
            .collect();
        let declared: HashMap<String, MetricType> = families()
            .iter()
            .map(|f| {
                let t = match f.kind {
                    Kind::Counter => MetricType::COUNTER,
                    Kind::Gauge => MetricType::GAUGE,
                    Kind::Histogram => MetricType::HISTOGRAM,
                };
                (f.name.to_string(), t)
            })
            .collect();
        assert_eq!(gathered, declared);
        for f in families() {
            let desc = registry()
                .gather()
                .into_iter()
                .find(|g| g.name() == f.name)
                .unwrap();
            let mut labels: Vec<&str> = desc.get_metric()[0]
                .get_label()
                .iter()
                .map(|l| l.name())
                .collect();
            labels.sort();
            let mut declared: Vec<&str> = f.labels.to_vec();
            declared.sort();
            assert_eq!(labels, declared, "labels of {}", f.name);
        }
    }

    #[test]
    fn observer_and_helpers_record() {
        let o = MfsObserver;
        o.master_request("write chunk end", 0.002, "ok");
        o.master_request("write chunk end", 0.002, "timeout");
        o.write_status(Status::OK);
        o.chunkserver_error("10.0.0.1:9422".parse().unwrap());
        http_request("/v1/uploads/{id}", "GET", 404, Duration::from_millis(3));
        service_error(Service::Redis);
        service_ok(Service::Redis);
        service_ok(Service::Redis);
        let text = render();
        assert!(text.contains(
            "mfs_ingest_mfs_requests_total{op=\"write_chunk_end\",outcome=\"timeout\"} 1"
        ));
        assert!(text.contains(
            "mfs_ingest_mfs_requests_total{op=\"write_chunk_end\",outcome=\"disconnected\"} 0"
        ));
        assert!(
            text.contains("mfs_ingest_mfs_chunkserver_errors_total{server=\"10.0.0.1:9422\"} 1")
        );
        assert!(text.contains(
            "mfs_ingest_http_requests_total{method=\"GET\",route=\"/v1/uploads/{id}\",status=\"4xx\"} 1"
        ));
        assert!(text.contains(
            "mfs_ingest_http_requests_total{method=\"GET\",route=\"/v1/uploads/{id}\",status=\"5xx\"} 0"
        ));
        assert!(text.contains("mfs_ingest_service_reconnects_total{service=\"redis\"} 1"));
        assert_eq!(queue_label("ingest.parts"), "ingest.parts");
        assert_eq!(queue_label("something"), "other");
    }
}
