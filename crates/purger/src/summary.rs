//! What a purge did, per checkpoint and in total: printed at the end of a
//! run and written as JSON with `--summary-json`.

use cdc_checkpoint::{Checkpoint, PurgeRecord};
use serde::Serialize;

use crate::catalog::Preflight;

/// Row counts of one checkpoint (or of the whole run). They reconcile:
/// `rows = deleted (or would_delete) + already_gone + skipped_changed +
/// skipped_unmarked + skipped_referenced + skipped_no_version +
/// skipped_open_transaction + skipped_xid_too_old + superseded`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RowCounts {
    /// Rows in the checkpoints' segments (every archived event,
    /// redelivered duplicates and older versions of a key included).
    pub rows: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Dry run: rows that match the guard and would be deleted.
    pub would_delete: u64,
    /// Rows no longer in the table.
    pub already_gone: u64,
    /// Rows whose current version is not the archived one (kept until the
    /// newer version is archived).
    pub skipped_changed: u64,
    /// Rows whose archived column is no longer true (kept: a legal hold).
    pub skipped_unmarked: u64,
    /// Rows a child table still references through a `NO ACTION` /
    /// `RESTRICT` foreign key (kept, still marked; re-touched so that a
    /// later run archives and tries them again).
    pub skipped_referenced: u64,
    /// Keys whose archived event carries no version (the changefeed must
    /// run `WITH mvcc_timestamp`; the PostgreSQL changefeed records the
    /// xid): never deleted.
    pub skipped_no_version: u64,
    /// Earlier versions (PostgreSQL's version guard, replaced by the content
    /// guard): keys kept because their archived version was written by the
    /// transaction the checkpoint ends inside. Only in old purge records.
    pub skipped_open_transaction: u64,
    /// Earlier versions: keys kept because their archived 64-bit xid was
    /// too far from the server's to compare. Only in old purge records.
    pub skipped_xid_too_old: u64,
    /// Older versions and redelivered duplicates of a key whose latest
    /// version in the same checkpoint was the one purged.
    pub superseded: u64,
}

impl RowCounts {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &RowCounts) {
        self.rows += o.rows;
        self.deleted += o.deleted;
        self.would_delete += o.would_delete;
        self.already_gone += o.already_gone;
        self.skipped_changed += o.skipped_changed;
        self.skipped_unmarked += o.skipped_unmarked;
        self.skipped_referenced += o.skipped_referenced;
        self.skipped_no_version += o.skipped_no_version;
        self.skipped_open_transaction += o.skipped_open_transaction;
        self.skipped_xid_too_old += o.skipped_xid_too_old;
        self.superseded += o.superseded;
    }

    /// Every kept row, whatever the reason.
    pub fn skipped(&self) -> u64 {
        self.skipped_changed
            + self.skipped_unmarked
            + self.skipped_referenced
            + self.skipped_no_version
            + self.skipped_open_transaction
            + self.skipped_xid_too_old
    }

    /// The right-hand side of the reconciliation: every row accounted for.
    /// Equals `rows` for a finished checkpoint.
    pub fn accounted(&self) -> u64 {
        self.deleted + self.would_delete + self.already_gone + self.skipped() + self.superseded
    }
}

/// What happened to one checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStatus {
    /// Purged now; its purge record is written.
    Purged,
    /// A purge record existed already (an earlier run or another purger).
    AlreadyPurged,
    /// Dry run: counted, nothing deleted, no record written.
    DryRun,
    /// Its segment is missing, corrupt or unreadable: nothing deleted, and
    /// the partition's later checkpoints were not touched.
    Refused,
    /// Shutdown arrived mid-checkpoint: some batches committed, no record
    /// written; the next run completes it (those rows count as already gone).
    Interrupted,
}

/// One checkpoint's line in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    /// Partition.
    pub partition: i32,
    /// First offset (names the checkpoint).
    pub first_offset: i64,
    /// Last offset.
    pub last_offset: i64,
    /// Segment path, if any.
    pub segment: Option<String>,
    /// Outcome.
    pub status: CheckpointStatus,
    /// Counts (for `already_purged`: the stored record's counts).
    pub counts: RowCounts,
}

/// A checkpoint (or chain) the purger would not trust.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// Partition.
    pub partition: i32,
    /// The checkpoint object (relative path), or the chain for a broken chain.
    pub checkpoint: String,
    /// The segment it names, if any.
    pub segment: Option<String>,
    /// Why.
    pub reason: String,
}

/// The outcome of [`crate::purge`].
#[derive(Debug, Clone, Serialize)]
pub struct PurgeSummary {
    /// The table purged.
    pub table: String,
    /// Its name in the archive.
    pub archive_table: String,
    /// `postgres` or `cockroach`.
    pub dialect: cdc_common::db::Dialect,
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// The replay this was (`None`: a purge).
    pub replay: Option<String>,
    /// This purger instance (also in every purge record it wrote).
    pub purger_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// Totals over the checkpoints processed in this run (already purged
    /// ones are not added).
    pub totals: RowCounts,
    /// Per checkpoint, in partition and chain order (those in
    /// `purged_before` excepted).
    pub checkpoints: Vec<CheckpointReport>,
    /// Checkpoints with a segment that the newest manifests record as
    /// purged by earlier runs (`checkpoints compact` folds purge records
    /// into them): not read again nor listed one by one, so a run's cost
    /// does not grow with every segment ever purged.
    pub purged_before: u64,
    /// Checkpoints refused (segment missing/corrupt, chain broken).
    pub refused: Vec<Refusal>,
    /// Foreign keys referencing the table.
    pub preflight: Preflight,
    /// Whether foreign keys with `ON DELETE CASCADE` / `SET NULL` /
    /// `SET DEFAULT` were allowed (`allow_cascading_foreign_keys`).
    pub allowed_cascading_foreign_keys: bool,
    /// DELETE batches committed.
    pub batches: u64,
    /// Batch attempts retried (40001, dropped connections, timeouts).
    pub retries: u64,
    /// Times the adaptive batch size was cut.
    pub batch_size_cuts: u64,
    /// Shutdown was requested before the end.
    pub interrupted: bool,
    /// PostgreSQL with `disable_changefeed_replication`: the replication
    /// origin each session of the run took (one per session; a reconnect
    /// opens another), whose transactions the PostgreSQL changefeed leaves
    /// out. Empty on CockroachDB, in a dry run, and when the setting is off.
    pub replication_origins: Vec<String>,
    /// PostgreSQL with `disable_changefeed_replication`: for each session
    /// that took no origin (so its deletes reached the changefeed), why and
    /// what fixes it; in a dry run, the privileges a real run would lack.
    pub replication_origin_warnings: Vec<String>,
    /// Rows kept because child rows reference them, re-touched after the
    /// purge (a new version the changefeed archives again) so that a later
    /// run tries them again.
    pub retouched: u64,
    /// Rows found un-marked after they were archived, now held: no later
    /// run marks them again (`cdc-archiver holds`).
    pub held: u64,
}

impl PurgeSummary {
    /// True when nothing was refused and the run was not interrupted.
    pub fn ok(&self) -> bool {
        self.refused.is_empty() && !self.interrupted
    }
}

impl PurgeSummary {
    /// A plain-text table for the terminal: one line per checkpoint, then
    /// totals, refusals and the pre-flight findings.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let _ = writeln!(
            s,
            "{} of {} (archive {}){}",
            self.replay
                .as_ref()
                .map_or_else(|| "purge".to_owned(), |id| format!("replay {id}")),
            self.table,
            self.archive_table,
            if self.dry_run { " — DRY RUN" } else { "" }
        );
        let _ = writeln!(
            s,
            "{:>4} {:>20} {:>20} {:<15} {:>8} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "part",
            "first_offset",
            "last_offset",
            "status",
            "rows",
            verb,
            "gone",
            "changed",
            "unmarked",
            "refd",
            "no_ver",
            "supersed"
        );
        for c in &self.checkpoints {
            let n = &c.counts;
            let _ = writeln!(
                s,
                "{:>4} {:>20} {:>20} {:<15} {:>8} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                c.partition,
                c.first_offset,
                c.last_offset,
                format!("{:?}", c.status).to_lowercase(),
                n.rows,
                if self.dry_run {
                    n.would_delete
                } else {
                    n.deleted
                },
                n.already_gone,
                n.skipped_changed,
                n.skipped_unmarked,
                n.skipped_referenced,
                // Old records' version-guard reasons are "no version" too.
                n.skipped_no_version + n.skipped_open_transaction + n.skipped_xid_too_old,
                n.superseded
            );
        }
        if self.purged_before > 0 {
            let _ = writeln!(
                s,
                "(and {} checkpoint(s) purged by earlier runs, as the manifests record: not read again)",
                self.purged_before
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            s,
            "total: {} rows, {verb} {}, already gone {}, skipped (changed {}, unmarked {}, referenced by child rows {}, \
             no complete version archived {}), superseded {}; {} batches, {} retries",
            t.rows,
            if self.dry_run { t.would_delete } else { t.deleted },
            t.already_gone,
            t.skipped_changed,
            t.skipped_unmarked,
            t.skipped_referenced,
            t.skipped_no_version + t.skipped_open_transaction + t.skipped_xid_too_old,
            t.superseded,
            self.batches,
            self.retries
        );
        for fk in &self.preflight.referencing {
            if !fk.indexed {
                let _ = writeln!(
                    s,
                    "warning: foreign key {} has no usable index; fix: {}",
                    fk.constraint,
                    fk.create_index(self.dialect)
                );
            }
            if fk.blocks_deletes() {
                let _ = writeln!(
                    s,
                    "note: foreign key {} on {}.{} is ON DELETE {}: parent rows with children fail to delete",
                    fk.constraint,
                    fk.child_schema,
                    fk.child_table,
                    fk.on_delete.to_uppercase()
                );
            }
            if fk.cascades() {
                let _ = writeln!(
                    s,
                    "warning: foreign key {} on {}.{} is ON DELETE {}: purging deletes or changes its rows, which \
                     were never archived{}",
                    fk.constraint,
                    fk.child_schema,
                    fk.child_table,
                    fk.on_delete.to_uppercase(),
                    if self.allowed_cascading_foreign_keys {
                        " (allowed by allow_cascading_foreign_keys)"
                    } else {
                        "; a purge refuses to start without --allow-cascading-foreign-keys"
                    }
                );
            }
        }
        for w in &self.replication_origin_warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        for r in &self.refused {
            let _ = writeln!(s, "REFUSED {}: {}", r.checkpoint, r.reason);
        }
        if self.interrupted {
            let _ = writeln!(
                s,
                "interrupted: rerun to finish (finished checkpoints are not redone)"
            );
        }
        s
    }
}

/// A checkpoint's line of the summary.
pub(crate) fn report(
    cp: &Checkpoint,
    status: CheckpointStatus,
    counts: RowCounts,
) -> CheckpointReport {
    CheckpointReport {
        partition: cp.partition,
        first_offset: cp.first_offset,
        last_offset: cp.last_offset,
        segment: cp.segment.as_ref().map(|s| s.path.clone()),
        status,
        counts,
    }
}

/// The counts a purge record kept, for a checkpoint already purged.
pub(crate) fn record_counts(r: &PurgeRecord) -> RowCounts {
    RowCounts {
        rows: r.accounted_rows(),
        deleted: r.deleted,
        would_delete: 0,
        already_gone: r.already_gone,
        skipped_changed: r.skipped_changed,
        skipped_unmarked: r.skipped_unmarked,
        skipped_no_version: r.skipped_no_version,
        skipped_open_transaction: r.skipped_open_transaction,
        skipped_xid_too_old: r.skipped_xid_too_old,
        skipped_referenced: r.skipped_referenced,
        superseded: r.superseded,
    }
}
