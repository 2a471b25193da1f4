//! Tests of the families table, the registry and the event recording.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use moosefs::{Observer, Status};

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
        &m.s3_requests,
        &m.s3_limited,
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
        &m.s3_duration,
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
    assert!(text
        .contains("mfs_ingest_mfs_requests_total{op=\"write_chunk_end\",outcome=\"timeout\"} 1"));
    assert!(text.contains(
        "mfs_ingest_mfs_requests_total{op=\"write_chunk_end\",outcome=\"disconnected\"} 0"
    ));
    assert!(text.contains("mfs_ingest_mfs_chunkserver_errors_total{server=\"10.0.0.1:9422\"} 1"));
    assert!(text.contains(
        "mfs_ingest_http_requests_total{method=\"GET\",route=\"/v1/uploads/{id}\",status=\"4xx\"} 1"
    ));
    assert!(text.contains(
        "mfs_ingest_http_requests_total{method=\"GET\",route=\"/v1/uploads/{id}\",status=\"5xx\"} 0"
    ));
    assert!(text.contains("mfs_ingest_service_reconnects_total{service=\"redis\"} 1"));
    assert_eq!(Queue::of("ingest.parts"), Queue::Parts);
    assert_eq!(Queue::of("something").as_str(), "other");
}

/// The label values are the contract the dashboards query: the enums must
/// keep exporting exactly these, in this order.
#[test]
fn label_values_are_the_documented_ones() {
    fn labels<L: Copy>(all: &[L], label: impl Fn(L) -> &'static str) -> String {
        all.iter().map(|l| label(*l)).collect::<Vec<_>>().join(" ")
    }
    let state = labels(SessionEnd::ALL, SessionEnd::as_str);
    assert_eq!(state, "completed failed aborted");
    let request = labels(RequestOutcome::ALL, RequestOutcome::as_str);
    assert_eq!(request, "created duplicate rejected error");
    let part = labels(PartJobOutcome::ALL, PartJobOutcome::as_str);
    assert_eq!(part, "committed discarded already_done failed");
    assert_eq!(
        labels(RetryReason::ALL, RetryReason::as_str),
        "error lease_held"
    );
    let abandon = labels(AbandonReason::ALL, AbandonReason::as_str);
    assert_eq!(
        abandon,
        "attempt_failed source_too_slow superseded session_closed"
    );
    let by = labels(DuplicateDetector::ALL, DuplicateDetector::as_str);
    assert_eq!(by, "redis postgres");
    let queues = labels(&Queue::named().collect::<Vec<_>>(), Queue::as_str);
    assert_eq!(
        queues,
        "ingest.requests ingest.parts ingest.parts.retry ingest.events ingest.dead"
    );
    let dead = labels(&Queue::DEAD_LETTER_SOURCES, Queue::as_str);
    assert_eq!(dead, "ingest.requests ingest.parts");
    let mfs = labels(MfsOutcome::ALL, MfsOutcome::as_str);
    assert_eq!(mfs, "ok status timeout disconnected");
    let classes = labels(&StatusClass::CREATED_FIRST, StatusClass::as_str);
    assert_eq!(classes, "2xx 4xx 5xx");
    assert_eq!(labels(RoundOutcome::ALL, RoundOutcome::as_str), "ok error");
    let steps = labels(MaintenanceStep::ALL, MaintenanceStep::as_str);
    assert_eq!(steps, "republish complete expire s3_expire sweep gc");
    assert_eq!(
        labels(Renewal::ALL, Renewal::as_str),
        "renewed lost unknown"
    );
    assert_eq!(
        labels(Service::ALL, Service::as_str),
        "postgres redis rabbitmq"
    );
    assert_eq!(
        labels(S3LimitReason::ALL, S3LimitReason::as_str),
        "concurrency body_size error timeout stalled"
    );
    let text = render();
    let written = "OK NOCHUNK CHUNKBUSY NOTDONE WRONGVERSION NOSPACE IO BNUMTOOBIG WRONGSIZE WRONGOFFSET CANTCONNECT DISCONNECTED CRC";
    for status in written.split(' ') {
        let series = format!("mfs_ingest_mfs_write_statuses_total{{status=\"{status}\"}}");
        assert!(text.contains(&series), "{series} not created at start");
    }
    assert_eq!(SessionEnd::of_state("open"), SessionEnd::Failed);
    assert_eq!(MfsOutcome::of("new"), MfsOutcome::Disconnected);
    assert_eq!(StatusClass::of(302).as_str(), "3xx");
    assert_eq!(StatusClass::of(600).as_str(), "5xx");
}
