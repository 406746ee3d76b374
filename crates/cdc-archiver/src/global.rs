//! The options every subcommand takes (`--config`, `--log-format`,
//! `--log-level`). The commands depend on this module only, never on the
//! subcommand list in `cli.rs`.

use std::path::PathBuf;

use cdc_common::telemetry::LogFormat;
use clap::Args;

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
