//! `cdc-archiver retrieve` and `cdc-archiver restore`: compliance look-ups
//! in the archive, and putting archived rows back into a table.
//!
//! `retrieve --deletes` answers another question than `retrieve`: not
//! "which row versions are archived" but "which deletes did the source
//! make", from the delete files only. It prints delete records (every one
//! says `_op = "delete"`) and never a row; without it, no delete is ever
//! printed. There is deliberately no mode that interleaves the two: a
//! mixed stream would put records of two shapes into one CSV and let a
//! script (or a restore) take a deleted row's `before` for an archived row.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use cdc_changefeed::Hlc;
use cdc_common::ident::TableName;
use cdc_common::storage::{ArchiveStore, StorageConfig};
use cdc_retrieve::{DeleteStats, Found, FoundDelete, Predicate, Query, RetrieveStats, Selector};
use clap::Args;

use crate::global::GlobalArgs;

/// What to look for; exactly one selector.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The table's name in the archive (default: the table name).
    #[arg(long)]
    pub table: String,
    /// Archive URL (overrides `storage.url`).
    #[arg(long, env = "CDC_ARCHIVE_URL")]
    pub archive_url: Option<String>,
    /// One primary key as a JSON array in key-column order, e.g.
    /// '["2022-05-14","078678a4-…"]'.
    #[arg(long, group = "selector")]
    pub key: Option<String>,
    /// Keys starting with these values (JSON array), e.g. '["2022-05-14"]'.
    #[arg(long, group = "selector")]
    pub key_prefix: Option<String>,
    /// Versions with `updated` at or after this (RFC 3339 or HLC text);
    /// alone, or narrowing --key, --key-prefix or --where.
    #[arg(long)]
    pub updated_from: Option<String>,
    /// Versions with `updated` before this (RFC 3339 or HLC text); alone,
    /// or narrowing --key, --key-prefix or --where.
    #[arg(long)]
    pub updated_to: Option<String>,
    /// A simple column predicate: `column=value`, `!=`, `<`, `<=`, `>`, `>=`
    /// (the leftmost operator; numbers compare exactly as decimals).
    #[arg(long = "where", group = "selector")]
    pub predicate: Option<String>,
    /// Every archived version of each key, not just the latest (retrieve
    /// only: restore always writes the latest version; with --deletes every
    /// delete is listed anyway).
    #[arg(long)]
    pub all_versions: bool,
    /// At most this many rows.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct RetrieveArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Include archive metadata (segment, topic/partition/offset, updated;
    /// with --deletes: delete file, topic/partition/offset).
    #[arg(long)]
    pub with_meta: bool,
    /// Print the delete events recorded at the source (key, `updated`,
    /// deleting version, the deleted row when it was archived) instead of
    /// rows; the selectors apply to the deletes, --where to the deleted row.
    #[arg(long)]
    pub deletes: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Target table (default: the archived table itself), `schema.table`.
    #[arg(long)]
    pub into: Option<String>,
    /// PostgreSQL / CockroachDB URL.
    #[arg(long, env = "CDC_PG_URL")]
    pub database_url: Option<String>,
    /// The archived flag column, reset to false on restore (default: archived).
    #[arg(long, default_value = "archived")]
    pub archived_column: String,
    /// Keep the archived flag as archived (true): the next run may archive
    /// and purge the row again.
    #[arg(long)]
    pub keep_archived_flag: bool,
    /// Rows per transaction.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Rows the table already holds a conflicting row for are left out
    /// without failing (they are still listed). Without it, restore exits
    /// 5 when any row was not written.
    #[arg(long)]
    pub skip_existing: bool,
}

fn parse_instant(text: &str) -> anyhow::Result<Hlc> {
    if let Ok(h) = text.parse::<Hlc>() {
        return Ok(h);
    }
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{text:?} is neither an HLC timestamp nor RFC 3339"))?;
    let wall = t.timestamp_nanos_opt().context("timestamp out of range")?;
    Ok(Hlc { wall, logical: 0 })
}

fn query(select: &SelectArgs) -> anyhow::Result<Query> {
    let base = if let Some(k) = &select.key {
        Some(Selector::Key(cdc_retrieve::parse_key_arg(k)?))
    } else if let Some(k) = &select.key_prefix {
        Some(Selector::KeyPrefix(cdc_retrieve::parse_key_arg(k)?))
    } else if let Some(p) = &select.predicate {
        Some(Selector::Column(Predicate::parse(p).with_context(
            || format!("--where {p:?}: expected column=value (or != < <= > >=)"),
        )?))
    } else {
        None
    };
    let from = select
        .updated_from
        .as_deref()
        .map(parse_instant)
        .transpose()
        .context("--updated-from")?;
    let to = select
        .updated_to
        .as_deref()
        .map(parse_instant)
        .transpose()
        .context("--updated-to")?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            bail!(
                "--updated-from {f} is not before --updated-to {t}: the range [from, to) is empty"
            );
        }
    }
    let range = (from.is_some() || to.is_some()).then_some(Selector::Updated { from, to });
    // The time range narrows any other selector: both must hold.
    let selector = match (base, range) {
        (Some(b), Some(r)) => Selector::All(vec![b, r]),
        (Some(s), None) | (None, Some(s)) => s,
        (None, None) => bail!(
            "say what to retrieve: --key, --key-prefix or --where, and/or --updated-from/--updated-to"
        ),
    };
    Ok(Query {
        table: select.table.clone(),
        selector,
        all_versions: select.all_versions,
        limit: select.limit,
    })
}

fn open(global: &GlobalArgs, select: &SelectArgs) -> anyhow::Result<(ArchiveStore, Query)> {
    let mut storage: StorageConfig =
        cdc_common::config::load_section(global.config.as_deref(), "storage", &[])?;
    if let Some(url) = &select.archive_url {
        storage.url.clone_from(url);
    }
    let store = ArchiveStore::open(&storage).context("opening the archive")?;
    Ok((store, query(select)?))
}

/// Says on stderr which partitions a look-up skipped (their chain does not
/// read); `true` when there are any: the answer may be incomplete.
fn skipped(unreadable: &[String]) -> bool {
    for p in unreadable {
        eprintln!("warning: skipped partition {p}");
    }
    if !unreadable.is_empty() {
        eprintln!(
            "the answer may be incomplete: {} partition(s) could not be read (`checkpoints list` says why); exit code 8",
            unreadable.len()
        );
    }
    !unreadable.is_empty()
}

async fn find(
    global: &GlobalArgs,
    select: &SelectArgs,
) -> anyhow::Result<(Vec<Found>, RetrieveStats)> {
    let (store, q) = open(global, select)?;
    let started = std::time::Instant::now();
    let (found, stats) = cdc_retrieve::retrieve(&store, &q)
        .await
        .with_context(|| format!("retrieving from {}", store.url))?;
    eprintln!(
        "{} row(s) in {:.3}s; read {} of {} segment(s) ({} rows scanned, {} redelivered duplicate(s) dropped, {} older version(s) omitted)",
        stats.rows_returned,
        started.elapsed().as_secs_f64(),
        stats.segments_read,
        stats.segments_total,
        stats.rows_scanned,
        stats.duplicates_dropped,
        stats.older_versions_omitted
    );
    Ok((found, stats))
}

async fn find_deletes(
    global: &GlobalArgs,
    select: &SelectArgs,
) -> anyhow::Result<(Vec<FoundDelete>, DeleteStats)> {
    let (store, q) = open(global, select)?;
    let started = std::time::Instant::now();
    let (found, stats) = cdc_retrieve::retrieve_deletes(&store, &q)
        .await
        .with_context(|| format!("retrieving deletes from {}", store.url))?;
    eprintln!(
        "{} delete(s) in {:.3}s; read {} of {} delete file(s) named by {} checkpoint(s) ({} deletes scanned, {} redelivered duplicate(s) dropped)",
        stats.deletes_returned,
        started.elapsed().as_secs_f64(),
        stats.delete_files_read,
        stats.delete_files_total,
        stats.checkpoints,
        stats.deletes_scanned,
        stats.duplicates_dropped
    );
    if stats.without_before > 0 {
        eprintln!(
            "note: {} more delete(s) match the other selectors but the archive kept no deleted row for them, so --where cannot be checked: they are not listed (run without --where to see them)",
            stats.without_before
        );
    }
    if stats.deletes_unrecorded > 0 {
        eprintln!(
            "warning: {} checkpoint(s) written before delete files existed count {} delete(s) they did not record: those cannot be listed",
            stats.checkpoints_unrecorded, stats.deletes_unrecorded
        );
    }
    Ok((found, stats))
}

/// Prints `found` in `format` on stdout; exit code 0 when something
/// matched, 4 when nothing did.
fn print<T>(
    found: &[T],
    format: Format,
    json_line: impl Fn(&T) -> String,
    csv: impl FnOnce(&mut dyn Write, &[T]) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match format {
        Format::Json => {
            for f in found {
                writeln!(out, "{}", json_line(f))?;
            }
        }
        Format::Csv => csv(&mut out, found)?,
    }
    out.flush()?;
    Ok(if found.is_empty() {
        crate::exit::Exit::NoMatch.into()
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn retrieve(global: &GlobalArgs, args: RetrieveArgs) -> anyhow::Result<ExitCode> {
    let meta = args.with_meta;
    let incomplete = |code: ExitCode, unreadable: &[String]| {
        if skipped(unreadable) {
            crate::exit::Exit::Incomplete.into()
        } else {
            code
        }
    };
    if args.deletes {
        let (found, stats) = find_deletes(global, &args.select).await?;
        let code = print(
            &found,
            args.format,
            |f| cdc_retrieve::delete_to_json_line(f, meta),
            |w, f| Ok(cdc_retrieve::write_deletes_csv(w, f, meta)?),
        )?;
        return Ok(incomplete(code, &stats.unreadable_partitions));
    }
    let (found, stats) = find(global, &args.select).await?;
    if found.is_empty() {
        eprintln!("(rows only: deletes recorded at the source are listed with --deletes)");
    }
    let code = print(
        &found,
        args.format,
        |f| cdc_retrieve::to_json_line(f, meta),
        |w, f| Ok(cdc_retrieve::write_csv(w, f, meta)?),
    )?;
    Ok(incomplete(code, &stats.unreadable_partitions))
}

pub async fn restore(global: &GlobalArgs, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    if args.select.all_versions {
        bail!(
            "restore writes the latest archived version of each key; --all-versions would \
             restore old versions, so it is refused here (use it with retrieve to see them)"
        );
    }
    let (found, stats) = find(global, &args.select).await?;
    if skipped(&stats.unreadable_partitions) {
        bail!("restore refuses an answer that may be incomplete: fix the partitions named above first (nothing was written)");
    }
    let target = args
        .into
        .clone()
        .unwrap_or_else(|| args.select.table.clone());
    let table = TableName::parse(&target).with_context(|| format!("--into {target:?}"))?;
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => cdc_common::config::load::<crate::config::Shared>(global.config.as_deref())?
            .database_url
            .unwrap_or_else(|| crate::config::DEFAULT_DATABASE_URL.to_owned()),
    };
    let opts = cdc_retrieve::RestoreOptions {
        table,
        archived_column: args.archived_column.clone(),
        keep_archived_flag: args.keep_archived_flag,
        batch_size: args.batch_size,
    };
    let retry = cdc_common::retry::RetryConfig::default();
    let summary = cdc_retrieve::restore_url(&url, &found, &opts, &retry).await?;
    println!(
        "restored into {}: {} row(s) inserted, {} not restored (a conflicting row is in the table), \
         {} held (no later run marks them again; `cdc-archiver holds list`), {} transaction(s), {} retried, \
         {} column set(s)",
        opts.table,
        summary.inserted,
        summary.already_present,
        summary.held,
        summary.batches,
        summary.retries,
        summary.column_sets
    );
    for n in &summary.not_restored {
        eprintln!("not restored: key {}: {}", n.key, n.reason);
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.not_restored.is_empty() || args.skip_existing {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} row(s) were not restored (listed above); rerun with --skip-existing to accept that",
            summary.not_restored.len()
        );
        crate::exit::Exit::NotRestored.into()
    })
}
