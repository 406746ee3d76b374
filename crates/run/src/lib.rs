//! One archival run for one or more tables: **mark** the rows past the
//! cutoff → **wait** until the archive watermark (computed from the
//! checkpoints alone) has passed the marker's last write → **purge** what
//! the checkpoints prove archived → **verify** → write a **report** to
//! `<table>/runs/<run-id>.json` in the archive.
//!
//! The guarantee kept here is ordering, not deletion safety (the purger
//! enforces that by itself, row version by row version): the purge of a
//! table starts only after the watermark has passed everything this run
//! marked, so a run that ends successfully has deleted every row it marked
//! unless the row changed or was un-marked; when the sink falls behind the
//! run stops waiting at the timeout and reports itself *partial* instead of
//! purging less than it marked without saying so.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cdc_changefeed::Hlc;
use cdc_common::storage::ArchiveStore;
use cdc_marker::{MarkSummary, MarkerConfig};
use cdc_purger::{PurgeOptions, PurgeSummary, PurgerConfig};
use chrono::{DateTime, Utc};
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Settings of the run itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// How long to wait for the archive watermark to pass the marker's last
    /// write before giving up on purging (the run is then *partial*).
    /// Default: 10 minutes.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// How often the checkpoints are read while waiting. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Start the purge even if foreign keys reference the table from
    /// unindexed columns. Default: false.
    pub allow_unindexed_foreign_keys: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            wait_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(1),
            allow_unindexed_foreign_keys: false,
        }
    }
}

/// One table in a run: how to mark it and how to purge it.
#[derive(Debug, Clone)]
pub struct TablePlan {
    /// Database URL for the marker.
    pub database_url: String,
    /// Marker settings.
    pub marker: MarkerConfig,
    /// Purger settings (its archive table names the checkpoints to wait on).
    pub purger: PurgerConfig,
}

/// How a run ended; also the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every table marked, archived, purged and verified. Exit code 0.
    Success,
    /// The sink did not catch up in time (nothing unsafe happened; what was
    /// marked is purged by a later run). Exit code 3.
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

    fn worst(self, other: Outcome) -> Outcome {
        use Outcome::*;
        match (self, other) {
            (Failure, _) | (_, Failure) => Failure,
            (Partial, _) | (_, Partial) => Partial,
            _ => Success,
        }
    }
}

/// Waiting for the archive to catch up with the marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitReport {
    /// The watermark needed: the marker's last write.
    pub target: Option<Hlc>,
    /// The watermark seen last.
    pub watermark: Option<Hlc>,
    /// Whether it got there.
    pub reached: bool,
    /// Seconds spent waiting.
    pub waited_secs: f64,
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
    /// Row versions archived by checkpoints written during this run.
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

/// The report of one run, also written to `<table>/runs/<run-id>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Unique per run: `<UTC start time>-<8 hex>`, sortable.
    pub run_id: String,
    /// RFC 3339.
    pub started_at: DateTime<Utc>,
    /// RFC 3339.
    pub finished_at: DateTime<Utc>,
    /// Worst outcome over the tables.
    pub outcome: Outcome,
    /// Per table.
    pub tables: Vec<TableReport>,
}

/// Errors that stop a run before any table is tried.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The cron expression does not parse.
    #[error("schedule {expr:?} is not a cron expression ({reason}); use 5 fields, e.g. \"0 3 * * *\" for 03:00 daily")]
    BadSchedule {
        /// The expression.
        expr: String,
        /// Why.
        reason: String,
    },
}

/// The moment a marker's last write corresponds to, as an HLC: every
/// change the marker committed has an `updated` at or before it.
fn target_of(mark: &MarkSummary) -> Option<Hlc> {
    let at = mark.last_write_at?;
    let wall = at.timestamp_nanos_opt()?;
    Some(Hlc { wall, logical: 0 })
}

async fn wait_for_watermark(
    store: &ArchiveStore,
    archive_table: &str,
    target: Option<Hlc>,
    cfg: &RunConfig,
    shutdown: &CancellationToken,
) -> WaitReport {
    let start = Instant::now();
    let mut report = WaitReport {
        target,
        watermark: None,
        reached: target.is_none(),
        waited_secs: 0.0,
    };
    let Some(target) = target else { return report };
    loop {
        match cdc_checkpoint::watermark(store, archive_table).await {
            Ok(w) => report.watermark = w,
            Err(e) => tracing::warn!(error = %e, "cannot read the archive watermark; retrying"),
        }
        if report.watermark.is_some_and(|w| w >= target) {
            report.reached = true;
            break;
        }
        if start.elapsed() >= cfg.wait_timeout || shutdown.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.poll_interval) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    report.waited_secs = start.elapsed().as_secs_f64();
    report
}

/// Row versions archived by checkpoints written since `since`.
async fn archived_since(store: &ArchiveStore, table: &str, since: DateTime<Utc>) -> u64 {
    let mut n = 0;
    let Ok(parts) = cdc_checkpoint::partitions(store, table).await else {
        return 0;
    };
    for p in parts {
        if let Ok(chain) = cdc_checkpoint::read_chain(store, table, p).await {
            n += chain
                .checkpoints
                .iter()
                .filter(|c| DateTime::parse_from_rfc3339(&c.created_at).is_ok_and(|t| t >= since))
                .map(|c| c.counts.rows_archived)
                .sum::<u64>();
        }
    }
    n
}

async fn verify(store: &ArchiveStore, plan: &TablePlan, archive_table: &str) -> VerifyReport {
    let mut v = VerifyReport {
        chains_ok: true,
        ..Default::default()
    };
    match cdc_checkpoint::partitions(store, archive_table).await {
        Ok(parts) => {
            v.partitions = parts.len();
            for p in parts {
                if let Err(e) = cdc_checkpoint::read_chain(store, archive_table, p).await {
                    v.chains_ok = false;
                    v.problems.push(format!("partition {p}: {e}"));
                }
            }
        }
        Err(e) => {
            v.chains_ok = false;
            v.problems.push(format!("cannot list partitions: {e}"));
        }
    }
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {}",
        plan.marker.table.quoted(),
        cdc_common::ident::quote_ident(&plan.marker.archived_column)
    );
    match cdc_common::db::connect(&plan.database_url, "cdc-archiver-run-verify").await {
        Ok(client) => match client.query_one(&sql, &[]).await {
            Ok(row) => v.rows_still_marked = row.get::<_, i64>(0).max(0) as u64,
            Err(e) => v.problems.push(format!("counting rows still marked: {e}")),
        },
        Err(e) => v.problems.push(format!("cannot connect to verify: {e}")),
    }
    v
}

async fn run_table(
    plan: &TablePlan,
    cfg: &RunConfig,
    store: &ArchiveStore,
    shutdown: &CancellationToken,
    started: DateTime<Utc>,
) -> TableReport {
    let archive_table = plan
        .purger
        .archive_table
        .clone()
        .unwrap_or_else(|| plan.purger.table.name.clone());
    let mut report = TableReport {
        table: plan.marker.table.to_string(),
        archive_table: archive_table.clone(),
        eligible: None,
        mark: None,
        archived: 0,
        wait: None,
        purge: None,
        verify: None,
        outcome: Outcome::Success,
        error: None,
        stage_secs: StageTimes::default(),
    };

    let t = Instant::now();
    let mark = cdc_marker::mark(
        &plan.database_url,
        &plan.marker,
        shutdown.child_token(),
        |_| {},
    )
    .await;
    report.stage_secs.mark = t.elapsed().as_secs_f64();
    let mark = match mark {
        Ok(m) => m,
        Err(e) => {
            report.outcome = Outcome::Failure;
            report.error = Some(format!("mark: {e}"));
            return report;
        }
    };
    report.eligible = mark.eligible_at_start;
    let target = target_of(&mark);
    report.mark = Some(mark);

    let t = Instant::now();
    let wait = wait_for_watermark(store, &archive_table, target, cfg, shutdown).await;
    report.stage_secs.wait = t.elapsed().as_secs_f64();
    let reached = wait.reached;
    report.wait = Some(wait);
    if !reached {
        report.outcome = Outcome::Partial;
        report.error = Some(format!(
            "the archive watermark did not pass the marker's last write within {:?}; \
             is the sink running? Rows marked now are purged by a later run",
            cfg.wait_timeout
        ));
        report.archived = archived_since(store, &archive_table, started).await;
        return report;
    }

    let t = Instant::now();
    let opts = PurgeOptions {
        dry_run: false,
        allow_unindexed_foreign_keys: cfg.allow_unindexed_foreign_keys,
        crash_after_batches: None,
        progress: false,
    };
    let purge = cdc_purger::purge(&plan.purger, store, shutdown.child_token(), &opts).await;
    report.stage_secs.purge = t.elapsed().as_secs_f64();
    report.archived = archived_since(store, &archive_table, started).await;
    match purge {
        Ok(p) => {
            if !p.refused.is_empty() {
                report.outcome = Outcome::Failure;
                report.error = Some(format!(
                    "{} checkpoint(s) refused by the purger",
                    p.refused.len()
                ));
            }
            report.purge = Some(p);
        }
        Err(e) => {
            report.outcome = Outcome::Failure;
            report.error = Some(format!("purge: {e}"));
            return report;
        }
    }

    let t = Instant::now();
    let v = verify(store, plan, &archive_table).await;
    report.stage_secs.verify = t.elapsed().as_secs_f64();
    if !v.chains_ok || !v.problems.is_empty() {
        report.outcome = Outcome::Failure;
        report.error.get_or_insert_with(|| v.problems.join("; "));
    }
    report.verify = Some(v);
    report
}

/// Runs every table once, writes the report into the archive, returns it.
pub async fn run_once(
    plans: &[TablePlan],
    cfg: &RunConfig,
    store: &ArchiveStore,
    shutdown: &CancellationToken,
) -> RunReport {
    let started_at = Utc::now();
    let run_id = format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    tracing::info!(%run_id, tables = plans.len(), "archival run starting");
    let mut tables = Vec::new();
    for plan in plans {
        if shutdown.is_cancelled() {
            break;
        }
        tables.push(run_table(plan, cfg, store, shutdown, started_at).await);
    }
    let outcome = tables
        .iter()
        .fold(Outcome::Success, |acc, t| acc.worst(t.outcome));
    let report = RunReport {
        run_id,
        started_at,
        finished_at: Utc::now(),
        outcome,
        tables,
    };
    for t in &report.tables {
        let path = store.path(&cdc_checkpoint::layout::run_path(
            &t.archive_table,
            &report.run_id,
        ));
        let body = serde_json::to_vec_pretty(&report).unwrap_or_default();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        if let Err(e) = store
            .store
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            tracing::error!(error = %e, path = %path, "cannot write the run report");
        }
    }
    tracing::info!(run_id = %report.run_id, outcome = ?report.outcome, "archival run finished");
    report
}

/// Parses a cron expression; 5 fields (minute first, as in crontab) or the
/// 6/7-field form with seconds.
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, RunError> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_owned()
    };
    cron::Schedule::from_str(&full).map_err(|e| RunError::BadSchedule {
        expr: expr.to_owned(),
        reason: e.to_string(),
    })
}

/// Runs on `schedule` until shutdown, one run at a time: a run still going
/// when the next is due is not doubled; the missed slot is skipped and the
/// next one after the run ends is taken.
pub async fn run_scheduled(
    schedule: &cron::Schedule,
    plans: &[TablePlan],
    cfg: &RunConfig,
    store: &ArchiveStore,
    shutdown: &CancellationToken,
    mut on_report: impl FnMut(&RunReport),
) {
    while !shutdown.is_cancelled() {
        let Some(next) = schedule.upcoming(Utc).next() else {
            tracing::warn!("the schedule has no future run; stopping");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tracing::info!(next = %next, "next archival run scheduled");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        let report = run_once(plans, cfg, store, shutdown).await;
        on_report(&report);
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "run {}  outcome: {:?}", self.run_id, self.outcome)?;
        for t in &self.tables {
            let rate = |rows: u64, secs: f64| if secs > 0.0 { rows as f64 / secs } else { 0.0 };
            let marked = t.mark.as_ref().map_or(0, |m| m.rows_marked);
            let retries_mark = t.mark.as_ref().map_or(0, |m| m.retries);
            writeln!(
                f,
                "  table {} (archive {}): {:?}",
                t.table, t.archive_table, t.outcome
            )?;
            writeln!(
                f,
                "    eligible  {:>10}",
                t.eligible.map_or("-".into(), |e| e.to_string())
            )?;
            writeln!(
                f,
                "    marked    {:>10}   {:>8.0} rows/s  {:>7.1}s  retries {}",
                marked,
                rate(marked, t.stage_secs.mark),
                t.stage_secs.mark,
                retries_mark
            )?;
            writeln!(
                f,
                "    archived  {:>10}   (waited {:.1}s for the watermark)",
                t.archived, t.stage_secs.wait
            )?;
            if let Some(p) = &t.purge {
                let c = &p.totals;
                writeln!(
                    f,
                    "    deleted   {:>10}   {:>8.0} rows/s  {:>7.1}s  retries {}",
                    c.deleted,
                    rate(c.deleted, t.stage_secs.purge),
                    t.stage_secs.purge,
                    p.retries
                )?;
                writeln!(
                    f,
                    "    skipped   {:>10}   (changed after archiving {}, un-marked {}, already gone {})",
                    c.skipped_changed + c.skipped_unmarked,
                    c.skipped_changed,
                    c.skipped_unmarked,
                    c.already_gone
                )?;
            }
            if let Some(v) = &t.verify {
                writeln!(
                    f,
                    "    verified  chains {} over {} partition(s); {} row(s) still marked in the table",
                    if v.chains_ok { "contiguous" } else { "BROKEN" },
                    v.partitions,
                    v.rows_still_marked
                )?;
            }
            if let Some(e) = &t.error {
                writeln!(f, "    error     {e}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_cron_is_accepted() {
        let s = parse_schedule("0 3 * * *").unwrap();
        let next = s.upcoming(Utc).next().unwrap();
        assert_eq!(next.format("%H:%M:%S").to_string(), "03:00:00");
        let e = parse_schedule("every day").unwrap_err().to_string();
        assert!(e.contains("0 3 * * *"), "{e}");
    }

    #[test]
    fn outcomes_combine_to_the_worst() {
        assert_eq!(Outcome::Success.worst(Outcome::Partial), Outcome::Partial);
        assert_eq!(Outcome::Partial.worst(Outcome::Failure), Outcome::Failure);
        assert_eq!(Outcome::Success.worst(Outcome::Success), Outcome::Success);
        assert_eq!(Outcome::Partial.exit_code(), 3);
    }
}
