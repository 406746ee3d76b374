//! Where a partition resumes after its checkpoint chain, and which Kafka
//! offsets it accepts after that. Pure logic (no I/O), unit-tested.
//!
//! Guarantee: the next offset is always the chain's end + 1 (whatever
//! Kafka's committed offset says), or, with no chain yet, the start policy's
//! offset; offsets the sink cannot account for are never skipped. A chain
//! that ends before the earliest offset still in Kafka (expired before
//! archiving) or after Kafka's next offset (another incarnation of the
//! topic) stops the partition with a [`StopReason`] instead. Once resumed,
//! a message below the next expected offset is a redelivered duplicate
//! (dropped) and one above it is a gap (the partition stops).

use crate::config::StartPolicy;

/// Why a partition was stopped (the `reason` label of `cdc_sink_partition_stopped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Offsets the sink cannot account for: the chain ends before the
    /// earliest message still in Kafka (expired before archiving), or a
    /// mid-stream jump.
    OffsetGap,
    /// The chain claims offsets Kafka never had (topic recreated? wrong archive?).
    ChainAhead,
    /// The chain in the archive is broken (gap/overlap between checkpoints).
    ChainBroken,
    /// Kafka holds another message at the chain's last offset than the one
    /// archived: the topic was deleted and recreated (or rewritten).
    TopicChanged,
}

impl StopReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            StopReason::OffsetGap => "offset_gap",
            StopReason::ChainAhead => "chain_ahead",
            StopReason::ChainBroken => "chain_broken",
            StopReason::TopicChanged => "topic_changed",
        }
    }
}

/// Where to resume a partition, given its chain end and Kafka's
/// watermarks (`low` = earliest offset still stored, `high` = next offset
/// to be written). Errors say why the partition must stop.
pub fn start_offset(
    chain_end: Option<i64>,
    low: i64,
    high: i64,
    policy: StartPolicy,
) -> Result<i64, (StopReason, String)> {
    match chain_end {
        Some(end) => {
            let next = end + 1;
            if next < low {
                Err((StopReason::OffsetGap, format!(
                    "the chain ends at offset {end} but the earliest offset still in Kafka is {low}: \
                     offsets {next}..{} expired before they were archived", low - 1
                )))
            } else if next > high {
                Err((
                    StopReason::ChainAhead,
                    format!(
                    "the chain ends at offset {end} but Kafka's next offset is {high}: the archive \
                     belongs to another incarnation of this topic"
                ),
                ))
            } else {
                Ok(next)
            }
        }
        None => match policy {
            StartPolicy::Earliest => Ok(low),
            StartPolicy::Zero if low == 0 => Ok(0),
            StartPolicy::Zero => Err((
                StopReason::OffsetGap,
                format!(
                    "no chain yet and start = \"zero\", but offsets 0..{} are no longer in Kafka",
                    low - 1
                ),
            )),
        },
    }
}

/// What to do with a message at `offset`, given the next expected offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// The expected offset: process it.
    Next,
    /// Already buffered or archived (redelivery after a seek): drop.
    Duplicate,
    /// Offsets `expected..offset` are missing: stop the partition.
    Gap,
}

/// Classifies a message offset.
pub fn accept(expected: i64, offset: i64) -> Accept {
    match offset.cmp(&expected) {
        std::cmp::Ordering::Equal => Accept::Next,
        std::cmp::Ordering::Less => Accept::Duplicate,
        std::cmp::Ordering::Greater => Accept::Gap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_positions() {
        let e = StartPolicy::Earliest;
        assert_eq!(start_offset(None, 0, 10, e), Ok(0));
        assert_eq!(start_offset(None, 7, 10, e), Ok(7));
        assert_eq!(start_offset(Some(4), 0, 10, e), Ok(5));
        assert_eq!(start_offset(Some(9), 0, 10, e), Ok(10));
        // Chain end + 1 == low watermark: nothing lost.
        assert_eq!(start_offset(Some(4), 5, 10, e), Ok(5));
        // Expired before archiving: a gap, never skipped.
        assert_eq!(
            start_offset(Some(4), 6, 10, e).unwrap_err().0,
            StopReason::OffsetGap
        );
        // Chain ahead of Kafka.
        assert_eq!(
            start_offset(Some(100), 0, 10, e).unwrap_err().0,
            StopReason::ChainAhead
        );
        assert_eq!(start_offset(None, 0, 10, StartPolicy::Zero), Ok(0));
        assert_eq!(
            start_offset(None, 3, 10, StartPolicy::Zero).unwrap_err().0,
            StopReason::OffsetGap
        );
    }

    #[test]
    fn classifies_offsets() {
        assert_eq!(accept(5, 5), Accept::Next);
        assert_eq!(accept(5, 3), Accept::Duplicate);
        assert_eq!(accept(5, 6), Accept::Gap);
    }
}
