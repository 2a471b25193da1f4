//! The S3 endpoint's own metrics, registered in the pipeline's registry (so
//! `/metrics` shows them beside the session, part and completion metrics the
//! S3 uploads also count in): requests by operation and status, their
//! latency, bytes in and out, requests shed or timed out by the server's
//! limits. Recorded through the methods of [`S3Metrics`] and [`observe`].

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

pub struct S3Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    shed: IntCounterVec,
}

/// Why the server refused a request before (or instead of) answering it
/// (`reason` label of `mfs_ingest_s3_limited_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// Too many requests at once.
    Concurrency,
    /// The declared body is over the limit.
    BodySize,
    /// The request failed outside an operation.
    Error,
    /// The request took longer than allowed.
    Timeout,
}

impl LimitReason {
    /// The label value as exported.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReason::Concurrency => "concurrency",
            LimitReason::BodySize => "body_size",
            LimitReason::Error => "error",
            LimitReason::Timeout => "timeout",
        }
    }
}

impl S3Metrics {
    /// `bytes` of an object body were received and made durable.
    pub fn received(&self, bytes: u64) {
        self.bytes_in.inc_by(bytes);
    }

    /// A GetObject answer started with a body of `bytes`.
    pub fn sent(&self, bytes: u64) {
        self.bytes_out.inc_by(bytes);
    }

    /// The server's limits refused a request.
    pub fn refused(&self, reason: LimitReason) {
        self.shed.with_label_values(&[reason.as_str()]).inc();
    }
}

/// The metrics, registered on first use.
pub fn metrics() -> &'static S3Metrics {
    static METRICS: OnceLock<S3Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = S3Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "mfs_ingest_s3_requests_total",
                    "S3 requests answered, by operation and HTTP status",
                ),
                &["operation", "status"],
            )
            .expect("valid metric"),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "mfs_ingest_s3_request_duration_seconds",
                    "Time to answer an S3 request (a GET's body streams after it), by operation",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0,
                ]),
                &["operation"],
            )
            .expect("valid metric"),
            bytes_in: IntCounter::new(
                "mfs_ingest_s3_received_bytes_total",
                "Object bytes received in PutObject and UploadPart bodies and made durable",
            )
            .expect("valid metric"),
            bytes_out: IntCounter::new(
                "mfs_ingest_s3_sent_bytes_total",
                "Object bytes GetObject answered with (the lengths of the bodies started)",
            )
            .expect("valid metric"),
            shed: IntCounterVec::new(
                Opts::new(
                    "mfs_ingest_s3_limited_requests_total",
                    "S3 requests refused by the server's limits, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        };
        let registry = crate::pipeline::Pipeline::registry();
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.duration.clone()),
            Box::new(m.bytes_in.clone()),
            Box::new(m.bytes_out.clone()),
            Box::new(m.shed.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "an S3 metric is not registered");
            }
        }
        m
    })
}

/// Counts one answered request.
pub fn observe(operation: &str, status: u16, elapsed: Duration) {
    let m = metrics();
    m.requests
        .with_label_values(&[operation, &status.to_string()])
        .inc();
    m.duration
        .with_label_values(&[operation])
        .observe(elapsed.as_secs_f64());
}
