//! Retry policy and the classification of errors into "a retry can help"
//! and "a retry cannot help". Uses `backon` (the maintained successor of
//! the unmaintained `backoff` crate, RUSTSEC-2025-0012).
//!
//! The one mechanism every retry loop uses is [`Retrier`]: the error's own
//! [`Retryable::is_retryable`] decides whether to try again, the
//! [`RetryConfig`]'s jittered backoff how long to wait and when to give
//! up. What a loop does between attempts (reconnect, shrink a batch) stays
//! with the loop.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Whether an error can heal by itself. Every error type in cdc-archiver
/// answers this, so that retry loops and operators get the same answer.
pub trait Retryable {
    /// `true` when trying the same operation again may succeed.
    fn is_retryable(&self) -> bool;
}

/// Jittered exponential backoff, shared by every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First delay. Default: 50ms.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Upper bound for one delay. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Attempts after the first before giving up. Default: 10.
    pub max_retries: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            max_retries: 10,
        }
    }
}

impl RetryConfig {
    /// The backon policy: full jitter, so that many workers retrying the
    /// same contended range do not collide again in lockstep.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_factor(2.0)
            .with_jitter()
    }
}

/// The retry budget of one operation: after each failure, whether to try
/// again and after which delay.
#[derive(Debug)]
pub struct Retrier {
    policy: RetryConfig,
    delays: ExponentialBackoff,
    retries: u64,
}

impl Retrier {
    /// A fresh budget from `policy`.
    pub fn new(policy: &RetryConfig) -> Self {
        Self {
            policy: policy.clone(),
            delays: policy.backoff().build(),
            retries: 0,
        }
    }

    /// After a failure: the delay before the next attempt, or `None` when
    /// the error cannot heal ([`Retryable::is_retryable`] is false) or the
    /// budget is spent.
    pub fn next_delay<E: Retryable + ?Sized>(&mut self, error: &E) -> Option<Duration> {
        if !error.is_retryable() {
            return None;
        }
        let delay = self.delays.next()?;
        self.retries += 1;
        Some(delay)
    }

    /// The delay before the next attempt, for a failure the caller has
    /// already judged retryable (for example with a rule of its own that
    /// narrows [`Retryable::is_retryable`]); `None` when the budget is spent.
    pub fn next_delay_for_retryable(&mut self) -> Option<Duration> {
        let delay = self.delays.next()?;
        self.retries += 1;
        Some(delay)
    }

    /// Starts the budget again (after progress: a long-running loop that
    /// made headway should not die of failures spread over days).
    pub fn reset(&mut self) {
        self.delays = self.policy.backoff().build();
    }

    /// Retries granted so far (over resets).
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Sleeps `delay`, or less when `shutdown` is cancelled first; returns
    /// whether the full delay passed (`false`: shutting down).
    pub async fn wait(delay: Duration, shutdown: Option<&CancellationToken>) -> bool {
        match shutdown {
            Some(token) => tokio::select! {
                () = tokio::time::sleep(delay) => true,
                () = token.cancelled() => false,
            },
            None => {
                tokio::time::sleep(delay).await;
                true
            }
        }
    }
}

/// SQLSTATEs that mean "try again": serialization failure (40001, which
/// CockroachDB returns as `RETRY_SERIALIZABLE` and friends), deadlock
/// (40P01), lock not available (55P03), statement timeout / query
/// cancelled (57014), admin shutdown and crash (57P01..57P03) and the
/// connection-exception class (08).
pub fn is_retryable_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
}

impl Retryable for tokio_postgres::Error {
    fn is_retryable(&self) -> bool {
        if self.is_closed() {
            return true;
        }
        if let Some(db) = self.as_db_error() {
            return is_retryable_sqlstate(db.code().code());
        }
        // No SQLSTATE: an I/O error on the socket (connection reset, EOF).
        // Protocol and conversion errors are not retryable; they carry a
        // source that is not io::Error.
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            if s.is::<std::io::Error>() {
                return true;
            }
            source = s.source();
        }
        false
    }
}

impl Retryable for object_store::Error {
    fn is_retryable(&self) -> bool {
        // object_store's HTTP client already retries throttling and 5xx
        // internally (its own RetryConfig); what escapes as `Generic` is
        // usually a transport error worth one more round. Semantic
        // answers (not found, already exists, precondition) never heal.
        matches!(self, object_store::Error::Generic { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sqlstates() {
        for c in ["40001", "40P01", "08006", "08003", "57P01", "55P03"] {
            assert!(is_retryable_sqlstate(c), "{c}");
        }
        for c in ["23505", "42P01", "42703", "22P02", "XX000"] {
            assert!(!is_retryable_sqlstate(c), "{c}");
        }
    }

    struct Flaky(bool);
    impl Retryable for Flaky {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn the_retrier_asks_the_error_and_spends_its_budget() {
        let policy = RetryConfig {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_retries: 2,
        };
        let mut r = Retrier::new(&policy);
        assert_eq!(
            r.next_delay(&Flaky(false)),
            None,
            "a final error is not retried"
        );
        assert!(r.next_delay(&Flaky(true)).is_some());
        assert!(r.next_delay(&Flaky(true)).is_some());
        assert_eq!(
            r.next_delay(&Flaky(true)),
            None,
            "two retries, then give up"
        );
        r.reset();
        assert!(
            r.next_delay(&Flaky(true)).is_some(),
            "progress restores the budget"
        );
        assert_eq!(r.retries(), 3);
    }

    #[tokio::test]
    async fn a_shutdown_cuts_the_wait_short() {
        let token = CancellationToken::new();
        token.cancel();
        assert!(!Retrier::wait(Duration::from_secs(60), Some(&token)).await);
        assert!(Retrier::wait(Duration::from_millis(1), None).await);
    }

    #[test]
    fn object_store_semantic_errors_are_final() {
        let e = object_store::Error::AlreadyExists {
            path: "x".into(),
            source: "exists".into(),
        };
        assert!(!e.is_retryable());
        let e = object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        };
        assert!(e.is_retryable());
    }
}
