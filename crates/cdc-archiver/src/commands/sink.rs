//! `cdc-archiver sink`: archive changefeed events from Kafka (long-running)
//! until SIGTERM/Ctrl-C, which flushes, checkpoints and commits what is
//! buffered. `cdc-archiver sink orphans [--clean]` lists (or deletes, past
//! `orphan_grace` and only below the chain end) segments that no
//! checkpoint names. `cdc-archiver sink rewind <checkpoint> [--yes]` makes
//! a partition's chain end at that checkpoint (sinks stopped), so the next
//! sink archives what follows it again from Kafka.
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
    /// Make a partition's chain end at an earlier checkpoint, so that the
    /// sink resumes after it and archives the later offsets again from
    /// Kafka (for example after segments were lost or restored). Every sink
    /// of the group must be stopped, and Kafka must still hold those
    /// offsets. The checkpoints, manifests and purge records after it are
    /// moved to <table>/rewinds/<id>/ with a record <table>/rewinds/<id>.json,
    /// never rewritten; the files they name are kept. Prints the plan;
    /// moves only with --yes. Then start the sinks again.
    Rewind {
        /// The checkpoint the chain should end with, as `checkpoints list`
        /// prints it: `<table>/checkpoints/p<N>/<first offset>.json`.
        checkpoint: String,
        /// Do it (without it: only say what would move).
        #[arg(long)]
        yes: bool,
        /// Rewind past checkpoints that were purged: until the sink has
        /// archived their offsets again, `retrieve` does not find the rows
        /// those purges deleted.
        #[arg(long)]
        including_purged: bool,
        /// Why, kept in the record (an incident id, a ticket).
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
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
    if let Some(SinkAction::Rewind {
        checkpoint,
        yes,
        including_purged,
        reason,
        json,
    }) = args.action
    {
        let out = cdc_sink::rewind(&config, &checkpoint, yes, including_purged, reason)
            .await
            .with_context(|| format!("rewind to {checkpoint}"))?;
        if json {
            let v = serde_json::json!({
                "plan": out.plan,
                "kafka_offsets": {"low": out.kafka_offsets.0, "high": out.kafka_offsets.1},
                "record": out.record.as_ref().map(|r| cdc_checkpoint::layout::rewind_path(&r.table, &r.rewind_id)),
            });
            println!("{}", serde_json::to_string(&v)?);
        } else {
            print_rewind(&out, yes);
        }
        return Ok(ExitCode::SUCCESS);
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

fn print_rewind(out: &cdc_sink::RewindOutcome, yes: bool) {
    let p = &out.plan;
    let (low, high) = out.kafka_offsets;
    println!(
        "{}/p{} (topic {}): chain ends at offset {}; after the rewind it ends with {} (offset {}), and the sink resumes at offset {} (Kafka holds {low}..{high})",
        p.table,
        p.partition,
        p.topic,
        p.chain_end.map_or("?".into(), |e| e.to_string()),
        p.target.path(),
        p.target.last_offset,
        p.resume_offset(),
    );
    if p.is_empty() {
        println!("nothing to rewind: the chain already ends there");
        return;
    }
    let verb = if out.record.is_some() {
        "moved"
    } else {
        "would move"
    };
    if let Some(m) = &p.manifest {
        let w = if out.record.is_some() {
            "wrote"
        } else {
            "would write"
        };
        println!("{w} {} (the chain up to the target)", m.path());
    }
    for m in &p.moves {
        println!("{verb} {} {} -> {}", m.kind, m.from, m.to);
    }
    println!(
        "{} checkpoint(s) superseded, {} of them purged; {} segment/delete file(s) they name stay, kept from gc",
        p.superseded_checkpoints,
        p.purged_superseded(),
        p.files.len()
    );
    if p.purged_superseded() > 0 {
        println!("until the sink has archived those offsets again, `retrieve` does not find the rows their purges deleted (--including-purged is needed with --yes)");
    }
    match &out.record {
        Some(r) => println!(
            "recorded as {}; start the sinks again: they archive offsets {}.. again",
            cdc_checkpoint::layout::rewind_path(&r.table, &r.rewind_id),
            p.resume_offset()
        ),
        None if !yes => {
            println!("(--yes does it, with every sink of the group stopped until it is done)")
        }
        None => {}
    }
}
