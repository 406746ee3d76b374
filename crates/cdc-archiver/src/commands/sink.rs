//! `cdc-archiver sink`: archive changefeed events from Kafka (long-running)
//! until SIGTERM/Ctrl-C, which flushes, checkpoints and commits what is
//! buffered. `cdc-archiver sink orphans [--clean]` lists (or deletes, past
//! `orphan_grace` and only below the chain end) segments that no
//! checkpoint names.
//!
//! Exit codes: 0 clean stop; 6 when a partition was stopped (offset gap,
//! chain ahead of Kafka, broken chain: see the logs); 1 on failure.

use std::process::ExitCode;

use anyhow::Context;
use cdc_sink::SinkConfig;
use clap::{Args, Subcommand};

use crate::global::GlobalArgs;

#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Kafka bootstrap servers (overrides `brokers`).
    #[arg(long, env = "CDC_KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Consumer group (overrides `group_id`).
    #[arg(long)]
    pub group_id: Option<String>,
    #[command(subcommand)]
    pub action: Option<SinkAction>,
}

#[derive(Debug, Subcommand)]
pub enum SinkAction {
    /// List segments that no checkpoint names (never trusted); with
    /// --clean, delete those older than `orphan_grace` whose offsets the
    /// chain already covers (never one beyond the chain end).
    Orphans {
        /// Delete them.
        #[arg(long)]
        clean: bool,
    },
}

pub async fn run(global: &GlobalArgs, args: SinkArgs) -> anyhow::Result<ExitCode> {
    let mut config: SinkConfig =
        cdc_common::config::load_section(global.config.as_deref(), "sink", &["brokers", "storage"])
            .context("loading the [sink] configuration")?;
    if let Some(v) = args.brokers {
        config.brokers = v;
    }
    if let Some(v) = args.group_id {
        config.group_id = v;
    }
    if let Some(SinkAction::Orphans { clean }) = args.action {
        let list = cdc_sink::orphans(&config, clean)
            .await
            .context("listing orphan segments")?;
        for (table, o) in &list {
            // `covered`: the chain already covers its offsets (cleanable
            // past orphan_grace); `beyond_chain_end`: never cleaned, it may
            // belong to a sink that has not written its checkpoint yet.
            println!(
                "{}\t{table}\t{}\t{}\t{}\t{}",
                if clean { "deleted" } else { "orphan" },
                o.path,
                o.size,
                o.last_modified.to_rfc3339(),
                if o.covered {
                    "covered"
                } else {
                    "beyond_chain_end"
                }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(addr) = config.metrics_addr {
        cdc_common::telemetry::serve_metrics_or_fallback(addr);
    }
    let cancel = cdc_common::shutdown::on_signal();
    let summary = cdc_sink::run(&config, cancel).await.context("sink")?;
    tracing::info!(
        checkpoints = summary.checkpoints,
        segments = summary.segments,
        rows = summary.rows,
        deletes = summary.deletes,
        quarantined = summary.quarantined,
        conflicts = summary.conflicts,
        "sink stopped"
    );
    if summary.stopped.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for (topic, partition, reason, message) in &summary.stopped {
            eprintln!(
                "partition {topic}/{partition} stopped ({}): {message}",
                reason.label()
            );
        }
        Ok(crate::exit::Exit::PartitionStopped.into())
    }
}
