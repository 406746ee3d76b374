//! Runs one checkpoint's planned deletes, batch after batch, and then
//! writes its purge record (`Run::checkpoint`).
//!
//! What it guarantees: each batch is one guarded DELETE in its own
//! implicit transaction; the rate limit waits before a batch is sent,
//! never inside a transaction. A batch that fails with a retryable error
//! (or a foreign-key violation, SQLSTATE 23503) is redone with a smaller
//! batch size, on a reopened session if the connection dropped, within the
//! retry policy's backoff and limit; once a DELETE has committed its count
//! stands and only the probe that says why rows were kept is retried, so
//! the counts stay exact. With `pipeline_depth` > 1 several batches are in
//! flight on the one connection, and on an error every batch still in
//! flight is awaited before it is returned. Rows kept because child rows
//! reference them are re-touched and rows found un-marked are held before
//! the purge record is written; the record is written after the
//! checkpoint's last batch and never in a dry run. The crash test hook
//! fires only with no batch in flight.

use std::time::{Duration, Instant};

use cdc_checkpoint::{Checkpoint, PurgeRecord};
use cdc_common::aimd::Aimd;
use cdc_common::pace::Pacer;
use cdc_common::retry::{Retrier, Retryable};
use cdc_common::storage::ArchiveStore;
use tokio_util::sync::CancellationToken;

use crate::batch::{
    delete, delete_params, explain_kept, next_batch, probe, BatchResult, KeptKeys, Layout, Shape,
};
use crate::loader::Loaded;
use crate::session::{OriginReport, Session};
use crate::sql::PurgeSql;
use crate::versions::Target;
use crate::{
    catalog, hold, retouch, CheckpointStatus, PurgeError, PurgeOptions, PurgerConfig, RowCounts,
};

pub(crate) struct Outcome {
    pub(crate) status: CheckpointStatus,
    pub(crate) counts: RowCounts,
    pub(crate) refusal: Option<String>,
}

pub(crate) struct Run<'a> {
    pub(crate) cfg: &'a PurgerConfig,
    pub(crate) store: &'a ArchiveStore,
    pub(crate) shutdown: CancellationToken,
    pub(crate) opts: &'a PurgeOptions,
    pub(crate) sql: PurgeSql,
    pub(crate) layout: Layout,
    pub(crate) session: Session,
    /// Keys of rows kept for a reason acted on when their checkpoint is done.
    pub(crate) kept_keys: KeptKeys,
    /// The table, for those actions.
    pub(crate) table: catalog::TableInfo,
    /// Rows re-touched and held so far.
    pub(crate) retouched: u64,
    pub(crate) held: u64,
    pub(crate) size: Aimd,
    /// `None`: no rows-per-second limit.
    pub(crate) rate: Option<Pacer>,
    pub(crate) bar: indicatif::ProgressBar,
    pub(crate) purger_id: String,
    pub(crate) batches: u64,
    pub(crate) retries: u64,
    /// The replication origins of this run's sessions.
    pub(crate) origins: OriginReport,
}

impl Run<'_> {
    pub(crate) async fn checkpoint(
        &mut self,
        cp: &Checkpoint,
        loaded: Loaded,
    ) -> Result<Outcome, PurgeError> {
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
        if let Some(replay) = &self.opts.replay {
            let path = cdc_checkpoint::write_replay_record(self.store, &replay.id, &record).await?;
            tracing::info!(checkpoint = %cp.path(), record = %path, "replay recorded");
        } else {
            match cdc_checkpoint::write_purge_record(self.store, &record).await? {
                cdc_checkpoint::PurgeWrite::Written => {}
                cdc_checkpoint::PurgeWrite::AlreadyPurged(other) => {
                    tracing::info!(checkpoint = %cp.path(), other = %other.purger_id,
                        "another purger recorded this checkpoint first; our deletes found its rows already gone");
                }
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
                        let mut retrier = Retrier::new(&self.cfg.retry);
                        if let Err(e) = self.reconnect(&mut retrier).await {
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
        let mut retrier = Retrier::new(&self.cfg.retry);
        loop {
            match explain_kept(&self.session, &self.layout, batch, deleted).await {
                Ok(b) => return Ok(b),
                Err(e) if e.is_retryable() => {
                    let Some(delay) = retrier.next_delay(&e) else {
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
                    Retrier::wait(delay, Some(&self.shutdown)).await;
                    if self.session.client.is_closed() {
                        self.reconnect(&mut retrier).await?;
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
        let mut retrier = Retrier::new(&self.cfg.retry);
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
                    // `batch_retryable` widens the error's own answer (a
                    // child inserted during the DELETE): the budget only.
                    let Some(delay) = retrier.next_delay_for_retryable() else {
                        return Err(PurgeError::Db {
                            context: format!("batch of {n} rows, retries exhausted"),
                            source: e,
                        });
                    };
                    self.retries += 1;
                    self.size.on_retry();
                    tracing::warn!(error = %e, rows = n, next_size = self.size.current(), ?delay, "batch failed, retrying");
                    Retrier::wait(delay, Some(&self.shutdown)).await;
                    if self.session.client.is_closed() {
                        self.reconnect(&mut retrier).await?;
                    }
                }
                Err(e) => return Err(batch_error(e, n)),
            }
        }
    }

    async fn reconnect(&mut self, retrier: &mut Retrier) -> Result<(), PurgeError> {
        loop {
            match Session::open(self.cfg, &self.sql, self.opts.dry_run).await {
                Ok((s, origin)) => {
                    self.session = s;
                    self.origins.add(origin);
                    return Ok(());
                }
                Err(e) => match retrier.next_delay(&e) {
                    Some(d) => {
                        tracing::warn!(error = %e, delay = ?d, "reconnecting to the database");
                        Retrier::wait(d, None).await;
                    }
                    None => return Err(e),
                },
            }
        }
    }
}

/// What one attempt of a batch did.
enum Attempt {
    /// Dry run: every key classified.
    Probed(BatchResult),
    /// The DELETE committed and removed this many rows.
    Deleted(u64),
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
pub(crate) fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
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

/// Whether the crash hook fires: at least `after` batches committed and
/// none in flight (never in a dry run).
fn crash_due(after: Option<u64>, dry_run: bool, batches: u64, in_flight: usize) -> bool {
    !dry_run && in_flight == 0 && after.is_some_and(|k| batches >= k)
}

#[cfg(test)]
mod tests {
    use super::*;

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
