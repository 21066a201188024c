//! Retries with exponential backoff and full jitter, within a bounded budget.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use barge_store::StoreError;
use rand::Rng;

use crate::throttle::Gates;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (full jitter: uniform in [0, cap]).
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_delay);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ms.max(1)))
    }
}

/// Counts retries and throttling for the summary and the metrics, and holds each store's gate
/// on requests in flight, which throttling lowers (`throttle`).
#[derive(Debug, Default)]
pub struct RetryStats {
    pub retries: AtomicU64,
    /// Answers that asked for fewer requests (503 SlowDown, 429).
    pub throttled: AtomicU64,
    pub gates: Gates,
}

/// Run `f` until it succeeds, fails with an error that retrying cannot fix, or the budget ends.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    stats: &RetryStats,
    what: &str,
    mut f: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        let result = f().await;
        if let Err(StoreError::Throttled { store, .. }) = &result {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
            if let Some(gate) = stats.gates.get(store) {
                gate.throttled(std::time::Instant::now());
            }
        }
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt + 1 < policy.max_attempts => {
                let delay = policy.delay(attempt);
                attempt += 1;
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "retry {attempt}/{} of {what} in {delay:?}: {e}",
                    policy.max_attempts - 1
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> StoreError {
        StoreError::Transient {
            store: "s".into(),
            op: "op".into(),
            detail: "503".into(),
        }
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let stats = RetryStats::default();
        let mut n = 0;
        let r = retry(&p, &stats, "x", || {
            n += 1;
            let fail = n < 3;
            async move { if fail { Err(transient()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(r.ok(), Some(3));
        assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn budget_is_bounded_and_permanent_errors_are_not_retried() {
        let p = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        };
        let stats = RetryStats::default();
        let mut n = 0;
        let r: Result<(), _> = retry(&p, &stats, "x", || {
            n += 1;
            async { Err(transient()) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n, 3);
        let mut m = 0;
        let r: Result<(), _> = retry(&p, &stats, "x", || {
            m += 1;
            async {
                Err(StoreError::NotFound {
                    store: "s".into(),
                    path: "p".into(),
                })
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(m, 1);
    }

    #[test]
    fn delay_is_capped() {
        let p = RetryPolicy::default();
        for a in 0..40 {
            assert!(p.delay(a) <= p.max_delay);
        }
    }
}
