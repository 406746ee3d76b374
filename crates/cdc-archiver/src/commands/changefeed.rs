//! `cdc-archiver changefeed decode`: decodes changefeed records from a text
//! dump on stdin (`kcat -C -J` output, or the fixtures' `{topic, partition,
//! key, value}` lines) and prints one JSON event per line, so an operator
//! can see exactly what the sink would archive or quarantine.

use std::io::{BufRead, BufWriter, Write};
use std::process::ExitCode;

use anyhow::Context;
use cdc_changefeed::{decode_with, line::parse_line, DecodeOptions};
use clap::{Args, Subcommand};

use crate::global::GlobalArgs;

#[derive(Debug, Args)]
pub struct ChangefeedArgs {
    #[command(subcommand)]
    pub command: ChangefeedCommand,
}

#[derive(Debug, Subcommand)]
pub enum ChangefeedCommand {
    /// Decode records read from stdin, one per line; print each event as a
    /// JSON line on stdout and each failure, with its line number and
    /// topic/partition/offset, on stderr. Exits 1 if any line failed.
    Decode(DecodeArgs),
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Bare-envelope (CDC query) column that holds `event_op()`, as the
    /// query names it (`SELECT …, event_op() AS op`). Without it every
    /// top-level field of a bare row is a table column and the row an upsert.
    #[arg(long, value_name = "COLUMN")]
    pub op_column: Option<String>,
}

pub async fn run(_global: &GlobalArgs, args: ChangefeedArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ChangefeedCommand::Decode(args) => tokio::task::spawn_blocking(move || decode_stdin(&args))
            .await
            .context("decode task")?,
    }
}

fn decode_stdin(args: &DecodeArgs) -> anyhow::Result<ExitCode> {
    let opts = DecodeOptions {
        bare_op_column: args.op_column.clone(),
    };
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (mut decoded, mut failed) = (0u64, 0u64);
    // Split on bytes: a line that is not UTF-8 is one failure, not the end.
    for (i, line) in stdin.split(b'\n').enumerate() {
        let line = line.context("reading stdin")?;
        let number = i as u64 + 1;
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t.trim_end_matches('\r'),
            Err(_) => {
                failed += 1;
                eprintln!("line {number}: not UTF-8");
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let result = parse_line(text, number)
            .map_err(anyhow::Error::from)
            .and_then(|rec| {
                decode_with(&rec.as_raw(), &opts).map_err(|e| anyhow::anyhow!("line {number}: {e}"))
            });
        match result {
            Ok(event) => {
                decoded += 1;
                serde_json::to_writer(&mut out, &event).context("writing stdout")?;
                out.write_all(b"\n").context("writing stdout")?;
            }
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    out.flush().context("writing stdout")?;
    eprintln!("decoded {decoded} record(s), {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
