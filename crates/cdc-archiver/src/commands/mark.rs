//! `cdc-archiver mark`: flips `archived` for rows past the cutoff, in
//! small keyset batches (see `cdc_marker`). Reads `[[marker]]` entries from
//! the config file; flags override the selected entry's fields.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use cdc_common::ident::TableName;
use cdc_marker::{CutoffConfig, MarkerConfig, Progress};
use clap::Args;

use crate::global::GlobalArgs;

#[derive(Debug, Args)]
pub struct MarkArgs {
    /// PostgreSQL / CockroachDB URL (overrides `database_url`).
    #[arg(long, env = "CDC_PG_URL")]
    pub database_url: Option<String>,
    /// The table to mark (`schema.table`); selects its `[[marker]]` entry,
    /// or configures it from flags alone. Optional when the file has one.
    #[arg(long)]
    pub table: Option<String>,
    /// The cutoff column (timestamp or date).
    #[arg(long)]
    pub cutoff_column: Option<String>,
    /// Rows older than this SQL interval are eligible, e.g. "90 days".
    #[arg(long, conflicts_with = "before")]
    pub older_than: Option<String>,
    /// Rows before this instant are eligible, e.g. 2024-01-01T00:00:00Z.
    #[arg(long)]
    pub before: Option<String>,
    /// Extra SQL condition (operator-trusted SQL, ANDed in parentheses).
    #[arg(long)]
    pub predicate: Option<String>,
    /// The boolean column to set (default: archived).
    #[arg(long)]
    pub archived_column: Option<String>,
    /// Target rows per batch (default: 500).
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Rows marked per second at most.
    #[arg(long)]
    pub max_rows_per_second: Option<u32>,
    /// Stop after this many rows.
    #[arg(long)]
    pub max_rows: Option<u64>,
    /// Stop starting batches after this long (e.g. 30m).
    #[arg(long, value_parser = humantime_duration)]
    pub max_duration: Option<Duration>,
    /// Print the SQL, the plan and the eligible count; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    cdc_marker::config::parse_duration(s)
}

pub async fn run(global: &GlobalArgs, args: MarkArgs) -> anyhow::Result<ExitCode> {
    let file = global.config.as_deref();
    crate::config::check_top_level(file)?;
    let markers: Vec<MarkerConfig> = cdc_common::config::load_section_list(file, "marker", &[])
        .context("loading the [[marker]] configuration")?;
    let top_url = cdc_common::config::load::<crate::config::Shared>(file)?.database_url;
    let url = args
        .database_url
        .clone()
        .or(top_url)
        .unwrap_or_else(|| crate::config::DEFAULT_DATABASE_URL.to_owned());
    let mut cfg = select(markers, args.table.as_deref())?;
    apply_flags(&mut cfg, &args);

    if args.dry_run {
        let dry = cdc_marker::dry_run(&url, &cfg)
            .await
            .with_context(|| format!("dry run for table {}", cfg.table))?;
        match args.output {
            Output::Text => print!("{dry}"),
            Output::Json => println!("{}", serde_json::to_string_pretty(&dry)?),
        }
        return Ok(ExitCode::SUCCESS);
    }

    // The bar is made once the eligible count (the ETA's total) is known.
    let bar = std::sync::OnceLock::new();
    // Without a terminal the bar is hidden: log progress every few seconds.
    let last_log = std::sync::Mutex::new(std::time::Instant::now());
    let shutdown = cdc_common::shutdown::on_signal();
    let progress = |p: &Progress| match p {
        Progress::Started { eligible } => {
            bar.get_or_init(|| cdc_common::progress::rows_bar(*eligible, "mark"));
        }
        Progress::Batch {
            total, batch_size, ..
        } => {
            if let Some(b) = bar.get() {
                b.set_position(*total);
            }
            let mut last = last_log.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= Duration::from_secs(5) {
                *last = std::time::Instant::now();
                tracing::info!(rows_marked = total, batch_size, "marking");
            } else {
                tracing::debug!(rows_marked = total, batch_size, "batch committed");
            }
        }
        Progress::Retrying { .. } => {}
    };
    let result = cdc_marker::mark(&url, &cfg, shutdown, progress).await;
    if let Some(b) = bar.get() {
        b.finish_and_clear();
    }
    let summary = result.with_context(|| format!("marking table {}", cfg.table))?;

    let json = serde_json::to_string_pretty(&summary)?;
    if let Some(path) = &args.summary_json {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match args.output {
        Output::Json => println!("{json}"),
        Output::Text => {
            println!(
                "marked {} rows of {} in {} batches, {} retries, {:.1}s ({:.0} rows/s); stopped: {:?}",
                summary.rows_marked,
                summary.table,
                summary.batches,
                summary.retries,
                summary.elapsed_secs,
                summary.rows_per_second,
                summary.stop_reason
            );
            if summary.rows_left_locked > 0 {
                println!(
                    "{} rows stayed locked by other sessions and were not marked; the next run picks them up",
                    summary.rows_left_locked
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The config entry for `table`, or a new one; with no `table`, the only
/// entry.
fn select(entries: Vec<MarkerConfig>, table: Option<&str>) -> anyhow::Result<MarkerConfig> {
    match table {
        Some(t) => {
            let wanted = TableName::parse(t).with_context(|| format!("--table {t:?}"))?;
            let same = |c: &MarkerConfig| {
                c.table.name == wanted.name
                    && c.table.schema_or_public() == wanted.schema_or_public()
            };
            Ok(entries
                .into_iter()
                .find(same)
                .unwrap_or_else(|| MarkerConfig::new(wanted)))
        }
        None => {
            let mut entries = entries;
            match entries.len() {
                1 => Ok(entries.remove(0)),
                0 => bail!(
                    "no table to mark: pass --table or add a [[marker]] entry to the config file"
                ),
                _ => bail!(
                    "the config has several [[marker]] entries ({}): pick one with --table",
                    entries
                        .iter()
                        .map(|e| e.table.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }
}

fn apply_flags(cfg: &mut MarkerConfig, a: &MarkArgs) {
    if a.cutoff_column.is_some() || a.older_than.is_some() || a.before.is_some() {
        let base = cfg.cutoff.take();
        let column = a
            .cutoff_column
            .clone()
            .or_else(|| base.as_ref().map(|c| c.column.clone()))
            .unwrap_or_else(|| "created_at".to_owned());
        let (older_than, before) = if a.older_than.is_some() || a.before.is_some() {
            (a.older_than.clone(), a.before.clone())
        } else {
            base.map(|c| (c.older_than, c.before)).unwrap_or_default()
        };
        cfg.cutoff = Some(CutoffConfig {
            column,
            older_than,
            before,
        });
    }
    if let Some(p) = &a.predicate {
        cfg.predicate = Some(p.clone());
    }
    if let Some(c) = &a.archived_column {
        cfg.archived_column = c.clone();
    }
    if let Some(b) = a.batch_size {
        cfg.batching.batch_size = b;
        cfg.batching.min_batch_size = cfg.batching.min_batch_size.min(b);
    }
    if a.max_rows_per_second.is_some() {
        cfg.batching.max_rows_per_second = a.max_rows_per_second;
    }
    if a.max_rows.is_some() {
        cfg.max_rows = a.max_rows;
    }
    if a.max_duration.is_some() {
        cfg.max_duration = a.max_duration;
    }
}
