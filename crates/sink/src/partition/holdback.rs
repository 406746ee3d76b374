//! The PostgreSQL transaction hold-back rule: where a checkpoint may end
//! while the events of a source transaction (`pg_xid`) are buffered.
//! Pure logic (no I/O), unit-tested.
//!
//! Guarantee: the events of the group of one PostgreSQL transaction that
//! holds archivable rows and is not known to be complete are held back,
//! from the transaction's first event (archivable or not) on: a safe cut
//! ([`Cut::Safe`], see [`PartitionBuffer::safe_end`]) ends just before
//! that event. The proof of completeness is an event whose commit LSN
//! (`pg_lsn`) is greater than every one the group's events carried, or a
//! resolved timestamp `>=` the group's largest `updated`. Not proof: an
//! event of another `pg_xid` with a commit LSN not greater (a re-sent
//! earlier transaction, after a restart of the changefeed), or without
//! one; an event with the same `pg_xid` and a greater `updated` (the
//! changefeed re-sending the transaction itself after a restart). Events
//! without `pg_xid` (CockroachDB) are never held. A checkpoint ends inside
//! a group only at a column set change inside it or at a forced cut
//! ([`Cut::Force`], when the held-back events alone exceed the memory
//! budget), and then records the transaction in `open_tail_xid` (a forced
//! cut: every run it cuts from the group's first event on). Hence, for
//! every checkpoint and every key whose latest version in it was written by
//! a transaction other than its `open_tail_xid`, that transaction's final
//! version of the key is in that checkpoint or an earlier one: the purger's
//! `xmin = x AND archived` guard never deletes a version the archive does
//! not hold.

use std::time::Instant;

use cdc_changefeed::{Hlc, RowEvent};
use cdc_checkpoint::Counts;
use cdc_common::db::parse_lsn;

use super::{counts_sub, PartitionBuffer, Run};

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
pub(super) struct Mark {
    /// First offset of the xid run (the cut ends at `offset - 1`).
    pub(super) offset: i64,
    /// Index in `runs` of the run that was open then.
    pub(super) run_index: usize,
    /// Rows that run held then.
    pub(super) row_index: usize,
    /// Delete records that run held then.
    pub(super) delete_index: usize,
    /// Its counts then.
    pub(super) counts: Counts,
    /// The partition's resolved timestamp then.
    pub(super) resolved: Option<Hlc>,
    /// Buffer bytes, rows and delete records then.
    pub(super) bytes: u64,
    pub(super) rows: usize,
    pub(super) deletes: usize,
    /// When the xid run's first event arrived.
    pub(super) arrived: Instant,
}

/// The current contiguous run of events that carry the same `pg_xid`
/// (events without `pg_xid` neither end nor extend it).
#[derive(Debug, Clone)]
pub(super) struct XidRun {
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

impl PartitionBuffer {
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

    /// A resolved timestamp arrived (`self.resolved` already took it).
    pub(super) fn note_resolved(&mut self, resolved: Hlc) {
        // Resolved T: no event with `updated <= T` that was not
        // sent already will follow, so a group at or below T is complete.
        let covers = |u: Option<Hlc>| u.is_some_and(|u| resolved >= u);
        if self.open_group.is_some_and(|g| covers(g.updated)) {
            self.close_group(|run| covers(run.updated));
        }
    }

    /// A row event arrived at `offset` (before it is classified): it may
    /// prove the open group complete, and it extends or starts the xid run.
    pub(super) fn note_row_event(&mut self, offset: i64, ev: &RowEvent) {
        let xid = ev.meta.pg_xid;
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
                    r.updated = r.updated.max(ev.meta.updated);
                }
                _ => {
                    let mark = self.mark_here(offset, Instant::now());
                    self.xid_run = Some(XidRun {
                        xid: x,
                        lsn,
                        updated: ev.meta.updated,
                        archivable: false,
                        mark,
                    });
                }
            }
            if let Some(g) = self.open_group.as_mut().filter(|g| g.xid == x) {
                g.updated = g.updated.max(ev.meta.updated);
                g.lsn = g.lsn.max(lsn);
            }
        }
    }

    /// The row event just pushed carried a `pg_xid` and is archived: its
    /// xid run holds an archivable row, and is held back if no group is.
    pub(super) fn note_archivable_row(&mut self) {
        if let Some(r) = &mut self.xid_run {
            r.archivable = true;
        }
        if self.open_group.is_none() {
            self.open_group_at_xid_run();
        }
    }

    /// The mark of the open group, if one holds events back.
    pub(super) fn held_mark(&self) -> Option<&Mark> {
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

    pub(super) fn marks_mut(&mut self) -> impl Iterator<Item = &mut Mark> {
        self.group_mark
            .iter_mut()
            .chain(self.xid_run.iter_mut().map(|r| &mut r.mark))
    }

    pub(super) fn take_until_mark(&mut self, m: Mark) -> Vec<Run> {
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
            min_updated: head_rows.iter().filter_map(|r| r.meta.updated).min(),
            max_updated: head_rows.iter().filter_map(|r| r.meta.updated).max(),
            rows: head_rows,
            deletes: std::mem::replace(&mut run.deletes, tail_deletes),
            counts: m.counts,
            resolved: m.resolved,
            open_tail_xid: None,
        };
        run.first = m.offset;
        run.counts = counts_sub(run.counts, m.counts);
        run.min_updated = run.rows.iter().filter_map(|r| r.meta.updated).min();
        run.max_updated = run.rows.iter().filter_map(|r| r.meta.updated).max();
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
pub(super) fn reset_to_start(m: &mut Mark, first: i64) {
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

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests;
