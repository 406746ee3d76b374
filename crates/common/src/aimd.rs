//! Adaptive batch size: additive increase, multiplicative decrease.
//!
//! A retried batch (serialization failure, timeout, dropped connection)
//! halves the size at once: contention is the signal that the batch is
//! too big for this moment. A successful batch faster than the target
//! latency grows the size back by a tenth of the target per batch, so the
//! marker returns to full speed within a few dozen batches but does not
//! oscillate. A batch slower than the target stops growth and shrinks the
//! size by a quarter, so a cold cache or a busy cluster brings latency
//! back under the target without a failure first. Pure logic: no clock,
//! no I/O.
//!
//! One controller for every batch stage: the marker sizes its UPDATE
//! batches with it and the purger its DELETE batches.

use std::time::Duration;

/// The adaptive batch size.
#[derive(Debug, Clone)]
pub struct Aimd {
    current: u32,
    min: u32,
    max: u32,
    target_latency: Duration,
    decreases: u64,
    smallest: u32,
}

impl Aimd {
    /// Starts at `max` (the configured batch size).
    pub fn new(min: u32, max: u32, target_latency: Duration) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Self {
            current: max,
            min,
            max,
            target_latency,
            decreases: 0,
            smallest: max,
        }
    }

    /// The size of the next batch.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// How many times the size was cut (halved or shrunk).
    pub fn decreases(&self) -> u64 {
        self.decreases
    }

    /// The smallest size used so far.
    pub fn smallest(&self) -> u32 {
        self.smallest
    }

    /// A batch had to be retried (or timed out): halve.
    pub fn on_retry(&mut self) {
        self.set((self.current / 2).max(self.min), true);
    }

    /// A batch succeeded in `latency`.
    pub fn on_success(&mut self, latency: Duration) {
        if latency > self.target_latency {
            self.set((self.current - self.current / 4).max(self.min), true);
        } else {
            let step = (self.max / 10).max(1);
            self.set(self.current.saturating_add(step).min(self.max), false);
        }
    }

    fn set(&mut self, next: u32, decrease: bool) {
        if decrease && next < self.current {
            self.decreases += 1;
        }
        self.current = next;
        self.smallest = self.smallest.min(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(10);
    const TARGET: Duration = Duration::from_millis(100);

    #[test]
    fn halves_on_retry_down_to_min() {
        let mut a = Aimd::new(10, 500, TARGET);
        a.on_retry();
        assert_eq!(a.current(), 250);
        a.on_retry();
        assert_eq!(a.current(), 125);
        for _ in 0..10 {
            a.on_retry();
        }
        assert_eq!(a.current(), 10);
        assert_eq!(a.smallest(), 10);
        // Cuts at the floor are not counted as decreases.
        assert_eq!(a.decreases(), 6);
    }

    #[test]
    fn grows_back_slowly_to_max() {
        let mut a = Aimd::new(10, 500, TARGET);
        a.on_retry();
        a.on_retry();
        assert_eq!(a.current(), 125);
        a.on_success(FAST);
        assert_eq!(
            a.current(),
            175,
            "grows by a tenth of the target, not back to max at once"
        );
        for _ in 0..20 {
            a.on_success(FAST);
        }
        assert_eq!(a.current(), 500, "never above max");
    }

    #[test]
    fn slow_batches_shrink_without_failures() {
        let mut a = Aimd::new(10, 400, TARGET);
        a.on_success(Duration::from_millis(300));
        assert_eq!(a.current(), 300);
        assert_eq!(a.decreases(), 1);
        a.on_success(TARGET);
        assert_eq!(a.current(), 340, "exactly on target still grows");
    }

    #[test]
    fn tiny_sizes_still_move() {
        let mut a = Aimd::new(1, 3, TARGET);
        a.on_retry();
        assert_eq!(a.current(), 1);
        a.on_success(FAST);
        assert_eq!(a.current(), 2);
        let a = Aimd::new(0, 0, TARGET);
        assert_eq!(a.current(), 1, "a zero size would mark nothing forever");
    }
}
