//! Test hook: `CDC_SINK_CRASH_AT=<step>:<n>` makes the sink abort
//! (`std::process::abort`, as abrupt as `kill -9`) the n-th time it
//! reaches `<step>`. Steps: `mid_upload` (after the first part of a
//! multipart upload, or just before a single-part upload),
//! `after_segment_upload` (segment stored, no checkpoint yet),
//! `after_checkpoint` (checkpoint stored, offsets not committed). Used by
//! the crash tests; unset in production.
//!
//! Guarantee: the hook is compiled only into builds with debug assertions
//! (the dev and test profiles: every test build, and the binary the tests
//! run) or with the cargo feature `failpoints`; never into a release build
//! (no debug assertions, and no crate enables the feature). Otherwise
//! [`CrashPoints`] is a zero-sized no-op with the same API: the
//! environment is not read and [`CrashPoints::hit`] does nothing.

#[cfg(any(feature = "failpoints", debug_assertions))]
use std::collections::HashMap;

/// The configured crash point and how often each step was reached.
#[cfg(any(feature = "failpoints", debug_assertions))]
#[derive(Debug, Default)]
pub struct CrashPoints {
    target: Option<(String, u64)>,
    seen: HashMap<String, u64>,
}

#[cfg(any(feature = "failpoints", debug_assertions))]
impl CrashPoints {
    /// Reads `CDC_SINK_CRASH_AT`.
    pub fn from_env() -> Self {
        let target = std::env::var("CDC_SINK_CRASH_AT").ok().and_then(|v| {
            let (step, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
            Some((step.to_owned(), n.parse().ok()?))
        });
        Self {
            target,
            seen: HashMap::new(),
        }
    }

    /// Marks `step` reached; aborts the process if it is the configured one.
    pub fn hit(&mut self, step: &str) {
        let Some((target, n)) = &self.target else {
            return;
        };
        if target != step {
            return;
        }
        let seen = self.seen.entry(step.to_owned()).or_default();
        *seen += 1;
        if *seen == *n {
            tracing::error!(step, n, "CDC_SINK_CRASH_AT reached: aborting (test hook)");
            std::process::abort();
        }
    }
}

/// A release build (no debug assertions, no `failpoints`): no crash point, ever.
#[cfg(not(any(feature = "failpoints", debug_assertions)))]
#[derive(Debug, Default)]
pub struct CrashPoints;

#[cfg(not(any(feature = "failpoints", debug_assertions)))]
impl CrashPoints {
    /// No hook in this build: the environment is not read.
    pub fn from_env() -> Self {
        Self
    }

    /// No hook in this build: does nothing.
    #[inline(always)]
    pub fn hit(&mut self, _step: &str) {}
}
