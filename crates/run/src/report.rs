//! The report of a run: per table what each stage did, how long it took
//! and how the table ended, and the worst outcome over the tables (also
//! the process exit code). Written as JSON to `<table>/runs/<run-id>.json`
//! and shown as text. Nothing here does I/O.

use std::fmt;

use cdc_changefeed::Hlc;
use cdc_marker::MarkSummary;
use cdc_purger::PurgeSummary;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::WaitReport;

/// How a run ended; also the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every table marked, archived, purged and verified. Exit code 0.
    Success,
    /// Not everything marked was deleted, and nothing unsafe happened: the
    /// sink did not catch up in time (nothing was purged), or after the
    /// purge rows are still marked in the table (changed after they were
    /// archived, or archived by a checkpoint the purge did not reach). A
    /// later run finishes the work. Exit code 3.
    Partial,
    /// A stage failed. Exit code 1.
    Failure,
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Partial => 3,
        }
    }

    pub(crate) fn worst(self, other: Outcome) -> Outcome {
        use Outcome::*;
        match (self, other) {
            (Failure, _) | (_, Failure) => Failure,
            (Partial, _) | (_, Partial) => Partial,
            _ => Success,
        }
    }
}

/// What verification found after the purge.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Every partition's checkpoint chain is contiguous.
    pub chains_ok: bool,
    /// Partitions checked.
    pub partitions: usize,
    /// Rows still marked archived in the table (changed after archiving,
    /// not yet archived, or archived by a checkpoint this run could not
    /// wait for).
    pub rows_still_marked: u64,
    /// Rows still marked that child rows reference (`NO ACTION` /
    /// `RESTRICT` foreign keys): kept on purpose and re-touched, so that a
    /// later run purges them once their children are gone. Not counted in
    /// `rows_still_marked`.
    #[serde(default)]
    pub rows_referenced: u64,
    /// The child tables of those foreign keys (`schema.table`).
    #[serde(default)]
    pub referenced_by: Vec<String>,
    /// Rows of the table with a hold (restored, or un-marked after they
    /// were archived): never marked by a run until released
    /// (`cdc-archiver holds`).
    #[serde(default)]
    pub rows_held: u64,
    /// Problems found, in words.
    pub problems: Vec<String>,
}

/// Per-table result.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// Its archive name.
    pub archive_table: String,
    /// Rows eligible when the marker started.
    pub eligible: Option<u64>,
    /// The marker's summary.
    pub mark: Option<MarkSummary>,
    /// Row versions archived by the checkpoints that extended the chains
    /// during this run (found by chain position, not by clocks).
    pub archived: u64,
    /// Waiting for the watermark.
    pub wait: Option<WaitReport>,
    /// The purger's summary.
    pub purge: Option<PurgeSummary>,
    /// Verification.
    pub verify: Option<VerifyReport>,
    /// How this table ended.
    pub outcome: Outcome,
    /// The error that ended it, if any.
    pub error: Option<String>,
    /// Wall time per stage, seconds.
    pub stage_secs: StageTimes,
    /// Rows per second per stage, where there is something to divide.
    pub rates: StageRates,
}

/// Rows per second per stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageRates {
    /// Rows marked per second of marking.
    pub mark: Option<f64>,
    /// Row versions archived per second, from the start of marking until
    /// the watermark passed the marker (the sink works while the marker
    /// does); `None` when the watermark was not reached.
    pub archive: Option<f64>,
    /// Rows deleted per second of purging.
    pub purge: Option<f64>,
}

pub(crate) fn rate(rows: u64, secs: f64) -> Option<f64> {
    (rows > 0 && secs > 0.0).then(|| rows as f64 / secs)
}

/// Seconds spent per stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageTimes {
    /// Marking.
    pub mark: f64,
    /// Waiting for the archive.
    pub wait: f64,
    /// Purging.
    pub purge: f64,
    /// Verifying.
    pub verify: f64,
}

impl StageTimes {
    /// All stages.
    pub fn total(&self) -> f64 {
        self.mark + self.wait + self.purge + self.verify
    }
}

/// The report of one run, also written to `<table>/runs/<run-id>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Unique per run: `<UTC start time>-<8 hex>`, sortable.
    pub run_id: String,
    /// RFC 3339.
    pub started_at: DateTime<Utc>,
    /// RFC 3339.
    pub finished_at: DateTime<Utc>,
    /// Wall time of the whole run, seconds.
    pub elapsed_secs: f64,
    /// Worst outcome over the tables.
    pub outcome: Outcome,
    /// Per table.
    pub tables: Vec<TableReport>,
}

fn per_sec(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"))
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "run {}  outcome: {:?}  elapsed {:.1}s",
            self.run_id, self.outcome, self.elapsed_secs
        )?;
        for t in &self.tables {
            let marked = t.mark.as_ref().map_or(0, |m| m.rows_marked);
            writeln!(
                f,
                "  table {} (archive {}): {:?}, {:.1}s",
                t.table,
                t.archive_table,
                t.outcome,
                t.stage_secs.total()
            )?;
            writeln!(
                f,
                "    {:<9} {:>10}",
                "eligible",
                t.eligible.map_or("-".into(), |e| e.to_string())
            )?;
            if let Some(m) = &t.mark {
                writeln!(
                    f,
                    "    {:<9} {:>10}   {:>8} rows/s  {:>7.1}s  retries {}  ({} locked by other sessions, left for the next run)",
                    "marked",
                    marked,
                    per_sec(t.rates.mark),
                    t.stage_secs.mark,
                    m.retries,
                    m.rows_left_locked
                )?;
            }
            if let Some(w) = &t.wait {
                let hlc = |h: Option<Hlc>| h.map_or_else(|| "none".to_owned(), |h| h.to_string());
                writeln!(
                    f,
                    "    {:<9} {:>10}   {:>8} rows/s  {:>7.1}s  watermark {} {} target {}",
                    "archived",
                    t.archived,
                    per_sec(t.rates.archive),
                    t.stage_secs.wait,
                    hlc(w.watermark),
                    if w.reached { ">" } else { "NOT past" },
                    hlc(w.target)
                )?;
            }
            match &t.purge {
                Some(p) => {
                    let c = &p.totals;
                    writeln!(
                        f,
                        "    {:<9} {:>10}   {:>8} rows/s  {:>7.1}s  retries {}",
                        "deleted",
                        c.deleted,
                        per_sec(t.rates.purge),
                        t.stage_secs.purge,
                        p.retries
                    )?;
                    writeln!(
                        f,
                        "    {:<9} {:>10}   (changed after archiving {}, un-marked {}, referenced by child rows {}, \
                         no complete version archived {}; already gone {}, older versions {}; \
                         {} checkpoint(s) refused)",
                        "skipped",
                        c.skipped() + c.already_gone,
                        c.skipped_changed,
                        c.skipped_unmarked,
                        c.skipped_referenced,
                        c.skipped_no_version + c.skipped_open_transaction + c.skipped_xid_too_old,
                        c.already_gone,
                        c.superseded,
                        p.refused.len()
                    )?;
                }
                None if t.mark.is_some() => {
                    writeln!(f, "    {:<9} {:>10}   (not purged)", "deleted", 0)?;
                }
                None => {}
            }
            if let Some(v) = &t.verify {
                writeln!(
                    f,
                    "    {:<9} chains {} over {} partition(s); {} row(s) still marked in the table{}; {} held  {:.1}s",
                    "verified",
                    if v.chains_ok { "contiguous" } else { "BROKEN" },
                    v.partitions,
                    v.rows_still_marked,
                    if v.rows_referenced > 0 {
                        format!(
                            "; kept: {} referenced by {} (re-touched: a later run purges them once their children are gone)",
                            v.rows_referenced,
                            v.referenced_by.join(", ")
                        )
                    } else {
                        String::new()
                    },
                    v.rows_held,
                    t.stage_secs.verify
                )?;
            }
            if let Some(e) = &t.error {
                writeln!(f, "    {:<9} {e}", "why")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_combine_to_the_worst() {
        assert_eq!(Outcome::Success.worst(Outcome::Partial), Outcome::Partial);
        assert_eq!(Outcome::Partial.worst(Outcome::Failure), Outcome::Failure);
        assert_eq!(Outcome::Success.worst(Outcome::Success), Outcome::Success);
        assert_eq!(Outcome::Partial.exit_code(), 3);
    }
}
