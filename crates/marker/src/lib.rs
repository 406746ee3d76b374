//! The marker: flips the `archived` column to true for rows past a cutoff,
//! so that the changefeed emits them and the sink archives them. It is
//! built for tables that take thousands of writes a minute, where one big
//! `UPDATE … WHERE created_at < X` times out and fails with
//! `RETRY_SERIALIZABLE`.
//!
//! Guarantees kept here:
//! - Only rows that are eligible *at write time* are flipped: every
//!   statement that writes re-checks `NOT archived`, the cutoff and the
//!   operator's predicate. A missing cutoff is an error, never "all rows".
//! - Each batch is one short statement (an implicit transaction) over at
//!   most `batch_size` rows, found by a keyset walk in primary-key order
//!   (never OFFSET, never a rescan from the start).
//! - No eligible row is lost: on PostgreSQL, rows locked by a foreground
//!   writer are skipped without waiting (`SKIP LOCKED`), kept aside and
//!   revisited after the walk; rows still locked then are reported and stay
//!   eligible for the next run. Restarting needs no saved state: the walk
//!   starts from the smallest key that is still `NOT archived` and past the
//!   cutoff, so work already done is neither repeated nor rescanned.
//! - SQLSTATE 40001, timeouts and dropped connections are retried with
//!   jittered exponential backoff (halving the batch); any other error
//!   stops the run with a message naming the table and the step.
//!
//! Layout:
//! - `config`: the per-table `[[marker]]` settings and the validated cutoff.
//! - `catalog`: resolves the table, its primary key and columns.
//! - `sql`: the SQL text sent, per dialect.
//! - `key`: primary-key values carried between batches as raw wire bytes.
//! - `error`: [`MarkError`], and which failures are retried.
//! - `report`: what a run reports ([`Progress`], [`MarkSummary`], [`DryRun`]).
//! - `session`: the reconnecting session, the retry wrapper, preparation.
//! - `dry_run`: [`dry_run`], which shows the SQL and plan and writes nothing.
//! - `run`: [`mark`], the batch loop and its limits.
//! - `walk`: the keyset walk and one batch per dialect.
//! - `revisit`: the second pass over rows found locked.

pub mod catalog;
pub mod config;
mod dry_run;
mod error;
pub mod key;
mod report;
mod revisit;
mod run;
mod session;
pub mod sql;
mod walk;

pub use config::{CrdbReadAsOf, Cutoff, CutoffConfig, MarkerConfig};
pub use dry_run::dry_run;
pub use error::MarkError;
pub use report::{DryRun, MarkSummary, Progress, StopReason, WritePosition};
pub use run::mark;

/// The `application_name` of the marker's sessions (visible in
/// `pg_stat_activity` / `SHOW SESSIONS`).
pub const APPLICATION_NAME: &str = "cdc-marker";
