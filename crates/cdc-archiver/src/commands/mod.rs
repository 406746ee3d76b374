//! One module per subcommand: argument structs and the glue from flags and
//! config to the library crates.

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub mod changefeed;
pub mod check;
pub mod holds;
pub mod mark;
pub mod pg_changefeed;
pub mod purge;
pub mod retouch;
pub mod retrieve;
pub mod run;
pub mod sink;

/// Runs the parsed command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check::run(&cli.global, args).await,
        Command::Run(args) => run::run(&cli.global, args).await,
        Command::Retrieve(args) => retrieve::retrieve(&cli.global, args).await,
        Command::Restore(args) => retrieve::restore(&cli.global, args).await,
        Command::Holds(args) => holds::run(&cli.global, args).await,
        Command::Retouch(args) => retouch::run(&cli.global, args).await,
        Command::Mark(args) => mark::run(&cli.global, args).await,
        Command::Purge(args) => purge::run(&cli.global, args).await,
        Command::Changefeed(args) => changefeed::run(&cli.global, args).await,
        Command::PgChangefeed(args) => pg_changefeed::run(&cli.global, args).await,
        Command::Sink(args) => sink::run(&cli.global, args).await,
    }
}
