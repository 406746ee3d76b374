//! Command-line surface: the subcommands and their dispatch. Every
//! subcommand takes `--config FILE` (TOML); flags override the file, which
//! overrides `CDC_ARCHIVER_*` variables. This module uses `commands`, never
//! the reverse: the commands take only the global options (`global.rs`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::global::GlobalArgs;

#[derive(Debug, Parser)]
#[command(name = "cdc-archiver", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
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
    /// The archive's checkpoint chains for the on-call engineer: `list`
    /// (chains, watermark, findings), `show` one checkpoint, `verify`
    /// every segment against its checkpoint (exit 7 on findings), `compact`
    /// the chains into manifests (writes only with --yes).
    Checkpoints(commands::checkpoints::CheckpointsArgs),
}

impl Cli {
    /// Runs the parsed command.
    pub async fn dispatch(self) -> anyhow::Result<ExitCode> {
        let g = &self.global;
        match self.command {
            Command::Check(args) => commands::check::run(g, args).await,
            Command::Run(args) => commands::run::run(g, args).await,
            Command::Retrieve(args) => commands::retrieve::retrieve(g, args).await,
            Command::Restore(args) => commands::retrieve::restore(g, args).await,
            Command::Holds(args) => commands::holds::run(g, args).await,
            Command::Retouch(args) => commands::retouch::run(g, args).await,
            Command::Mark(args) => commands::mark::run(g, args).await,
            Command::Purge(args) => commands::purge::run(g, args).await,
            Command::Changefeed(args) => commands::changefeed::run(g, args).await,
            Command::PgChangefeed(args) => commands::pg_changefeed::run(g, args).await,
            Command::Sink(args) => commands::sink::run(g, args).await,
            Command::Checkpoints(args) => commands::checkpoints::run(g, args).await,
        }
    }
}
