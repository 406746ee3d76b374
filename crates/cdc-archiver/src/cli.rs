//! Command-line surface. Every subcommand takes `--config FILE` (TOML);
//! flags override the file, which overrides `CDC_ARCHIVER_*` variables.

use std::path::PathBuf;

use cdc_common::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};

use crate::commands;

#[derive(Debug, Parser)]
#[command(name = "cdc-archiver", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', global = true, env = "CDC_ARCHIVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: auto (text on a terminal, JSON otherwise), text or json.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub log_format: LogFormatArg,
    /// Default log level (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    Auto,
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(a: LogFormatArg) -> Self {
        match a {
            LogFormatArg::Auto => LogFormat::Auto,
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the database, the broker and the archive answer (a real
    /// round trip to each), and print what was found.
    Check(commands::check::CheckArgs),
    /// One archival run: mark, wait for the archive watermark, purge,
    /// verify, report (exit 0 success, 3 partial, 1 failure); or a run on a
    /// cron schedule with --schedule.
    Run(commands::run::RunArgs),
    /// Find archived rows by key, key prefix, updated range or a column
    /// predicate (JSON lines or CSV; exit 4 when nothing matches).
    Retrieve(commands::retrieve::RetrieveArgs),
    /// Write archived rows back into a table, idempotently (each restored
    /// row is held: no later run archives it again until released).
    Restore(commands::retrieve::RestoreArgs),
    /// Rows kept in their table whatever the cutoff says: `list`, `add`,
    /// `release`.
    Holds(commands::holds::HoldsArgs),
    /// Give every row that is still marked a new version, so the next run
    /// archives its current state and purges it (the way out for marked
    /// rows whose archived copy no longer matches).
    Retouch(commands::retouch::RetouchArgs),
    /// Flip `archived` to true for rows past the cutoff, in small keyset
    /// batches that retry contention and never wait on foreground writers.
    Mark(commands::mark::MarkArgs),
    /// Delete the row versions that checkpoints prove are archived.
    Purge(commands::purge::PurgeArgs),
    /// PostgreSQL changefeed: publish a wal2json slot's changes to Kafka as
    /// CockroachDB changefeed messages (long-running).
    PgChangefeed(commands::pg_changefeed::PgChangefeedArgs),
    /// Archive changefeed events from Kafka into Avro segments + checkpoints
    /// (long-running); `sink orphans [--clean]` lists/deletes unchecked segments.
    Sink(commands::sink::SinkArgs),
    /// CockroachDB changefeed tools: `decode` a dump of Kafka records.
    Changefeed(commands::changefeed::ChangefeedArgs),
}
