//! The probes and the metrics endpoint: `/healthz` (the process runs),
//! `/readyz` (PostgreSQL and MooseFS answer; asked at most once per
//! [`READY_CACHE_TTL`]), `/metrics` (the Prometheus text exposition).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::problem::Problem;
use super::{ApiState, AppState, METRICS_CONTENT_TYPE, READY_CACHE_TTL, READY_TIMEOUT};

/// The last readiness answer and when it was found.
#[derive(Default)]
pub(super) struct ReadyCache {
    last: tokio::sync::Mutex<Option<(Instant, Readiness)>>,
    checks: AtomicU64,
}

impl ReadyCache {
    /// How many readiness checks ran.
    pub(super) fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }
}

/// The outcome of one readiness check: per service, `Err(reason)` if down.
#[derive(Clone)]
struct Readiness {
    db: Result<(), String>,
    mfs: Result<(), String>,
}

pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// Asks PostgreSQL and MooseFS, both under [`READY_TIMEOUT`].
async fn check_readiness(st: &ApiState) -> Readiness {
    st.ready.checks.fetch_add(1, Ordering::Relaxed);
    let (db, mfs) = tokio::join!(
        tokio::time::timeout(READY_TIMEOUT, st.ingest.store.ping()),
        tokio::time::timeout(READY_TIMEOUT, st.ingest.mfs.statfs()),
    );
    fn check<T, E: std::fmt::Display>(
        what: &str,
        r: Result<Result<T, E>, tokio::time::error::Elapsed>,
    ) -> Result<(), String> {
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "readiness: {what} is down");
                Err(format!("{what} is down"))
            }
            Err(_) => {
                tracing::error!("readiness: {what} did not answer within {READY_TIMEOUT:?}");
                Err(format!(
                    "{what} did not answer within {}s",
                    READY_TIMEOUT.as_secs()
                ))
            }
        }
    }
    Readiness {
        db: check("PostgreSQL", db),
        mfs: check("MooseFS", mfs),
    }
}

/// The readiness answer, reused for [`READY_CACHE_TTL`]: concurrent hits
/// wait for the one check in progress instead of starting their own.
async fn cached_readiness(st: &ApiState) -> Readiness {
    let mut last = st.ready.last.lock().await;
    if let Some((at, readiness)) = last.as_ref() {
        if at.elapsed() < READY_CACHE_TTL {
            return readiness.clone();
        }
    }
    let readiness = check_readiness(st).await;
    *last = Some((Instant::now(), readiness.clone()));
    readiness
}

pub(super) async fn readyz(State(st): State<AppState>) -> Response {
    let Readiness { db, mfs } = cached_readiness(&st).await;
    let word = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "down" };
    let checks = json!({ "postgresql": word(&db), "moosefs": word(&mfs) });
    let down: Vec<String> = [db, mfs].into_iter().filter_map(Result::err).collect();
    if down.is_empty() {
        return Json(json!({ "status": "ready", "checks": checks })).into_response();
    }
    let mut p = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-ready",
        "Not ready",
        format!("not ready: {}", down.join("; ")),
    )
    .header(header::RETRY_AFTER, "5");
    p.extra = Some(json!({ "checks": checks }));
    p.into_response()
}

pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    let body = (st.metrics)();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(METRICS_CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}
