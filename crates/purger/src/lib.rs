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
mod error;
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
pub use summary::{CheckpointReport, CheckpointStatus, PurgeSummary, Refusal, RowCounts};

use crate::sql::PurgeSql;
use crate::versions::{ArchivedVersion, Target};
use cdc_marker::aimd::Aimd;
use cdc_marker::pace::Pacer;

/// Per-run switches (flags, not configuration).
#[derive(Debug, Clone, Default)]
pub struct PurgeOptions {
    /// Count what would be deleted; delete nothing, write no record.
    pub dry_run: bool,
    /// Start even if foreign keys reference the table from unindexed columns.
    pub allow_unindexed_foreign_keys: bool,
    /// Test hook: abort the process (no cleanup, like `kill -9`) right after
    /// this many committed batches. The binary sets it from
    /// `CDC_PURGE_CRASH_AFTER_BATCHES`.
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
    let client = open_session(cfg).await?;
    let dialect = cdc_common::db::detect_dialect(&client).await?;
    let table = catalog::resolve(&client, &cfg.table, &cfg.archived_column).await?;
    let preflight = catalog::preflight(&client, &cfg.table).await?;
    let unindexed: Vec<String> = preflight
        .unindexed()
        .map(catalog::ReferencingKey::create_index)
        .collect();
    for fk in preflight.unindexed() {
        tracing::warn!(constraint = %fk.constraint, child = %format!("{}.{}", fk.child_schema, fk.child_table),
            fix = %fk.create_index(), "foreign key without an index: every delete scans the referencing table");
    }
    if !unindexed.is_empty() && !opts.allow_unindexed_foreign_keys {
        return Err(PurgeError::UnindexedForeignKeys {
            table: cfg.table.to_string(),
            statements: unindexed,
        });
    }
    for fk in preflight.blocking() {
        tracing::warn!(constraint = %fk.constraint, child = %format!("{}.{}", fk.child_schema, fk.child_table),
            on_delete = %fk.on_delete,
            "foreign key ON DELETE {}: a batch containing a parent row that still has children fails (SQLSTATE 23503) \
             and stops the purge; archive and purge the children first", fk.on_delete.to_uppercase());
    }
    let sql = PurgeSql::new(
        dialect,
        &cfg.table.quoted(),
        &table.keys,
        &cfg.archived_column,
    );
    let session = Session::prepare(client, &sql).await?;
    tracing::debug!(keys = table.keys.len(), "catalog read, statements prepared");

    let mut run = Run {
        cfg,
        store,
        shutdown,
        opts,
        sql,
        key_columns: table.keys.len(),
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
    };
    let archive_table = cfg.archive_table().to_owned();
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
        batches: 0,
        retries: 0,
        batch_size_cuts: 0,
        interrupted: false,
    };

    // Read every chain first (small JSON objects) so the progress bar has a total.
    let mut chains = Vec::new();
    for p in cdc_checkpoint::partitions(store, &archive_table).await? {
        match cdc_checkpoint::read_chain(store, &archive_table, p).await {
            Ok(chain) => chains.push(chain),
            Err(e @ CheckpointError::Broken { .. }) => {
                tracing::error!(partition = p, error = %e, "refusing partition: its checkpoint chain is broken");
                summary.refused.push(Refusal {
                    partition: p,
                    checkpoint: cdc_checkpoint::layout::checkpoints_dir(&archive_table, p),
                    segment: None,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    let total: u64 = chains
        .iter()
        .flat_map(|c| &c.checkpoints)
        .filter_map(|c| c.segment.as_ref())
        .map(|s| s.rows)
        .sum();
    if opts.progress {
        run.bar = cdc_common::progress::rows_bar(
            Some(total),
            if opts.dry_run { "dry-run" } else { "purge" },
        );
    }

    // Reading, verifying and decoding the next checkpoint's segment runs
    // ahead of the deletes of the current one (one checkpoint of lookahead:
    // bounded memory), so the database never waits for the archive.
    tracing::debug!(partitions = chains.len(), "checkpoint chains read");
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let loader = tokio::spawn(load_ahead(
        store.clone(),
        chains.clone(),
        dialect,
        table.keys.len(),
        tx,
    ));
    while let Some(item) = rx.recv().await {
        let Prefetched { cp, record, loaded } = item?;
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
            summary.totals.add(&outcome.counts);
            if let Some(reason) = outcome.refusal {
                summary.refused.push(Refusal {
                    partition: cp.partition,
                    checkpoint: cp.path(),
                    segment: cp.segment.as_ref().map(|s| s.path.clone()),
                    reason,
                });
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
    if let Err(e) = loader.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    run.bar.finish_and_clear();
    summary.batches = run.batches;
    summary.retries = run.retries;
    summary.batch_size_cuts = run.size.decreases();
    summary.finished_at = cdc_checkpoint::now_rfc3339();
    tracing::info!(
        table = %summary.table, dry_run = summary.dry_run, deleted = summary.totals.deleted,
        would_delete = summary.totals.would_delete, already_gone = summary.totals.already_gone,
        skipped_changed = summary.totals.skipped_changed, skipped_unmarked = summary.totals.skipped_unmarked,
        skipped_no_version = summary.totals.skipped_no_version, refused = summary.refused.len(),
        batches = summary.batches, retries = summary.retries, "purge finished"
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
    /// Verified and decoded: the versions to delete.
    Plan {
        plan: versions::Plan,
        segment_rows: u64,
    },
    /// The checkpoint names no segment (nothing archivable in its range).
    NoSegment,
    /// The checkpoint cannot be trusted; why.
    Refused(String),
}

/// Sends every checkpoint of every chain, in order, with its purge record
/// or its verified plan. Stops a partition after a refusal, and stops
/// altogether when the receiver is gone or on an error (which it sends).
async fn load_ahead(
    store: ArchiveStore,
    chains: Vec<cdc_checkpoint::Chain>,
    dialect: Dialect,
    key_columns: usize,
    tx: tokio::sync::mpsc::Sender<Result<Prefetched, PurgeError>>,
) {
    for chain in chains {
        for cp in chain.checkpoints {
            let item = async {
                let record = cdc_checkpoint::read_purge_record(
                    &store,
                    &cp.table,
                    cp.partition,
                    cp.first_offset,
                )
                .await?;
                let loaded = if record.is_some() {
                    Loaded::NoSegment
                } else {
                    load(&store, &cp, dialect, key_columns).await?
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

/// Fetches and verifies a checkpoint's segment (size and sha256), decodes
/// it and plans the deletes. Decoding runs on the blocking pool.
async fn load(
    store: &ArchiveStore,
    cp: &Checkpoint,
    dialect: Dialect,
    key_columns: usize,
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
    let planned = tokio::task::spawn_blocking(move || {
        let segment = match cdc_segment::decode_segment(&bytes) {
            Ok(s) => s,
            Err(e) => {
                return Loaded::Refused(format!(
                    "checkpoint {cp_path}: segment {seg_path} does not decode: {e}"
                ))
            }
        };
        let rows: Vec<ArchivedVersion> = segment.rows.iter().map(ArchivedVersion::from).collect();
        match versions::plan(&rows, dialect, key_columns) {
            Ok(plan) => Loaded::Plan {
                plan,
                segment_rows: rows.len() as u64,
            },
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
        rows: r.deleted + r.already_gone + r.skipped_changed + r.skipped_unmarked,
        deleted: r.deleted,
        already_gone: r.already_gone,
        skipped_changed: r.skipped_changed,
        skipped_unmarked: r.skipped_unmarked,
        ..RowCounts::default()
    }
}

/// Opens a session with the purger's settings. Called again after a
/// dropped connection, so every session setting lives here.
async fn open_session(cfg: &PurgerConfig) -> Result<Client, PurgeError> {
    let client = cdc_common::db::connect(&cfg.database_url, "cdc-archiver-purge").await?;
    if cfg.disable_changefeed_replication
        && cdc_common::db::detect_dialect(&client).await? == Dialect::Cockroach
    {
        client
            .batch_execute("SET disable_changefeed_replication = true")
            .await
            .map_err(|source| PurgeError::Db {
                context: "SET disable_changefeed_replication".into(),
                source,
            })?;
    }
    Ok(client)
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
    key_columns: usize,
    session: Session,
    size: Aimd,
    /// `None`: no rows-per-second limit.
    rate: Option<Pacer>,
    bar: indicatif::ProgressBar,
    purger_id: String,
    batches: u64,
    retries: u64,
}

/// What one batch did.
#[derive(Debug, Default)]
struct BatchResult {
    deleted: u64,
    would_delete: u64,
    already_gone: u64,
    skipped_changed: u64,
    skipped_unmarked: u64,
}

impl Run<'_> {
    async fn checkpoint(&mut self, cp: &Checkpoint, loaded: Loaded) -> Result<Outcome, PurgeError> {
        let started_at = cdc_checkpoint::now_rfc3339();
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
            Loaded::Plan { plan, segment_rows } => {
                if plan.no_version > 0 {
                    tracing::warn!(checkpoint = %cp.path(), rows = plan.no_version,
                    "archived events without a version are never deleted: the CockroachDB changefeed must run \
                     WITH mvcc_timestamp (the PostgreSQL changefeed records the xid)");
                }
                counts.rows = plan.targets.len() as u64 + plan.no_version;
                counts.skipped_no_version = plan.no_version;
                self.bar.inc(segment_rows - plan.targets.len() as u64);
                let mut rest: &[Target] = &plan.targets;
                while !rest.is_empty() {
                    if self.shutdown.is_cancelled() {
                        return Ok(Outcome {
                            status: CheckpointStatus::Interrupted,
                            counts,
                            refusal: None,
                        });
                    }
                    let (done, b) = self.batch(rest).await?;
                    rest = &rest[done..];
                    counts.deleted += b.deleted;
                    counts.would_delete += b.would_delete;
                    counts.already_gone += b.already_gone;
                    counts.skipped_changed += b.skipped_changed;
                    counts.skipped_unmarked += b.skipped_unmarked;
                    self.bar.inc(done as u64);
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
        let record = PurgeRecord {
            format_version: cdc_checkpoint::FORMAT_VERSION,
            table: cp.table.clone(),
            partition: cp.partition,
            first_offset: cp.first_offset,
            last_offset: cp.last_offset,
            segment: cp.segment.as_ref().map(|s| s.path.clone()),
            deleted: counts.deleted,
            already_gone: counts.already_gone,
            // The record format has no separate field for versionless
            // events; they were kept, like changed rows.
            skipped_changed: counts.skipped_changed + counts.skipped_no_version,
            skipped_unmarked: counts.skipped_unmarked,
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
            skipped_no_version = counts.skipped_no_version, "checkpoint purged");
        Ok(Outcome {
            status: CheckpointStatus::Purged,
            counts,
            refusal: None,
        })
    }

    /// Runs one batch from the front of `rest` with retries; returns how
    /// many targets it covered. The batch shrinks on every retry.
    async fn batch(&mut self, rest: &[Target]) -> Result<(usize, BatchResult), PurgeError> {
        let mut delays = self.cfg.retry.backoff().build();
        loop {
            let n = (self.size.current() as usize).min(rest.len());
            // Wait for the rate limit before opening any transaction.
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
            let started = Instant::now();
            let attempt = if self.opts.dry_run {
                probe(&self.session, self.key_columns, &rest[..n]).await
            } else {
                delete(&self.session, self.key_columns, &rest[..n]).await
            };
            match attempt {
                Ok(result) => {
                    self.size.on_success(started.elapsed());
                    if let Some(p) = &mut self.rate {
                        p.spend(n as u64, Instant::now());
                    }
                    self.batches += 1;
                    if !self.opts.dry_run && self.opts.crash_after_batches == Some(self.batches) {
                        tracing::error!(
                            batches = self.batches,
                            "CDC_PURGE_CRASH_AFTER_BATCHES reached: aborting"
                        );
                        std::process::abort();
                    }
                    return Ok((n, result));
                }
                Err(e) if e.is_retryable() => {
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
                Err(e) => {
                    let context = if e.as_db_error().is_some_and(|d| d.code().code() == "23503") {
                        "a referencing row blocks the delete (foreign key ON DELETE RESTRICT/NO ACTION)".to_owned()
                    } else {
                        format!("deleting a batch of {n} rows")
                    };
                    return Err(PurgeError::Db { context, source: e });
                }
            }
        }
    }

    async fn reconnect(
        &mut self,
        delays: &mut impl Iterator<Item = Duration>,
    ) -> Result<(), PurgeError> {
        loop {
            match Session::open(self.cfg, &self.sql).await {
                Ok(s) => {
                    self.session = s;
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

/// The batch as the statements' parameters: one `text[]` per key column,
/// then the versions.
fn params(targets: &[Target], keys: usize) -> Vec<Vec<String>> {
    let mut cols: Vec<Vec<String>> = (0..=keys)
        .map(|_| Vec::with_capacity(targets.len()))
        .collect();
    for t in targets {
        for (i, v) in t.key.iter().enumerate() {
            cols[i].push(v.clone());
        }
        cols[keys].push(t.version.clone());
    }
    cols
}

fn refs(cols: &[Vec<String>]) -> Vec<&(dyn ToSql + Sync)> {
    cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect()
}

/// A connection with the batch statements prepared on it.
struct Session {
    client: Client,
    delete: Statement,
    probe: Statement,
}

impl Session {
    async fn open(cfg: &PurgerConfig, sql: &PurgeSql) -> Result<Self, PurgeError> {
        let client = open_session(cfg).await?;
        Self::prepare(client, sql).await
    }

    async fn prepare(client: Client, sql: &PurgeSql) -> Result<Self, PurgeError> {
        let prep = |what: &'static str| {
            move |source| PurgeError::Db {
                context: format!("preparing the {what} statement"),
                source,
            }
        };
        let delete = client.prepare(&sql.delete).await.map_err(prep("DELETE"))?;
        let probe = client.prepare(&sql.probe).await.map_err(prep("probe"))?;
        Ok(Self {
            client,
            delete,
            probe,
        })
    }
}

/// One batch: a single guarded DELETE statement, which is its own short
/// transaction (on CockroachDB an implicit transaction the server can
/// retry by itself) and one round trip; the deleted count is its row
/// count (no RETURNING: it made the statement a third slower). Only when
/// some keys were not deleted, one SELECT says why. If the connection
/// drops after the DELETE committed, the retry finds those rows gone and
/// counts them as already gone, so the totals still reconcile.
async fn delete(
    s: &Session,
    keys: usize,
    batch: &[Target],
) -> Result<BatchResult, tokio_postgres::Error> {
    let cols = params(batch, keys);
    let deleted = s.client.execute(&s.delete, &refs(&cols)).await?;
    let mut result = BatchResult {
        deleted,
        ..BatchResult::default()
    };
    let not_deleted = batch.len() as u64 - deleted;
    if not_deleted > 0 {
        // The rows still present say why they were kept; the others of the
        // batch that are gone but not counted as deleted were gone before.
        let mut present = 0;
        for r in s.client.query(&s.probe, &refs(&cols)).await? {
            if r.get("present") {
                present += 1;
                classify(&mut result, true, r.get("marked"), false);
            }
        }
        result.already_gone = not_deleted.saturating_sub(present);
    }
    Ok(result)
}

/// Dry run: classify every key, deleting nothing.
async fn probe(
    s: &Session,
    keys: usize,
    batch: &[Target],
) -> Result<BatchResult, tokio_postgres::Error> {
    let cols = params(batch, keys);
    let mut result = BatchResult::default();
    for r in s.client.query(&s.probe, &refs(&cols)).await? {
        classify(
            &mut result,
            r.get("present"),
            r.get("marked"),
            r.get("same_version"),
        );
    }
    Ok(result)
}

fn classify(result: &mut BatchResult, present: bool, marked: bool, same_version: bool) {
    if !present {
        result.already_gone += 1;
    } else if !marked {
        result.skipped_unmarked += 1;
    } else if same_version {
        result.would_delete += 1;
    } else {
        result.skipped_changed += 1;
    }
}
