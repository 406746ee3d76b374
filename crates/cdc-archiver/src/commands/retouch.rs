//! `cdc-archiver retouch`: give every row of a table that is still marked
//! a new version, so that the changefeed archives its current state and
//! the next run purges it. The way out for marked rows whose archived state
//! no longer matches (a column added since, a lost replication slot, a
//! recreated topic); `run` and `purge` name it where it applies.

use std::process::ExitCode;

use anyhow::Context;
use cdc_purger::PurgerConfig;
use clap::Args;
use serde::Serialize;

use crate::global::GlobalArgs;

#[derive(Debug, Args, Serialize)]
pub struct RetouchArgs {
    /// Table (`name` or `schema.name`); overrides `purger.table`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Database URL; overrides `purger.database_url`.
    #[arg(long, env = "CDC_PG_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Rows per statement; overrides `purger.batch_size`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
}

pub async fn run(global: &GlobalArgs, args: RetouchArgs) -> anyhow::Result<ExitCode> {
    let cfg = PurgerConfig::load(global.config.as_deref(), &args)
        .context("loading the [purger] configuration")?;
    let n = cdc_purger::retouch_marked(&cfg)
        .await
        .with_context(|| format!("re-touching the marked rows of {}", cfg.table))?;
    println!(
        "{n} marked row(s) of {} re-touched: the changefeed archives their current state, and the next \
         run purges them",
        cfg.table
    );
    Ok(ExitCode::SUCCESS)
}
