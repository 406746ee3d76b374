//! The purger: the last step of cdc-archiver. It reads the archive's
//! checkpoints (never Kafka) and deletes from the source table exactly the
//! row versions they prove are archived, in small, retried, rate-limited
//! batches.
//!
//! The guarantee kept here is the project's invariant: **a row version is
//! deleted only if that exact version is in a durable segment named by a
//! durable checkpoint.** A checkpoint is trusted only after its segment's
//! size and sha256 are verified; every DELETE carries a version guard
//! (`crdb_internal_mvcc_timestamp` on CockroachDB, `xmin` on PostgreSQL)
//! equal to the archived event's version, plus `AND archived`, so a row
//! changed or un-marked after it was archived is kept. An archived event
//! without a version is never deleted. A purge record is written per
//! checkpoint after its last batch, so reruns skip finished checkpoints and
//! a crashed one is completed (its deleted rows then count as already gone).

pub mod catalog;
pub mod config;
pub mod decode;
mod error;
pub mod origin;
pub mod sql;
pub mod summary;
pub mod versions;

use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use cdc_checkpoint::{Checkpoint, CheckpointError, PurgeRecord};
use cdc_common::db::Dialect;
use cdc_common::retry::Retryable;
use cdc_common::storage::ArchiveStore;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

pub use config::PurgerConfig;
pub use error::PurgeError;
pub use origin::OriginSetup;
pub use summary::{CheckpointReport, CheckpointStatus, PurgeSummary, Refusal, RowCounts};

use crate::error::db;
use crate::sql::{ContentColumn, PurgeSql};
use crate::versions::Target;
use cdc_marker::aimd::Aimd;
use cdc_marker::pace::Pacer;

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
    let opened = open_session(cfg, opts.dry_run).await?;
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
        chains_tx,
        tx,
    ))));
    let table = catalog::resolve(&client, dialect, &cfg.table, &cfg.archived_column).await?;
    let qualified_name = catalog::qualified(&table.schema, &table.name);
    let preflight = catalog::preflight(&client, &cfg.table).await?;
    // Cascading foreign keys first: they are about which rows are deleted
    // (rows never archived), not about speed.
    let cascading: Vec<String> = preflight
        .cascading()
        .map(catalog::ReferencingKey::describe)
        .collect();
    for fk in preflight.cascading() {
        tracing::warn!(constraint = %fk.constraint, child = %format!("{}.{}", fk.child_schema, fk.child_table),
            on_delete = %fk.on_delete, allowed = cfg.allow_cascading_foreign_keys,
            "foreign key ON DELETE {}: purging a parent row deletes or changes referencing rows that were never archived",
            fk.on_delete.to_uppercase());
    }
    // A dry run deletes nothing: it reports them (log, summary) instead.
    if !cascading.is_empty() && !cfg.allow_cascading_foreign_keys && !opts.dry_run {
        return Err(PurgeError::CascadingForeignKeys {
            table: qualified_name.clone(),
            constraints: cascading,
        });
    }
    let unindexed: Vec<String> = preflight
        .unindexed()
        .map(|fk| fk.create_index(dialect))
        .collect();
    for fk in preflight.unindexed() {
        tracing::warn!(constraint = %fk.constraint, child = %format!("{}.{}", fk.child_schema, fk.child_table),
            fix = %fk.create_index(dialect), "foreign key without a usable index: every delete scans the referencing table");
    }
    if !unindexed.is_empty() && !opts.allow_unindexed_foreign_keys {
        return Err(PurgeError::UnindexedForeignKeys {
            table: qualified_name.clone(),
            statements: unindexed,
        });
    }
    for fk in preflight.blocking() {
        tracing::info!(constraint = %fk.constraint, child = %format!("{}.{}", fk.child_schema, fk.child_table),
            on_delete = %fk.on_delete,
            "foreign key ON DELETE {}: rows its child rows still reference are kept (counted as referenced) and \
             purged by a later run once their children are gone", fk.on_delete.to_uppercase());
    }
    // Held rows stay (see `cdc_common::holds`): the holds table is made
    // ready here (a dry run, which writes nothing, uses it if it exists).
    let holds = cdc_common::holds::prepare(&client, &table.schema, &table.name, !opts.dry_run)
        .await
        .map_err(|e| PurgeError::Config(e.to_string()))?
        .then(|| cdc_common::holds::qualified(&table.schema, &table.name));
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
        // The marker's controllers, shared rather than written twice.
        size: Aimd::new(cfg.min_batch_size, cfg.batch_size, cfg.target_batch_latency),
        rate: cfg
            .max_rows_per_second
            .map(|r| Pacer::new(r, cfg.batch_size, Instant::now())),
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
        purger_id,
        started_at,
        finished_at: String::new(),
        totals: RowCounts::default(),
        checkpoints: Vec::new(),
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

/// A checkpoint read ahead of the deletes.
struct Prefetched {
    cp: Checkpoint,
    /// Its purge record, if it was already purged (then `loaded` is unused).
    record: Option<PurgeRecord>,
    loaded: Loaded,
}

/// What a checkpoint's segment became.
enum Loaded {
    /// Verified and decoded: the versions to delete (targets of an open
    /// tail transaction already held back).
    Plan { plan: versions::Plan },
    /// The checkpoint names no segment (nothing archivable in its range).
    NoSegment,
    /// The checkpoint cannot be trusted; why.
    Refused(String),
}

/// The archive task, stopped (aborted) when dropped: the purge returned
/// early.
struct Loader(Option<tokio::task::JoinHandle<()>>);

impl Drop for Loader {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// What the chains hold, reported before any checkpoint is loaded.
struct Chains {
    /// Segment rows over every readable chain (the progress bar's total).
    rows: u64,
    /// Partitions whose chain is broken: refused as a whole.
    broken: Vec<Refusal>,
}

/// Reads every partition's chain, reports them on `chains`, then loads
/// the checkpoints in order ([`load_ahead`]).
async fn read_and_load(
    store: ArchiveStore,
    archive_table: String,
    dialect: Dialect,
    chains_tx: tokio::sync::oneshot::Sender<Result<Chains, PurgeError>>,
    tx: tokio::sync::mpsc::Sender<Result<Prefetched, PurgeError>>,
) {
    let read = async {
        let mut chains = Vec::new();
        let mut broken = Vec::new();
        for p in cdc_checkpoint::partitions(&store, &archive_table).await? {
            match cdc_checkpoint::read_chain(&store, &archive_table, p).await {
                Ok(chain) => chains.push(chain),
                Err(e @ CheckpointError::Broken { .. }) => {
                    tracing::error!(partition = p, error = %e, "refusing partition: its checkpoint chain is broken");
                    broken.push(Refusal {
                        partition: p,
                        checkpoint: cdc_checkpoint::layout::checkpoints_dir(&archive_table, p),
                        segment: None,
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(PurgeError::from(e)),
            }
        }
        Ok((chains, broken))
    };
    let (chains, broken) = match read.await {
        Ok(c) => c,
        Err(e) => {
            let _ = chains_tx.send(Err(e));
            return;
        }
    };
    let rows = chains
        .iter()
        .flat_map(|c| &c.checkpoints)
        .filter_map(|c| c.segment.as_ref())
        .map(|s| s.rows)
        .sum();
    tracing::debug!(partitions = chains.len(), "checkpoint chains read");
    if chains_tx.send(Ok(Chains { rows, broken })).is_err() {
        return;
    }
    load_ahead(store, chains, dialect, tx).await;
}

/// Sends every checkpoint of every chain, in order, with its purge record
/// or its verified plan. Stops a partition after a refusal, and stops
/// altogether when the receiver is gone or on an error (which it sends).
/// Reading, verifying and decoding the next checkpoint's segment runs
/// ahead of the deletes of the current one (one checkpoint of lookahead:
/// bounded memory), so the database never waits for the archive.
async fn load_ahead(
    store: ArchiveStore,
    chains: Vec<cdc_checkpoint::Chain>,
    dialect: Dialect,
    tx: tokio::sync::mpsc::Sender<Result<Prefetched, PurgeError>>,
) {
    for chain in chains {
        // One listing per partition instead of a GET per checkpoint.
        let purged = match purged_offsets(&store, &chain.table, chain.partition).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        for cp in chain.checkpoints {
            let item = async {
                let record = if purged.contains(&cp.first_offset) {
                    cdc_checkpoint::read_purge_record(
                        &store,
                        &cp.table,
                        cp.partition,
                        cp.first_offset,
                    )
                    .await?
                } else {
                    None
                };
                let loaded = if record.is_some() {
                    Loaded::NoSegment
                } else {
                    load(&store, &cp, dialect).await?
                };
                Ok::<_, PurgeError>((record, loaded))
            }
            .await;
            let (stop_partition, stop_all) = match &item {
                Ok((_, Loaded::Refused(_))) => (true, false),
                Ok(_) => (false, false),
                Err(_) => (true, true),
            };
            let msg = item.map(|(record, loaded)| Prefetched { cp, record, loaded });
            if tx.send(msg).await.is_err() || stop_all {
                return;
            }
            if stop_partition {
                break;
            }
        }
    }
}

/// First offsets of the checkpoints of `partition` that have a purge
/// record, from one listing of `<table>/purged/p<partition>/`.
async fn purged_offsets(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<std::collections::HashSet<i64>, PurgeError> {
    let dir = store.path(&cdc_checkpoint::layout::purged_dir(table, partition));
    let listed = match store.store.list_with_delimiter(Some(&dir)).await {
        Ok(l) => l.objects,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(source) => {
            return Err(PurgeError::Archive(CheckpointError::Storage {
                op: "list",
                path: dir.to_string(),
                source,
            }))
        }
    };
    Ok(listed
        .iter()
        .filter_map(|m| cdc_checkpoint::layout::parse_checkpoint_name(m.location.as_ref()))
        .collect())
}

/// Fetches and verifies a checkpoint's segment (size and sha256), decodes
/// it and plans the deletes. Decoding runs on the blocking pool.
async fn load(
    store: &ArchiveStore,
    cp: &Checkpoint,
    dialect: Dialect,
) -> Result<Loaded, PurgeError> {
    let Some(seg) = &cp.segment else {
        return Ok(Loaded::NoSegment);
    };
    let bytes = match cdc_checkpoint::verify_segment(store, seg).await {
        Ok(b) => b,
        Err(
            e @ (CheckpointError::SegmentMissing { .. } | CheckpointError::SegmentCorrupt { .. }),
        ) => {
            return Ok(Loaded::Refused(format!(
                "checkpoint {} cannot be trusted: {e}",
                cp.path()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let (cp_path, seg_path) = (cp.path(), seg.path.clone());
    let checkpoint = cp.clone();
    let planned = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        // Keys and versions only; the full decode for a layout the fast
        // reader does not know (and, as a second opinion, when it fails).
        // Either way the segment has been read completely, as retrieve and
        // restore would read it, before any of its rows is deleted.
        let full = |why: &str| {
            tracing::debug!(segment = %seg_path, reason = why, "full segment decode");
            decode::full(&bytes)
        };
        // PostgreSQL's guard compares content: it needs the values, which
        // only the full decode builds.
        let fast = match dialect {
            Dialect::Postgres => Ok(decode::Fast::Unsupported(
                "PostgreSQL: the content guard needs every value".into(),
            )),
            Dialect::Cockroach => decode::versions(&bytes),
        };
        let decoded = match fast {
            Ok(decode::Fast::Versions(v)) => Ok(v),
            Ok(decode::Fast::Unsupported(why)) => full(&why),
            Err(e) => {
                let r = full(&e.to_string());
                if r.is_ok() {
                    tracing::warn!(segment = %seg_path, error = %e,
                        "the key/version reader failed where the full decode succeeded; using the full decode");
                }
                r
            }
        };
        let seg = match decoded {
            Ok(seg) => seg,
            Err(e) => {
                return Loaded::Refused(format!(
                    "checkpoint {cp_path}: segment {seg_path} does not decode: {e}"
                ))
            }
        };
        if let Err(e) = decode::check_checkpoint(&seg, &checkpoint) {
            return Loaded::Refused(format!("checkpoint {cp_path}: segment {seg_path}: {e}"));
        }
        let rows = seg.rows;
        let decoded_in = started.elapsed();
        match versions::plan_keys(&rows, dialect) {
            Ok(plan) => {
                tracing::debug!(checkpoint = %cp_path, rows = rows.len(),
                    decode_ms = decoded_in.as_secs_f64() * 1e3,
                    plan_ms = (started.elapsed() - decoded_in).as_secs_f64() * 1e3, "segment decoded and planned");
                Loaded::Plan { plan }
            }
            Err(e) => Loaded::Refused(format!("checkpoint {cp_path}: {e}")),
        }
    })
    .await;
    match planned {
        Ok(l) => Ok(l),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn report(cp: &Checkpoint, status: CheckpointStatus, counts: RowCounts) -> CheckpointReport {
    CheckpointReport {
        partition: cp.partition,
        first_offset: cp.first_offset,
        last_offset: cp.last_offset,
        segment: cp.segment.as_ref().map(|s| s.path.clone()),
        status,
        counts,
    }
}

fn record_counts(r: &PurgeRecord) -> RowCounts {
    RowCounts {
        rows: r.accounted_rows(),
        deleted: r.deleted,
        would_delete: 0,
        already_gone: r.already_gone,
        skipped_changed: r.skipped_changed,
        skipped_unmarked: r.skipped_unmarked,
        skipped_no_version: r.skipped_no_version,
        skipped_open_transaction: r.skipped_open_transaction,
        skipped_xid_too_old: r.skipped_xid_too_old,
        skipped_referenced: r.skipped_referenced,
        superseded: r.superseded,
    }
}

/// A purger session, as [`open_session`] opened it.
pub struct OpenedSession {
    /// The connection, with the purger's settings.
    pub client: Client,
    /// The dialect the server speaks.
    pub dialect: Dialect,
    /// PostgreSQL with `disable_changefeed_replication`: the replication
    /// origin the session took (see [`origin`]). `None` on CockroachDB and
    /// when the setting is off.
    pub origin: Option<OriginSetup>,
}

/// Opens a session with the purger's settings and says which dialect the
/// server speaks. Called again after a dropped connection, so every
/// session setting lives here: [`cdc_common::db::SESSION_SETTINGS`]
/// (pinned by `connect`), and, when
/// `disable_changefeed_replication` is on, on CockroachDB
/// `SET disable_changefeed_replication = true`, on PostgreSQL a
/// replication origin of the configured pool ([`origin`]; a dry run,
/// which deletes nothing, only checks the privileges for it).
pub async fn open_session(cfg: &PurgerConfig, dry_run: bool) -> Result<OpenedSession, PurgeError> {
    let client = cdc_common::db::connect(&cfg.database_url, "cdc-archiver-purge").await?;
    let dialect = cdc_common::db::detect_dialect(&client).await?;
    // Session settings: pinned by `cdc_common::db::connect`.
    let mut origin = None;
    if cfg.disable_changefeed_replication {
        match dialect {
            Dialect::Cockroach => {
                client
                    .batch_execute("SET disable_changefeed_replication = true")
                    .await
                    .map_err(db("SET disable_changefeed_replication"))?;
            }
            Dialect::Postgres if dry_run => origin = Some(origin::check(&client, cfg).await?),
            Dialect::Postgres => origin = Some(origin::setup(&client, cfg).await?),
        }
    }
    Ok(OpenedSession {
        client,
        dialect,
        origin,
    })
}

/// The replication origins of a run's sessions, for the summary.
#[derive(Debug, Default)]
struct OriginReport {
    taken: Vec<String>,
    warnings: Vec<String>,
}

impl OriginReport {
    fn add(&mut self, o: Option<OriginSetup>) {
        match o {
            Some(OriginSetup::Taken(name)) => self.taken.push(name),
            Some(OriginSetup::Missing(why)) => self.warnings.push(why),
            Some(OriginSetup::Checked) | None => {}
        }
    }
}

struct Outcome {
    status: CheckpointStatus,
    counts: RowCounts,
    refusal: Option<String>,
}

struct Run<'a> {
    cfg: &'a PurgerConfig,
    store: &'a ArchiveStore,
    shutdown: CancellationToken,
    opts: &'a PurgeOptions,
    sql: PurgeSql,
    layout: Layout,
    session: Session,
    /// Keys of rows kept for a reason acted on when their checkpoint is done.
    kept_keys: KeptKeys,
    /// The table, for those actions.
    table: catalog::TableInfo,
    /// Rows re-touched and held so far.
    retouched: u64,
    held: u64,
    size: Aimd,
    /// `None`: no rows-per-second limit.
    rate: Option<Pacer>,
    bar: indicatif::ProgressBar,
    purger_id: String,
    batches: u64,
    retries: u64,
    /// The replication origins of this run's sessions.
    origins: OriginReport,
}

/// What one batch did.
#[derive(Debug, Default, PartialEq, Eq)]
struct BatchResult {
    deleted: u64,
    would_delete: u64,
    already_gone: u64,
    skipped_changed: u64,
    skipped_unmarked: u64,
    skipped_referenced: u64,
    /// Keys of the rows kept for a reason that is acted on once the purge
    /// is done (as the probe returned them).
    kept_keys: KeptKeys,
}

/// Keys of kept rows that the purge acts on when it is done.
#[derive(Debug, Default, PartialEq, Eq)]
struct KeptKeys {
    /// Referenced by child rows: re-touched ([`retouch`]).
    referenced: Vec<Vec<String>>,
    /// Un-marked after they were archived: held ([`hold`]).
    unmarked: Vec<Vec<String>>,
}

impl KeptKeys {
    fn extend(&mut self, other: KeptKeys) {
        self.referenced.extend(other.referenced);
        self.unmarked.extend(other.unmarked);
    }
}

impl BatchResult {
    fn add_to(&self, c: &mut RowCounts) {
        c.deleted += self.deleted;
        c.would_delete += self.would_delete;
        c.already_gone += self.already_gone;
        c.skipped_changed += self.skipped_changed;
        c.skipped_unmarked += self.skipped_unmarked;
        c.skipped_referenced += self.skipped_referenced;
    }
}

impl Run<'_> {
    async fn checkpoint(&mut self, cp: &Checkpoint, loaded: Loaded) -> Result<Outcome, PurgeError> {
        let started_at = cdc_checkpoint::now_rfc3339();
        let clock = Instant::now();
        let mut counts = RowCounts::default();
        match loaded {
            Loaded::Refused(reason) => {
                tracing::error!(checkpoint = %cp.path(), segment = ?cp.segment.as_ref().map(|s| &s.path), %reason,
                    "refusing checkpoint: nothing it covers is deleted, and this partition stops here");
                return Ok(Outcome {
                    status: CheckpointStatus::Refused,
                    counts,
                    refusal: Some(reason),
                });
            }
            Loaded::NoSegment => {}
            Loaded::Plan { mut plan } => {
                if plan.no_version > 0 {
                    tracing::warn!(checkpoint = %cp.path(), rows = plan.no_version,
                    "archived events without a version are never deleted: the CockroachDB changefeed must run \
                     WITH mvcc_timestamp (the PostgreSQL changefeed records the xid)");
                }
                if !self.layout.content.is_empty() {
                    let reasons = plan.resolve_content(&self.layout.content);
                    if !reasons.is_empty() {
                        tracing::warn!(checkpoint = %cp.path(), reasons = ?reasons,
                            "archived rows that cannot be compared with the table's current columns are kept \
                             (a later archived version of them, complete, is purged; `cdc-archiver retouch` makes one)");
                    }
                }
                counts.rows = plan.rows;
                counts.skipped_no_version = plan.no_version;
                counts.superseded = plan.superseded;
                self.bar.inc(plan.rows - plan.targets.len() as u64);
                let depth = if self.opts.dry_run {
                    1
                } else {
                    self.cfg.pipeline_depth.max(1) as usize
                };
                let complete = if depth > 1 {
                    self.pipelined(&plan.targets, depth, &mut counts).await?
                } else {
                    self.sequential(&plan.targets, &mut counts).await?
                };
                if !complete {
                    return Ok(Outcome {
                        status: CheckpointStatus::Interrupted,
                        counts,
                        refusal: None,
                    });
                }
            }
        }
        if self.opts.dry_run {
            return Ok(Outcome {
                status: CheckpointStatus::DryRun,
                counts,
                refusal: None,
            });
        }
        // Before the record, which says the checkpoint is done: the rows it
        // kept for a reason a later run acts on get what they need now.
        self.act_on_kept().await?;
        let deletes_done = clock.elapsed();
        let record = PurgeRecord {
            format_version: cdc_checkpoint::FORMAT_VERSION,
            table: cp.table.clone(),
            partition: cp.partition,
            first_offset: cp.first_offset,
            last_offset: cp.last_offset,
            segment: cp.segment.as_ref().map(|s| s.path.clone()),
            deleted: counts.deleted,
            already_gone: counts.already_gone,
            skipped_changed: counts.skipped_changed,
            skipped_unmarked: counts.skipped_unmarked,
            skipped_no_version: counts.skipped_no_version,
            skipped_open_transaction: counts.skipped_open_transaction,
            skipped_xid_too_old: counts.skipped_xid_too_old,
            skipped_referenced: counts.skipped_referenced,
            superseded: counts.superseded,
            dry_run: false,
            purger_id: self.purger_id.clone(),
            started_at,
            finished_at: cdc_checkpoint::now_rfc3339(),
        };
        match cdc_checkpoint::write_purge_record(self.store, &record).await? {
            cdc_checkpoint::PurgeWrite::Written => {}
            cdc_checkpoint::PurgeWrite::AlreadyPurged(other) => {
                tracing::info!(checkpoint = %cp.path(), other = %other.purger_id,
                    "another purger recorded this checkpoint first; our deletes found its rows already gone");
            }
        }
        tracing::info!(checkpoint = %cp.path(), deleted = counts.deleted, already_gone = counts.already_gone,
            skipped_changed = counts.skipped_changed, skipped_unmarked = counts.skipped_unmarked,
            skipped_referenced = counts.skipped_referenced,
            skipped_no_version = counts.skipped_no_version,
            skipped_open_transaction = counts.skipped_open_transaction,
            skipped_xid_too_old = counts.skipped_xid_too_old, superseded = counts.superseded,
            deletes_ms = deletes_done.as_secs_f64() * 1e3,
            record_ms = (clock.elapsed() - deletes_done).as_secs_f64() * 1e3, "checkpoint purged");
        Ok(Outcome {
            status: CheckpointStatus::Purged,
            counts,
            refusal: None,
        })
    }

    /// Deletes `targets` one batch at a time. Returns false when shutdown
    /// stopped it before the end.
    async fn sequential(
        &mut self,
        targets: &[Target],
        counts: &mut RowCounts,
    ) -> Result<bool, PurgeError> {
        let mut rest = targets;
        while !rest.is_empty() {
            if self.shutdown.is_cancelled() {
                return Ok(false);
            }
            let (done, b) = self.batch(rest).await?;
            rest = &rest[done..];
            self.account(b, counts);
            self.bar.inc(done as u64);
            self.crash_if_due(0);
        }
        Ok(true)
    }

    /// Deletes `targets` with up to `depth` batches in flight on the one
    /// connection (tokio-postgres pipelines them: the server starts the
    /// next DELETE as soon as one finishes, without waiting for a round
    /// trip through the client). Each batch is still its own statement and
    /// implicit transaction with its own result: a batch that fails with a
    /// retryable error is redone on its own by [`Run::batch`] (smaller,
    /// after a backoff, reconnecting if needed) while the others' results
    /// stand, and a batch whose DELETE committed but whose probe failed
    /// keeps its count and retries only the probe, so counts stay exact.
    /// The rate limit waits before a batch is sent, never inside a
    /// transaction. Returns false when shutdown stopped it before the end
    /// (batches already sent are awaited).
    async fn pipelined(
        &mut self,
        targets: &[Target],
        depth: usize,
        counts: &mut RowCounts,
    ) -> Result<bool, PurgeError> {
        let mut window: std::collections::VecDeque<Sent> = std::collections::VecDeque::new();
        let mut next = 0;
        let mut last_done = Instant::now();
        loop {
            while window.len() < depth && next < targets.len() && !self.shutdown.is_cancelled() {
                // Once the crash hook's count of batches is committed or in
                // flight, nothing more is sent: the hook fires when they
                // have completed, with nothing in flight.
                if self
                    .opts
                    .crash_after_batches
                    .is_some_and(|k| self.batches + window.len() as u64 >= k)
                {
                    break;
                }
                let n = (self.size.current() as usize).min(targets.len() - next);
                let (n, shape) = next_batch(&targets[next..], n, self.session.uniform());
                self.pace(n).await;
                if self.shutdown.is_cancelled() {
                    break;
                }
                let cols = delete_params(&targets[next..next + n], &self.layout, shape);
                let client = std::sync::Arc::clone(&self.session.client);
                let stmt = self.session.delete_statement(shape).clone();
                window.push_back(Sent {
                    start: next,
                    n,
                    sent: Instant::now(),
                    result: tokio::spawn(async move { client.execute_raw(&stmt, cols).await }),
                });
                next += n;
            }
            let Some(sent) = window.pop_front() else {
                break;
            };
            let batch = &targets[sent.start..sent.start + sent.n];
            match joined(sent.result.await) {
                Ok(deleted) => {
                    let now = Instant::now();
                    // Its own time on the server, not its wait behind the
                    // batch ahead of it.
                    let latency = now - sent.sent.max(last_done);
                    last_done = now;
                    self.committed(sent.n, latency);
                    // The DELETE committed: its count stands. Only the
                    // probe is retried if it fails.
                    let b = match self.explain(batch, deleted).await {
                        Ok(b) => b,
                        Err(e) => {
                            drain(window).await;
                            return Err(e);
                        }
                    };
                    self.account(b, counts);
                    self.bar.inc(sent.n as u64);
                    self.crash_if_due(window.len());
                }
                Err(e) if batch_retryable(&e) => {
                    self.retries += 1;
                    self.size.on_retry();
                    tracing::warn!(error = %e, rows = sent.n, next_size = self.size.current(),
                        "pipelined batch failed, redoing it on its own");
                    if self.session.client.is_closed() {
                        let mut delays = self.cfg.retry.backoff().build();
                        if let Err(e) = self.reconnect(&mut delays).await {
                            drain(window).await;
                            return Err(e);
                        }
                    }
                    let mut rest = batch;
                    while !rest.is_empty() {
                        match self.batch(rest).await {
                            Ok((done, b)) => {
                                rest = &rest[done..];
                                self.account(b, counts);
                                self.bar.inc(done as u64);
                                // Not while later batches are in flight:
                                // their statements may have run already.
                                self.crash_if_due(window.len());
                            }
                            Err(e) => {
                                drain(window).await;
                                return Err(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    drain(window).await;
                    return Err(batch_error(e, sent.n));
                }
            }
        }
        Ok(next == targets.len())
    }

    /// Re-touches the rows kept because child rows reference them (a later
    /// run tries them again) and holds the rows found un-marked after they
    /// were archived (no later run marks them again).
    async fn act_on_kept(&mut self) -> Result<(), PurgeError> {
        let kept = std::mem::take(&mut self.kept_keys);
        if !kept.referenced.is_empty() {
            let n = retouch(self.cfg, &self.table, &kept.referenced).await?;
            self.retouched += n;
            tracing::info!(rows = n,
                "rows kept because child rows reference them were re-touched: the changefeed archives them again, \
                 and a later run purges them once their children are gone");
        }
        if !kept.unmarked.is_empty() {
            let n = hold(self.cfg, &self.table, &kept.unmarked).await?;
            self.held += n;
            tracing::info!(
                rows = n,
                "rows un-marked after they were archived are held: no later run marks them again \
                 (`cdc-archiver holds list`, `holds release`)"
            );
        }
        Ok(())
    }

    /// Adds a batch's result to `counts`, and keeps the keys of its rows
    /// that child rows reference, for [`retouch`].
    fn account(&mut self, b: BatchResult, counts: &mut RowCounts) {
        b.add_to(counts);
        self.kept_keys.extend(b.kept_keys);
    }

    /// Waits for the rate limit (before any statement is sent).
    async fn pace(&mut self, n: usize) {
        let wait = match &mut self.rate {
            Some(p) => p.delay_for(n as u32, Instant::now()),
            None => Duration::ZERO,
        };
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Bookkeeping after a batch committed: size, rate, count.
    fn committed(&mut self, n: usize, latency: Duration) {
        self.size.on_success(latency);
        if let Some(p) = &mut self.rate {
            p.spend(n as u64, Instant::now());
        }
        self.batches += 1;
    }

    /// The crash hook ([`PurgeOptions::crash_after_batches`]): aborts once
    /// at least that many batches have committed, and only with nothing in
    /// flight (`in_flight` batches sent and not yet accounted for), so that
    /// every statement the server ran had been counted, as with a
    /// sequential purger.
    fn crash_if_due(&self, in_flight: usize) {
        if crash_due(
            self.opts.crash_after_batches,
            self.opts.dry_run,
            self.batches,
            in_flight,
        ) {
            tracing::error!(
                batches = self.batches,
                "CDC_PURGE_CRASH_AFTER_BATCHES reached: aborting"
            );
            std::process::abort();
        }
    }

    /// Why the rows a committed DELETE did not remove were kept
    /// ([`explain_kept`]), retrying only that read: the DELETE's count
    /// stands (redoing the batch would find its rows gone and count them as
    /// already gone).
    async fn explain(&mut self, batch: &[Target], deleted: u64) -> Result<BatchResult, PurgeError> {
        let mut delays = self.cfg.retry.backoff().build();
        loop {
            match explain_kept(&self.session, &self.layout, batch, deleted).await {
                Ok(b) => return Ok(b),
                Err(e) if e.is_retryable() => {
                    let Some(delay) = delays.next() else {
                        return Err(PurgeError::Db {
                            context: format!(
                                "classifying the {} rows a committed DELETE kept, retries exhausted",
                                batch.len() as u64 - deleted
                            ),
                            source: e,
                        });
                    };
                    self.retries += 1;
                    tracing::warn!(error = %e, rows = batch.len(), deleted, ?delay,
                        "reading why rows were kept failed after the DELETE committed; retrying the read only");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => {}
                    }
                    if self.session.client.is_closed() {
                        self.reconnect(&mut delays).await?;
                    }
                }
                Err(source) => {
                    return Err(PurgeError::Db {
                        context: "classifying the rows a committed DELETE kept".into(),
                        source,
                    })
                }
            }
        }
    }

    /// Runs one batch from the front of `rest` with retries; returns how
    /// many targets it covered. The batch shrinks on every retry.
    async fn batch(&mut self, rest: &[Target]) -> Result<(usize, BatchResult), PurgeError> {
        let mut delays = self.cfg.retry.backoff().build();
        loop {
            let n = (self.size.current() as usize).min(rest.len());
            let (n, shape) = if self.opts.dry_run {
                (n, Shape::Paired)
            } else {
                next_batch(rest, n, self.session.uniform())
            };
            // Wait for the rate limit before opening any transaction.
            self.pace(n).await;
            let started = Instant::now();
            let attempt = if self.opts.dry_run {
                probe(&self.session, &self.layout, &rest[..n])
                    .await
                    .map(Attempt::Probed)
            } else {
                delete(&self.session, &self.layout, &rest[..n], shape)
                    .await
                    .map(Attempt::Deleted)
            };
            match attempt {
                Ok(Attempt::Probed(result)) => {
                    self.committed(n, started.elapsed());
                    return Ok((n, result));
                }
                Ok(Attempt::Deleted(deleted)) => {
                    self.committed(n, started.elapsed());
                    // Committed: from here on only the probe is retried.
                    let result = self.explain(&rest[..n], deleted).await?;
                    return Ok((n, result));
                }
                Err(e) if batch_retryable(&e) => {
                    let Some(delay) = delays.next() else {
                        return Err(PurgeError::Db {
                            context: format!("batch of {n} rows, retries exhausted"),
                            source: e,
                        });
                    };
                    self.retries += 1;
                    self.size.on_retry();
                    tracing::warn!(error = %e, rows = n, next_size = self.size.current(), ?delay, "batch failed, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => {}
                    }
                    if self.session.client.is_closed() {
                        self.reconnect(&mut delays).await?;
                    }
                }
                Err(e) => return Err(batch_error(e, n)),
            }
        }
    }

    async fn reconnect(
        &mut self,
        delays: &mut impl Iterator<Item = Duration>,
    ) -> Result<(), PurgeError> {
        loop {
            match Session::open(self.cfg, &self.sql, self.opts.dry_run).await {
                Ok((s, origin)) => {
                    self.session = s;
                    self.origins.add(origin);
                    return Ok(());
                }
                Err(e) if e.is_retryable() => match delays.next() {
                    Some(d) => {
                        tracing::warn!(error = %e, delay = ?d, "reconnecting to the database");
                        tokio::time::sleep(d).await;
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }
}

/// Which guarded DELETE a batch uses (see [`sql::PurgeSql`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Every target has the same archived version: one version parameter.
    Uniform,
    /// Each key with its own archived version.
    Paired,
}

/// The next batch from the front of `rest`, at most `n` targets: where the
/// uniform statement exists (`uniform`, CockroachDB), the run of targets
/// sharing the first one's archived version, with the uniform statement,
/// when that run is at least half of `n` (the usual case: the marker marks
/// a batch of neighbouring rows in one transaction); otherwise all `n` with
/// the paired statement. Either way one statement, in key order, with the
/// full guard.
fn next_batch(rest: &[Target], n: usize, uniform: bool) -> (usize, Shape) {
    if !uniform {
        return (n, Shape::Paired);
    }
    let first = &rest[0].version;
    let run = rest[..n].iter().take_while(|t| &t.version == first).count();
    if 2 * run >= n {
        (run, Shape::Uniform)
    } else {
        (n, Shape::Paired)
    }
}

/// What a batch's parameters are made of: the key columns, then on
/// CockroachDB the versions, on PostgreSQL one array per content column
/// and the table's name and column signature.
#[derive(Debug, Clone)]
struct Layout {
    /// Primary-key columns.
    keys: usize,
    /// PostgreSQL: the columns the content guard compares (empty on
    /// CockroachDB).
    content: Vec<ContentColumn>,
    /// `"schema"."table"`.
    table: String,
}

/// Owned statement parameters (pipelined batches move them into a task).
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// One `text[]` parameter (NULL elements for SQL NULL).
type Column = Vec<Option<String>>;

/// A batch's parameters: the arrays, then (PostgreSQL) the table's name
/// and column signature ([`sql::column_set_check`]).
struct BatchParams {
    arrays: Vec<Column>,
    scalars: Vec<String>,
}

impl BatchParams {
    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        let arrays = self.arrays.iter().map(|c| c as &(dyn ToSql + Sync));
        arrays
            .chain(self.scalars.iter().map(|s| s as &(dyn ToSql + Sync)))
            .collect()
    }
}

/// The DELETE's parameters for `shape`: [`params`], or for a uniform batch
/// (CockroachDB) the key columns and the one version (`text`).
fn delete_params(batch: &[Target], layout: &Layout, shape: Shape) -> Params {
    let BatchParams {
        mut arrays,
        scalars,
    } = params(batch, layout);
    if shape == Shape::Uniform {
        arrays.pop();
    }
    let mut out: Params = arrays
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn ToSql + Sync + Send>)
        .collect();
    if shape == Shape::Uniform {
        out.push(Box::new(batch[0].version.clone()));
    }
    out.extend(
        scalars
            .into_iter()
            .map(|s| Box::new(s) as Box<dyn ToSql + Sync + Send>),
    );
    out
}

/// The batch as the statements' parameters: one `text[]` per key column,
/// then the versions (CockroachDB) or one `text[]` per content column
/// (PostgreSQL) and the scalars of the column-set check.
fn params(targets: &[Target], layout: &Layout) -> BatchParams {
    let extra = if layout.content.is_empty() {
        1
    } else {
        layout.content.len()
    };
    let mut cols: Vec<Column> = (0..layout.keys + extra)
        .map(|_| Vec::with_capacity(targets.len()))
        .collect();
    for t in targets {
        for (i, v) in t.key.iter().enumerate() {
            cols[i].push(Some(v.clone()));
        }
        if layout.content.is_empty() {
            cols[layout.keys].push(Some(t.version.clone()));
        } else {
            for (i, v) in t.content.iter().enumerate() {
                cols[layout.keys + i].push(v.clone());
            }
        }
    }
    let scalars = if layout.content.is_empty() {
        Vec::new()
    } else {
        vec![layout.table.clone(), sql::signature(&layout.content)]
    };
    BatchParams {
        arrays: cols,
        scalars,
    }
}

/// Whether a failed DELETE batch is worth redoing: what [`Retryable`]
/// allows, and a foreign-key violation (SQLSTATE 23503): a child row
/// inserted by a transaction that committed while the DELETE ran, which
/// its `NOT EXISTS` could not see yet; redone, the batch keeps that parent.
fn batch_retryable(e: &tokio_postgres::Error) -> bool {
    e.is_retryable() || e.as_db_error().is_some_and(|d| d.code().code() == "23503")
}

/// A batch's statement failed for good.
fn batch_error(e: tokio_postgres::Error, n: usize) -> PurgeError {
    let context = if e.as_db_error().is_some_and(|d| d.code().code() == "23503") {
        "a referencing row blocks the delete (foreign key ON DELETE RESTRICT/NO ACTION)".to_owned()
    } else {
        format!("deleting a batch of {n} rows")
    };
    PurgeError::Db { context, source: e }
}

/// A spawned statement's result; a panic in it is a bug.
fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A pipelined batch: `n` targets from `start`, sent at `sent`; its
/// DELETE's row count.
struct Sent {
    start: usize,
    n: usize,
    sent: Instant,
    result: tokio::task::JoinHandle<Result<u64, tokio_postgres::Error>>,
}

/// Waits for batches still in flight (each commits or fails on its own)
/// before an error is returned, so nothing runs behind the caller's back.
async fn drain(window: std::collections::VecDeque<Sent>) {
    for s in window {
        let _ = s.result.await;
    }
}

/// A connection with the batch statements prepared on it. The client is
/// shared with the tasks of pipelined batches.
struct Session {
    client: std::sync::Arc<Client>,
    delete: Statement,
    /// CockroachDB only (see [`PurgeSql::delete_uniform`]).
    delete_uniform: Option<Statement>,
    probe: Statement,
}

impl Session {
    async fn open(
        cfg: &PurgerConfig,
        sql: &PurgeSql,
        dry_run: bool,
    ) -> Result<(Self, Option<OriginSetup>), PurgeError> {
        let opened = open_session(cfg, dry_run).await?;
        Ok((Self::prepare(opened.client, sql).await?, opened.origin))
    }

    async fn prepare(client: Client, sql: &PurgeSql) -> Result<Self, PurgeError> {
        let prep = |what: &'static str| {
            move |source| PurgeError::Db {
                context: format!("preparing the {what} statement"),
                source,
            }
        };
        let delete = client.prepare(&sql.delete).await.map_err(prep("DELETE"))?;
        let delete_uniform = match &sql.delete_uniform {
            Some(text) => Some(client.prepare(text).await.map_err(prep("uniform DELETE"))?),
            None => None,
        };
        let probe = client.prepare(&sql.probe).await.map_err(prep("probe"))?;
        Ok(Self {
            client: std::sync::Arc::new(client),
            delete,
            delete_uniform,
            probe,
        })
    }

    fn delete_statement(&self, shape: Shape) -> &Statement {
        match (shape, &self.delete_uniform) {
            (Shape::Uniform, Some(uniform)) => uniform,
            _ => &self.delete,
        }
    }

    /// Whether batches of one version may use the uniform statement.
    fn uniform(&self) -> bool {
        self.delete_uniform.is_some()
    }
}

/// What one attempt of a batch did.
enum Attempt {
    /// Dry run: every key classified.
    Probed(BatchResult),
    /// The DELETE committed and removed this many rows.
    Deleted(u64),
}

/// One batch: a single guarded DELETE statement, which is its own short
/// transaction (on CockroachDB an implicit transaction the server can
/// retry by itself) and one round trip; the deleted count is its row
/// count (no RETURNING: it made the statement a third slower). Only when
/// some keys were not deleted does [`explain_kept`] say why, as a separate
/// read that is retried on its own. If the connection drops after the
/// DELETE committed but before its count arrived, the retry finds those
/// rows gone and counts them as already gone, so the totals still
/// reconcile.
async fn delete(
    s: &Session,
    layout: &Layout,
    batch: &[Target],
    shape: Shape,
) -> Result<u64, tokio_postgres::Error> {
    let p = delete_params(batch, layout, shape);
    s.client.execute_raw(s.delete_statement(shape), p).await
}

/// The batch's result once its DELETE removed `deleted` rows: when some
/// keys were not deleted, one SELECT says why (see [`kept`]).
async fn explain_kept(
    s: &Session,
    layout: &Layout,
    batch: &[Target],
    deleted: u64,
) -> Result<BatchResult, tokio_postgres::Error> {
    let mut present = Kept::default();
    let mut kept_keys = KeptKeys::default();
    if batch.len() as u64 > deleted {
        let cols = params(batch, layout);
        for r in s.client.query(&s.probe, &cols.refs()).await? {
            if r.get("present") {
                let key = || (0..layout.keys).map(|i| r.get::<_, String>(i)).collect();
                if r.get("held") {
                    present.unmarked += 1;
                } else if !r.get::<_, bool>("marked") {
                    present.unmarked += 1;
                    kept_keys.unmarked.push(key());
                } else if r.get("referenced") && r.get("same_version") {
                    present.referenced += 1;
                    kept_keys.referenced.push(key());
                } else {
                    present.changed += 1;
                }
            }
        }
    }
    Ok(BatchResult {
        kept_keys,
        ..kept(batch.len() as u64, deleted, present)
    })
}

/// Accounts for a batch of `batch` targets whose DELETE removed `deleted`
/// rows, given what the probe (a later statement) found of the batch's
/// keys: `unmarked` rows present with `archived = false`, `changed` rows
/// present and marked (their version is not the archived one, or the
/// DELETE would have removed them). The rows still present say why they
/// were kept; the other targets not deleted were gone before.
///
/// The probe runs after the DELETE committed, so a deleted key inserted
/// again in between is present too: then more rows are present than were
/// kept. The DELETE's count is exact (those archived versions are gone),
/// and the re-inserted rows cannot be told from kept ones, so the excess
/// is taken off `unmarked` first (a new row is normally inserted
/// unmarked), then `changed`, and nothing counts as already gone. Every
/// target is counted exactly once: `deleted + already_gone +
/// skipped_unmarked + skipped_changed = batch`.
fn kept(batch: u64, deleted: u64, found: Kept) -> BatchResult {
    let Kept {
        unmarked,
        changed,
        referenced,
    } = found;
    let not_deleted = batch.saturating_sub(deleted);
    let mut r = BatchResult {
        deleted,
        skipped_unmarked: unmarked,
        skipped_changed: changed,
        skipped_referenced: referenced,
        ..BatchResult::default()
    };
    let present = unmarked + changed + referenced;
    if present <= not_deleted {
        r.already_gone = not_deleted - present;
    } else {
        let excess = present - not_deleted;
        tracing::warn!(
            deleted,
            present,
            kept = not_deleted,
            "rows deleted by this batch were inserted again before the probe read them; \
             counting the excess as deleted, not as kept"
        );
        let off_unmarked = excess.min(unmarked);
        r.skipped_unmarked -= off_unmarked;
        let off_changed = (excess - off_unmarked).min(changed);
        r.skipped_changed -= off_changed;
        r.skipped_referenced -= excess - off_unmarked - off_changed;
    }
    r
}

/// Re-touches the rows of `table` with these primary keys that are still
/// marked: `UPDATE … SET archived = true`, a new version with the same
/// values, which the changefeed sends to the archive again, so that a later
/// run tries them again (rows kept for a reason that may pass: child rows
/// that reference them). Returns the rows updated.
pub async fn retouch(
    cfg: &PurgerConfig,
    table: &catalog::TableInfo,
    keys: &[Vec<String>],
) -> Result<u64, PurgeError> {
    let opened = open_session(cfg, true).await?;
    retouch_on(&opened.client, cfg, table, keys).await
}

async fn retouch_on(
    client: &Client,
    cfg: &PurgerConfig,
    table: &catalog::TableInfo,
    keys: &[Vec<String>],
) -> Result<u64, PurgeError> {
    let archived = cdc_common::ident::quote_ident(&cfg.archived_column);
    let sql = |batch: &str, join: &str| {
        format!(
            "UPDATE {} AS t SET {archived} = true FROM {batch} WHERE {join} AND t.{archived}",
            table.qualified()
        )
    };
    for_keys(client, cfg, table, keys, "re-touching rows", sql).await
}

/// Holds the rows of `table` with these primary keys that are not marked
/// (see [`cdc_common::holds`]): they were un-marked after they were
/// archived, so someone needs them in the table; the marker never marks a
/// held row again. Returns the holds added.
pub async fn hold(
    cfg: &PurgerConfig,
    table: &catalog::TableInfo,
    keys: &[Vec<String>],
) -> Result<u64, PurgeError> {
    let opened = open_session(cfg, true).await?;
    if !cdc_common::holds::prepare(&opened.client, &table.schema, &table.name, true)
        .await
        .map_err(|e| PurgeError::Config(e.to_string()))?
    {
        tracing::warn!(rows = keys.len(),
            "rows un-marked after they were archived cannot be held (no holds table): they stay un-marked, \
             but a later run may mark them again");
        return Ok(0);
    }
    let archived = cdc_common::ident::quote_ident(&cfg.archived_column);
    let key_names: Vec<String> = table.keys.iter().map(|k| k.name.clone()).collect();
    let key = cdc_common::holds::key_expr_of("t", &key_names);
    let holds = cdc_common::holds::qualified(&table.schema, &table.name);
    for_keys(
        &opened.client,
        cfg,
        table,
        keys,
        "recording holds",
        |batch, join| {
            format!(
                "INSERT INTO {holds} (hold_key, hold_reason) \
             SELECT {key}, 'un-marked after it was archived (found by the purger)' \
             FROM {} AS t, {batch} WHERE {join} AND NOT t.{archived} \
             ON CONFLICT (hold_key) DO NOTHING",
                table.qualified()
            )
        },
    )
    .await
}

/// Runs the statement `sql(batch, join)` builds over `keys` in chunks of
/// `batch_size`, where `batch` is the keys as `unnest(…) AS d(k0, …)` and
/// `join` matches them to `t`'s primary key; on a session of its own,
/// without the purger's replication origin (the changefeed must see what
/// it writes). Returns the rows affected.
async fn for_keys(
    client: &Client,
    cfg: &PurgerConfig,
    table: &catalog::TableInfo,
    keys: &[Vec<String>],
    what: &'static str,
    sql: impl Fn(&str, &str) -> String,
) -> Result<u64, PurgeError> {
    let k = table.keys.len();
    let params: Vec<String> = (1..=k).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (0..k).map(|i| format!("k{i}")).collect();
    let join: Vec<String> = table
        .keys
        .iter()
        .zip(&names)
        .map(|(c, n)| {
            format!(
                "t.{} = d.{n}::{}",
                cdc_common::ident::quote_ident(&c.name),
                c.sql_type
            )
        })
        .collect();
    let batch = format!("unnest({}) AS d({})", params.join(", "), names.join(", "));
    let sql = sql(&batch, &join.join(" AND "));
    let mut total = 0;
    for chunk in keys.chunks(cfg.batch_size.max(1) as usize) {
        let cols: Vec<Vec<String>> = (0..k)
            .map(|i| chunk.iter().map(|key| key[i].clone()).collect())
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        total += client.execute(&sql, &refs).await.map_err(db(what))?;
    }
    Ok(total)
}

/// `cdc-archiver retouch`: gives every row of the table that is still
/// marked a new version (`UPDATE … SET archived = true`), which the
/// changefeed sends to the archive, so that the next run archives each in
/// its current state and purges it. The way out for marked rows whose
/// archived state can no longer be matched: a column added since, a
/// replication slot that was lost, a recreated topic. Walks the table in
/// primary-key order, `batch_size` rows per statement. Returns the rows
/// re-touched.
pub async fn retouch_marked(cfg: &PurgerConfig) -> Result<u64, PurgeError> {
    // No replication origin: the changefeed must see these updates.
    let opened = open_session(cfg, true).await?;
    let client = &opened.client;
    let table = catalog::resolve(client, opened.dialect, &cfg.table, &cfg.archived_column).await?;
    let k = table.keys.len();
    let cols: Vec<String> = table
        .keys
        .iter()
        .map(|c| format!("t.{}", cdc_common::ident::quote_ident(&c.name)))
        .collect();
    let texts: Vec<String> = cols.iter().map(|c| format!("{c}::text")).collect();
    let cursor: Vec<String> = table
        .keys
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::text::{}", i + 2, c.sql_type))
        .collect();
    let archived = cdc_common::ident::quote_ident(&cfg.archived_column);
    let select = |after: bool| {
        format!(
            "SELECT {} FROM {} AS t WHERE t.{archived}{} ORDER BY {} LIMIT $1",
            texts.join(", "),
            table.qualified(),
            if after {
                format!(" AND ({}) > ({})", cols.join(", "), cursor.join(", "))
            } else {
                String::new()
            },
            cols.join(", ")
        )
    };
    let (first, next) = (select(false), select(true));
    let limit = i64::from(cfg.batch_size.max(1));
    let mut last: Option<Vec<String>> = None;
    let mut total = 0;
    loop {
        let rows = match &last {
            None => client.query(&first, &[&limit]).await,
            Some(key) => {
                let mut p: Vec<&(dyn ToSql + Sync)> = vec![&limit];
                p.extend(key.iter().map(|v| v as &(dyn ToSql + Sync)));
                client.query(&next, &p).await
            }
        }
        .map_err(db("reading marked rows"))?;
        if rows.is_empty() {
            return Ok(total);
        }
        let keys: Vec<Vec<String>> = rows
            .iter()
            .map(|r| (0..k).map(|i| r.get::<_, String>(i)).collect())
            .collect();
        total += retouch_on(client, cfg, &table, &keys).await?;
        last = keys.last().cloned();
    }
}

/// The rows of a batch the probe found still present, by why they stayed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Kept {
    /// Present with `archived = false`.
    unmarked: u64,
    /// Present and marked, but not the archived state (or, on CockroachDB,
    /// not the archived version).
    changed: u64,
    /// Present, marked, the archived state, and referenced by a child row.
    referenced: u64,
}

/// Whether the crash hook fires: at least `after` batches committed and
/// none in flight (never in a dry run).
fn crash_due(after: Option<u64>, dry_run: bool, batches: u64, in_flight: usize) -> bool {
    !dry_run && in_flight == 0 && after.is_some_and(|k| batches >= k)
}

/// Dry run: classify every key, deleting nothing.
async fn probe(
    s: &Session,
    layout: &Layout,
    batch: &[Target],
) -> Result<BatchResult, tokio_postgres::Error> {
    let cols = params(batch, layout);
    let mut result = BatchResult::default();
    for r in s.client.query(&s.probe, &cols.refs()).await? {
        classify(
            &mut result,
            r.get("present"),
            r.get::<_, bool>("marked") && !r.get::<_, bool>("held"),
            r.get("same_version"),
            r.get("referenced"),
        );
    }
    Ok(result)
}

fn classify(
    result: &mut BatchResult,
    present: bool,
    marked: bool,
    same_version: bool,
    referenced: bool,
) {
    if !present {
        result.already_gone += 1;
    } else if !marked {
        result.skipped_unmarked += 1;
    } else if same_version && referenced {
        result.skipped_referenced += 1;
    } else if same_version {
        result.would_delete += 1;
    } else {
        result.skipped_changed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: i64, version: &str) -> Target {
        Target {
            key: vec![key.to_string()],
            version: version.into(),
            columns: Vec::new(),
            content: Vec::new(),
        }
    }

    #[test]
    fn batches_take_the_uniform_statement_for_a_long_run_of_one_version() {
        let all_one: Vec<Target> = (0..10).map(|k| t(k, "7")).collect();
        assert_eq!(next_batch(&all_one, 8, true), (8, Shape::Uniform));
        assert_eq!(next_batch(&all_one[8..], 2, true), (2, Shape::Uniform));
        // Where there is no uniform statement (PostgreSQL), always paired.
        assert_eq!(next_batch(&all_one, 8, false), (8, Shape::Paired));
        // A version change after half the batch: the run alone, uniform.
        let mut two = all_one.clone();
        for x in &mut two[5..] {
            x.version = "9".into();
        }
        assert_eq!(next_batch(&two, 8, true), (5, Shape::Uniform));
        assert_eq!(next_batch(&two[5..], 5, true), (5, Shape::Uniform));
        // Mixed versions: the whole batch, paired.
        let mixed: Vec<Target> = (0..10).map(|k| t(k, &(k % 3).to_string())).collect();
        assert_eq!(next_batch(&mixed, 8, true), (8, Shape::Paired));
        assert_eq!(next_batch(&mixed, 1, true), (1, Shape::Uniform));
        // Parameters: keys, then the one version or every version.
        let crdb = Layout {
            keys: 1,
            content: Vec::new(),
            table: "\"t\"".into(),
        };
        assert_eq!(delete_params(&two[..5], &crdb, Shape::Uniform).len(), 2);
        assert_eq!(delete_params(&mixed[..8], &crdb, Shape::Paired).len(), 2);
        // PostgreSQL: keys, then one array per content column.
        let pg = Layout {
            keys: 1,
            table: "\"public\".\"t\"".into(),
            content: vec![
                ContentColumn {
                    name: "id".into(),
                    typeoid: 20,
                },
                ContentColumn {
                    name: "note".into(),
                    typeoid: 25,
                },
            ],
        };
        let mut rows = mixed[..2].to_vec();
        rows[0].content = vec![Some("0".into()), None];
        rows[1].content = vec![Some("1".into()), Some("n".into())];
        assert_eq!(
            params(&rows, &pg).arrays,
            vec![
                vec![Some("0".to_owned()), Some("1".to_owned())],
                vec![Some("0".to_owned()), Some("1".to_owned())],
                vec![None, Some("n".to_owned())],
            ]
        );
    }

    /// Every target the batch accounted for, as the summary adds it up.
    fn total(r: &BatchResult) -> u64 {
        let mut c = RowCounts::default();
        r.add_to(&mut c);
        c.accounted()
    }

    /// A batch that deleted `deleted` and kept the rest for these reasons.
    fn result(
        deleted: u64,
        skipped_unmarked: u64,
        skipped_changed: u64,
        already_gone: u64,
    ) -> BatchResult {
        BatchResult {
            deleted,
            skipped_unmarked,
            skipped_changed,
            already_gone,
            ..BatchResult::default()
        }
    }

    fn found(unmarked: u64, changed: u64, referenced: u64) -> Kept {
        Kept {
            unmarked,
            changed,
            referenced,
        }
    }

    #[test]
    fn kept_rows_are_classified_and_every_target_counted_once() {
        // 10 targets, 6 deleted; of the 4 kept, 1 un-marked, 1 changed and
        // 1 referenced by a child row are still there, 1 was gone before.
        let r = kept(10, 6, found(1, 1, 1));
        assert_eq!(
            r,
            BatchResult {
                skipped_referenced: 1,
                ..result(6, 1, 1, 1)
            }
        );
        assert_eq!(total(&r), 10);
        // Everything deleted: nothing else.
        let r = kept(10, 10, found(0, 0, 0));
        assert_eq!((r.deleted, total(&r)), (10, 10));
        // Nothing deleted, nothing there: all gone before.
        assert_eq!(kept(4, 0, found(0, 0, 0)).already_gone, 4);
    }

    #[test]
    fn keys_inserted_again_between_the_delete_and_the_probe_are_not_counted_twice() {
        // 10 targets, 9 deleted, 1 kept (un-marked); two deleted keys were
        // inserted again before the probe: 3 present, 2 of them new rows.
        let r = kept(10, 9, found(3, 0, 0));
        assert_eq!(r, result(9, 1, 0, 0));
        assert_eq!(total(&r), 10);
        // The excess is taken off un-marked first, then changed.
        let r = kept(10, 8, found(1, 3, 0));
        assert_eq!(r, result(8, 0, 2, 0));
        assert_eq!(total(&r), 10);
        for batch in 0..6 {
            for deleted in 0..=batch {
                for unmarked in 0..=batch {
                    for changed in 0..=batch - unmarked {
                        for referenced in 0..=batch - unmarked - changed {
                            let r = kept(batch, deleted, found(unmarked, changed, referenced));
                            assert_eq!(
                                total(&r),
                                batch,
                                "{batch} {deleted} {unmarked} {changed} {referenced}"
                            );
                            assert_eq!(r.deleted, deleted);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_crash_hook_fires_only_with_nothing_in_flight() {
        assert!(crash_due(Some(3), false, 3, 0));
        assert!(
            crash_due(Some(3), false, 5, 0),
            "past the count, once drained"
        );
        assert!(!crash_due(Some(3), false, 3, 1), "a batch still in flight");
        assert!(!crash_due(Some(3), false, 2, 0));
        assert!(!crash_due(Some(3), true, 3, 0), "never in a dry run");
        assert!(!crash_due(None, false, 3, 0));
    }
}
