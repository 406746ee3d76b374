//! `cdc-archiver run`: one archival run (mark → wait for the archive
//! watermark → purge → verify → report) for every `[[marker]]` table, or
//! on a cron schedule with `--schedule`.
//!
//! Exit codes: 0 success, 3 partial (the sink did not catch up before
//! `run.wait_timeout` and nothing was purged, or rows are still marked in
//! the table after the purge; nothing unsafe happened and a later run
//! finishes the work), 1 failure. With `--schedule` runs never overlap: a
//! slot that falls due while a run is going is skipped.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cdc_common::storage::{ArchiveStore, StorageConfig};
use cdc_marker::MarkerConfig;
use cdc_purger::PurgerConfig;
use cdc_run::{RunConfig, TablePlan};
use clap::Args;
use serde::Serialize;

use crate::global::GlobalArgs;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// PostgreSQL / CockroachDB URL (overrides `database_url`).
    #[arg(long, env = "CDC_PG_URL")]
    pub database_url: Option<String>,
    /// Archive URL (overrides `storage.url`).
    #[arg(long, env = "CDC_ARCHIVE_URL")]
    pub archive_url: Option<String>,
    /// Only these tables (default: every `[[marker]]` entry).
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Keep running and start a run on this cron schedule (5 fields,
    /// e.g. "0 3 * * *"); one run at a time.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Give up waiting for the sink after this long (e.g. 10m).
    #[arg(long)]
    pub wait_timeout: Option<String>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
}

/// Flag overrides for the `[purger]` section of each table.
#[derive(Serialize)]
struct PurgerOverrides {
    table: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
}

pub async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let file = global.config.as_deref();
    crate::config::check_top_level(file)?;
    let mut run_cfg: RunConfig = cdc_common::config::load_section(file, "run", &[])?;
    if let Some(t) = &args.wait_timeout {
        run_cfg.wait_timeout = humantime::parse_duration(t).context("--wait-timeout")?;
    }
    let markers: Vec<MarkerConfig> = cdc_common::config::load_section_list(file, "marker", &[])?;
    let top_url = cdc_common::config::load::<crate::config::Shared>(file)?.database_url;
    let database_url = args
        .database_url
        .clone()
        .or(top_url)
        .unwrap_or_else(|| crate::config::DEFAULT_DATABASE_URL.to_owned());

    // Optional: who consumes the tables' topics, for the wait's reports.
    let sink: Option<cdc_sink::SinkConfig> =
        cdc_common::config::load_section(file, "sink", &["brokers", "storage"]).ok();
    let mut plans = Vec::new();
    for marker in markers {
        if !args.tables.is_empty() && !args.tables.iter().any(|t| *t == marker.table.to_string()) {
            continue;
        }
        let overrides = PurgerOverrides {
            table: marker.table.to_string(),
            database_url: Some(database_url.clone()),
        };
        let mut purger = PurgerConfig::load(file, &overrides)
            .with_context(|| format!("loading the purger configuration for {}", marker.table))?;
        if let Some(url) = &args.archive_url {
            purger.storage.url.clone_from(url);
        }
        let archive_table = purger.archive_table();
        if let Some(other) = plans
            .iter()
            .find(|p: &&TablePlan| p.purger.archive_table() == archive_table)
        {
            anyhow::bail!(
                "tables {} and {} both use archive table {archive_table:?}: give one of them its own \
                 (purger.archive_table, and the sink topic's `table`)",
                other.marker.table,
                marker.table
            );
        }
        let watch = sink.as_ref().and_then(|s| {
            let topic = s.topics.iter().find(|t| t.table() == archive_table)?;
            Some(cdc_run::SinkWatch {
                brokers: s.brokers.clone(),
                group_id: s.group_id.clone(),
                topic: topic.name.clone(),
                kafka: s.kafka.clone(),
            })
        });
        plans.push(TablePlan {
            database_url: database_url.clone(),
            marker,
            purger,
            sink: watch,
        });
    }
    anyhow::ensure!(
        !plans.is_empty(),
        "no table to run: add a [[marker]] entry (table, cutoff) to the config file{}",
        if args.tables.is_empty() {
            String::new()
        } else {
            format!(" for {:?}", args.tables)
        }
    );
    // One archive for the run: every table's purger section names the same store.
    let storage: StorageConfig = plans[0].purger.storage.clone();
    let store = ArchiveStore::open(&storage).context("opening the archive")?;
    let shutdown = cdc_common::shutdown::on_signal();

    let print = |report: &cdc_run::RunReport| {
        print!("{report}");
        if let Some(path) = &args.report_json {
            if let Err(e) =
                std::fs::write(path, serde_json::to_vec_pretty(report).unwrap_or_default())
            {
                tracing::error!(error = %e, path = %path.display(), "cannot write the report");
            }
        }
    };

    if let Some(expr) = &args.schedule {
        let schedule = cdc_run::parse_schedule(expr)?;
        cdc_run::run_scheduled(&schedule, &plans, &run_cfg, &store, &shutdown, print).await;
        return Ok(ExitCode::SUCCESS);
    }
    let report = cdc_run::run_once(&plans, &run_cfg, &store, &shutdown).await;
    print(&report);
    Ok(ExitCode::from(report.outcome.exit_code()))
}
