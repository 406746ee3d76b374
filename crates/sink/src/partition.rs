//! Per-partition buffering and the offset bookkeeping that keeps the chain
//! gap-free. Pure logic (no I/O), unit-tested.

use std::time::Instant;

use cdc_changefeed::{Event, Hlc, Op, RowEvent};
use cdc_checkpoint::Counts;
use cdc_common::db::parse_lsn;
use cdc_segment::{same_columns, ArchivedRow, DeletedRow};

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

/// How far a flush may cut a partition's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Only up to where the chain may end: never inside the group of
    /// events of one PostgreSQL transaction (`pg_xid`) that is not known
    /// to be complete (see [`PartitionBuffer::safe_end`]).
    Safe,
    /// Everything buffered, even inside such a group: every checkpoint cut
    /// from the group's first event on records the transaction in
    /// `open_tail_xid`. Only when the held-back events alone exceed the
    /// memory budget.
    Force,
}

/// The state of the buffer just before the first event of a contiguous
/// `pg_xid` run: where a safe cut falls while that run's transaction is
/// not known to be complete.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// First offset of the xid run (the cut ends at `offset - 1`).
    offset: i64,
    /// Index in `runs` of the run that was open then.
    run_index: usize,
    /// Rows that run held then.
    row_index: usize,
    /// Delete records that run held then.
    delete_index: usize,
    /// Its counts then.
    counts: Counts,
    /// The partition's resolved timestamp then.
    resolved: Option<Hlc>,
    /// Buffer bytes, rows and delete records then.
    bytes: u64,
    rows: usize,
    deletes: usize,
    /// When the xid run's first event arrived.
    arrived: Instant,
}

/// The current contiguous run of events that carry the same `pg_xid`
/// (events without `pg_xid` neither end nor extend it).
#[derive(Debug, Clone)]
struct XidRun {
    xid: u64,
    /// Largest commit LSN (`pg_lsn`) of its events, if any carried one.
    lsn: Option<u64>,
    /// Largest `updated` of its events.
    updated: Option<Hlc>,
    /// Whether it holds an archivable row.
    archivable: bool,
    mark: Mark,
}

/// The group of events of one PostgreSQL transaction that holds
/// archivable rows and is not known to be complete yet. Every event from
/// its first one on is held back (see [`PartitionBuffer::safe_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenGroup {
    /// The transaction id (`pg_xid`, the rows' `xmin`).
    pub xid: u64,
    /// Largest `updated` of its events.
    pub updated: Option<Hlc>,
    /// Largest commit LSN (`pg_lsn`, as a number) of its events, if known.
    pub lsn: Option<u64>,
}

/// Whether a commit position is known to come after another one.
fn later(lsn: Option<u64>, than: Option<u64>) -> bool {
    matches!((lsn, than), (Some(a), Some(b)) if a > b)
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

fn counts_add(a: Counts, b: Counts) -> Counts {
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

    fn mark_here(&self, offset: i64, now: Instant) -> Mark {
        let run_index = self.runs.len() - 1;
        let run = &self.runs[run_index];
        Mark {
            offset,
            run_index,
            row_index: run.rows.len(),
            delete_index: run.deletes.len(),
            counts: run.counts,
            resolved: self.resolved,
            bytes: self.bytes,
            rows: self.rows,
            deletes: self.deletes,
            arrived: now,
        }
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
                // Resolved T: no event with `updated <= T` that was not
                // sent already will follow, so a group at or below T is complete.
                let covers = |u: Option<Hlc>| u.is_some_and(|u| r.resolved >= u);
                if self.open_group.is_some_and(|g| covers(g.updated)) {
                    self.close_group(|run| covers(run.updated));
                }
                Outcome::Resolved
            }
            Ok(Event::Row(ev)) => {
                let xid = ev.pg_xid;
                let lsn = ev.pg_lsn.as_deref().and_then(parse_lsn);
                // An event committed after the group's transaction (a
                // greater commit LSN) proves the group complete: the
                // changefeed publishes in commit order and re-sends from
                // the slot (which never passes a transaction not wholly
                // acknowledged), so a later commit follows a whole copy of
                // every earlier one. Another `pg_xid` alone proves nothing:
                // a re-sent EARLIER transaction has one too. An event
                // without `pg_xid` (an incomplete row) is judged the same
                // way; one without `pg_lsn` proves nothing.
                if self.open_group.is_some_and(|g| later(lsn, g.lsn)) {
                    self.close_group(|run| later(lsn, run.lsn));
                }
                if let Some(x) = xid {
                    match &mut self.xid_run {
                        Some(r) if r.xid == x => {
                            r.lsn = r.lsn.max(lsn);
                            r.updated = r.updated.max(ev.updated);
                        }
                        _ => {
                            let mark = self.mark_here(offset, Instant::now());
                            self.xid_run = Some(XidRun {
                                xid: x,
                                lsn,
                                updated: ev.updated,
                                archivable: false,
                                mark,
                            });
                        }
                    }
                    if let Some(g) = self.open_group.as_mut().filter(|g| g.xid == x) {
                        g.updated = g.updated.max(ev.updated);
                        g.lsn = g.lsn.max(lsn);
                    }
                }
                match classify(ev, archived_column) {
                    Kept::NotArchived => Outcome::NotArchived,
                    Kept::Delete(d) => {
                        self.push_delete(d);
                        Outcome::Delete
                    }
                    Kept::Row(row) => {
                        self.push_row(offset, row);
                        if xid.is_some() {
                            if let Some(r) = &mut self.xid_run {
                                r.archivable = true;
                            }
                            if self.open_group.is_none() {
                                self.open_group_at_xid_run();
                            }
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
        if let Some(u) = row.updated {
            run.min_updated = Some(run.min_updated.map_or(u, |m| m.min(u)));
            run.max_updated = Some(run.max_updated.map_or(u, |m| m.max(u)));
        }
        run.rows.push(row);
    }

    /// The mark of the open group, if one holds events back.
    fn held_mark(&self) -> Option<&Mark> {
        self.open_group?;
        self.group_mark.as_ref()
    }

    /// Holds back the transaction of the current xid run, from its first
    /// event.
    fn open_group_at_xid_run(&mut self) {
        if let Some(r) = &self.xid_run {
            self.open_group = Some(OpenGroup {
                xid: r.xid,
                updated: r.updated,
                lsn: r.lsn,
            });
            self.group_mark = Some(r.mark);
        }
    }

    /// The open group was proven complete. The current xid run's
    /// transaction, if another one with archivable rows (a re-sent earlier
    /// transaction whose rows arrived while the group was held), is held
    /// in turn unless `proven` (the same proof) covers it too.
    fn close_group(&mut self, proven: impl Fn(&XidRun) -> bool) {
        let Some(g) = self.open_group.take() else {
            return;
        };
        self.group_mark = None;
        if self
            .xid_run
            .as_ref()
            .is_some_and(|r| r.xid != g.xid && r.archivable && !proven(r))
        {
            self.open_group_at_xid_run();
        }
    }

    /// The last offset a checkpoint may end at now: `expected - 1`, or,
    /// while a group of one PostgreSQL transaction is not known to be
    /// complete, the offset just before the group's first event. The proof
    /// of completeness is an event whose commit LSN (`pg_lsn`) is greater
    /// than every one the group's events carried, or a resolved timestamp
    /// `>=` the group's `updated`. Not proof: an event of another `pg_xid`
    /// with a commit LSN not greater (a re-sent earlier transaction, after a
    /// restart of the changefeed), or without one; an event with the same
    /// `pg_xid` and a greater `updated` (the changefeed re-sending the
    /// transaction itself after a restart).
    pub fn safe_end(&self) -> i64 {
        match self.held_mark() {
            Some(m) => m.offset.max(self.first()) - 1,
            None => self.expected - 1,
        }
    }

    /// Events held back by an open transaction group (0 if none).
    pub fn held_back_events(&self) -> u64 {
        let safe = match self.held_mark() {
            Some(m) if m.offset > self.first() => self.runs[..m.run_index]
                .iter()
                .fold(m.counts.events, |a, r| a + r.counts.events),
            Some(_) => 0,
            None => return 0,
        };
        self.pending_events() - safe
    }

    /// What [`PartitionBuffer::take`] would take with `cut`; `None` if nothing.
    pub fn preview(&self, cut: Cut) -> Option<Preview> {
        let mark = match cut {
            Cut::Force => None,
            Cut::Safe => self.held_mark(),
        };
        match mark {
            None => {
                let counts = self
                    .runs
                    .iter()
                    .fold(Counts::default(), |a, r| counts_add(a, r.counts));
                (counts.events > 0).then(|| Preview {
                    end: self.expected - 1,
                    rows: self.rows,
                    deletes: self.deletes,
                    other_events: counts.deletes + counts.not_archived + counts.quarantined,
                    resolved: self.resolved,
                    bytes: self.bytes,
                })
            }
            Some(m) if m.offset <= self.first() => None,
            Some(m) => {
                let counts = self.runs[..m.run_index]
                    .iter()
                    .fold(m.counts, |a, r| counts_add(a, r.counts));
                (counts.events > 0).then(|| Preview {
                    end: m.offset - 1,
                    rows: m.rows,
                    deletes: m.deletes,
                    other_events: counts.deletes + counts.not_archived + counts.quarantined,
                    resolved: m.resolved,
                    bytes: m.bytes,
                })
            }
        }
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

    fn marks_mut(&mut self) -> impl Iterator<Item = &mut Mark> {
        self.group_mark
            .iter_mut()
            .chain(self.xid_run.iter_mut().map(|r| &mut r.mark))
    }

    fn take_until_mark(&mut self, m: Mark) -> Vec<Run> {
        if m.offset <= self.first() {
            return Vec::new();
        }
        let mut rest = self.runs.split_off(m.run_index);
        let mut taken = std::mem::take(&mut self.runs);
        let run = &mut rest[0];
        let tail_rows = run.rows.split_off(m.row_index);
        let tail_deletes = run.deletes.split_off(m.delete_index);
        let head_rows = std::mem::replace(&mut run.rows, tail_rows);
        let head = Run {
            first: run.first,
            last: Some(m.offset - 1),
            min_updated: head_rows.iter().filter_map(|r| r.updated).min(),
            max_updated: head_rows.iter().filter_map(|r| r.updated).max(),
            rows: head_rows,
            deletes: std::mem::replace(&mut run.deletes, tail_deletes),
            counts: m.counts,
            resolved: m.resolved,
            open_tail_xid: None,
        };
        run.first = m.offset;
        run.counts = counts_sub(run.counts, m.counts);
        run.min_updated = run.rows.iter().filter_map(|r| r.updated).min();
        run.max_updated = run.rows.iter().filter_map(|r| r.updated).max();
        if head.counts.events > 0 {
            taken.push(head);
        }
        // A sealed remainder left empty (a column change at the cut) goes.
        let dropped = rest.len() > 1 && rest[0].counts.events == 0;
        if dropped {
            rest.remove(0);
        }
        self.runs = rest;
        self.bytes -= m.bytes;
        self.rows -= m.rows;
        self.deletes -= m.deletes;
        self.oldest = Some(m.arrived);
        // Marks at the cut now point at the buffer start; a later one (the
        // xid run of a re-sent transaction inside the held group) moves
        // with what it indexes.
        let removed_runs = m.run_index + usize::from(dropped);
        for mark in self.marks_mut() {
            if mark.offset > m.offset {
                rebase(mark, &m, removed_runs);
            } else {
                reset_to_start(mark, m.offset);
            }
        }
        taken
    }
}

/// A mark after a cut of everything buffered before `first`.
fn reset_to_start(m: &mut Mark, first: i64) {
    m.offset = m.offset.max(first);
    m.run_index = 0;
    m.row_index = 0;
    m.delete_index = 0;
    m.counts = Counts::default();
    m.bytes = 0;
    m.rows = 0;
    m.deletes = 0;
}

/// A mark later than the mark `cut` at which the buffer was just cut
/// (`removed_runs` runs left the buffer's front).
fn rebase(m: &mut Mark, cut: &Mark, removed_runs: usize) {
    if m.run_index == cut.run_index {
        // Same run: the events between the two marks are still in it, so
        // it was not dropped; it now starts at the cut.
        m.run_index = 0;
        m.row_index -= cut.row_index;
        m.delete_index -= cut.delete_index;
        m.counts = counts_sub(m.counts, cut.counts);
    } else {
        m.run_index -= removed_runs;
    }
    m.bytes -= cut.bytes;
    m.rows -= cut.rows;
    m.deletes -= cut.deletes;
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
        + row.key_json.len()
        + row.topic.len()
        + 3 * PER_ALLOC
        + columns_bytes(&row.columns);
    // Measured resident memory runs ~1.5x the sum of allocations (allocator
    // arenas, decode temporaries): the budget is about the process's memory.
    (bytes + bytes / 2) as u64
}

/// [`row_bytes`] for a buffered delete record.
pub fn delete_bytes(d: &DeletedRow) -> u64 {
    let bytes = std::mem::size_of::<DeletedRow>()
        + d.key_json.len()
        + d.topic.len()
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
        key_json: ev.key_json,
        updated: ev.updated,
        mvcc_timestamp: ev.mvcc_timestamp,
        pg_xid: ev.pg_xid,
        topic: ev.topic,
        partition: ev.partition,
        offset: ev.offset,
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
        keyed(offset, 1, value)
    }

    /// The decoded record of key `[key]` at `offset` of partition 0.
    fn keyed(offset: i64, key: i64, value: &str) -> Result<Event, ()> {
        decode(&RawRecord {
            topic: "t",
            partition: 0,
            offset,
            key: Some(format!("[{key}]").as_bytes()),
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
                runs[1].deletes[0].offset,
                runs[1].deletes[0].key_json.as_str(),
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

    /// The commit LSN the tests give transaction `xid`: transactions
    /// commit in xid order unless a test says otherwise.
    fn lsn_of(xid: u64) -> String {
        format!("0/{:X}", 0x0100_0000 + xid * 0x40)
    }

    /// A PostgreSQL changefeed event (wrapped envelope with `pg_xid`).
    fn pg(offset: i64, key: i64, xid: u64, updated: i64, archived: bool) -> Result<Event, ()> {
        pg_at(offset, key, xid, &lsn_of(xid), updated, archived)
    }

    /// [`pg`] with an explicit commit LSN.
    fn pg_at(
        offset: i64,
        key: i64,
        xid: u64,
        lsn: &str,
        updated: i64,
        archived: bool,
    ) -> Result<Event, ()> {
        let value = format!(
            r#"{{"after": {{"archived": {archived}, "id": {key}, "v": {offset}}}, "before": null, "pg_lsn": "{lsn}", "pg_xid": "{xid}", "updated": "{updated}.0000000000"}}"#
        );
        keyed(offset, key, &value)
    }

    fn resolved_at(wall: i64) -> Result<Event, ()> {
        ev(0, &format!(r#"{{"resolved": "{wall}.0000000000"}}"#))
    }

    fn buffer(start: i64) -> PartitionBuffer {
        PartitionBuffer::new("t".into(), "t".into(), 0, 1, start, None)
    }

    fn ranges(runs: &[Run]) -> Vec<(i64, i64)> {
        runs.iter().map(|r| (r.first, r.last.unwrap())).collect()
    }

    fn offsets(run: &Run) -> Vec<i64> {
        run.rows.iter().map(|r| r.offset).collect()
    }

    /// The bug this guards against: a row updated twice in one transaction
    /// gives two events with one xid; a checkpoint ending between them
    /// would let the purger's `xmin = X` guard delete the second version,
    /// which only the next checkpoint holds.
    #[test]
    fn never_cuts_inside_an_unproven_transaction() {
        let mut b = buffer(0);
        b.push(0, pg(0, 1, 10, 100, true), "archived");
        b.push(1, pg(1, 1, 10, 100, true), "archived");
        // Flush (rows, age, shutdown...): nothing may be cut yet.
        assert_eq!(b.safe_end(), -1);
        assert_eq!(b.preview(Cut::Safe), None);
        assert!(b.take(Cut::Safe).is_empty());
        assert_eq!(b.held_back_events(), 2);
        assert_eq!((b.pending_events(), b.rows), (2, 2));
        // The next transaction proves 10 complete, and is held itself.
        b.push(2, pg(2, 2, 11, 101, true), "archived");
        assert_eq!(b.safe_end(), 1);
        let p = b.preview(Cut::Safe).unwrap();
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(0, 1)]);
        assert_eq!(offsets(&runs[0]), vec![0, 1]);
        assert_eq!((p.end, p.rows, p.other_events), (1, 2, 0));
        assert_eq!(runs[0].counts.events, 2);
        assert_eq!(runs[0].open_tail_xid, None);
        assert_eq!(
            (runs[0].min_updated, runs[0].max_updated),
            (
                Some("100.0000000000".parse().unwrap()),
                Some("100.0000000000".parse().unwrap())
            )
        );
        // What is left is exactly transaction 11, its bookkeeping intact.
        assert_eq!((b.first(), b.pending_events(), b.rows), (2, 1, 1));
        assert_eq!(b.bytes, p_bytes_of(&b));
        assert_eq!(
            b.runs[0].min_updated,
            Some("101.0000000000".parse().unwrap())
        );
        // A resolved timestamp >= its `updated` proves it complete.
        b.push(3, resolved_at(100), "archived");
        assert_eq!(b.safe_end(), 1, "resolved 100 < updated 101 proves nothing");
        b.push(4, resolved_at(101), "archived");
        assert_eq!(b.safe_end(), 4);
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(2, 4)]);
        assert_eq!(runs[0].resolved, Some("101.0000000000".parse().unwrap()));
        assert_eq!(
            (b.first(), b.pending_events(), b.rows, b.bytes),
            (5, 0, 0, 0)
        );
    }

    fn p_bytes_of(b: &PartitionBuffer) -> u64 {
        b.runs
            .iter()
            .flat_map(|r| &r.rows)
            .map(row_bytes)
            .sum::<u64>()
            + b.runs
                .iter()
                .flat_map(|r| &r.deletes)
                .map(delete_bytes)
                .sum::<u64>()
    }

    /// A PostgreSQL changefeed delete whose `before` row has `archived`.
    fn pg_delete(
        offset: i64,
        key: i64,
        xid: u64,
        updated: i64,
        archived: bool,
    ) -> Result<Event, ()> {
        let value = format!(
            r#"{{"after": null, "before": {{"archived": {archived}, "id": {key}, "v": 1.50}}, "pg_lsn": "{}", "pg_xid": "{xid}", "updated": "{updated}.0000000000"}}"#,
            lsn_of(xid)
        );
        keyed(offset, key, &value)
    }

    /// Delete events become delete records (never rows), keep their
    /// `before` only when it was marked archived, and stay with their
    /// transaction when a cut holds it back.
    #[test]
    fn deletes_are_recorded_and_cut_with_their_transaction() {
        let mut b = buffer(0);
        b.push(0, pg(0, 1, 10, 100, true), "archived");
        // Transaction 11: delete key 1 (archived), archive key 3, delete
        // key 2 (never marked).
        assert_eq!(
            b.push(1, pg_delete(1, 1, 11, 101, true), "archived"),
            Outcome::Delete
        );
        b.push(2, pg(2, 3, 11, 101, true), "archived");
        b.push(3, pg_delete(3, 2, 11, 101, false), "archived");
        assert_eq!((b.rows, b.deletes), (2, 2));
        // 11 is not proven complete: the cut ends before its first event.
        let p = b.preview(Cut::Safe).unwrap();
        assert_eq!((p.end, p.rows, p.deletes), (0, 1, 0));
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(0, 0)]);
        assert!(runs[0].deletes.is_empty());
        assert_eq!((b.rows, b.deletes, b.bytes), (1, 2, p_bytes_of(&b)));
        b.push(4, resolved_at(101), "archived");
        let p = b.preview(Cut::Safe).unwrap();
        assert_eq!((p.end, p.rows, p.deletes, p.other_events), (4, 1, 2, 2));
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(1, 4)]);
        let run = &runs[0];
        assert_eq!((run.counts.deletes, run.counts.rows_archived), (2, 1));
        assert_eq!(offsets(run), vec![2]);
        let d: Vec<(i64, &str, Option<u64>)> = run
            .deletes
            .iter()
            .map(|d| (d.offset, d.key_json.as_str(), d.pg_xid))
            .collect();
        assert_eq!(d, vec![(1, "[1]", Some(11)), (3, "[2]", Some(11))]);
        assert_eq!(
            run.deletes[0].before,
            Some(vec![
                ("archived".to_owned(), cdc_changefeed::Value::Bool(true)),
                ("id".to_owned(), cdc_changefeed::Value::Number("1".into())),
                ("v".to_owned(), cdc_changefeed::Value::Number("1.50".into())),
            ])
        );
        assert_eq!(run.deletes[1].before, None, "never marked: not copied");
        assert_eq!((b.rows, b.deletes, b.bytes), (0, 0, 0));
    }

    /// The PostgreSQL changefeed re-sends a transaction after a restart
    /// with a new, greater `updated` and the same xid: not a proof.
    #[test]
    fn same_xid_with_a_greater_updated_is_no_proof() {
        let mut b = buffer(0);
        b.push(0, pg(0, 1, 10, 100, true), "archived");
        b.push(1, pg(1, 1, 10, 200, true), "archived");
        assert!(b.take(Cut::Safe).is_empty());
        // A resolved at the first `updated` is not enough either.
        b.push(2, resolved_at(150), "archived");
        assert!(b.take(Cut::Safe).is_empty());
        b.push(3, resolved_at(200), "archived");
        assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 3)]);
    }

    /// The group starts at the transaction's first event, archivable or
    /// not, and events without a row (quarantined, resolved below it)
    /// inside it stay with it.
    #[test]
    fn the_group_starts_at_the_transactions_first_event() {
        let mut b = buffer(0);
        b.push(0, pg(0, 9, 9, 90, false), "archived");
        b.push(1, pg(1, 1, 10, 100, false), "archived");
        b.push(2, Err(()), "archived");
        b.push(3, pg(3, 1, 10, 100, true), "archived");
        b.push(4, resolved_at(99), "archived");
        b.push(5, pg(5, 2, 10, 100, true), "archived");
        assert_eq!(b.safe_end(), 0);
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(0, 0)]);
        assert_eq!(runs[0].counts.not_archived, 1);
        assert_eq!(b.held_back_events(), 5);
        assert_eq!(b.runs[0].counts.quarantined, 1);
        assert_eq!(b.runs[0].counts.resolved, 1);
        assert_eq!(b.runs[0].counts.not_archived, 1);
        // Nothing more to cut until a proof.
        assert!(b.take(Cut::Safe).is_empty());
        b.push(6, pg(6, 3, 12, 101, false), "archived");
        // 12 holds no archivable row: no group is open, everything goes.
        assert_eq!(b.open_group, None);
        assert_eq!(ranges(&b.take(Cut::Safe)), vec![(1, 6)]);
    }

    /// Only past the memory budget, a forced cut inside the group: the
    /// checkpoint says so, and the rest of the transaction follows in the
    /// next checkpoint, cut cleanly once proven.
    #[test]
    fn forced_cut_records_the_open_transaction() {
        let mut b = buffer(0);
        b.push(0, pg(0, 1, 10, 100, true), "archived");
        b.push(1, pg(1, 1, 10, 100, true), "archived");
        let runs = b.take(Cut::Force);
        assert_eq!(ranges(&runs), vec![(0, 1)]);
        assert_eq!(runs[0].open_tail_xid, Some(10));
        b.push(2, pg(2, 1, 10, 100, true), "archived");
        assert!(b.take(Cut::Safe).is_empty());
        b.push(3, pg(3, 5, 11, 101, true), "archived");
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(2, 2)]);
        assert_eq!(runs[0].open_tail_xid, None);
        assert_eq!(offsets(&runs[0]), vec![2]);
    }

    /// A column change inside a transaction splits its events over two
    /// segments: the first one's checkpoint must carry the xid.
    #[test]
    fn column_change_inside_a_transaction_marks_the_run() {
        let mut b = buffer(0);
        let wide = |offset: i64, xid: u64| {
            let v = format!(
                r#"{{"after": {{"archived": true, "extra": 1, "id": 1}}, "pg_lsn": "{}", "pg_xid": "{xid}", "updated": "100.0000000000"}}"#,
                lsn_of(xid)
            );
            ev(offset, &v)
        };
        b.push(0, pg(0, 1, 9, 99, true), "archived");
        // Transaction 10 starts with the new column set: a clean boundary.
        b.push(1, wide(1, 10), "archived");
        b.push(2, pg(2, 1, 10, 100, true), "archived");
        b.push(3, pg(3, 1, 11, 101, true), "archived");
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(
            runs.iter().map(|r| r.open_tail_xid).collect::<Vec<_>>(),
            vec![None, Some(10), None]
        );
        assert_eq!((b.first(), b.rows), (3, 1));
    }

    /// CockroachDB events (no pg_xid) are never held back.
    #[test]
    fn events_without_xid_are_not_held() {
        let mut b = buffer(0);
        let row = r#"{"after": {"archived": true, "id": 1}, "updated": "5.0000000000"}"#;
        b.push(0, ev(0, row), "archived");
        b.push(1, ev(1, row), "archived");
        assert_eq!(b.safe_end(), 1);
        assert_eq!(b.held_back_events(), 0);
        assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 1)]);
    }

    /// Random PostgreSQL streams (contiguous transactions, increasing
    /// `updated`, some resolved and quarantined messages), random safe
    /// flushes: the checkpoints are contiguous, account for every offset,
    /// and no transaction's rows are ever split between two of them.
    #[test]
    fn random_streams_never_split_a_transaction() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut b = buffer(0);
            let mut checkpoints: Vec<Run> = Vec::new();
            let (mut offset, mut xid, mut updated) = (0i64, 100u64, 1000i64);
            for _ in 0..(5 + rand(20)) {
                xid += 1 + rand(3);
                updated += 1;
                for _ in 0..(1 + rand(4)) {
                    let e = match rand(10) {
                        0 => Err(()),
                        1 => resolved_at(updated - 1 - rand(2) as i64),
                        _ => pg(offset, rand(3) as i64, xid, updated, rand(4) != 0),
                    };
                    b.push(offset, e, "archived");
                    offset += 1;
                    if rand(3) == 0 {
                        checkpoints.extend(b.take(Cut::Safe));
                    }
                }
                if rand(4) == 0 {
                    b.push(
                        offset,
                        resolved_at(updated + rand(2) as i64 - 1),
                        "archived",
                    );
                    offset += 1;
                }
            }
            checkpoints.extend(b.take(Cut::Safe));
            // Contiguous from 0 up to where the buffer continues.
            let mut next = 0;
            for c in &checkpoints {
                assert_eq!(c.first, next);
                next = c.last.unwrap() + 1;
                assert!(c
                    .rows
                    .iter()
                    .all(|r| (c.first..=c.last.unwrap()).contains(&r.offset)));
            }
            assert_eq!(b.first(), next);
            let total: u64 =
                checkpoints.iter().map(|c| c.counts.events).sum::<u64>() + b.pending_events();
            assert_eq!(total, offset as u64);
            // No xid with rows in two checkpoints, nor in a checkpoint and the buffer.
            let mut seen: std::collections::HashMap<u64, usize> = Default::default();
            let held = b.runs.iter().flat_map(|r| &r.rows);
            for (i, rows) in checkpoints
                .iter()
                .map(|c| c.rows.iter().collect::<Vec<_>>())
                .chain(std::iter::once(held.collect()))
                .enumerate()
            {
                for r in rows {
                    let x = r.pg_xid.unwrap();
                    assert_eq!(*seen.entry(x).or_insert(i), i, "xid {x} split");
                }
            }
            assert!(checkpoints.iter().all(|c| c.open_tail_xid.is_none()));
        }
    }

    fn open_tails(runs: &[Run]) -> Vec<Option<u64>> {
        runs.iter().map(|r| r.open_tail_xid).collect()
    }

    /// An incomplete row as the PostgreSQL changefeed sends it: no
    /// `pg_xid`, a column missing (`v`), its transaction's commit LSN.
    fn incomplete(offset: i64, key: i64, lsn: Option<&str>, updated: i64) -> Result<Event, ()> {
        let lsn = lsn.map_or(String::new(), |l| format!(r#""pg_lsn": "{l}", "#));
        let value = format!(
            r#"{{"after": {{"archived": true, "id": {key}}}, "before": null, {lsn}"updated": "{updated}.0000000000"}}"#
        );
        keyed(offset, key, &value)
    }

    /// Review finding: an incomplete row (no `pg_xid`, a column missing)
    /// inside transaction 10 changes the column set, so a run is sealed
    /// inside 10. Its checkpoint must name 10: the purger would otherwise
    /// delete key 1 by version A (`xmin = 10`) while its current version
    /// B, written by 10 too, is only in the next checkpoint, incomplete.
    #[test]
    fn an_incomplete_row_inside_a_transaction_marks_the_split() {
        let (l10, l11) = (lsn_of(10), lsn_of(11));
        let mut b = buffer(0);
        b.push(0, pg(0, 9, 9, 90, true), "archived");
        // Transaction 10: key 1 updated twice, version B incomplete.
        b.push(1, pg(1, 1, 10, 100, true), "archived");
        b.push(2, incomplete(2, 1, Some(&l10), 100), "archived");
        assert_eq!(b.open_group.map(|g| g.xid), Some(10), "B proves nothing");
        assert_eq!(b.runs.len(), 2);
        assert_eq!(b.runs[0].open_tail_xid, Some(10));
        b.push(3, pg(3, 5, 11, 101, true), "archived");
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(0, 1), (2, 2)]);
        assert_eq!(open_tails(&runs), vec![Some(10), None]);
        assert_eq!(offsets(&runs[1]), vec![2]);

        // Without a commit LSN, it is inside the group as well.
        let mut b = buffer(0);
        b.push(0, pg(0, 1, 10, 100, true), "archived");
        b.push(1, incomplete(1, 1, None, 100), "archived");
        b.push(2, pg(2, 5, 11, 101, true), "archived");
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(0, 0), (1, 1)]);
        assert_eq!(open_tails(&runs), vec![Some(10), None]);

        // One committed later (a greater LSN) is a clean boundary: it
        // proves 10 complete.
        let mut b = buffer(0);
        b.push(0, pg(0, 1, 10, 100, true), "archived");
        b.push(1, incomplete(1, 1, Some(&l11), 101), "archived");
        assert_eq!(b.open_group, None);
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(0, 0), (1, 1)]);
        assert_eq!(open_tails(&runs), vec![None, None]);
    }

    /// A forced cut (memory budget) inside a transaction marks every run it
    /// cuts from the transaction's first event on, not only the last one.
    #[test]
    fn a_forced_cut_marks_every_run_inside_the_transaction() {
        let l10 = lsn_of(10);
        let mut b = buffer(0);
        b.push(0, pg(0, 9, 9, 90, true), "archived");
        b.push(1, pg(1, 1, 10, 100, true), "archived");
        b.push(2, incomplete(2, 1, Some(&l10), 100), "archived");
        b.push(3, pg(3, 2, 10, 100, true), "archived");
        let runs = b.take(Cut::Force);
        assert_eq!(ranges(&runs), vec![(0, 1), (2, 2), (3, 3)]);
        assert_eq!(open_tails(&runs), vec![Some(10); 3]);
        // 10 goes on, still held; its end is cut cleanly once proven.
        b.push(4, pg(4, 3, 10, 100, true), "archived");
        assert!(b.take(Cut::Safe).is_empty());
        b.push(5, pg(5, 4, 11, 101, true), "archived");
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(4, 4)]);
        assert_eq!(open_tails(&runs), vec![None]);
        // Runs that end before the transaction's first event are not marked.
        let mut b = buffer(0);
        b.push(0, pg(0, 9, 9, 90, true), "archived");
        b.push(1, incomplete(1, 8, Some(&lsn_of(9)), 90), "archived");
        b.push(2, pg(2, 1, 10, 100, true), "archived");
        let runs = b.take(Cut::Force);
        assert_eq!(ranges(&runs), vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(open_tails(&runs), vec![Some(9), None, Some(10)]);
    }

    /// Review finding: the changefeed published part of transaction 11,
    /// stopped, and re-sends from its slot: transaction 10 (committed
    /// earlier, another xid, a new `updated`) comes again before 11 does.
    /// That is no proof that 11 is complete; only a later commit is.
    #[test]
    fn a_resent_earlier_transaction_is_no_proof() {
        let mut b = buffer(0);
        b.push(0, pg(0, 5, 10, 100, true), "archived");
        // 11 writes key 1 twice; only version A was published.
        b.push(1, pg(1, 1, 11, 101, true), "archived");
        // Restart: from the slot, with new (greater) `updated`.
        b.push(2, pg(2, 5, 10, 200, true), "archived");
        assert_eq!(b.open_group.map(|g| g.xid), Some(11));
        assert_eq!(b.safe_end(), 0);
        assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 0)]);
        b.push(3, pg(3, 1, 11, 201, true), "archived");
        b.push(4, pg(4, 1, 11, 201, true), "archived");
        assert!(b.take(Cut::Safe).is_empty());
        assert_eq!(b.held_back_events(), 4);
        // A later commit proves 11 (and the re-sent 10) complete.
        b.push(5, pg(5, 7, 12, 202, true), "archived");
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(1, 4)]);
        assert_eq!(offsets(&runs[0]), vec![1, 2, 3, 4]);
        assert_eq!(open_tails(&runs), vec![None]);
        assert_eq!((b.first(), b.rows, b.bytes), (5, 1, p_bytes_of(&b)));
    }

    /// What proves a group complete: a greater commit LSN, or a resolved
    /// timestamp at or above the group's largest `updated`; nothing else.
    #[test]
    fn only_a_later_commit_or_resolved_is_proof() {
        let mut b = buffer(0);
        b.push(0, pg(0, 1, 11, 101, true), "archived");
        // Another xid with the same commit LSN, an earlier one, none.
        b.push(1, pg_at(1, 2, 12, &lsn_of(11), 102, true), "archived");
        b.push(2, pg_at(2, 2, 13, &lsn_of(10), 103, true), "archived");
        let no_lsn = r#"{"after": {"archived": true, "id": 3, "v": 3}, "pg_xid": "14", "updated": "104.0000000000"}"#;
        b.push(3, ev(3, no_lsn), "archived");
        // The same xid re-sent with a greater `updated`.
        b.push(4, pg(4, 1, 11, 300, true), "archived");
        assert_eq!(
            b.open_group.map(|g| (g.xid, g.updated)),
            Some((11, Some("300.0000000000".parse().unwrap())))
        );
        // Resolved below the group's largest `updated`.
        b.push(5, resolved_at(299), "archived");
        assert_eq!(b.safe_end(), -1);
        b.push(6, pg(6, 3, 15, 301, true), "archived");
        assert_eq!((b.safe_end(), b.open_group.map(|g| g.xid)), (5, Some(15)));
        assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 5)]);
        // A group whose events carry no commit LSN: only resolved proves it.
        let mut b = buffer(0);
        let row = |xid: u64, updated: i64| {
            format!(
                r#"{{"after": {{"archived": true, "id": 1}}, "pg_xid": "{xid}", "updated": "{updated}.0000000000"}}"#
            )
        };
        b.push(0, ev(0, &row(20, 100)), "archived");
        b.push(1, pg(1, 2, 21, 101, true), "archived");
        assert_eq!(b.safe_end(), -1);
        b.push(2, resolved_at(100), "archived");
        assert_eq!((b.safe_end(), b.open_group.map(|g| g.xid)), (0, Some(21)));
    }

    /// A group proven by a resolved timestamp that does not cover the
    /// re-sent earlier transaction whose rows came in while the group was
    /// held: that transaction is held in turn, from its first re-sent event
    /// (whose mark followed the cuts made meanwhile).
    #[test]
    fn a_resent_transaction_is_held_when_the_group_is_proven_first() {
        let mut b = buffer(0);
        b.push(0, pg(0, 9, 9, 90, true), "archived");
        b.push(1, pg(1, 1, 11, 101, true), "archived");
        b.push(2, pg(2, 5, 10, 200, true), "archived");
        assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 0)]);
        b.push(3, pg(3, 6, 10, 200, true), "archived");
        b.push(4, resolved_at(150), "archived");
        assert_eq!(b.open_group.map(|g| g.xid), Some(10));
        assert_eq!(b.safe_end(), 1);
        let p = b.preview(Cut::Safe).unwrap();
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(1, 1)]);
        assert_eq!(offsets(&runs[0]), vec![1]);
        assert_eq!(
            (p.end, p.rows, p.bytes),
            (1, 1, row_bytes(&runs[0].rows[0]))
        );
        assert_eq!(runs[0].counts.events, 1);
        assert_eq!((b.first(), b.rows, b.pending_events()), (2, 2, 3));
        assert_eq!(b.bytes, p_bytes_of(&b));
        b.push(5, resolved_at(200), "archived");
        let runs = b.take(Cut::Safe);
        assert_eq!(ranges(&runs), vec![(2, 5)]);
        assert_eq!(offsets(&runs[0]), vec![2, 3]);
        assert_eq!((b.rows, b.bytes, b.pending_events()), (0, 0, 0));
    }

    /// Random PostgreSQL streams with changefeed restarts, modelled on
    /// pg-changefeed: rounds of whole transactions in commit order (xids in
    /// any order), a resolved after some rounds; a crash cuts a round
    /// short, inside a transaction, and the restart re-sends the round from
    /// its start (the slot) with new `updated`. Random safe flushes and
    /// forced cuts. For every checkpoint and every key whose latest
    /// version in it was written by transaction x (other than its
    /// `open_tail_xid`), x's final version of that key is in that
    /// checkpoint or an earlier one: the purger's `xmin = x AND archived`
    /// guard never deletes a version the archive does not hold.
    #[test]
    fn random_streams_with_restarts_never_expose_an_unarchived_version() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let event = |offset: usize,
                     key: i64,
                     xid: u64,
                     t: usize,
                     updated: i64,
                     archived: bool,
                     v: usize| {
            let value = format!(
                r#"{{"after": {{"archived": {archived}, "id": {key}, "v": {v}}}, "before": null, "pg_lsn": "0/{:X}", "pg_xid": "{xid}", "updated": "{updated}.0000000000"}}"#,
                0x1000 + t * 0x100
            );
            keyed(offset as i64, key, &value)
        };
        let (mut restarts, mut older_latest) = (0, 0);
        for _ in 0..400 {
            let n = 3 + rand(10) as usize;
            let mut xids: Vec<u64> = (0..n as u64).map(|i| 500 + i).collect();
            for i in (1..n).rev() {
                xids.swap(i, rand(i as u64 + 1) as usize);
            }
            let txs: Vec<Vec<(i64, bool)>> = (0..n)
                .map(|_| {
                    (0..1 + rand(4))
                        .map(|_| (rand(3) as i64, rand(4) != 0))
                        .collect()
                })
                .collect();
            let round = 1 + rand(3) as usize;
            let mut stream = Vec::new();
            let (mut clock, mut slot, mut crashes) = (1000i64, 0usize, 0);
            while slot < n {
                let end = (slot + round).min(n);
                let crash_at = (crashes < 3 && rand(3) == 0).then(|| {
                    let t = slot + rand((end - slot) as u64) as usize;
                    (t, rand(txs[t].len() as u64) as usize)
                });
                let mut crashed = false;
                'round: for t in slot..end {
                    clock += 1;
                    for (v, &(key, archived)) in txs[t].iter().enumerate() {
                        if crash_at == Some((t, v)) {
                            crashed = true;
                            break 'round;
                        }
                        stream.push(event(stream.len(), key, xids[t], t, clock, archived, v));
                    }
                }
                if crashed {
                    crashes += 1;
                    restarts += 1;
                    clock += 100;
                    continue;
                }
                if rand(2) == 0 {
                    stream.push(resolved_at(clock));
                }
                slot = end;
            }
            let total = stream.len();
            let mut b = buffer(0);
            let mut checkpoints: Vec<Run> = Vec::new();
            let mut forced = false;
            for (offset, e) in stream.into_iter().enumerate() {
                b.push(offset as i64, e, "archived");
                match rand(12) {
                    0..=3 => checkpoints.extend(b.take(Cut::Safe)),
                    4 => {
                        forced |= b.open_group.is_some();
                        checkpoints.extend(b.take(Cut::Force));
                    }
                    _ => {}
                }
                assert_eq!(b.bytes, p_bytes_of(&b));
                assert_eq!(b.rows, b.runs.iter().map(|r| r.rows.len()).sum::<usize>());
            }
            checkpoints.extend(b.take(Cut::Safe));
            let mut next = 0;
            for c in &checkpoints {
                assert_eq!(c.first, next);
                next = c.last.unwrap() + 1;
            }
            assert_eq!(b.first(), next);
            let events: u64 = checkpoints.iter().map(|c| c.counts.events).sum();
            assert_eq!(events + b.pending_events(), total as u64);
            let v_of = |r: &ArchivedRow| match &r.columns[2] {
                (name, cdc_changefeed::Value::Number(v)) if name == "v" => {
                    v.parse::<usize>().unwrap()
                }
                other => panic!("{other:?}"),
            };
            for (i, c) in checkpoints.iter().enumerate() {
                let mut latest: std::collections::HashMap<&str, &ArchivedRow> = Default::default();
                for r in &c.rows {
                    latest.insert(r.key_json.as_str(), r);
                }
                for r in latest.values() {
                    let x = r.pg_xid.unwrap();
                    if c.open_tail_xid == Some(x) {
                        continue;
                    }
                    let t = xids.iter().position(|&y| y == x).unwrap();
                    let key: i64 = r.key_json.trim_matches(['[', ']']).parse().unwrap();
                    let (v, &(_, archived)) = txs[t]
                        .iter()
                        .enumerate()
                        .rfind(|(_, e)| e.0 == key)
                        .unwrap();
                    if !archived {
                        continue;
                    }
                    older_latest += usize::from(v_of(r) != v);
                    assert!(
                        checkpoints[..=i]
                            .iter()
                            .flat_map(|c| &c.rows)
                            .any(|a| a.pg_xid == Some(x)
                                && a.key_json == r.key_json
                                && v_of(a) == v),
                        "checkpoint {i} ({:?}) lets the purger delete key {key} by xid {x}, \
                         whose final version {v} is not archived up to it",
                        (c.first, c.last)
                    );
                }
            }
            if !forced {
                assert!(checkpoints.iter().all(|c| c.open_tail_xid.is_none()));
            }
        }
        assert!(restarts > 100, "{restarts}");
        // Checkpoints whose latest version of a key is not its transaction's
        // final one (a partial copy of a re-sent transaction, whose whole
        // copy an earlier checkpoint holds) were met, and were safe.
        assert!(older_latest > 0, "{older_latest}");
    }
}
