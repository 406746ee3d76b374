//! The `updated` clock: an HLC-shaped timestamp (`<wall ns>.<10-digit
//! logical>`) built from PostgreSQL commit timestamps. The timestamp type is
//! the decoder's [`cdc_changefeed::Hlc`] (same order, same text), so what
//! this crate writes is by construction what the sink parses.

pub use cdc_changefeed::Hlc;

/// Hands out strictly increasing [`Hlc`]s: a commit timestamp that ties with
/// or precedes the previous one (two commits in one microsecond, a clock
/// step back, the start-up floor) keeps the previous wall time and bumps the
/// logical counter, as CockroachDB's HLC does.
#[derive(Debug, Clone)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock whose first timestamp is strictly greater than `floor`.
    pub fn new(floor: Hlc) -> Self {
        Self { last: floor }
    }

    /// The next timestamp for a transaction committed at `wall_ns`.
    pub fn next(&mut self, wall_ns: i64) -> Hlc {
        self.last = if wall_ns > self.last.wall {
            Hlc {
                wall: wall_ns,
                logical: 0,
            }
        } else if self.last.logical < u32::MAX {
            Hlc {
                wall: self.last.wall,
                logical: self.last.logical + 1,
            }
        } else {
            Hlc {
                wall: self.last.wall + 1,
                logical: 0,
            }
        };
        self.last
    }

    /// The last timestamp handed out (or the floor).
    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_cockroachdb() {
        assert_eq!(
            Hlc {
                wall: 1749715231873209112,
                logical: 2
            }
            .to_string(),
            "1749715231873209112.0000000002"
        );
    }

    #[test]
    fn never_goes_backwards() {
        let mut c = HlcClock::new(Hlc {
            wall: 100,
            logical: 0,
        });
        assert_eq!(
            c.next(50),
            Hlc {
                wall: 100,
                logical: 1
            }
        );
        assert_eq!(
            c.next(100),
            Hlc {
                wall: 100,
                logical: 2
            }
        );
        assert_eq!(
            c.next(200),
            Hlc {
                wall: 200,
                logical: 0
            }
        );
        assert_eq!(
            c.next(200),
            Hlc {
                wall: 200,
                logical: 1
            }
        );
        let mut c = HlcClock::new(Hlc {
            wall: 7,
            logical: u32::MAX,
        });
        assert_eq!(
            c.next(1),
            Hlc {
                wall: 8,
                logical: 0
            }
        );
    }
}
