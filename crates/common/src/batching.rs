//! The batching shape the marker and the purger share: the same four
//! settings (`batch_size`, `min_batch_size`, `target_batch_latency`,
//! `max_rows_per_second`), with the same defaults, the same checks and the
//! same controllers built from them (the AIMD batch size, [`crate::aimd`],
//! and the rate limiter, [`crate::pace`]).
//!
//! Guarantee: a configuration [`Batching::validate`] accepts gives a
//! controller that never proposes a batch below `min_batch_size` or above
//! `batch_size`, and a rate limit that lets rows through; a rejected one
//! names the field and the fix.

use std::time::{Duration, Instant};

use crate::aimd::Aimd;
use crate::pace::Pacer;

/// Default `batch_size`: small enough that a CockroachDB statement's
/// result stays far below the 16 KiB auto-retry buffer and a batch holds
/// its locks for milliseconds.
pub fn default_batch_size() -> u32 {
    500
}

/// Default `min_batch_size`.
pub fn default_min_batch_size() -> u32 {
    10
}

/// Default `target_batch_latency`.
pub fn default_target_latency() -> Duration {
    Duration::from_millis(500)
}

/// One stage's batching settings, as its configuration holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Largest (and starting) rows per batch.
    pub batch_size: u32,
    /// Smallest batch the adaptive sizing shrinks to.
    pub min_batch_size: u32,
    /// A batch slower than this stops growth and shrinks the next one.
    pub target_batch_latency: Duration,
    /// Rows per second at most (`None`: unlimited).
    pub max_rows_per_second: Option<u32>,
}

impl Batching {
    /// Checks the settings; `section` is where they live in the
    /// configuration (`purger`, `marker` for table `t`, …), for the message.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err(format!("field `{section}.batch_size`: must be at least 1"));
        }
        if self.min_batch_size == 0 {
            return Err(format!(
                "field `{section}.min_batch_size`: must be at least 1"
            ));
        }
        if self.max_rows_per_second == Some(0) {
            return Err(format!(
                "field `{section}.max_rows_per_second`: 0 would never let a row through; omit it for no limit"
            ));
        }
        Ok(())
    }

    /// The batch-size controller and, with a rate limit, the limiter. A
    /// `min_batch_size` above `batch_size` is capped at it (a small
    /// `batch_size` alone means small batches).
    pub fn controllers(&self, now: Instant) -> (Aimd, Option<Pacer>) {
        (
            Aimd::new(
                self.min_batch_size.min(self.batch_size),
                self.batch_size,
                self.target_batch_latency,
            ),
            self.max_rows_per_second
                .map(|r| Pacer::new(r, self.batch_size, now)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Batching {
        Batching {
            batch_size: default_batch_size(),
            min_batch_size: default_min_batch_size(),
            target_batch_latency: default_target_latency(),
            max_rows_per_second: None,
        }
    }

    #[test]
    fn bad_settings_name_the_field() {
        assert_eq!(ok().validate("purger"), Ok(()));
        let cases = [
            (
                Batching {
                    batch_size: 0,
                    ..ok()
                },
                "`purger.batch_size`",
            ),
            (
                Batching {
                    min_batch_size: 0,
                    ..ok()
                },
                "`purger.min_batch_size`",
            ),
            (
                Batching {
                    max_rows_per_second: Some(0),
                    ..ok()
                },
                "`purger.max_rows_per_second`",
            ),
        ];
        for (b, field) in cases {
            let e = b.validate("purger").unwrap_err();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn the_controller_stays_within_the_bounds() {
        let b = Batching {
            batch_size: 40,
            min_batch_size: 10,
            ..ok()
        };
        let (mut aimd, pacer) = b.controllers(Instant::now());
        assert!(pacer.is_none());
        assert_eq!(aimd.current(), 40);
        for _ in 0..10 {
            aimd.on_retry();
        }
        assert_eq!(aimd.current(), 10);
        // A batch size below the default minimum is honoured.
        let small = Batching {
            batch_size: 7,
            ..ok()
        };
        assert_eq!(small.validate("purger"), Ok(()));
        let (mut aimd, _) = small.controllers(Instant::now());
        assert_eq!(aimd.current(), 7);
        aimd.on_success(Duration::from_millis(1));
        assert_eq!(aimd.current(), 7, "never above batch_size");
    }
}
