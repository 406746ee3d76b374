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
//!
//! Layout:
//! - `lib.rs`: the run's settings, its per-table plan, and [`run_once`].
//! - `table`: one table's stages, mark → wait → purge → verify.
//! - `wait`: the wait until the archive watermark passes the marker.
//! - `target`: the HLC the wait must pass, from the marker's summary.
//! - `verify`: what is checked after the purge.
//! - `report`: the run report ([`RunReport`]), its outcome and its text form.
//! - `schedule`: cron schedules, one run at a time ([`run_scheduled`]).

mod report;
mod schedule;
mod table;
mod target;
mod verify;
mod wait;

use std::time::{Duration, Instant};

use cdc_common::storage::ArchiveStore;
use cdc_marker::MarkerConfig;
use cdc_purger::PurgerConfig;
use chrono::Utc;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use table::run_table;

pub use report::{Outcome, RunReport, StageRates, StageTimes, TableReport, VerifyReport};
pub use schedule::{parse_schedule, run_scheduled, RunError, Ticker};
pub use target::{parse_decimal_hlc, target_of};
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

/// Runs every table once, writes the report into the archive, returns it.
pub async fn run_once(
    plans: &[TablePlan],
    cfg: &RunConfig,
    store: &ArchiveStore,
    shutdown: &CancellationToken,
) -> RunReport {
    let started_at = Utc::now();
    let run_started = Instant::now();
    let run_id = cdc_checkpoint::layout::new_id(started_at);
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
