//! `cdc-archiver checkpoints`: the on-call engineer's read-only view of the
//! archive's checkpoint chains (`cdc_retrieve::inspect`).
//!
//! - `list [--table T] [--json] [--strict]`: per partition, the chain
//!   (checkpoints, offsets, rows, deletes, `updated` range, resolved, idle
//!   progress, purge status), the watermark, and findings. Exit 0 (7 with
//!   `--strict` when there are findings).
//! - `show <path>`: one checkpoint, its files as they are now, its purge
//!   record. Exit 7 when there is no such checkpoint.
//! - `compact [--table T] [--yes]`: a manifest per partition of its whole
//!   chain, so readers fetch one object and then only the checkpoints after
//!   it. Prints the plan; writes only with `--yes`.
//! - `gc [--table T] [--older-than AGE] [--yes] [--json]`: what the
//!   newest manifests superseded (checkpoint objects they hold, older
//!   manifests) and orphans the chain covers, older than the safety age.
//!   Prints the plan; with `--yes` records it under `<table>/gc/` and then
//!   removes it.
//! - `audit --run ID [--table T] [--json]`: one run's deletes reconciled
//!   with the archive (purge records, segments, counts); the report is
//!   stored under `<table>/audits/<run-id>/` with its SHA-256. Exit 7 on
//!   any finding.
//! - `verify [--table T] [--since T|AGE] [--json]`: re-reads every segment
//!   and delete file (of checkpoints written since `--since`) against its
//!   checkpoint, and every chain's continuity. Exit 7 on any finding.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cdc_common::storage::{ArchiveStore, StorageConfig};
use cdc_retrieve::inspect::{self, Finding, ListOptions, TableReport, VerifyReport};
use clap::{Args, Subcommand};

use crate::exit::Exit;
use crate::global::GlobalArgs;

#[derive(Debug, Args)]
pub struct CheckpointsArgs {
    /// Archive URL (overrides `storage.url`).
    #[arg(long, env = "CDC_ARCHIVE_URL", global = true)]
    pub archive_url: Option<String>,
    #[command(subcommand)]
    pub action: CheckpointsAction,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointsAction {
    /// Each partition's chain, the watermark, and findings: gaps,
    /// overlaps, unreadable checkpoints, orphan segments, unpurged
    /// checkpoints older than a threshold, partitions the watermark does
    /// not cover.
    List {
        /// The table's name in the archive (default: every table in it).
        #[arg(long)]
        table: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A checkpoint with rows and no purge record older than this is a
        /// finding.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        unpurged_older_than: Duration,
        /// Exit 7 when there are findings.
        #[arg(long)]
        strict: bool,
    },
    /// One checkpoint: everything it records, the actual size and SHA-256
    /// of its segment and delete file, and its purge record.
    Show {
        /// Its path in the archive, e.g.
        /// `payments/checkpoints/p0/00000000000000000000.json`.
        path: String,
    },
    /// Writes, per partition, a manifest of its whole chain (one object
    /// that readers fetch first, then only the checkpoints after it), when
    /// the chain has grown past its newest manifest. Prints the plan;
    /// writes only with --yes. Never rewrites or removes anything.
    Compact {
        /// The table's name in the archive (default: every table in it).
        #[arg(long)]
        table: Option<String>,
        /// Write the manifests (without it: only say what would be written).
        #[arg(long)]
        yes: bool,
    },
    /// Removes what the newest manifests superseded (the checkpoint objects
    /// they hold, except each one's last; older manifests) and orphan
    /// segments the chain covers, all older than --older-than. Prints the
    /// plan; with --yes first records it as <table>/gc/<id>.json, then
    /// removes it. Run `compact --yes` first; readers of versions before
    /// manifests existed cannot read a chain after gc.
    Gc {
        /// The table's name in the archive (default: every table in it).
        #[arg(long)]
        table: Option<String>,
        /// Safety age: nothing younger is removed, and nothing a manifest
        /// younger than this supersedes.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// Remove (without it: only say what would be removed).
        #[arg(long)]
        yes: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete reconciliation for one run: every checkpoint its report says
    /// it purged has a purge record of its purger, over a verified segment,
    /// accounting for every row, and the records add up to the rows the
    /// run reported deleted. Stores the report (and its SHA-256) under
    /// <table>/audits/<run-id>/. Exit 7 on any finding.
    Audit {
        /// The run's id (`run_id` in its report, `<table>/runs/<id>.json`).
        #[arg(long = "run")]
        run_id: String,
        /// The table's name in the archive (default: every table the run
        /// reported on).
        #[arg(long)]
        table: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-reads every segment and delete file against its checkpoint (size,
    /// SHA-256, table, partition, offsets, record count, columns) and every
    /// chain's continuity. Exit 7 on any finding.
    Verify {
        /// The table's name in the archive (default: every table in it).
        #[arg(long)]
        table: Option<String>,
        /// Re-read only the files of checkpoints written since then: an
        /// RFC 3339 time, or an age such as `1d` (chains are checked whole).
        #[arg(long)]
        since: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The table's maintenance lease for `what` (one compaction, gc or rewind
/// of a table at a time).
async fn take_lease(
    store: &ArchiveStore,
    table: &str,
    what: &str,
) -> anyhow::Result<cdc_checkpoint::Lease> {
    cdc_checkpoint::take_lease(store, table, what, cdc_checkpoint::MAINTENANCE_LEASE_TTL)
        .await
        .with_context(|| format!("taking the maintenance lease of table {t}", t = table))
}

fn open(global: &GlobalArgs, archive_url: Option<&str>) -> anyhow::Result<ArchiveStore> {
    let mut storage: StorageConfig =
        cdc_common::config::load_section(global.config.as_deref(), "storage", &[])?;
    if let Some(url) = archive_url {
        storage.url = url.to_owned();
    }
    ArchiveStore::open(&storage).context("opening the archive")
}

async fn tables(store: &ArchiveStore, table: Option<String>) -> anyhow::Result<Vec<String>> {
    match table {
        Some(t) => Ok(vec![t]),
        None => inspect::tables(store)
            .await
            .context("listing the archive's tables"),
    }
}

pub async fn run(global: &GlobalArgs, args: CheckpointsArgs) -> anyhow::Result<ExitCode> {
    let store = open(global, args.archive_url.as_deref())?;
    match args.action {
        CheckpointsAction::List {
            table,
            json,
            unpurged_older_than,
            strict,
        } => {
            let opts = ListOptions {
                unpurged_older_than,
            };
            let mut findings = 0;
            for t in tables(&store, table).await? {
                let report = inspect::list(&store, &t, opts)
                    .await
                    .with_context(|| format!("reading the chains of table {t}"))?;
                findings += report.findings.len();
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print_list(&report);
                }
            }
            Ok(exit(strict && findings > 0))
        }
        CheckpointsAction::Show { path } => {
            match inspect::show(&store, &path)
                .await
                .with_context(|| format!("reading {path}"))?
            {
                Some(report) => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    Ok(Exit::Success.into())
                }
                None => {
                    eprintln!("no checkpoint at {path} in {}", store.url);
                    Ok(Exit::Findings.into())
                }
            }
        }
        CheckpointsAction::Compact { table, yes } => {
            for t in tables(&store, table).await? {
                let lease = if yes {
                    Some(take_lease(&store, &t, "compact").await?)
                } else {
                    None
                };
                for p in cdc_checkpoint::partitions(&store, &t).await? {
                    let plan = cdc_checkpoint::plan_manifest(&store, &t, p)
                        .await
                        .with_context(|| format!("reading the chain of {t} p{p}"))?;
                    let Some(m) = plan else {
                        println!("{t} p{p}: up to date");
                        continue;
                    };
                    let what = format!(
                        "{} ({} checkpoint(s) in {} entries, offsets {}..={})",
                        m.path(),
                        m.checkpoints
                            .iter()
                            .map(|c| c.checkpoint_count())
                            .sum::<u64>(),
                        m.checkpoints.len(),
                        m.first_offset,
                        m.last_offset
                    );
                    if yes {
                        cdc_checkpoint::write_manifest(&store, &m)
                            .await
                            .with_context(|| format!("writing {}", m.path()))?;
                        println!("{t} p{p}: wrote {what}");
                    } else {
                        println!("{t} p{p}: would write {what} (--yes writes it)");
                    }
                }
                if let Some(l) = lease {
                    l.release(&store).await?;
                }
            }
            Ok(Exit::Success.into())
        }
        CheckpointsAction::Gc {
            table,
            older_than,
            yes,
            json,
        } => {
            for t in tables(&store, table).await? {
                let plan = cdc_checkpoint::plan_gc(&store, &t, older_than)
                    .await
                    .with_context(|| format!("planning the gc of table {t}"))?;
                let record = if yes && !plan.remove.is_empty() {
                    // Planned again under the lease: nothing a rewind or a
                    // compaction changed since the plan above is removed.
                    let lease = take_lease(&store, &t, "gc").await?;
                    let plan = cdc_checkpoint::plan_gc(&store, &t, older_than).await;
                    let id = cdc_checkpoint::layout::new_id(chrono::Utc::now());
                    let done = match plan {
                        Ok(plan) => cdc_checkpoint::run_gc(&store, &plan, &id).await,
                        Err(e) => Err(e),
                    };
                    lease.release(&store).await?;
                    done.with_context(|| format!("gc of table {t}"))?;
                    Some(cdc_checkpoint::layout::gc_path(&t, &id))
                } else {
                    None
                };
                if json {
                    let out = serde_json::json!({"plan": plan, "record": record});
                    println!("{}", serde_json::to_string(&out)?);
                } else {
                    print_gc(&plan, record.as_deref(), yes);
                }
            }
            Ok(Exit::Success.into())
        }
        CheckpointsAction::Audit {
            run_id,
            table,
            json,
        } => {
            let mut findings = 0;
            let mut audited = 0;
            for t in tables(&store, table).await? {
                let Some(report) = inspect::audit(&store, &t, &run_id)
                    .await
                    .with_context(|| format!("auditing run {run_id} of table {t}"))?
                else {
                    continue;
                };
                audited += 1;
                let (path, sha) = inspect::record_audit(&store, &report)
                    .await
                    .with_context(|| format!("storing the audit of run {run_id} of table {t}"))?;
                findings += report.findings.len();
                if json {
                    let out = serde_json::json!({"audit": report, "stored": path, "sha256": sha});
                    println!("{}", serde_json::to_string(&out)?);
                } else {
                    print_audit(&report, &path, &sha);
                }
            }
            if audited == 0 {
                anyhow::bail!(
                    "no report of run {run_id} in {} (a run prints its id in its summary and stores its report as <table>/runs/<run-id>.json)",
                    store.url
                );
            }
            Ok(exit(findings > 0))
        }
        CheckpointsAction::Verify { table, since, json } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let mut findings = 0;
            for t in tables(&store, table).await? {
                let report = inspect::verify(&store, &t, since)
                    .await
                    .with_context(|| format!("verifying table {t}"))?;
                findings += report.findings.len();
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print_verify(&report);
                }
            }
            Ok(exit(findings > 0))
        }
    }
}

/// `--since`: an RFC 3339 time, or an age (`1d`, `12h`) before now.
fn parse_since(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let age = humantime::parse_duration(text).with_context(|| {
        format!("--since {text:?}: expected an RFC 3339 time or an age such as 1d")
    })?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(age).context("--since: age too large")?)
}

fn exit(findings: bool) -> ExitCode {
    if findings {
        Exit::Findings.into()
    } else {
        Exit::Success.into()
    }
}

fn text<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

fn print_findings(findings: &[Finding]) {
    if findings.is_empty() {
        println!("findings: none");
        return;
    }
    println!("findings: {}", findings.len());
    for f in findings {
        let p = f.partition.map_or_else(String::new, |p| format!(" p{p}"));
        println!("  {}{p}: {}", f.kind, f.detail);
    }
}

fn print_list(r: &TableReport) {
    println!(
        "table {}: {} partition(s) in the topic, watermark {}",
        r.table,
        r.partition_count,
        text(&r.watermark)
    );
    println!(
        "  {:>4} {:>6} {:>21} {:>10} {:>8} {:>6} {:>8} {:<30} {:<30}",
        "part",
        "ckpts",
        "offsets",
        "rows",
        "deletes",
        "purged",
        "unpurged",
        "resolved",
        "idle progress"
    );
    for p in &r.partitions {
        let offsets = match (p.first_offset, p.last_offset) {
            (Some(a), Some(b)) => format!("{a}..={b}"),
            _ => "-".to_owned(),
        };
        let idle = p.idle_progress.as_ref().map_or_else(
            || "-".to_owned(),
            |i| {
                format!(
                    "..={} {}{}",
                    i.last_offset,
                    i.resolved,
                    if i.counted { "" } else { " (not counted)" }
                )
            },
        );
        println!(
            "  {:>4} {:>6} {:>21} {:>10} {:>8} {:>6} {:>8} {:<30} {:<30}",
            p.partition,
            p.checkpoints,
            offsets,
            p.rows,
            p.deletes,
            p.purged,
            p.unpurged_with_rows,
            text(&p.resolved),
            idle
        );
    }
    print_findings(&r.findings);
}

fn print_verify(r: &VerifyReport) {
    println!(
        "table {}: {} checkpoint(s), {} segment(s) with {} row(s), {} delete file(s) with {} delete(s), {} bytes read",
        r.table, r.checkpoints, r.segments, r.rows, r.delete_files, r.deletes, r.bytes
    );
    print_findings(&r.findings);
}

fn print_gc(plan: &cdc_checkpoint::GcPlan, record: Option<&str>, yes: bool) {
    let bytes: u64 = plan.remove.iter().map(|i| i.size).sum();
    let verb = match (record, yes) {
        (Some(_), _) => "removed",
        (None, true) => "nothing to remove:",
        (None, false) => "would remove",
    };
    println!(
        "table {}: {verb} {} object(s), {bytes} bytes (older than {})",
        plan.table,
        plan.remove.len(),
        humantime::format_duration(Duration::from_secs(plan.safety_age_secs))
    );
    for i in &plan.remove {
        println!(
            "  {} ({} bytes, {}): {}",
            i.path, i.size, i.last_modified, i.reason
        );
    }
    for k in &plan.kept {
        println!("  kept {}: {}", k.path, k.reason);
    }
    match record {
        Some(r) => println!("record: {r}"),
        None if !yes && !plan.remove.is_empty() => println!("(--yes records and removes them)"),
        None => {}
    }
}

fn print_audit(r: &inspect::AuditReport, stored: &str, sha: &str) {
    println!(
        "table {}: run {} ({}), purger {}: {} checkpoint(s), {} segment(s) verified; rows deleted: {} reported, {} in purge records",
        r.table,
        r.run_id,
        text(&r.run_outcome),
        text(&r.purger_id),
        r.checkpoints.len(),
        r.segments_verified,
        r.reported_deleted,
        r.recorded_deleted
    );
    print_findings(&r.findings);
    println!("stored: {stored} (sha256 {sha})");
}
