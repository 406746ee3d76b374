//! One purge run from start to end ([`purge`]): opens the session, starts
//! the archive side (`crate::loader`) at once, runs the catalog checks
//! (`crate::preflight`), prepares the statements, then hands the
//! checkpoints, in chain order per partition, to the executor
//! (`crate::executor`) and adds up the [`PurgeSummary`].
//!
//! What it guarantees: nothing is deleted before every catalog check has
//! passed (the loader only reads while they run, and an early error return
//! drops its guard, which aborts it). A checkpoint that already has a purge
//! record is reported as already purged and not touched again; a plan whose
//! key columns do not match the table's primary key is refused; a refused
//! checkpoint stops its partition for this run (chain order is the audit
//! order). Shutdown is checked before each checkpoint, and an interrupted
//! checkpoint ends the run, marked `interrupted`. A panic of the loader is
//! re-raised, never swallowed.

use std::time::Instant;

use cdc_common::storage::ArchiveStore;
use tokio_util::sync::CancellationToken;

use crate::batch::{KeptKeys, Layout};
use crate::executor::{joined, Run};
use crate::loader::{read_and_load, Loaded, Loader, Prefetched};
use crate::session::{open_session, OriginReport, Session, SessionUse};
use crate::sql::PurgeSql;
use crate::summary::{record_counts, report};
use crate::{
    catalog, preflight, CheckpointStatus, PurgeError, PurgeSummary, PurgerConfig, Refusal,
    RowCounts,
};

/// Per-run switches (flags, not configuration).
#[derive(Debug, Clone, Default)]
pub struct PurgeOptions {
    /// Count what would be deleted; delete nothing, write no record.
    pub dry_run: bool,
    /// Start even if foreign keys reference the table from unindexed columns.
    pub allow_unindexed_foreign_keys: bool,
    /// Test hook: abort the process (no cleanup, like `kill -9`) once at
    /// least this many batches have committed and none is in flight (so
    /// every statement the server ran was counted, as with a sequential
    /// purger). The binary sets it from `CDC_PURGE_CRASH_AFTER_BATCHES`.
    pub crash_after_batches: Option<u64>,
    /// Show a progress bar (on a terminal only, see `cdc_common::progress`).
    pub progress: bool,
    /// Replay: purge again the checkpoints this names, whether or not they
    /// have a purge record, and only them (see [`Replay`]).
    pub replay: Option<Replay>,
}

/// A replay of the purger over a range of already purged checkpoints
/// (`cdc-archiver purge --replay-from A --replay-to B`; checkpoints in the
/// range without a purge record are left to the plain purge, which takes
/// them in chain order), e.g. after rows were restored with
/// their archived flag, or to cross-check purge records against the
/// database (a dry run: rows still in the table in their archived version
/// are counted as `would_delete`). The same guarded deletes as a purge, so
/// the invariant is the purge's; what a replay did is recorded as a new
/// object per checkpoint (`cdc_checkpoint::write_replay_record`), never in
/// place of the checkpoint's purge record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Only this partition (`None`: every partition).
    pub partition: Option<i32>,
    /// Purged checkpoints whose first offset lies in this range.
    pub first_offsets: std::ops::RangeInclusive<i64>,
    /// Names its records (`<table>/replays/<id>/…`).
    pub id: String,
}

impl Replay {
    /// Whether the checkpoint of `partition` starting at `first` is replayed.
    pub fn covers(&self, partition: i32, first: i64) -> bool {
        self.partition.is_none_or(|p| p == partition) && self.first_offsets.contains(&first)
    }
}

/// Purges every checkpoint of `cfg`'s table that has no purge record yet,
/// partition by partition in chain order. Refused checkpoints are listed
/// in the summary (and stop their partition); errors that stop the whole
/// run (database unreachable after retries, unindexed foreign keys, …) are
/// returned as [`PurgeError`].
pub async fn purge(
    cfg: &PurgerConfig,
    store: &ArchiveStore,
    shutdown: CancellationToken,
    opts: &PurgeOptions,
) -> Result<PurgeSummary, PurgeError> {
    cfg.validate().map_err(|e| PurgeError::Config(e.message))?;
    let started_at = cdc_checkpoint::now_rfc3339();
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    let purger_id = format!(
        "{host}/{}/{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let usage = if opts.dry_run {
        SessionUse::DryRun
    } else {
        SessionUse::Purge
    };
    let opened = open_session(cfg, usage).await?;
    let (client, dialect) = (opened.client, opened.dialect);
    let mut origins = OriginReport::default();
    origins.add(opened.origin);
    let archive_table = cfg.archive_table();
    // The archive side starts now, while the catalog is checked: it only
    // reads (chains, purge records, segments) and plans; nothing is deleted
    // before every check below has passed. Dropping the guard (an error
    // return) stops it.
    let (chains_tx, chains_rx) = tokio::sync::oneshot::channel();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let mut loader = Loader(Some(tokio::spawn(read_and_load(
        store.clone(),
        archive_table.clone(),
        dialect,
        opts.replay.clone(),
        chains_tx,
        tx,
    ))));
    let table = catalog::resolve(&client, dialect, &cfg.table, &cfg.archived_column).await?;
    let (preflight, holds) = preflight::check(&client, dialect, cfg, opts, &table).await?;
    // Always `"schema"."table"`: the table the catalog checks looked at,
    // whatever the session's search_path says.
    let sql = PurgeSql::new(
        dialect,
        &table.qualified(),
        &table.keys,
        &cfg.archived_column,
        &table.columns,
        &preflight.blocking().cloned().collect::<Vec<_>>(),
        holds.as_deref(),
    );
    let session = Session::prepare(client, &sql).await?;
    tracing::debug!(keys = table.keys.len(), "catalog read, statements prepared");

    // The controllers the marker uses too (one batching shape).
    let (size, rate) = cfg.batching.controllers(Instant::now());
    let mut run = Run {
        cfg,
        store,
        shutdown,
        opts,
        sql,
        layout: Layout {
            keys: table.keys.len(),
            content: table.columns.clone(),
            table: table.qualified(),
        },
        kept_keys: KeptKeys::default(),
        table: table.clone(),
        retouched: 0,
        held: 0,
        session,
        size,
        rate,
        bar: indicatif::ProgressBar::hidden(),
        purger_id: purger_id.clone(),
        batches: 0,
        retries: 0,
        origins,
    };
    let mut summary = PurgeSummary {
        table: cfg.table.to_string(),
        archive_table: archive_table.clone(),
        dialect,
        dry_run: opts.dry_run,
        replay: opts.replay.as_ref().map(|r| r.id.clone()),
        purger_id,
        started_at,
        finished_at: String::new(),
        totals: RowCounts::default(),
        checkpoints: Vec::new(),
        purged_before: 0,
        refused: Vec::new(),
        preflight,
        allowed_cascading_foreign_keys: cfg.allow_cascading_foreign_keys,
        batches: 0,
        retries: 0,
        batch_size_cuts: 0,
        interrupted: false,
        replication_origins: Vec::new(),
        replication_origin_warnings: Vec::new(),
        retouched: 0,
        held: 0,
    };

    // Every chain is read first (small JSON objects) so the progress bar
    // has a total.
    let chains = match chains_rx.await {
        Ok(c) => c?,
        // The loader ended without a word: it panicked.
        Err(_) => {
            if let Some(h) = loader.0.take() {
                joined(h.await);
            }
            unreachable!("the loader reports its chains before it ends");
        }
    };
    summary.refused.extend(chains.broken);
    summary.purged_before = chains.folded;
    if opts.progress {
        run.bar = cdc_common::progress::rows_bar(
            Some(chains.rows),
            if opts.dry_run { "dry-run" } else { "purge" },
        );
    }
    // Partitions stopped here by a refusal the loader could not know of.
    let mut stopped = std::collections::HashSet::new();
    let mut waited = Instant::now();
    while let Some(item) = rx.recv().await {
        let Prefetched {
            cp,
            record,
            mut loaded,
        } = item?;
        if stopped.contains(&cp.partition) {
            continue;
        }
        // The loader planned before the primary key was known.
        if let Loaded::Plan { plan } = &loaded {
            if let Err(e) = plan.check_key_columns(table.keys.len()) {
                loaded = Loaded::Refused(format!("checkpoint {}: {e}", cp.path()));
            }
        }
        tracing::debug!(checkpoint = %cp.path(), waited_ms = waited.elapsed().as_secs_f64() * 1e3,
            "checkpoint loaded (time the deletes waited for the loader)");
        let cp = &cp;
        {
            if run.shutdown.is_cancelled() {
                summary.interrupted = true;
                break;
            }
            if let Some(rec) = record {
                run.bar.inc(cp.segment.as_ref().map_or(0, |s| s.rows));
                summary.checkpoints.push(report(
                    cp,
                    CheckpointStatus::AlreadyPurged,
                    record_counts(&rec),
                ));
                continue;
            }
            let outcome = run.checkpoint(cp, loaded).await?;
            waited = Instant::now();
            summary.totals.add(&outcome.counts);
            if let Some(reason) = outcome.refusal {
                summary.refused.push(Refusal {
                    partition: cp.partition,
                    checkpoint: cp.path(),
                    segment: cp.segment.as_ref().map(|s| s.path.clone()),
                    reason,
                });
            }
            if outcome.status == CheckpointStatus::Refused {
                stopped.insert(cp.partition);
            }
            let interrupted = outcome.status == CheckpointStatus::Interrupted;
            summary
                .checkpoints
                .push(report(cp, outcome.status, outcome.counts));
            if interrupted {
                summary.interrupted = true;
                break;
            }
            // After a refusal the loader sends nothing more of this
            // partition: later checkpoints wait until an operator has looked
            // at this one (chain order is the audit order).
        }
    }
    drop(rx);
    // The loader ends when its channel closes; a panic in it is a bug.
    if let Some(h) = loader.0.take() {
        if let Err(e) = h.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
    run.bar.finish_and_clear();
    summary.retouched = run.retouched;
    summary.held = run.held;
    summary.batches = run.batches;
    summary.retries = run.retries;
    summary.batch_size_cuts = run.size.decreases();
    summary.replication_origins = std::mem::take(&mut run.origins.taken);
    summary.replication_origin_warnings = std::mem::take(&mut run.origins.warnings);
    summary.finished_at = cdc_checkpoint::now_rfc3339();
    tracing::info!(
        table = %summary.table, dry_run = summary.dry_run, deleted = summary.totals.deleted,
        would_delete = summary.totals.would_delete, already_gone = summary.totals.already_gone,
        skipped_changed = summary.totals.skipped_changed, skipped_unmarked = summary.totals.skipped_unmarked,
        skipped_referenced = summary.totals.skipped_referenced, skipped_no_version = summary.totals.skipped_no_version,
        skipped_open_transaction = summary.totals.skipped_open_transaction,
        skipped_xid_too_old = summary.totals.skipped_xid_too_old, superseded = summary.totals.superseded,
        refused = summary.refused.len(),
        batches = summary.batches, retries = summary.retries,
        replication_origins = ?summary.replication_origins,
        sessions_without_origin = summary.replication_origin_warnings.len(), "purge finished"
    );
    Ok(summary)
}
