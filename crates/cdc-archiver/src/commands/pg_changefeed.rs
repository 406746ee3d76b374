//! `cdc-archiver pg-changefeed`: the PostgreSQL changefeed (long-running).
//! Reads the `[pg_changefeed]` section of the configuration (inheriting the
//! top-level `database_url` and `brokers`), then hands over to
//! `cdc_pg_changefeed::run` until SIGTERM/Ctrl-C, which stops it cleanly
//! (slot advanced to what Kafka acknowledged).

use std::process::ExitCode;

use anyhow::Context;
use cdc_pg_changefeed::PgChangefeedConfig;
use clap::Args;

use crate::global::GlobalArgs;

#[derive(Debug, Args)]
pub struct PgChangefeedArgs {
    /// PostgreSQL URL (overrides `database_url`).
    #[arg(long, env = "CDC_PG_URL")]
    pub database_url: Option<String>,
    /// Kafka bootstrap servers (overrides `brokers`).
    #[arg(long, env = "CDC_KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Replication slot (overrides `slot_name`).
    #[arg(long)]
    pub slot_name: Option<String>,
    /// Create the replication slot although the topics already hold this
    /// changefeed's messages (its earlier slot is gone); then run
    /// `cdc-archiver retouch` for each table.
    #[arg(long)]
    pub recreate_slot: bool,
}

pub async fn run(global: &GlobalArgs, args: PgChangefeedArgs) -> anyhow::Result<ExitCode> {
    let mut config: PgChangefeedConfig = cdc_common::config::load_section(
        global.config.as_deref(),
        "pg_changefeed",
        &["database_url", "brokers"],
    )
    .context("loading the [pg_changefeed] configuration")?;
    if let Some(v) = args.database_url {
        config.database_url = v;
    }
    if let Some(v) = args.brokers {
        config.brokers = v;
    }
    if args.recreate_slot {
        config.recreate_slot = true;
    }
    if let Some(v) = args.slot_name {
        config.slot_name = v;
    }
    let cancel = cdc_common::shutdown::on_signal();
    cdc_pg_changefeed::run(&config, cancel)
        .await
        .with_context(|| format!("pg-changefeed on slot {}", config.slot_name))?;
    Ok(ExitCode::SUCCESS)
}
