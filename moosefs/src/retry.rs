//! The one place retries are paced: bounded exponential backoff with jitter
//! (delays from the `backoff` crate), a cap on attempts and on total time.
//! Callers classify each failure as worth retrying or final.

use std::future::Future;
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;

/// How often and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// No new attempt starts after this much time since the first.
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    pub const fn new(
        initial_delay: Duration,
        max_delay: Duration,
        max_attempts: u32,
        max_elapsed: Duration,
    ) -> Self {
        RetryPolicy {
            initial_delay,
            max_delay,
            multiplier: 2.0,
            max_attempts,
            max_elapsed,
        }
    }
}

/// Backoff steps [`delay_before_attempt`] takes at most: by then any
/// multiplier above 1 has long reached `max_delay`, so larger attempt
/// numbers (e.g. from a hostile message header) cost no more work.
const MAX_BACKOFF_STEPS: u32 = 64;

/// The pause before attempt `attempt` (counting from 1; attempt 1 has none):
/// the same exponential, jittered, capped sequence [`retry`] uses, for
/// callers that wait elsewhere (e.g. a delayed queue). Takes at most
/// [`MAX_BACKOFF_STEPS`] steps whatever `attempt` is.
pub fn delay_before_attempt(policy: &RetryPolicy, attempt: u32) -> Duration {
    let mut delays = ExponentialBackoffBuilder::new()
        .with_initial_interval(policy.initial_delay)
        .with_max_interval(policy.max_delay)
        .with_multiplier(policy.multiplier)
        .with_randomization_factor(0.3)
        .with_max_elapsed_time(None)
        .build();
    let mut delay = Duration::ZERO;
    for _ in 1..attempt.clamp(1, MAX_BACKOFF_STEPS) {
        delay = delays.next_backoff().unwrap_or(policy.max_delay);
    }
    delay
}

/// How one attempt failed.
#[derive(Debug)]
pub enum AttemptError<E> {
    /// Worth another attempt.
    Transient(E),
    /// Retrying cannot help.
    Permanent(E),
}

/// The last error after retries stopped, with how many attempts were made.
#[derive(Debug)]
pub struct RetryError<E> {
    pub error: E,
    pub attempts: u32,
    /// True when the error was final rather than the bound running out.
    pub permanent: bool,
}

/// Runs `op(attempt)` (attempt counts from 1) until it succeeds, fails
/// permanently, or the policy's bounds run out.
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, mut op: F) -> Result<T, RetryError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, AttemptError<E>>>,
{
    let mut delays = ExponentialBackoffBuilder::new()
        .with_initial_interval(policy.initial_delay)
        .with_max_interval(policy.max_delay)
        .with_multiplier(policy.multiplier)
        .with_randomization_factor(0.3)
        .with_max_elapsed_time(Some(policy.max_elapsed))
        .build();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(AttemptError::Permanent(error)) => {
                return Err(RetryError {
                    error,
                    attempts: attempt,
                    permanent: true,
                })
            }
            Err(AttemptError::Transient(error)) => {
                let next = (attempt < policy.max_attempts)
                    .then(|| delays.next_backoff())
                    .flatten();
                match next {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => {
                        return Err(RetryError {
                            error,
                            attempts: attempt,
                            permanent: false,
                        })
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_millis(1),
            Duration::from_millis(2),
            max_attempts,
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_the_bound() {
        let res: Result<(), _> =
            retry(&quick(4), |_| async { Err(AttemptError::Transient("x")) }).await;
        let err = res.unwrap_err();
        assert_eq!((err.attempts, err.permanent), (4, false));
    }

    #[tokio::test]
    async fn permanent_errors_stop_at_once() {
        let res: Result<(), _> =
            retry(&quick(4), |_| async { Err(AttemptError::Permanent("x")) }).await;
        assert_eq!(res.unwrap_err().attempts, 1);
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = RetryPolicy::new(
            Duration::from_secs(1),
            Duration::from_secs(8),
            100,
            Duration::from_secs(600),
        );
        assert_eq!(delay_before_attempt(&p, 1), Duration::ZERO);
        let d2 = delay_before_attempt(&p, 2);
        assert!(
            d2 >= Duration::from_millis(700) && d2 <= Duration::from_millis(1300),
            "{d2:?}"
        );
        let d4 = delay_before_attempt(&p, 4);
        assert!(
            d4 >= Duration::from_millis(2800) && d4 <= Duration::from_millis(5200),
            "{d4:?}"
        );
        for n in 5..20 {
            assert!(delay_before_attempt(&p, n) <= Duration::from_millis(10_400));
        }
    }

    #[test]
    fn huge_attempt_numbers_cost_no_more_than_a_few_steps() {
        let p = RetryPolicy::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            u32::MAX,
            Duration::from_secs(3600),
        );
        let started = std::time::Instant::now();
        for attempt in [u32::MAX, u32::MAX - 1, 1 << 31, 65, 64] {
            let d = delay_before_attempt(&p, attempt);
            assert!(
                d >= Duration::from_secs(42) && d <= Duration::from_secs(78),
                "{attempt}: {d:?}"
            );
        }
        assert_eq!(delay_before_attempt(&p, 0), Duration::ZERO);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn success_after_failures() {
        let res = retry(&quick(5), |attempt| async move {
            if attempt < 3 {
                Err(AttemptError::Transient(attempt))
            } else {
                Ok(attempt)
            }
        })
        .await;
        assert_eq!(res.unwrap(), 3);
    }
}
