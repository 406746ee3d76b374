//! `cdc-archiver`: the one binary. Parsing and dispatch only; every stage's
//! logic lives in its library crate under `crates/`.

mod cli;
mod commands;
mod config;
mod exit;
mod global;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    cdc_common::telemetry::init_logging(cli.global.log_format.into(), &cli.global.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.dispatch()) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
