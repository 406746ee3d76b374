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

mod wait;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cdc_changefeed::Hlc;
use cdc_common::storage::ArchiveStore;
use cdc_marker::{MarkSummary, MarkerConfig, WritePosition};
use cdc_purger::{PurgeOptions, PurgeSummary, PurgerConfig};
use chrono::{DateTime, Utc};
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use wait::{passed, PartitionWait, SinkWatch, WaitReport};

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
    /// Where the table's sinks consume (the config's `[sink]` section), so
    /// that a wait can say whether anyone consumes a partition that makes
    /// no progress. `None`: the wait reports the partitions only.
    pub sink: Option<SinkWatch>,
}

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

    fn worst(self, other: Outcome) -> Outcome {
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

fn rate(rows: u64, secs: f64) -> Option<f64> {
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

/// The moment the marker's last write corresponds to, as an HLC: every
/// change the marker committed has an `updated` before it.
///
/// CockroachDB: the full HLC of `cluster_logical_timestamp()` read after
/// the last batch committed (wall time *and* logical counter), so a
/// resolved timestamp in the same wall nanosecond is compared correctly.
/// PostgreSQL (and a CockroachDB position that does not parse): the
/// server clock read at the same moment.
pub fn target_of(mark: &MarkSummary) -> Option<Hlc> {
    if let Some(WritePosition::CrdbHlc(text)) = &mark.last_write_position {
        match parse_decimal_hlc(text) {
            Some(h) => return Some(h),
            None => tracing::warn!(
                position = %text,
                "the marker's CockroachDB write position is not an HLC; waiting on its clock instead"
            ),
        }
    }
    let at = mark.last_write_at?;
    let wall = at.timestamp_nanos_opt()?;
    Some(Hlc { wall, logical: 0 })
}

/// Parses `cluster_logical_timestamp()` as text: the canonical HLC
/// (`<wall>.<10-digit logical>`), or the same DECIMAL with a shorter
/// fraction (`<wall>.<logical digits>`, the logical counter being the
/// fraction times 10^10) or none.
pub fn parse_decimal_hlc(text: &str) -> Option<Hlc> {
    let text = text.trim();
    if let Ok(h) = text.parse::<Hlc>() {
        return Some(h);
    }
    let (wall, frac) = text.split_once('.').unwrap_or((text, ""));
    if wall.is_empty()
        || !wall.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 10
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let logical = format!("{frac:0<10}").parse().ok()?;
    Some(Hlc {
        wall: wall.parse().ok()?,
        logical,
    })
}

/// Per partition, the first offset of its last checkpoint: where the
/// chains ended before this run. Object names only (a listing, no reads).
async fn chain_heads(store: &ArchiveStore, table: &str) -> Option<BTreeMap<i32, i64>> {
    let read = async {
        let mut heads = BTreeMap::new();
        for p in cdc_checkpoint::partitions(store, table).await? {
            if let Some(&last) = cdc_checkpoint::list_checkpoints(store, table, p)
                .await?
                .last()
            {
                heads.insert(p, last);
            }
        }
        Ok::<_, cdc_checkpoint::CheckpointError>(heads)
    };
    match read.await {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the checkpoints; the run report will not count archived rows");
            None
        }
    }
}

/// Row versions archived by the checkpoints that extend the chains past
/// `heads` (see [`chain_heads`]): position in the chain, not the sink's
/// `created_at`, so no clock of another host is compared with ours.
async fn archived_since(
    store: &ArchiveStore,
    table: &str,
    heads: Option<&BTreeMap<i32, i64>>,
) -> u64 {
    let Some(heads) = heads else { return 0 };
    let mut n = 0;
    let Ok(parts) = cdc_checkpoint::partitions(store, table).await else {
        return 0;
    };
    for p in parts {
        if let Ok(chain) = cdc_checkpoint::read_chain(store, table, p).await {
            n += chain
                .checkpoints
                .iter()
                .filter(|c| heads.get(&p).is_none_or(|&head| c.first_offset > head))
                .map(|c| c.counts.rows_archived)
                .sum::<u64>();
        }
    }
    n
}

/// When some row of the table is marked: the database's clock now, as an
/// HLC (CockroachDB: `cluster_logical_timestamp()`), which every committed
/// mark precedes. `None` when no row is marked.
async fn still_marked_now(plan: &TablePlan) -> Result<Option<Hlc>, String> {
    let client = cdc_common::db::connect(&plan.database_url, "cdc-archiver-run")
        .await
        .map_err(|e| e.to_string())?;
    let dialect = cdc_common::db::detect_dialect(&client)
        .await
        .map_err(|e| e.to_string())?;
    let clock = match dialect {
        cdc_common::db::Dialect::Cockroach => "cluster_logical_timestamp()::STRING",
        cdc_common::db::Dialect::Postgres => {
            "((extract(epoch FROM clock_timestamp()) * 1000000)::INT8 * 1000)::text"
        }
    };
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE {}), {clock}",
        plan.marker.table.quoted(),
        cdc_common::ident::quote_ident(&plan.marker.archived_column)
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| e.to_string())?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let text: String = row.get(1);
    parse_decimal_hlc(&text)
        .map(Some)
        .ok_or_else(|| format!("the database clock {text:?} is not a timestamp"))
}

async fn verify(
    store: &ArchiveStore,
    plan: &TablePlan,
    archive_table: &str,
    blocking: &[cdc_purger::catalog::ReferencingKey],
) -> VerifyReport {
    let mut v = VerifyReport {
        chains_ok: true,
        referenced_by: blocking
            .iter()
            .map(|fk| format!("{}.{}", fk.child_schema, fk.child_table))
            .collect(),
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
    // Rows child rows still reference are kept on purpose (re-touched, a
    // later run purges them): counted apart, not as work left undone.
    let referenced = if blocking.is_empty() {
        "false".to_owned()
    } else {
        blocking
            .iter()
            .map(cdc_purger::catalog::ReferencingKey::exists)
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let sql = format!(
        "SELECT count(*) FILTER (WHERE NOT ({referenced})), count(*) FILTER (WHERE {referenced}) \
         FROM {} AS t WHERE t.{}",
        plan.marker.table.quoted(),
        cdc_common::ident::quote_ident(&plan.marker.archived_column)
    );
    match cdc_common::db::connect(&plan.database_url, "cdc-archiver-run-verify").await {
        Ok(client) => match client.query_one(&sql, &[]).await {
            Ok(row) => {
                v.rows_still_marked = row.get::<_, i64>(0).max(0) as u64;
                v.rows_referenced = row.get::<_, i64>(1).max(0) as u64;
                let (schema, table) = (
                    plan.marker.table.schema_or_public(),
                    &plan.marker.table.name,
                );
                match cdc_common::holds::exists(&client, schema, table).await {
                    Ok(true) => {
                        let sql = format!(
                            "SELECT count(*) FROM {}",
                            cdc_common::holds::qualified(schema, table)
                        );
                        match client.query_one(&sql, &[]).await {
                            Ok(r) => v.rows_held = r.get::<_, i64>(0).max(0) as u64,
                            Err(e) => v.problems.push(format!("counting holds: {e}")),
                        }
                    }
                    Ok(false) => {}
                    Err(e) => v.problems.push(format!("looking for holds: {e}")),
                }
            }
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
) -> TableReport {
    let archive_table = plan.purger.archive_table();
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
        rates: StageRates::default(),
    };
    // Where the chains end now: what is archived from here on is this run's.
    let heads = chain_heads(store, &archive_table).await;

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
    report.rates.mark = rate(mark.rows_marked, report.stage_secs.mark);
    let target = match target_of(&mark) {
        Some(t) => Some(t),
        // Nothing marked now: rows earlier runs marked (or re-touched) may
        // still be on their way to the archive, so the purge waits for
        // everything committed until now, unless no row is marked at all.
        None => match still_marked_now(plan).await {
            Ok(t) => t,
            Err(e) => {
                report.outcome = Outcome::Failure;
                report.error = Some(format!("reading the database clock: {e}"));
                report.mark = Some(mark);
                return report;
            }
        },
    };
    report.mark = Some(mark);

    let t = Instant::now();
    let wait = wait::wait_for_watermark(
        store,
        &archive_table,
        target,
        cfg,
        plan.sink.as_ref(),
        shutdown,
    )
    .await;
    report.stage_secs.wait = t.elapsed().as_secs_f64();
    let reached = wait.reached;
    report.wait = Some(wait);
    report.archived = archived_since(store, &archive_table, heads.as_ref()).await;
    if !reached {
        report.outcome = Outcome::Partial;
        report.error = Some(if shutdown.is_cancelled() {
            "shutdown requested while waiting for the archive watermark; nothing was purged"
                .to_owned()
        } else {
            format!(
                "the archive watermark did not pass the marker's last write within {:?}; \
                 nothing was purged. {} Rows marked now are purged by a later run",
                cfg.wait_timeout,
                report
                    .wait
                    .as_ref()
                    .map_or_else(String::new, wait::WaitReport::explain)
            )
        });
        return report;
    }
    report.rates.archive = rate(
        report.archived,
        report.stage_secs.mark + report.stage_secs.wait,
    );

    let t = Instant::now();
    let opts = PurgeOptions {
        dry_run: false,
        allow_unindexed_foreign_keys: cfg.allow_unindexed_foreign_keys,
        crash_after_batches: None,
        progress: false,
    };
    let purge = cdc_purger::purge(&plan.purger, store, shutdown.child_token(), &opts).await;
    report.stage_secs.purge = t.elapsed().as_secs_f64();
    // Checkpoints may have been added while purging.
    report.archived = archived_since(store, &archive_table, heads.as_ref()).await;
    match purge {
        Ok(p) => {
            report.rates.purge = rate(p.totals.deleted, report.stage_secs.purge);
            if !p.refused.is_empty() {
                report.outcome = Outcome::Failure;
                report.error = Some(format!(
                    "{} checkpoint(s) refused by the purger",
                    p.refused.len()
                ));
            } else if p.interrupted {
                report.outcome = Outcome::Partial;
                report.error = Some("shutdown requested during the purge".to_owned());
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
    let blocking: Vec<cdc_purger::catalog::ReferencingKey> = report
        .purge
        .as_ref()
        .map(|p| p.preflight.blocking().cloned().collect())
        .unwrap_or_default();
    let v = verify(store, plan, &archive_table, &blocking).await;
    report.stage_secs.verify = t.elapsed().as_secs_f64();
    if !v.chains_ok || !v.problems.is_empty() {
        report.outcome = Outcome::Failure;
        report.error.get_or_insert_with(|| v.problems.join("; "));
    } else if v.rows_still_marked > 0 {
        report.outcome = report.outcome.worst(Outcome::Partial);
        let no_copy = report
            .purge
            .as_ref()
            .map_or(0, |p| p.totals.skipped_no_version);
        let table = plan.marker.table.to_string();
        report.error.get_or_insert_with(|| {
            let mut why = format!(
                "{} row(s) are still marked archived in the table after the purge \
                 (changed after they were archived, or not yet archived); a later run purges them",
                v.rows_still_marked
            );
            if no_copy > 0 {
                why.push_str(&format!(
                    "; {no_copy} archived row(s) could not be compared with the table (a column added since, \
                     an incomplete copy): `cdc-archiver retouch --table {table}` archives them again whole"
                ));
            }
            why
        });
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
    let run_started = Instant::now();
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
        tables.push(run_table(plan, cfg, store, shutdown).await);
    }
    let outcome = tables
        .iter()
        .fold(Outcome::Success, |acc, t| acc.worst(t.outcome));
    let finished_at = Utc::now();
    let report = RunReport {
        run_id,
        started_at,
        finished_at,
        elapsed_secs: run_started.elapsed().as_secs_f64(),
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

/// The slots of a cron schedule, taken one at a time.
///
/// [`Ticker::next`] waits for the first slot after *now*, so a caller that
/// runs its job between two calls can never have two jobs going: a slot
/// that falls due while the job is still running is skipped (and counted
/// in [`Ticker::skipped`]), not queued and not started in parallel.
pub struct Ticker {
    schedule: cron::Schedule,
    last: Option<DateTime<Utc>>,
    skipped: u64,
}

impl Ticker {
    /// Ticks on `schedule`.
    pub fn new(schedule: cron::Schedule) -> Self {
        Self {
            schedule,
            last: None,
            skipped: 0,
        }
    }

    /// Slots skipped so far because the previous job was still running.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Waits until the next slot after now and returns it; `None` when the
    /// schedule has no future slot or on shutdown.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<DateTime<Utc>> {
        let now = Utc::now();
        if let Some(last) = self.last {
            let missed = self
                .schedule
                .after(&last)
                .take_while(|t| *t <= now)
                .take(10_000)
                .count() as u64;
            if missed > 0 {
                self.skipped += missed;
                tracing::warn!(
                    missed,
                    "scheduled run(s) skipped: the previous run was still going at their time"
                );
            }
        }
        let next = self.schedule.after(&now).next()?;
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tracing::info!(next = %next, "next archival run scheduled");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return None,
        }
        self.last = Some(next);
        Some(next)
    }
}

/// Runs on `schedule` until shutdown, one run at a time: a run still going
/// when the next is due is not doubled; the missed slot is skipped and the
/// next one after the run ends is taken (see [`Ticker`]).
pub async fn run_scheduled(
    schedule: &cron::Schedule,
    plans: &[TablePlan],
    cfg: &RunConfig,
    store: &ArchiveStore,
    shutdown: &CancellationToken,
    mut on_report: impl FnMut(&RunReport),
) {
    let mut ticker = Ticker::new(schedule.clone());
    while ticker.next(shutdown).await.is_some() {
        let report = run_once(plans, cfg, store, shutdown).await;
        on_report(&report);
    }
    if !shutdown.is_cancelled() {
        tracing::warn!("the schedule has no future run; stopping");
    }
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

    #[test]
    fn the_watermark_must_be_strictly_past_the_target() {
        let t = Hlc::new(1_000, 5);
        assert!(!passed(None, t));
        assert!(!passed(Some(t), t), "a tie is not passed");
        assert!(!passed(Some(Hlc::new(1_000, 4)), t));
        assert!(
            passed(Some(Hlc::new(1_000, 6)), t),
            "the logical part counts"
        );
        assert!(passed(Some(Hlc::new(1_001, 0)), t));
    }

    fn summary(kind: &str, value: &str) -> MarkSummary {
        serde_json::from_value(serde_json::json!({
            "table": "public.t", "dialect": "cockroach", "stop_reason": "completed",
            "rows_marked": 1, "batches": 1, "retries": 0, "batch_size_decreases": 0,
            "batch_size_target": 10, "batch_size_smallest": 10, "batch_size_final": 10,
            "eligible_at_start": 1, "rows_skipped_locked": 0, "rows_left_locked": 0,
            "started_at": "2025-06-12T08:00:00Z", "elapsed_secs": 1.0, "rows_per_second": 1.0,
            "last_write_at": "2025-06-12T08:00:31.873209Z",
            "last_write_position": {"kind": kind, "value": value},
        }))
        .unwrap()
    }

    #[test]
    fn the_target_is_the_markers_full_hlc_on_cockroachdb() {
        let crdb = summary("crdb_hlc", "1749715231873209112.0000000002");
        assert_eq!(
            target_of(&crdb),
            Some(Hlc::new(1_749_715_231_873_209_112, 2))
        );
        // PostgreSQL, or a position that does not parse: the server clock.
        let clock = Some(Hlc::new(1_749_715_231_873_209_000, 0));
        let pg = summary("pg_lsn", "0/16B3748");
        assert_eq!(target_of(&pg), clock);
        let odd = summary("crdb_hlc", "soon");
        assert_eq!(target_of(&odd), clock);
    }

    #[test]
    fn cockroach_positions_parse_as_full_hlcs() {
        let h = parse_decimal_hlc("1749715231873209112.0000000002").unwrap();
        assert_eq!(h, Hlc::new(1_749_715_231_873_209_112, 2));
        assert_eq!(
            parse_decimal_hlc("1749715231873209112.00000001"),
            Some(Hlc::new(1_749_715_231_873_209_112, 100))
        );
        assert_eq!(
            parse_decimal_hlc("1749715231873209112"),
            Some(Hlc::new(1_749_715_231_873_209_112, 0))
        );
        for bad in ["", "x.1", "1.00000000001", "1.-1", "-5.0000000000x"] {
            assert_eq!(parse_decimal_hlc(bad), None, "{bad:?}");
        }
    }
}
