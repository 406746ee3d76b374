//! Retry policy and the classification of errors into "a retry can help"
//! and "a retry cannot help". Uses `backon` (the maintained successor of
//! the unmaintained `backoff` crate, RUSTSEC-2025-0012).

use std::time::Duration;

use backon::ExponentialBuilder;
use serde::{Deserialize, Serialize};

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
