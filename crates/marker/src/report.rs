//! What a marker run reports: progress while it runs, the summary when
//! it stops (also written as JSON for scheduled runs, and read back by
//! `cdc-run` to know where the marker's last write is), and what
//! `--dry-run` shows. Nothing here talks to the database.

use std::fmt;
use std::time::Duration;

use cdc_common::db::Dialect;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Progress reports, for a progress bar or logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The table is resolved; `eligible` rows were counted (if asked).
    Started {
        /// Eligible rows at the start.
        eligible: Option<u64>,
    },
    /// A batch committed.
    Batch {
        /// Rows marked by this batch.
        marked: u64,
        /// Rows marked so far.
        total: u64,
        /// The size asked for.
        batch_size: u32,
    },
    /// A batch failed with a retryable error and will be retried.
    Retrying {
        /// The error.
        error: String,
        /// The wait before the next attempt.
        delay: Duration,
        /// The batch size for the next attempt.
        batch_size: u32,
    },
}

/// Why the run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// No eligible row left.
    Completed,
    /// `max_rows` reached.
    MaxRows,
    /// `max_duration` reached.
    MaxDuration,
    /// The shutdown token fired (SIGTERM): the batch in flight finished.
    Shutdown,
}

/// Where the marker's last write is, for waiting until the changefeed
/// has passed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum WritePosition {
    /// PostgreSQL: `pg_current_wal_lsn()` read after the last batch
    /// committed; the changefeed has emitted the marker's writes once its
    /// confirmed LSN is at or past it.
    PgLsn(String),
    /// CockroachDB: `cluster_logical_timestamp()` read after the last
    /// batch committed; the changefeed has emitted the marker's writes once
    /// a resolved timestamp is at or past it.
    CrdbHlc(String),
}

/// The result of a run, also written as JSON for scheduled runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkSummary {
    /// The table, as configured.
    pub table: String,
    /// The server's dialect.
    pub dialect: Dialect,
    /// Why the run stopped.
    pub stop_reason: StopReason,
    /// Rows flipped to archived by this run.
    pub rows_marked: u64,
    /// Batches committed (including revisits of locked rows).
    pub batches: u64,
    /// Retried failures (40001, timeouts, dropped connections).
    pub retries: u64,
    /// Times the adaptive batch size was cut.
    pub batch_size_decreases: u64,
    /// The configured (largest) batch size.
    pub batch_size_target: u32,
    /// The smallest batch size used.
    pub batch_size_smallest: u32,
    /// The batch size at the end.
    pub batch_size_final: u32,
    /// Eligible rows counted at the start (if counted).
    pub eligible_at_start: Option<u64>,
    /// Times a row was found locked by another session and put aside.
    pub rows_skipped_locked: u64,
    /// Rows still locked after the revisits: unmarked, eligible next run.
    pub rows_left_locked: u64,
    /// When the run started (local clock).
    pub started_at: DateTime<Utc>,
    /// Wall time of the run.
    pub elapsed_secs: f64,
    /// `rows_marked / elapsed_secs`.
    pub rows_per_second: f64,
    /// Server clock read after the last batch committed (none if nothing
    /// was marked).
    pub last_write_at: Option<DateTime<Utc>>,
    /// Log position after the last batch committed (none if nothing was
    /// marked).
    pub last_write_position: Option<WritePosition>,
}

/// What `--dry-run` shows. Nothing is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    /// The table, as configured.
    pub table: String,
    /// The server's dialect.
    pub dialect: Dialect,
    /// The statements each batch runs (`$1` cutoff, `$2` batch size, then
    /// the keyset cursor).
    pub statements: Vec<String>,
    /// The cutoff value bound as `$1`.
    pub cutoff_value: String,
    /// EXPLAIN of the statements, first batch.
    pub plan: String,
    /// Rows eligible now.
    pub eligible: u64,
    /// The plan scans the whole table.
    pub full_scan: bool,
    /// The index that avoids the full scan (when `full_scan`).
    pub suggested_index: Option<String>,
}

impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "dry run for table {} ({:?}); nothing is written",
            self.table, self.dialect
        )?;
        writeln!(
            f,
            "\n-- statement(s) per batch ($1 = {:?}, $2 = batch size, then the keyset cursor):",
            self.cutoff_value
        )?;
        for s in &self.statements {
            writeln!(f, "{s};")?;
        }
        writeln!(f, "\n-- plan (first batch):\n{}", self.plan)?;
        writeln!(f, "\neligible rows: {}", self.eligible)?;
        if let Some(idx) = &self.suggested_index {
            writeln!(
                f,
                "\nWARNING: the candidate read is a full table scan; every batch would read the whole table."
            )?;
            writeln!(f, "This index fixes it:\n  {idx}")?;
        }
        Ok(())
    }
}
