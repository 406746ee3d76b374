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

use serde::{Deserialize, Serialize};

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

/// One stage's batching settings, as its configuration holds them: the
/// marker's `[[marker]]` entries and the `[purger]` table both embed it
/// with `#[serde(flatten)]`, so the four keys sit beside the stage's own
/// and are written the same way in both.
///
/// Deserialized by hand (below) so that a value of the wrong type names
/// its key even inside `flatten`, where serde's derived errors lose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Batching {
    /// Largest (and starting) rows per batch. Default: 500. Small enough
    /// that a CockroachDB statement's result stays far below the 16 KiB
    /// auto-retry buffer and a batch holds its locks for milliseconds.
    pub batch_size: u32,
    /// Smallest batch the adaptive sizing shrinks to (capped at
    /// `batch_size`). Default: 10.
    pub min_batch_size: u32,
    /// The batch latency the adaptive sizing grows back towards: a batch
    /// slower than this stops growth and shrinks the next one.
    /// Default: 500ms.
    #[serde(with = "humantime_serde")]
    pub target_batch_latency: Duration,
    /// Rows per second at most. Default: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rows_per_second: Option<u32>,
}

const FIELDS: &[&str] = &[
    "batch_size",
    "min_batch_size",
    "target_batch_latency",
    "max_rows_per_second",
];

impl<'de> Deserialize<'de> for Batching {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Batching;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("batching settings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Batching, A::Error> {
                fn named<E: serde::de::Error>(key: &str) -> impl FnOnce(E) -> E + '_ {
                    move |e| E::custom(format!("`{key}`: {e}"))
                }
                let mut b = Batching::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "batch_size" => b.batch_size = map.next_value().map_err(named(&key))?,
                        "min_batch_size" => {
                            b.min_batch_size = map.next_value().map_err(named(&key))?
                        }
                        "target_batch_latency" => {
                            b.target_batch_latency = map
                                .next_value::<humantime_serde::Serde<Duration>>()
                                .map_err(named(&key))?
                                .into_inner()
                        }
                        "max_rows_per_second" => {
                            b.max_rows_per_second = map.next_value().map_err(named(&key))?
                        }
                        other => return Err(serde::de::Error::unknown_field(other, FIELDS)),
                    }
                }
                Ok(b)
            }
        }
        d.deserialize_struct("Batching", FIELDS, Fields)
    }
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            batch_size: default_batch_size(),
            min_batch_size: default_min_batch_size(),
            target_batch_latency: default_target_latency(),
            max_rows_per_second: None,
        }
    }
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
        Batching::default()
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
