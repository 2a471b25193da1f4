//! Redis as an accelerator, never as the truth: part leases ("someone is on
//! it", `SET NX PX`, released by compare-and-delete), "done" markers that let
//! duplicate deliveries skip the database, and request de-duplication. Every
//! call is bounded by a short timeout, and when Redis is unreachable the
//! answers fall back to "unknown", so the PostgreSQL checks decide.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// How long "done" markers are kept.
const DONE_TTL_SECS: u64 = 24 * 3600;

/// Compare-and-delete: releases a lease only if we still hold it.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
else
  return 0
end
"#;

/// Outcome of asking for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// We hold it now.
    Acquired,
    /// Someone else holds it.
    Held,
    /// Redis did not answer: proceed, PostgreSQL fencing keeps it correct.
    Unknown,
}

/// Redis-backed leases and markers.
pub struct Idempotency {
    url: String,
    conn: Mutex<Option<ConnectionManager>>,
    errors: AtomicU64,
}

impl Idempotency {
    /// Does not fail: an unreachable Redis is retried on use.
    pub fn new(url: &str) -> Self {
        Idempotency {
            url: url.to_string(),
            conn: Mutex::new(None),
            errors: AtomicU64::new(0),
        }
    }

    /// Redis calls that failed or timed out so far.
    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Counts a failed call (here and in `mfs_ingest_service_errors_total`).
    fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        crate::metrics::service_error(crate::metrics::Service::Redis);
    }

    fn succeeded(&self) {
        crate::metrics::service_ok(crate::metrics::Service::Redis);
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Some(c.clone());
        }
        let client = redis::Client::open(self.url.as_str()).ok()?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1);
        match tokio::time::timeout(
            CALL_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(c)) => {
                *guard = Some(c.clone());
                Some(c)
            }
            _ => {
                self.failed();
                None
            }
        }
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed();
                tracing::debug!(error = %e, "redis call failed");
                None
            }
            Err(_) => {
                self.failed();
                None
            }
        }
    }

    pub async fn ping(&self) -> bool {
        self.call::<String>(redis::cmd("PING")).await.is_some()
    }

    /// `SET key owner NX PX ttl`.
    pub async fn acquire(&self, key: &str, owner: &str, ttl: Duration) -> Lease {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        match self.call::<Option<String>>(cmd).await {
            Some(Some(_)) => Lease::Acquired,
            Some(None) => Lease::Held,
            None => Lease::Unknown,
        }
    }

    /// Releases a lease we hold (never someone else's).
    pub async fn release(&self, key: &str, owner: &str) {
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let script = redis::Script::new(RELEASE_SCRIPT);
        let mut invocation = script.key(key);
        invocation.arg(owner);
        let fut = invocation.invoke_async::<i64>(&mut conn);
        if matches!(tokio::time::timeout(CALL_TIMEOUT, fut).await, Ok(Ok(_))) {
            self.succeeded();
        } else {
            self.failed();
        }
    }

    /// Marks `key` done (kept a day).
    pub async fn mark_done(&self, key: &str) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg("1").arg("EX").arg(DONE_TTL_SECS);
        let _ = self.call::<Option<String>>(cmd).await;
    }

    /// `Some(true)` if marked done, `None` if Redis did not answer.
    pub async fn is_done(&self, key: &str) -> Option<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(key);
        self.call::<i64>(cmd).await.map(|n| n > 0)
    }
}

/// Key of a part's lease.
pub fn part_lease_key(session: uuid::Uuid, part: i32) -> String {
    format!("mfs-ingest:lease:{session}:{part}")
}

/// Key marking a part committed.
pub fn part_done_key(session: uuid::Uuid, part: i32) -> String {
    format!("mfs-ingest:done:{session}:{part}")
}
