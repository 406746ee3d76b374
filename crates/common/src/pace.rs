//! Rows-per-second limit: a token bucket refilled continuously, with a
//! burst of one second's worth (or one batch, if larger). The caller waits
//! for the returned delay before opening the batch's statement, so no
//! transaction is ever open while the limiter waits. Pure logic: the
//! caller passes the clock in.
//!
//! One limiter for every batch stage: the marker paces the rows it marks
//! with it and the purger the rows it deletes.

use std::time::{Duration, Instant};

/// A token bucket over rows.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// `rate` rows per second; the bucket holds at most `max(rate, burst)`
    /// rows and starts full.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(rate.max(burst).max(1));
        Self {
            rate: f64::from(rate.max(1)),
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// How long to wait before a batch of up to `rows` may start.
    pub fn delay_for(&mut self, rows: u32, now: Instant) -> Duration {
        self.refill(now);
        let need = f64::from(rows).min(self.capacity);
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.rate)
        }
    }

    /// Records `rows` actually written (marked or deleted; may go
    /// negative: a batch that wrote more than planned is paid back by the
    /// next wait).
    pub fn spend(&mut self, rows: u64, now: Instant) {
        self.refill(now);
        self.tokens -= rows as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_bucket_passes_then_paces() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100, 50, t0);
        assert_eq!(p.delay_for(50, t0), Duration::ZERO);
        p.spend(100, t0);
        // Empty: 50 rows need half a second at 100 rows/s.
        assert_eq!(p.delay_for(50, t0), Duration::from_millis(500));
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(p.delay_for(50, t1), Duration::ZERO);
        p.spend(50, t1);
        assert_eq!(p.delay_for(50, t1), Duration::from_millis(500));
    }

    #[test]
    fn long_run_rate_is_bounded() {
        // Simulate: always wait as told, then mark the whole batch.
        let t0 = Instant::now();
        let mut now = t0;
        let mut p = Pacer::new(1000, 500, t0);
        let mut marked = 0u64;
        while marked < 20_000 {
            now += p.delay_for(500, now);
            p.spend(500, now);
            marked += 500;
        }
        let secs = (now - t0).as_secs_f64();
        // One initial burst of 1000 rows is free, the rest is paced.
        assert!((18.9..=19.1).contains(&secs), "{secs}");
    }

    #[test]
    fn overspend_is_paid_back() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10, 10, t0);
        p.spend(30, t0);
        assert_eq!(p.delay_for(10, t0), Duration::from_secs(3));
    }
}
