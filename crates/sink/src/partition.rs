//! Per-partition buffering and the offset bookkeeping that keeps the chain
//! gap-free. Pure logic (no I/O), unit-tested.

use std::time::Instant;

use cdc_changefeed::{Event, Hlc, Op, RowEvent};
use cdc_checkpoint::Counts;
use cdc_segment::{same_columns, ArchivedRow};

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
}

impl StopReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            StopReason::OffsetGap => "offset_gap",
            StopReason::ChainAhead => "chain_ahead",
            StopReason::ChainBroken => "chain_broken",
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

/// A contiguous offset range that becomes one checkpoint (and, if it has
/// rows, one segment). All rows of a run share one column set.
#[derive(Debug, Default)]
pub struct Run {
    /// First offset.
    pub first: i64,
    /// Last offset, set when the run is sealed.
    pub last: Option<i64>,
    /// Archived rows.
    pub rows: Vec<ArchivedRow>,
    /// What the range held.
    pub counts: Counts,
    /// Smallest `updated` of the rows.
    pub min_updated: Option<Hlc>,
    /// Largest `updated` of the rows.
    pub max_updated: Option<Hlc>,
    /// Partition's resolved timestamp at the run's end (set when sealed).
    pub resolved: Option<Hlc>,
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Kept as a row.
    Archived,
    /// A delete (not archived).
    Delete,
    /// Row not marked archived.
    NotArchived,
    /// Resolved timestamp.
    Resolved,
    /// Undecodable (the caller quarantined it).
    Quarantined,
}

/// A partition being archived.
#[derive(Debug)]
pub struct PartitionBuffer {
    /// Archive table.
    pub table: String,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// The topic's partition count.
    pub partitions: i32,
    /// Next offset to accept.
    pub expected: i64,
    /// Latest resolved timestamp (carried from the chain).
    pub resolved: Option<Hlc>,
    /// Sealed runs then the open one (always at least one).
    pub runs: Vec<Run>,
    /// Estimated bytes buffered.
    pub bytes: u64,
    /// Rows buffered.
    pub rows: usize,
    /// When the oldest unflushed event arrived.
    pub oldest: Option<Instant>,
}

impl PartitionBuffer {
    /// An empty buffer starting at `start`.
    pub fn new(
        table: String,
        topic: String,
        partition: i32,
        partitions: i32,
        start: i64,
        resolved: Option<Hlc>,
    ) -> Self {
        Self {
            table,
            topic,
            partition,
            partitions,
            expected: start,
            resolved,
            runs: vec![Run {
                first: start,
                ..Run::default()
            }],
            bytes: 0,
            rows: 0,
            oldest: None,
        }
    }

    /// Events buffered and not yet checkpointed.
    pub fn pending_events(&self) -> u64 {
        self.runs.iter().map(|r| r.counts.events).sum()
    }

    fn open(&mut self) -> &mut Run {
        self.runs.last_mut().expect("there is always an open run")
    }

    /// Adds the event at `self.expected` (the caller checked [`accept`]).
    pub fn push(
        &mut self,
        offset: i64,
        event: Result<Event, ()>,
        archived_column: &str,
    ) -> Outcome {
        debug_assert_eq!(offset, self.expected);
        self.expected = offset + 1;
        self.oldest.get_or_insert_with(Instant::now);
        let outcome = match event {
            Err(()) => Outcome::Quarantined,
            Ok(Event::Resolved(r)) => {
                self.resolved = Some(self.resolved.map_or(r.resolved, |x| x.max(r.resolved)));
                Outcome::Resolved
            }
            Ok(Event::Row(ev)) => match archivable(ev, archived_column) {
                Err(o) => o,
                Ok(row) => {
                    let needs_new_run = {
                        let run = self.open();
                        run.rows
                            .first()
                            .is_some_and(|f| !same_columns(&f.columns, &row.columns))
                    };
                    if needs_new_run {
                        // A column set change starts a new segment: the
                        // current run ends just before this event.
                        let resolved = self.resolved;
                        let run = self.open();
                        run.last = Some(offset - 1);
                        run.resolved = resolved;
                        self.runs.push(Run {
                            first: offset,
                            ..Run::default()
                        });
                    }
                    self.bytes += row_bytes(&row);
                    self.rows += 1;
                    let run = self.open();
                    if let Some(u) = row.updated {
                        run.min_updated = Some(run.min_updated.map_or(u, |m| m.min(u)));
                        run.max_updated = Some(run.max_updated.map_or(u, |m| m.max(u)));
                    }
                    run.rows.push(row);
                    Outcome::Archived
                }
            },
        };
        let c = &mut self.open().counts;
        c.events += 1;
        match outcome {
            Outcome::Archived => c.rows_archived += 1,
            Outcome::Delete => c.deletes += 1,
            Outcome::NotArchived => c.not_archived += 1,
            Outcome::Resolved => c.resolved += 1,
            Outcome::Quarantined => c.quarantined += 1,
        }
        outcome
    }

    /// Takes every buffered run, sealed at `expected - 1`, leaving an empty
    /// open run at `expected`. Empty runs are dropped.
    pub fn take_runs(&mut self) -> Vec<Run> {
        let resolved = self.resolved;
        let end = self.expected - 1;
        let open = self.open();
        open.last = Some(end);
        open.resolved = resolved;
        let mut runs = std::mem::replace(
            &mut self.runs,
            vec![Run {
                first: self.expected,
                ..Run::default()
            }],
        );
        runs.retain(|r| r.counts.events > 0);
        self.bytes = 0;
        self.rows = 0;
        self.oldest = None;
        runs
    }
}

/// Heap + inline bytes of a buffered row, allocator overhead included
/// (about 4x the message size for typical rows): what the memory budget counts.
pub fn row_bytes(row: &ArchivedRow) -> u64 {
    const PER_ALLOC: usize = 32;
    let columns: usize = row
        .columns
        .iter()
        .map(|(name, v)| {
            let value = match v {
                cdc_changefeed::Value::Number(t)
                | cdc_changefeed::Value::String(t)
                | cdc_changefeed::Value::Json(t) => t.len() + PER_ALLOC,
                _ => 0,
            };
            std::mem::size_of::<(String, cdc_changefeed::Value)>() + name.len() + PER_ALLOC + value
        })
        .sum();
    let bytes = std::mem::size_of::<ArchivedRow>()
        + row.key_json.len()
        + row.topic.len()
        + 3 * PER_ALLOC
        + columns;
    // Measured resident memory runs ~1.5x the sum of allocations (allocator
    // arenas, decode temporaries): the budget is about the process's memory.
    (bytes + bytes / 2) as u64
}

/// The row to archive, or why not.
fn archivable(ev: RowEvent, archived_column: &str) -> Result<ArchivedRow, Outcome> {
    if ev.op == Op::Delete {
        return Err(Outcome::Delete);
    }
    let Some(after) = ev.after else {
        return Err(Outcome::Delete);
    };
    if after.get(archived_column) != Some(&cdc_changefeed::Value::Bool(true)) {
        return Err(Outcome::NotArchived);
    }
    Ok(ArchivedRow {
        op: ev.op,
        key_json: ev.key_json,
        updated: ev.updated,
        mvcc_timestamp: ev.mvcc_timestamp,
        pg_xid: ev.pg_xid,
        topic: ev.topic,
        partition: ev.partition,
        offset: ev.offset,
        columns: after.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_changefeed::{decode, RawRecord};

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

    fn ev(offset: i64, value: &str) -> Result<Event, ()> {
        decode(&RawRecord {
            topic: "t",
            partition: 0,
            offset,
            key: Some(b"[1]"),
            value: Some(value.as_bytes()),
        })
        .map_err(|_| ())
    }

    #[test]
    fn splits_runs_on_column_change_and_counts_everything() {
        let mut b = PartitionBuffer::new("t".into(), "t".into(), 0, 1, 10, None);
        let row_a = r#"{"after": {"archived": true, "id": 1}, "updated": "5.0000000000"}"#;
        let row_b =
            r#"{"after": {"archived": true, "id": 1, "new_col": "x"}, "updated": "7.0000000000"}"#;
        let unmarked = r#"{"after": {"archived": false, "id": 1}}"#;
        let delete = r#"{"after": null}"#;
        let resolved = r#"{"resolved": "6.0000000000"}"#;
        assert_eq!(b.push(10, ev(10, row_a), "archived"), Outcome::Archived);
        assert_eq!(
            b.push(11, ev(11, unmarked), "archived"),
            Outcome::NotArchived
        );
        assert_eq!(b.push(12, ev(12, resolved), "archived"), Outcome::Resolved);
        assert_eq!(b.push(13, ev(13, row_b), "archived"), Outcome::Archived);
        assert_eq!(b.push(14, ev(14, delete), "archived"), Outcome::Delete);
        assert_eq!(b.push(15, Err(()), "archived"), Outcome::Quarantined);
        assert_eq!(b.pending_events(), 6);
        let runs = b.take_runs();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].first, runs[0].last), (10, Some(12)));
        assert_eq!(
            runs[0].counts,
            Counts {
                events: 3,
                rows_archived: 1,
                not_archived: 1,
                resolved: 1,
                ..Counts::default()
            }
        );
        assert_eq!(runs[0].resolved, Some("6.0000000000".parse().unwrap()));
        assert_eq!((runs[1].first, runs[1].last), (13, Some(15)));
        assert_eq!(
            runs[1].counts,
            Counts {
                events: 3,
                rows_archived: 1,
                deletes: 1,
                quarantined: 1,
                ..Counts::default()
            }
        );
        assert_eq!(runs[1].rows[0].columns.len(), 3);
        assert_eq!(runs[1].max_updated, Some("7.0000000000".parse().unwrap()));
        // The next run starts right after.
        assert_eq!(
            (b.expected, b.runs[0].first, b.pending_events()),
            (16, 16, 0)
        );
        assert!(b.take_runs().is_empty());
    }
}
