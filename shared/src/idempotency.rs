//! Redis as an accelerator, never as the truth: part leases ("someone is on
//! it", `SET NX PX`, renewed by compare-and-extend every third of their
//! lifetime while the attempt runs, released by compare-and-delete) and "done" markers that
//! let duplicate deliveries skip the database, each checked and set in one
//! round trip per part or group of parts (a Lua script before, one after). Every
//! call is bounded by a short timeout, and when Redis is unreachable the
//! answers fall back to "unknown", so the PostgreSQL checks decide.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// How long "done" markers are kept.
const DONE_TTL_SECS: u64 = 24 * 3600;

/// One round trip before a part: the "done" marker (KEYS[1]) answers first;
/// otherwise `SET lease owner NX PX ttl` (KEYS[2], ARGV[1], ARGV[2]).
const CLAIM_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'done'
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 'acquired'
end
return 'held'
"#;

/// One round trip after a part: marks it done (KEYS[1], kept ARGV[3] s) if
/// ARGV[2] is '1', and releases the lease (KEYS[2]) only if we (ARGV[1])
/// still hold it: compare-and-delete, never someone else's lease.
const FINISH_SCRIPT: &str = r#"
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], '1', 'EX', ARGV[3])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  return redis.call('DEL', KEYS[2])
end
return 0
"#;

/// While an attempt runs: extends the lease (KEYS[1]) to ARGV[2] ms only
/// if we (ARGV[1]) still hold it: compare-and-extend, never someone else's.
const RENEW_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// The scripts, hashed once: `EVALSHA` sends the hash, so building a
/// `Script` (which computes the SHA-1) per part would only repeat that work.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM_SCRIPT));
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FINISH_SCRIPT));
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW_SCRIPT));

/// What Redis says before a part attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartClaim {
    /// Marked done: a duplicate delivery.
    Done,
    /// Not marked done; the lease outcome.
    Lease(Lease),
}

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

/// What a lease renewal found (also the `outcome` label of
/// `mfs_ingest_lease_renewals_total`, hence defined with the metrics' labels).
pub use crate::metrics::Renewal;

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
        self.bounded(cmd.query_async::<T>(&mut conn)).await
    }

    /// A Redis call under [`CALL_TIMEOUT`], counted as a success or failure.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
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

    /// Before a part attempt, in one round trip: is the part marked done,
    /// and if not, `SET lease owner NX PX ttl`.
    pub async fn claim_part(
        &self,
        done_key: &str,
        lease_key: &str,
        owner: &str,
        ttl: Duration,
    ) -> PartClaim {
        self.claim_parts(&[(done_key, lease_key)], owner, ttl)
            .await
            .pop()
            .expect("one answer per part")
    }

    /// [`Idempotency::claim_part`] for several parts (`(done key, lease
    /// key)` each), in one round trip: one answer per part, in order.
    pub async fn claim_parts(
        &self,
        keys: &[(&str, &str)],
        owner: &str,
        ttl: Duration,
    ) -> Vec<PartClaim> {
        let invocations: Vec<redis::ScriptInvocation<'_>> = keys
            .iter()
            .map(|(done_key, lease_key)| {
                let mut invocation = CLAIM.key(*done_key);
                invocation
                    .key(*lease_key)
                    .arg(owner)
                    .arg(ttl.as_millis() as u64);
                invocation
            })
            .collect();
        match self.run_scripts::<String>(&CLAIM, &invocations).await {
            Some(answers) if answers.len() == keys.len() => answers
                .iter()
                .map(|a| match a.as_str() {
                    "done" => PartClaim::Done,
                    "acquired" => PartClaim::Lease(Lease::Acquired),
                    _ => PartClaim::Lease(Lease::Held),
                })
                .collect(),
            _ => vec![PartClaim::Lease(Lease::Unknown); keys.len()],
        }
    }

    /// After a part attempt, in one round trip: marks it done (kept a day)
    /// if `done`, and releases the lease if we still hold it.
    pub async fn finish_part(&self, done_key: &str, lease_key: &str, owner: &str, done: bool) {
        self.finish_parts(&[(done_key, lease_key, done)], owner)
            .await
    }

    /// [`Idempotency::finish_part`] for several parts (`(done key, lease
    /// key, done)` each), in one round trip.
    pub async fn finish_parts(&self, parts: &[(&str, &str, bool)], owner: &str) {
        if parts.is_empty() {
            return;
        }
        let invocations: Vec<redis::ScriptInvocation<'_>> = parts
            .iter()
            .map(|(done_key, lease_key, done)| {
                let mut invocation = FINISH.key(*done_key);
                invocation
                    .key(*lease_key)
                    .arg(owner)
                    .arg(if *done { "1" } else { "0" })
                    .arg(DONE_TTL_SECS);
                invocation
            })
            .collect();
        let _ = self.run_scripts::<i64>(&FINISH, &invocations).await;
    }

    /// Extends our leases (`lease_keys`) to `ttl` from now, in one round
    /// trip; one answer per lease, in order.
    pub async fn renew_leases(
        &self,
        lease_keys: &[&str],
        owner: &str,
        ttl: Duration,
    ) -> Vec<Renewal> {
        let invocations: Vec<redis::ScriptInvocation<'_>> = lease_keys
            .iter()
            .map(|key| {
                let mut invocation = RENEW.key(*key);
                invocation.arg(owner).arg(ttl.as_millis() as u64);
                invocation
            })
            .collect();
        match self.run_scripts::<i64>(&RENEW, &invocations).await {
            Some(answers) if answers.len() == lease_keys.len() => answers
                .iter()
                .map(|a| {
                    if *a == 1 {
                        Renewal::Renewed
                    } else {
                        Renewal::Lost
                    }
                })
                .collect(),
            _ => vec![Renewal::Unknown; lease_keys.len()],
        }
    }

    /// Runs `work` while renewing our leases (`lease_keys`) every `ttl / 3`,
    /// so an attempt that runs longer than one lease lifetime keeps it; the
    /// renewals stop when `work` ends. A lease found lost is logged and
    /// counted once, and not renewed again (it is someone else's now, or
    /// anyone's to take): the attempt goes on, its fencing token decides.
    pub async fn renewing_while<T>(
        &self,
        lease_keys: &[&str],
        owner: &str,
        ttl: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let renewals = async {
            let every = (ttl / 3).max(Duration::from_millis(10));
            let mut held: Vec<&str> = lease_keys.to_vec();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !held.is_empty() {
                tick.tick().await;
                let answers = self.renew_leases(&held, owner, ttl).await;
                let mut still = Vec::with_capacity(held.len());
                for (key, answer) in held.iter().zip(answers) {
                    crate::metrics::metrics().lease_renewal(answer);
                    if answer == Renewal::Lost {
                        tracing::warn!(
                            lease = *key,
                            owner,
                            "part lease lost while the attempt runs; the fencing token decides"
                        );
                    } else {
                        still.push(*key);
                    }
                }
                held = still;
            }
            std::future::pending::<std::convert::Infallible>().await
        };
        // Both in this task: the work is polled while a renewal waits for Redis.
        tokio::select! {
            out = work => out,
            never = renewals => match never {},
        }
    }

    /// Runs invocations of one script in one pipeline (led by `SCRIPT LOAD`,
    /// so a Redis that lost its script cache still runs them).
    async fn run_scripts<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        invocations: &[redis::ScriptInvocation<'_>],
    ) -> Option<Vec<T>> {
        let mut pipe = redis::pipe();
        pipe.load_script(script).ignore();
        for invocation in invocations {
            pipe.invoke_script(invocation);
        }
        let mut conn = self.connection().await?;
        self.bounded(pipe.query_async::<Vec<T>>(&mut conn)).await
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
