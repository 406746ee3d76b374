//! Per-partition buffering and the offset bookkeeping that keeps the chain
//! gap-free. Pure logic (no I/O), unit-tested.
//!
//! Guarantee: a [`PartitionBuffer`] accounts for every offset it accepted
//! exactly once: the runs [`PartitionBuffer::take`] returns are contiguous,
//! start where the previous take ended, and count every event (rows,
//! deletes, unmarked rows, resolved and quarantined messages). A run holds
//! rows of one column set only (a column set change starts a new run, so a
//! new segment); delete events become delete records, never rows. Where a
//! cut may end is the PostgreSQL transaction hold-back rule's decision
//! (module `holdback`, see [`Cut`]); where the partition resumes and which
//! offsets it accepts, [`start_offset`]'s and [`accept`]'s (module
//! `resume`).

use std::time::Instant;

use cdc_changefeed::{Event, Hlc, Op, RowEvent};
use cdc_checkpoint::Counts;
use cdc_segment::{same_columns, ArchivedRow, DeletedRow};

mod holdback;
#[cfg(test)]
pub(crate) mod test_support;

pub use crate::resume::{accept, start_offset, Accept, StopReason};
use holdback::{reset_to_start, Mark, XidRun};
pub use holdback::{Cut, OpenGroup};

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
    /// Delete events, kept in the checkpoint's delete file.
    pub deletes: Vec<DeletedRow>,
    /// What the range held.
    pub counts: Counts,
    /// Smallest `updated` of the rows.
    pub min_updated: Option<Hlc>,
    /// Largest `updated` of the rows.
    pub max_updated: Option<Hlc>,
    /// Partition's resolved timestamp at the run's end (set when sealed).
    pub resolved: Option<Hlc>,
    /// PostgreSQL only: the run ends inside the events of this source
    /// transaction (later versions written by it may follow in the next
    /// checkpoint). Becomes [`cdc_checkpoint::Checkpoint::open_tail_xid`].
    pub open_tail_xid: Option<u64>,
}

impl Run {
    fn empty(first: i64) -> Self {
        Run {
            first,
            ..Run::default()
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Kept as a row.
    Archived,
    /// A delete: kept in the delete file, never as a row.
    Delete,
    /// Row not marked archived.
    NotArchived,
    /// Resolved timestamp.
    Resolved,
    /// Undecodable (the caller quarantined it).
    Quarantined,
}

/// What a cut would take, without taking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preview {
    /// Last offset the checkpoint(s) would cover.
    pub end: i64,
    /// Archived rows in the range.
    pub rows: usize,
    /// Delete records in the range (they get a delete file).
    pub deletes: usize,
    /// Events in the range that are neither rows nor resolved messages
    /// (deletes, rows not marked archived, quarantined messages).
    pub other_events: u64,
    /// The partition's resolved timestamp at `end`.
    pub resolved: Option<Hlc>,
    /// Resolved messages in the range.
    pub resolved_messages: u64,
    /// Estimated bytes the cut frees.
    pub bytes: u64,
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
    /// Delete records buffered.
    pub deletes: usize,
    /// When the oldest unflushed event arrived.
    pub oldest: Option<Instant>,
    /// PostgreSQL: the transaction group not yet known complete, if any.
    pub open_group: Option<OpenGroup>,
    /// Where the open group starts (its xid run's first event).
    group_mark: Option<Mark>,
    xid_run: Option<XidRun>,
    /// The resolved timestamp of the chain's last checkpoint.
    pub checkpointed_resolved: Option<Hlc>,
    /// When this sink last wrote a checkpoint of the partition (`None`: not yet).
    pub last_checkpoint: Option<Instant>,
    /// The last offset of the partition's chain (`None`: no chain yet).
    pub chain_last: Option<i64>,
    /// The digest of the chain's last checkpoint
    /// (`Checkpoint::digest`): what the next one records as its
    /// `previous_sha256`.
    pub chain_digest: Option<String>,
    /// When this sink last tried to write the partition's idle progress,
    /// and the resolved timestamp the object holds (read at assignment,
    /// then what this sink wrote; `cdc_checkpoint::IdleProgress`).
    pub last_progress: Option<(Instant, Option<Hlc>)>,
    /// `cdc_sink_events_total{table}`, counted on arrival.
    pub events_counter: metrics::Counter,
    /// Fingerprints of the buffered messages, by offset (see
    /// [`cdc_checkpoint::message_fingerprint`]): a checkpoint records the
    /// one of its last message.
    fingerprints: std::collections::VecDeque<(i64, String)>,
}

fn counts_sub(a: Counts, b: Counts) -> Counts {
    Counts {
        events: a.events - b.events,
        rows_archived: a.rows_archived - b.rows_archived,
        deletes: a.deletes - b.deletes,
        not_archived: a.not_archived - b.not_archived,
        resolved: a.resolved - b.resolved,
        quarantined: a.quarantined - b.quarantined,
    }
}

pub(crate) fn counts_add(a: Counts, b: Counts) -> Counts {
    Counts {
        events: a.events + b.events,
        rows_archived: a.rows_archived + b.rows_archived,
        deletes: a.deletes + b.deletes,
        not_archived: a.not_archived + b.not_archived,
        resolved: a.resolved + b.resolved,
        quarantined: a.quarantined + b.quarantined,
    }
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
            runs: vec![Run::empty(start)],
            bytes: 0,
            rows: 0,
            deletes: 0,
            oldest: None,
            open_group: None,
            group_mark: None,
            xid_run: None,
            checkpointed_resolved: resolved,
            last_checkpoint: None,
            chain_last: None,
            chain_digest: None,
            last_progress: None,
            events_counter: metrics::Counter::noop(),
            fingerprints: std::collections::VecDeque::new(),
        }
    }

    /// Records the fingerprint of the message at `offset` (before
    /// [`PartitionBuffer::push`]ing it).
    pub fn note_fingerprint(&mut self, offset: i64, fingerprint: String) {
        self.fingerprints.push_back((offset, fingerprint));
    }

    /// The fingerprint of the message at `offset`, forgetting those before
    /// and at it (runs are taken in offset order).
    pub fn take_fingerprint(&mut self, offset: i64) -> Option<String> {
        let mut found = None;
        while let Some((o, _)) = self.fingerprints.front() {
            if *o > offset {
                break;
            }
            let (o, f) = self.fingerprints.pop_front().expect("front exists");
            if o == offset {
                found = Some(f);
            }
        }
        found
    }

    /// Events buffered and not yet checkpointed.
    pub fn pending_events(&self) -> u64 {
        self.runs.iter().map(|r| r.counts.events).sum()
    }

    fn open(&mut self) -> &mut Run {
        self.runs.last_mut().expect("there is always an open run")
    }

    /// First buffered offset.
    pub fn first(&self) -> i64 {
        self.runs[0].first
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
        self.events_counter.increment(1);
        self.oldest.get_or_insert_with(Instant::now);
        let outcome = match event {
            Err(()) => Outcome::Quarantined,
            Ok(Event::Resolved(r)) => {
                self.resolved = Some(self.resolved.map_or(r.resolved, |x| x.max(r.resolved)));
                self.note_resolved(r.resolved);
                Outcome::Resolved
            }
            Ok(Event::Row(ev)) => {
                let xid = ev.meta.pg_xid;
                self.note_row_event(offset, &ev);
                match classify(ev, archived_column) {
                    Kept::NotArchived => Outcome::NotArchived,
                    Kept::Delete(d) => {
                        self.push_delete(d);
                        Outcome::Delete
                    }
                    Kept::Row(row) => {
                        self.push_row(offset, row);
                        if xid.is_some() {
                            self.note_archivable_row();
                        }
                        Outcome::Archived
                    }
                }
            }
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

    fn push_delete(&mut self, d: DeletedRow) {
        self.bytes += delete_bytes(&d);
        self.deletes += 1;
        self.open().deletes.push(d);
    }

    fn push_row(&mut self, offset: i64, row: ArchivedRow) {
        let needs_new_run = self
            .runs
            .last()
            .and_then(|r| r.rows.first())
            .is_some_and(|f| !same_columns(&f.columns, &row.columns));
        if needs_new_run {
            // A column set change starts a new segment: the current run
            // ends just before this event. If a transaction group is still
            // open here (this event did not prove it complete: it is the
            // group's, an incomplete row without `pg_xid`, or a re-sent
            // earlier transaction's), the run ends inside the group's
            // transaction and its checkpoint must say so.
            let resolved = self.resolved;
            let inside = self.open_group.map(|g| g.xid);
            let run = self.open();
            run.last = Some(offset - 1);
            run.resolved = resolved;
            run.open_tail_xid = inside;
            self.runs.push(Run::empty(offset));
        }
        self.bytes += row_bytes(&row);
        self.rows += 1;
        let run = self.open();
        if let Some(u) = row.meta.updated {
            run.min_updated = Some(run.min_updated.map_or(u, |m| m.min(u)));
            run.max_updated = Some(run.max_updated.map_or(u, |m| m.max(u)));
        }
        run.rows.push(row);
    }

    /// What [`PartitionBuffer::take`] would take with `cut`; `None` if nothing.
    pub fn preview(&self, cut: Cut) -> Option<Preview> {
        let mark = match cut {
            Cut::Force => None,
            Cut::Safe => self.held_mark(),
        };
        // The preview ends before the mark (or takes everything): the
        // events counted are those of the runs before it, plus the mark's
        // own count of the run it cuts.
        let (counts, end, rows, deletes, resolved, bytes) = match mark {
            None => (
                self.runs
                    .iter()
                    .fold(Counts::default(), |a, r| counts_add(a, r.counts)),
                self.expected - 1,
                self.rows,
                self.deletes,
                self.resolved,
                self.bytes,
            ),
            Some(m) if m.offset <= self.first() => return None,
            Some(m) => (
                self.runs[..m.run_index]
                    .iter()
                    .fold(m.counts, |a, r| counts_add(a, r.counts)),
                m.offset - 1,
                m.rows,
                m.deletes,
                m.resolved,
                m.bytes,
            ),
        };
        (counts.events > 0).then(|| Preview {
            end,
            rows,
            deletes,
            other_events: counts.deletes + counts.not_archived + counts.quarantined,
            resolved,
            resolved_messages: counts.resolved,
            bytes,
        })
    }

    /// Takes the runs up to where `cut` allows, sealed, leaving the rest
    /// (an empty open run at `expected` if everything was taken). Empty
    /// runs are dropped; the result is empty if there is nothing to take.
    pub fn take(&mut self, cut: Cut) -> Vec<Run> {
        if cut == Cut::Safe {
            if let Some(m) = self.held_mark().copied() {
                return self.take_until_mark(m);
            }
        }
        // A forced cut ends inside the open group: so does every run
        // boundary from the group's first event on (a column change inside
        // it), whatever sealed that run.
        let forced_inside = match cut {
            Cut::Force => self
                .open_group
                .zip(self.group_mark)
                .map(|(g, m)| (g.xid, m.offset)),
            Cut::Safe => None,
        };
        let resolved = self.resolved;
        let end = self.expected - 1;
        let open = self.open();
        open.last = Some(end);
        open.resolved = resolved;
        let mut runs = std::mem::replace(&mut self.runs, vec![Run::empty(self.expected)]);
        runs.retain(|r| r.counts.events > 0);
        if let Some((x, from)) = forced_inside {
            for r in &mut runs {
                if r.last.is_some_and(|l| l >= from) && r.open_tail_xid.is_none() {
                    r.open_tail_xid = Some(x);
                }
            }
        }
        self.bytes = 0;
        self.rows = 0;
        self.deletes = 0;
        self.oldest = None;
        let first = self.expected;
        for m in self.marks_mut() {
            reset_to_start(m, first);
        }
        runs
    }
}

const PER_ALLOC: usize = 32;

fn columns_bytes(columns: &[(String, cdc_changefeed::Value)]) -> usize {
    columns
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
        .sum()
}

/// Heap + inline bytes of a buffered row, allocator overhead included
/// (about 4x the message size for typical rows): what the memory budget counts.
pub fn row_bytes(row: &ArchivedRow) -> u64 {
    let bytes = std::mem::size_of::<ArchivedRow>()
        + row.meta.key_json.len()
        + row.meta.topic.len()
        + 3 * PER_ALLOC
        + columns_bytes(&row.columns);
    // Measured resident memory runs ~1.5x the sum of allocations (allocator
    // arenas, decode temporaries): the budget is about the process's memory.
    (bytes + bytes / 2) as u64
}

/// [`row_bytes`] for a buffered delete record.
pub fn delete_bytes(d: &DeletedRow) -> u64 {
    let bytes = std::mem::size_of::<DeletedRow>()
        + d.meta.key_json.len()
        + d.meta.topic.len()
        + 3 * PER_ALLOC
        + d.before.as_deref().map_or(0, columns_bytes);
    (bytes + bytes / 2) as u64
}

/// What becomes of a row event.
enum Kept {
    /// A row version to archive.
    Row(ArchivedRow),
    /// A delete, for the delete file.
    Delete(DeletedRow),
    /// A row not marked archived: only counted.
    NotArchived,
}

/// The delete record of a delete event: key, versions and offset always;
/// the `before` row only when it was itself marked archived (an archived
/// version being deleted, typically by the purger). A row the operator
/// never chose to archive is not copied into the archive by its deletion.
fn deleted_row(ev: RowEvent, archived_column: &str) -> DeletedRow {
    let archived = cdc_changefeed::Value::Bool(true);
    DeletedRow {
        meta: ev.meta,
        before: ev
            .before
            .filter(|b| b.get(archived_column) == Some(&archived))
            .map(|b| b.0),
    }
}

/// The row to archive, the delete to record, or neither.
fn classify(mut ev: RowEvent, archived_column: &str) -> Kept {
    let after = match ev.after.take() {
        Some(after) if ev.op != Op::Delete => after,
        _ => return Kept::Delete(deleted_row(ev, archived_column)),
    };
    if after.get(archived_column) != Some(&cdc_changefeed::Value::Bool(true)) {
        return Kept::NotArchived;
    }
    Kept::Row(ArchivedRow {
        op: ev.op,
        meta: ev.meta,
        columns: after.0,
    })
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

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
        let runs = b.take(Cut::Safe);
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
        // The delete is recorded (key and offset; the message had no `before`).
        assert!(runs[0].deletes.is_empty());
        assert_eq!(runs[1].deletes.len(), 1);
        assert_eq!(
            (
                runs[1].deletes[0].meta.offset,
                runs[1].deletes[0].meta.key_json.as_str(),
                &runs[1].deletes[0].before
            ),
            (14, "[1]", &None)
        );
        assert_eq!(runs[1].max_updated, Some("7.0000000000".parse().unwrap()));
        // The next run starts right after.
        assert_eq!(
            (b.expected, b.runs[0].first, b.pending_events()),
            (16, 16, 0)
        );
        assert!(b.take(Cut::Safe).is_empty());
    }
}
