//! `cdc-archiver purge`: delete the row versions that checkpoints prove are
//! archived. Flags and config in, `cdc_purger::purge` does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cdc_common::storage::ArchiveStore;
use cdc_purger::{PurgeOptions, PurgerConfig};
use clap::Args;
use serde::Serialize;

use crate::global::GlobalArgs;

#[derive(Debug, Args, Serialize)]
pub struct PurgeArgs {
    /// Table to purge (`name` or `schema.name`); overrides `purger.table`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Database URL; overrides `purger.database_url`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Largest rows per DELETE batch; overrides `purger.batch_size`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Rows per second at most; overrides `purger.max_rows_per_second`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rows_per_second: Option<u32>,
    /// Archive URL (file:///dir or s3://bucket/prefix); overrides `purger.storage.url`.
    #[arg(long)]
    #[serde(skip)]
    pub archive_url: Option<String>,
    /// Report what would be deleted per checkpoint; delete nothing.
    #[arg(long)]
    #[serde(skip)]
    pub dry_run: bool,
    /// Start even when foreign keys reference the table from unindexed
    /// columns (every delete then scans the referencing table).
    #[arg(long)]
    #[serde(skip)]
    pub allow_unindexed_foreign_keys: bool,
    /// Start even when foreign keys reference the table with ON DELETE
    /// CASCADE / SET NULL / SET DEFAULT: purging then deletes or changes
    /// referencing rows that were never archived. Overrides
    /// `purger.allow_cascading_foreign_keys`.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_cascading_foreign_keys: bool,
    /// Replay: purge again the already purged checkpoints whose first
    /// offset is at least this (with --replay-to), ignoring their records,
    /// e.g. after rows were restored with their archived flag. A dry run
    /// unless --yes: rows still in the table in their archived version
    /// show as "would delete" (a cross-check of the purge records against
    /// the database). What a replay does is recorded under
    /// <table>/replays/<id>/; purge records are never rewritten.
    #[arg(long, requires = "replay_to")]
    #[serde(skip)]
    pub replay_from: Option<i64>,
    /// Replay: the largest first offset of the checkpoints replayed.
    #[arg(long, requires = "replay_from")]
    #[serde(skip)]
    pub replay_to: Option<i64>,
    /// Replay: only this partition (default: every partition).
    #[arg(long, requires = "replay_from")]
    #[serde(skip)]
    pub partition: Option<i32>,
    /// Replay: delete (without it a replay is a dry run).
    #[arg(long, requires = "replay_from")]
    #[serde(skip)]
    pub yes: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub summary_json: Option<PathBuf>,
}

pub async fn run(global: &GlobalArgs, args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = PurgerConfig::load(global.config.as_deref(), &args)
        .context("loading the purger configuration")?;
    if let Some(url) = &args.archive_url {
        cfg.storage.url.clone_from(url);
    }
    let store = ArchiveStore::open(&cfg.storage).context("opening the archive")?;
    // Test hook, read only in builds with debug assertions or the
    // `failpoints` feature (never in a release build).
    let crash_after_batches = match std::env::var("CDC_PURGE_CRASH_AFTER_BATCHES") {
        Ok(v) if cfg!(any(debug_assertions, feature = "failpoints")) => Some(
            v.parse()
                .context("CDC_PURGE_CRASH_AFTER_BATCHES must be a number")?,
        ),
        _ => None,
    };
    let replay = match (args.replay_from, args.replay_to) {
        (Some(from), Some(to)) => Some(cdc_purger::Replay {
            partition: args.partition,
            first_offsets: from..=to,
            id: cdc_checkpoint::layout::new_id(chrono::Utc::now()),
        }),
        _ => None,
    };
    let opts = PurgeOptions {
        dry_run: args.dry_run || (replay.is_some() && !args.yes),
        replay,
        allow_unindexed_foreign_keys: args.allow_unindexed_foreign_keys,
        crash_after_batches,
        progress: true,
    };
    let shutdown = cdc_common::shutdown::on_signal();
    let summary = cdc_purger::purge(&cfg, &store, shutdown, &opts).await?;
    print!("{}", summary.render());
    if let Some(path) = &args.summary_json {
        let json = serde_json::to_vec_pretty(&summary)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    for r in &summary.refused {
        eprintln!("error: refused {}: {}", r.checkpoint, r.reason);
    }
    Ok(if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
