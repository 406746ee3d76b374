//! The marker: flips the `archived` column to true for rows past a cutoff,
//! so that the changefeed emits them and the sink archives them. It is
//! built for tables that take thousands of writes a minute, where one big
//! `UPDATE … WHERE created_at < X` times out and fails with
//! `RETRY_SERIALIZABLE`.
//!
//! Guarantees kept here:
//! - Only rows that are eligible *at write time* are flipped: every
//!   statement that writes re-checks `NOT archived`, the cutoff and the
//!   operator's predicate. A missing cutoff is an error, never "all rows".
//! - Each batch is one short statement (an implicit transaction) over at
//!   most `batch_size` rows, found by a keyset walk in primary-key order
//!   (never OFFSET, never a rescan from the start).
//! - No eligible row is lost: on PostgreSQL, rows locked by a foreground
//!   writer are skipped without waiting (`SKIP LOCKED`), kept aside and
//!   revisited after the walk; rows still locked then are reported and stay
//!   eligible for the next run. Restarting needs no saved state: the walk
//!   starts from the smallest key that is still `NOT archived` and past the
//!   cutoff, so work already done is neither repeated nor rescanned.
//! - SQLSTATE 40001, timeouts and dropped connections are retried with
//!   jittered exponential backoff (halving the batch); any other error
//!   stops the run with a message naming the table and the step.

pub mod catalog;
pub mod config;
pub mod key;
pub mod sql;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_common::db::{DbError, Dialect};
use cdc_common::retry::{Retrier, RetryConfig, Retryable};
use cdc_common::{aimd, pace};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

pub use config::{CrdbReadAsOf, Cutoff, CutoffConfig, MarkerConfig};
use key::Key;
use sql::TableSql;

/// The `application_name` of the marker's sessions (visible in
/// `pg_stat_activity` / `SHOW SESSIONS`).
pub const APPLICATION_NAME: &str = "cdc-marker";

/// Keys put aside because a foreground writer held them; beyond this the
/// walk stops advancing past locked rows instead (bounded memory).
const MAX_DEFERRED: usize = 100_000;

/// Why a marker run failed.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// No cutoff configured.
    #[error(
        "table {table}: no cutoff configured (set cutoff.column and one of cutoff.older_than / cutoff.before); \
         the marker never marks a whole table"
    )]
    MissingCutoff {
        /// The table.
        table: String,
    },
    /// An invalid setting.
    #[error("configuration error: {0}")]
    Config(String),
    /// The table does not exist.
    #[error("table {table} not found (looked in schema {schema:?})")]
    TableNotFound {
        /// The table as configured.
        table: String,
        /// The schema searched.
        schema: String,
    },
    /// A configured column does not exist.
    #[error("table {table} has no column {column:?} (configured as {what})")]
    ColumnNotFound {
        /// The table.
        table: String,
        /// The missing column.
        column: String,
        /// The setting that named it.
        what: &'static str,
    },
    /// The table has no primary key to walk in.
    #[error("table {table} has no primary key: the marker walks in primary-key order and cannot run without one")]
    NoPrimaryKey {
        /// The table.
        table: String,
    },
    /// The database could not be reached.
    #[error(transparent)]
    Connect(#[from] DbError),
    /// The table of holds (rows never to mark) could not be made ready.
    #[error(transparent)]
    Holds(#[from] cdc_common::holds::HoldsError),
    /// A statement failed.
    #[error("{context}: {source}")]
    Db {
        /// What the marker was doing.
        context: String,
        /// The driver's error (carries the SQLSTATE).
        #[source]
        source: tokio_postgres::Error,
    },
    /// A retryable failure persisted past the retry limit.
    #[error("{context}: still failing after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// What the marker was doing.
        context: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Box<MarkError>,
    },
}

impl Retryable for MarkError {
    fn is_retryable(&self) -> bool {
        match self {
            MarkError::Connect(e) => e.is_retryable(),
            MarkError::Db { source, .. } => source.is_retryable(),
            // Transient by nature: a later run may well succeed.
            MarkError::RetriesExhausted { .. } => true,
            _ => false,
        }
    }
}

/// Progress reports, for a progress bar or logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The table is resolved; `eligible` rows were counted (if asked).
    Started {
        /// Eligible rows at the start.
        eligible: Option<u64>,
    },
    /// A batch committed.
    Batch {
        /// Rows marked by this batch.
        marked: u64,
        /// Rows marked so far.
        total: u64,
        /// The size asked for.
        batch_size: u32,
    },
    /// A batch failed with a retryable error and will be retried.
    Retrying {
        /// The error.
        error: String,
        /// The wait before the next attempt.
        delay: Duration,
        /// The batch size for the next attempt.
        batch_size: u32,
    },
}

/// Why the run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// No eligible row left.
    Completed,
    /// `max_rows` reached.
    MaxRows,
    /// `max_duration` reached.
    MaxDuration,
    /// The shutdown token fired (SIGTERM): the batch in flight finished.
    Shutdown,
}

/// Where the marker's last write is, for waiting until the changefeed
/// has passed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum WritePosition {
    /// PostgreSQL: `pg_current_wal_lsn()` read after the last batch
    /// committed; the changefeed has emitted the marker's writes once its
    /// confirmed LSN is at or past it.
    PgLsn(String),
    /// CockroachDB: `cluster_logical_timestamp()` read after the last
    /// batch committed; the changefeed has emitted the marker's writes once
    /// a resolved timestamp is at or past it.
    CrdbHlc(String),
}

/// The result of a run, also written as JSON for scheduled runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkSummary {
    /// The table, as configured.
    pub table: String,
    /// The server's dialect.
    pub dialect: Dialect,
    /// Why the run stopped.
    pub stop_reason: StopReason,
    /// Rows flipped to archived by this run.
    pub rows_marked: u64,
    /// Batches committed (including revisits of locked rows).
    pub batches: u64,
    /// Retried failures (40001, timeouts, dropped connections).
    pub retries: u64,
    /// Times the adaptive batch size was cut.
    pub batch_size_decreases: u64,
    /// The configured (largest) batch size.
    pub batch_size_target: u32,
    /// The smallest batch size used.
    pub batch_size_smallest: u32,
    /// The batch size at the end.
    pub batch_size_final: u32,
    /// Eligible rows counted at the start (if counted).
    pub eligible_at_start: Option<u64>,
    /// Times a row was found locked by another session and put aside.
    pub rows_skipped_locked: u64,
    /// Rows still locked after the revisits: unmarked, eligible next run.
    pub rows_left_locked: u64,
    /// When the run started (local clock).
    pub started_at: DateTime<Utc>,
    /// Wall time of the run.
    pub elapsed_secs: f64,
    /// `rows_marked / elapsed_secs`.
    pub rows_per_second: f64,
    /// Server clock read after the last batch committed (none if nothing
    /// was marked).
    pub last_write_at: Option<DateTime<Utc>>,
    /// Log position after the last batch committed (none if nothing was
    /// marked).
    pub last_write_position: Option<WritePosition>,
}

/// What `--dry-run` shows. Nothing is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    /// The table, as configured.
    pub table: String,
    /// The server's dialect.
    pub dialect: Dialect,
    /// The statements each batch runs (`$1` cutoff, `$2` batch size, then
    /// the keyset cursor).
    pub statements: Vec<String>,
    /// The cutoff value bound as `$1`.
    pub cutoff_value: String,
    /// EXPLAIN of the statements, first batch.
    pub plan: String,
    /// Rows eligible now.
    pub eligible: u64,
    /// The plan scans the whole table.
    pub full_scan: bool,
    /// The index that avoids the full scan (when `full_scan`).
    pub suggested_index: Option<String>,
}

impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "dry run for table {} ({:?}); nothing is written",
            self.table, self.dialect
        )?;
        writeln!(
            f,
            "\n-- statement(s) per batch ($1 = {:?}, $2 = batch size, then the keyset cursor):",
            self.cutoff_value
        )?;
        for s in &self.statements {
            writeln!(f, "{s};")?;
        }
        writeln!(f, "\n-- plan (first batch):\n{}", self.plan)?;
        writeln!(f, "\neligible rows: {}", self.eligible)?;
        if let Some(idx) = &self.suggested_index {
            writeln!(
                f,
                "\nWARNING: the candidate read is a full table scan; every batch would read the whole table."
            )?;
            writeln!(f, "This index fixes it:\n  {idx}")?;
        }
        Ok(())
    }
}

/// Whether `e` means the session is gone (so the next attempt needs a new
/// one): the server ended it (57P0x), the connection broke (08xxx), or
/// the driver saw the socket close before the client noticed.
fn session_lost(e: &MarkError) -> bool {
    match e {
        MarkError::Connect(_) => true,
        MarkError::Db { source, .. } => match source.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                code.starts_with("08") || code.starts_with("57P")
            }
            None => true,
        },
        _ => false,
    }
}

/// One session to the database, reopened after a drop.
struct Session {
    url: String,
    statement_timeout: Duration,
    client: Option<Arc<Client>>,
}

impl Session {
    async fn client(&mut self) -> Result<Arc<Client>, MarkError> {
        if let Some(c) = &self.client {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        self.client = None;
        let c = cdc_common::db::connect(&self.url, APPLICATION_NAME).await?;
        // An integer (milliseconds) from a Duration, not operator text.
        let ms = self
            .statement_timeout
            .as_millis()
            .clamp(1, i32::MAX as u128);
        c.batch_execute(&format!("SET statement_timeout = {ms}"))
            .await
            .map_err(|source| MarkError::Db {
                context: "setting statement_timeout".into(),
                source,
            })?;
        let c = Arc::new(c);
        self.client = Some(c.clone());
        Ok(c)
    }
}

/// Retries `f` on retryable errors (backoff from `retry`), reconnecting as
/// needed. For the one-off statements around the walk.
async fn with_retry<T, F, Fut>(
    session: &mut Session,
    retry: &RetryConfig,
    context: &str,
    retries: &mut u64,
    mut f: F,
) -> Result<T, MarkError>
where
    F: FnMut(Arc<Client>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut retrier = Retrier::new(retry);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = match session.client().await {
            Ok(c) => f(c).await.map_err(|source| MarkError::Db {
                context: context.to_owned(),
                source,
            }),
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => match retrier.next_delay(&e) {
                Some(d) => {
                    if session_lost(&e) {
                        session.client = None;
                    }
                    *retries += 1;
                    tracing::warn!(error = %e, delay_ms = d.as_millis() as u64, "{context}: retrying");
                    Retrier::wait(d, None).await;
                }
                None => {
                    return Err(MarkError::RetriesExhausted {
                        context: context.to_owned(),
                        attempts,
                        last: Box::new(e),
                    })
                }
            },
            Err(e) => return Err(e),
        }
    }
}

/// Connects, resolves the table and readies its holds table (created if
/// missing; a dry run, which writes nothing, only looks: without one there
/// is no hold to honour, and the statements it shows leave the clause out).
async fn prepare(
    url: &str,
    cfg: &MarkerConfig,
    dry_run: bool,
) -> Result<(Session, Dialect, TableSql, Cutoff), MarkError> {
    let cutoff = cfg.validate()?;
    let mut session = Session {
        url: url.to_owned(),
        statement_timeout: cfg.statement_timeout,
        client: None,
    };
    let mut retries = 0;
    let client = with_retry(
        &mut session,
        &cfg.retry,
        "connecting",
        &mut retries,
        |c| async move { Ok(c) },
    )
    .await?;
    let dialect = cdc_common::db::detect_dialect(&client).await?;
    let mut table = catalog::resolve(&client, cfg, &cutoff).await?;
    table.holds =
        cdc_common::holds::prepare(&client, &table.schema, &table.table, !dry_run).await?;
    Ok((session, dialect, table, cutoff))
}

/// Shows what a run would do: the SQL, the plan, the eligible count, and
/// the index to create when the plan is a full scan. Writes nothing.
pub async fn dry_run(url: &str, cfg: &MarkerConfig) -> Result<DryRun, MarkError> {
    let (mut session, dialect, table, cutoff) = prepare(url, cfg, true).await?;
    let client = session.client().await?;
    let value = cutoff.value().to_owned();
    let limit = i64::from(cfg.batch_size);
    let db = |context: &'static str| {
        move |source| MarkError::Db {
            context: context.into(),
            source,
        }
    };
    // The candidate read decides whether each batch scans the table; the
    // PostgreSQL batch statement is shown whole too (its lock and update
    // steps look rows up by key).
    let (candidate, whole) = match dialect {
        Dialect::Postgres => (table.pg_window(false), Some(table.pg_batch(false))),
        // The write's bounds come from the read; explain the read.
        Dialect::Cockroach => (table.crdb_window(false, cfg.crdb_read_as_of), None),
    };
    let explain = |sql: String| {
        let client = client.clone();
        let value = value.clone();
        async move {
            let rows = client
                .query(&format!("EXPLAIN {sql}"), &[&value, &limit])
                .await
                .map_err(db("EXPLAIN"))?;
            Ok::<_, MarkError>(
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        }
    };
    let candidate_plan = explain(candidate).await?;
    let full_scan = sql::plan_has_full_scan(dialect, &candidate_plan);
    let mut plan = format!("-- candidate read:\n{candidate_plan}");
    if let Some(whole) = whole {
        plan.push_str(&format!(
            "\n-- whole batch statement:\n{}",
            explain(whole).await?
        ));
    }
    let eligible: i64 = client
        .query_one(
            &table.count_eligible(dialect, cfg.crdb_read_as_of),
            &[&value],
        )
        .await
        .map_err(db("counting eligible rows"))?
        .get(0);
    Ok(DryRun {
        table: cfg.table.to_string(),
        dialect,
        statements: table.batch_statements(dialect, cfg.crdb_read_as_of),
        cutoff_value: value,
        plan: plan.trim_end().to_owned(),
        eligible: eligible.max(0) as u64,
        full_scan,
        suggested_index: full_scan.then(|| table.suggested_index(dialect)),
    })
}

/// What one batch did.
struct BatchOutcome {
    marked: u64,
    /// The walk is at the end.
    done: bool,
}

/// The walk's state between batches.
struct Walk {
    cursor: Option<Key>,
    deferred: Vec<Key>,
    skipped_locked: u64,
}

impl Walk {
    /// Moves the cursor past a PostgreSQL window (keys in order, each with
    /// whether it was marked). Keys not marked were locked (or changed
    /// since the window was read): they are put aside for the revisit and
    /// the walk moves on; once `max_deferred` keys are aside, the cursor
    /// instead stops just before the first unmarked key, so the next window
    /// starts at it again. Either way no skipped key is lost.
    fn advance(&mut self, mut window: Vec<(Key, bool)>, max_deferred: usize) {
        let skipped: Vec<usize> = window
            .iter()
            .enumerate()
            .filter(|(_, (_, m))| !*m)
            .map(|(i, _)| i)
            .collect();
        self.skipped_locked += skipped.len() as u64;
        if skipped.is_empty() || self.deferred.len() + skipped.len() <= max_deferred {
            for &i in &skipped {
                self.deferred.push(window[i].0.clone());
            }
            if let Some((k, _)) = window.pop() {
                self.cursor = Some(k);
            }
        } else if skipped[0] > 0 {
            self.cursor = Some(window.swap_remove(skipped[0] - 1).0);
        }
    }
}

/// Marks every eligible row of `cfg.table`, batch by batch, until none is
/// left, a limit is reached, or `shutdown` fires (the batch in flight
/// finishes first). Reports progress through `progress`.
pub async fn mark(
    url: &str,
    cfg: &MarkerConfig,
    shutdown: CancellationToken,
    progress: impl Fn(&Progress),
) -> Result<MarkSummary, MarkError> {
    let started_at = Utc::now();
    let start = Instant::now();
    let (mut session, dialect, table, cutoff) = prepare(url, cfg, false).await?;
    let value = cutoff.value().to_owned();
    let mut retries = 0u64;

    let eligible = if cfg.count_eligible {
        let sql = table.count_eligible(dialect, cfg.crdb_read_as_of);
        let n: i64 = with_retry(
            &mut session,
            &cfg.retry,
            "counting eligible rows",
            &mut retries,
            |c| {
                let (sql, value) = (&sql, &value);
                async move { Ok(c.query_one(sql, &[value]).await?.get(0)) }
            },
        )
        .await?;
        Some(n.max(0) as u64)
    } else {
        None
    };
    progress(&Progress::Started { eligible });
    tracing::info!(
        table = %cfg.table,
        ?dialect,
        eligible = eligible.map_or_else(|| "not counted".to_owned(), |n| n.to_string()),
        "marking"
    );

    let mut aimd = aimd::Aimd::new(cfg.min_batch_size, cfg.batch_size, cfg.target_batch_latency);
    let mut pacer = cfg
        .max_rows_per_second
        .map(|r| pace::Pacer::new(r, cfg.batch_size, Instant::now()));
    let mut walk = Walk {
        cursor: None,
        deferred: Vec::new(),
        skipped_locked: 0,
    };
    let mut marked_total = 0u64;
    let mut batches = 0u64;
    let mut retrier: Option<Retrier> = None;
    let mut attempts = 0u32;

    let stop_reason = loop {
        if shutdown.is_cancelled() {
            break StopReason::Shutdown;
        }
        if cfg.max_duration.is_some_and(|d| start.elapsed() >= d) {
            break StopReason::MaxDuration;
        }
        let remaining = cfg.max_rows.map(|m| m.saturating_sub(marked_total));
        if remaining == Some(0) {
            break StopReason::MaxRows;
        }
        let limit = remaining.map_or(aimd.current(), |r| r.min(u64::from(aimd.current())) as u32);
        // Wait for the rate limit before the statement starts: no
        // transaction is open while waiting.
        if let Some(p) = pacer.as_mut() {
            let wait = p.delay_for(limit, Instant::now());
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => continue,
                }
            }
        }
        let t0 = Instant::now();
        let result = match session.client().await {
            Ok(client) => match dialect {
                Dialect::Postgres => pg_batch(&client, &table, &value, limit, &mut walk).await,
                Dialect::Cockroach => {
                    crdb_batch(
                        &client,
                        &table,
                        cfg.crdb_read_as_of,
                        &value,
                        limit,
                        &mut walk,
                    )
                    .await
                }
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(outcome) => {
                retrier = None;
                attempts = 0;
                aimd.on_success(t0.elapsed());
                if let Some(p) = pacer.as_mut() {
                    p.spend(outcome.marked, Instant::now());
                }
                if outcome.marked > 0 || !outcome.done {
                    batches += 1;
                }
                marked_total += outcome.marked;
                progress(&Progress::Batch {
                    marked: outcome.marked,
                    total: marked_total,
                    batch_size: limit,
                });
                if outcome.done {
                    break StopReason::Completed;
                }
            }
            Err(e) if e.is_retryable() => {
                attempts += 1;
                aimd.on_retry();
                let it = retrier.get_or_insert_with(|| Retrier::new(&cfg.retry));
                let Some(delay) = it.next_delay(&e) else {
                    return Err(MarkError::RetriesExhausted {
                        context: format!("marking a batch of table {}", cfg.table),
                        attempts,
                        last: Box::new(e),
                    });
                };
                retries += 1;
                if session_lost(&e) {
                    session.client = None;
                }
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, batch_size = aimd.current(), "batch failed; retrying");
                progress(&Progress::Retrying {
                    error: e.to_string(),
                    delay,
                    batch_size: aimd.current(),
                });
                // Nothing was written by the failed attempt: a shutdown
                // stops the wait now.
                Retrier::wait(delay, Some(&shutdown)).await;
            }
            Err(e) => return Err(e),
        }
    };

    // Revisit rows that were locked during the walk (PostgreSQL), unless
    // the operator asked to stop.
    let mut left_locked = 0u64;
    if !walk.deferred.is_empty() {
        if stop_reason == StopReason::Shutdown {
            left_locked = walk.deferred.len() as u64;
        } else {
            // The revisit spends what is left of the run's limits, no more.
            let budget = Budget {
                rows: cfg.max_rows.map(|m| m.saturating_sub(marked_total)),
                deadline: cfg.max_duration.map(|d| start + d),
            };
            let (marked, n_batches, left) = revisit(
                &mut session,
                cfg,
                &table,
                &value,
                std::mem::take(&mut walk.deferred),
                budget,
                &mut retries,
                &shutdown,
            )
            .await?;
            marked_total += marked;
            batches += n_batches;
            left_locked = left;
            if marked > 0 {
                progress(&Progress::Batch {
                    marked,
                    total: marked_total,
                    batch_size: 0,
                });
            }
        }
    }

    let (last_write_at, last_write_position) = if marked_total > 0 {
        let sql = match dialect {
            Dialect::Postgres => {
                "SELECT (extract(epoch from clock_timestamp()) * 1000000)::int8, pg_current_wal_lsn()::text"
            }
            Dialect::Cockroach => "SELECT (extract(epoch from now()) * 1000000)::int8, cluster_logical_timestamp()::string",
        };
        let (micros, pos): (i64, String) = with_retry(
            &mut session,
            &cfg.retry,
            "reading the last write position",
            &mut retries,
            |c| async move {
                let r = c.query_one(sql, &[]).await?;
                Ok((r.get(0), r.get(1)))
            },
        )
        .await?;
        let pos = match dialect {
            Dialect::Postgres => WritePosition::PgLsn(pos),
            Dialect::Cockroach => WritePosition::CrdbHlc(pos),
        };
        (DateTime::<Utc>::from_timestamp_micros(micros), Some(pos))
    } else {
        (None, None)
    };

    let elapsed = start.elapsed().as_secs_f64();
    let summary = MarkSummary {
        table: cfg.table.to_string(),
        dialect,
        stop_reason,
        rows_marked: marked_total,
        batches,
        retries,
        batch_size_decreases: aimd.decreases(),
        batch_size_target: cfg.batch_size,
        batch_size_smallest: aimd.smallest(),
        batch_size_final: aimd.current(),
        eligible_at_start: eligible,
        rows_skipped_locked: walk.skipped_locked,
        rows_left_locked: left_locked,
        started_at,
        elapsed_secs: elapsed,
        rows_per_second: if elapsed > 0.0 {
            marked_total as f64 / elapsed
        } else {
            0.0
        },
        last_write_at,
        last_write_position,
    };
    tracing::info!(
        table = %summary.table,
        rows_marked = summary.rows_marked,
        batches = summary.batches,
        retries = summary.retries,
        rows_left_locked = summary.rows_left_locked,
        stop_reason = ?summary.stop_reason,
        "marker finished"
    );
    Ok(summary)
}

fn params<'a>(
    value: &'a String,
    limit: &'a i64,
    keys: impl IntoIterator<Item = &'a Key>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut p: Vec<&(dyn ToSql + Sync)> = vec![value, limit];
    for k in keys {
        p.extend(k.iter().map(|part| part as &(dyn ToSql + Sync)));
    }
    p
}

/// `$1` the cutoff, then every part of every key in `keys`.
fn key_list_params<'a>(value: &'a String, keys: &'a [Key]) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut p: Vec<&(dyn ToSql + Sync)> = vec![value];
    for k in keys {
        p.extend(k.iter().map(|x| x as &(dyn ToSql + Sync)));
    }
    p
}

/// PostgreSQL batch: window, lock what is free, mark, advance.
async fn pg_batch(
    client: &Client,
    table: &TableSql,
    value: &String,
    limit: u32,
    walk: &mut Walk,
) -> Result<BatchOutcome, MarkError> {
    let sql = table.pg_batch(walk.cursor.is_some());
    let limit = i64::from(limit);
    let rows = client
        .query(&sql, &params(value, &limit, walk.cursor.iter()))
        .await
        .map_err(|source| MarkError::Db {
            context: format!("marking a batch of table {}", table.qualified()),
            source,
        })?;
    if rows.is_empty() {
        return Ok(BatchOutcome {
            marked: 0,
            done: true,
        });
    }
    let n = table.key_len();
    let mut window = Vec::with_capacity(rows.len());
    for r in &rows {
        let k = key::key_from_row(r, n).map_err(|source| MarkError::Db {
            context: "reading keys".into(),
            source,
        })?;
        window.push((k, r.get::<_, bool>(n)));
    }
    let marked = window.iter().filter(|(_, m)| *m).count() as u64;
    walk.advance(window, MAX_DEFERRED);
    Ok(BatchOutcome {
        marked,
        done: false,
    })
}

/// CockroachDB batch: read candidates in the past, then mark the range.
async fn crdb_batch(
    client: &Client,
    table: &TableSql,
    as_of: CrdbReadAsOf,
    value: &String,
    limit: u32,
    walk: &mut Walk,
) -> Result<BatchOutcome, MarkError> {
    let context = || format!("marking a batch of table {}", table.qualified());
    let limit_i = i64::from(limit);
    let with_cursor = walk.cursor.is_some();
    let rows = client
        .query(
            &table.crdb_window(with_cursor, as_of),
            &params(value, &limit_i, walk.cursor.iter()),
        )
        .await
        .map_err(|source| MarkError::Db {
            context: context(),
            source,
        })?;
    let Some(last) = rows.last() else {
        return Ok(BatchOutcome {
            marked: 0,
            done: true,
        });
    };
    let n = table.key_len();
    let hi = key::key_from_row(last, n).map_err(|source| MarkError::Db {
        context: "reading keys".into(),
        source,
    })?;
    let written = client
        .query(
            &table.crdb_write(with_cursor),
            &params(value, &limit_i, walk.cursor.iter().chain([&hi])),
        )
        .await
        .map_err(|source| MarkError::Db {
            context: context(),
            source,
        })?;
    let (marked, last_marked) = match written.first() {
        Some(r) => (
            r.get::<_, i64>(n).max(0) as u64,
            Some(key::key_from_row(r, n).map_err(|source| MarkError::Db {
                context: "reading keys".into(),
                source,
            })?),
        ),
        None => (0, None),
    };
    // A full batch may have stopped short of the window's end (rows
    // inserted since the past read): continue from the last key marked.
    walk.cursor = if marked >= u64::from(limit) {
        last_marked.or(Some(hi))
    } else {
        Some(hi)
    };
    Ok(BatchOutcome {
        marked,
        done: false,
    })
}

/// Revisits keys that were locked during the walk, a few rounds with a
/// growing pause. Returns (marked, batches, still locked).
/// What the revisit may still spend of the run's `max_rows` and
/// `max_duration` (`None`: unlimited).
#[derive(Debug, Clone, Copy)]
struct Budget {
    rows: Option<u64>,
    deadline: Option<Instant>,
}

impl Budget {
    /// How many of `want` rows may be marked now (0: the budget is spent).
    fn allow(&self, want: usize, marked: u64) -> usize {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return 0;
        }
        match self.rows {
            Some(r) => want.min(r.saturating_sub(marked) as usize),
            None => want,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn revisit(
    session: &mut Session,
    cfg: &MarkerConfig,
    table: &TableSql,
    value: &String,
    mut keys: Vec<Key>,
    budget: Budget,
    retries: &mut u64,
    shutdown: &CancellationToken,
) -> Result<(u64, u64, u64), MarkError> {
    let chunk = (cfg.batch_size as usize).max(1);
    let mut marked = 0u64;
    let mut batches = 0u64;
    for round in 0..cfg.revisit_rounds {
        if keys.is_empty() || shutdown.is_cancelled() || budget.allow(1, marked) == 0 {
            break;
        }
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(200) * round).await;
        }
        let mut still = Vec::new();
        let mut rest: &[Key] = &keys;
        while !rest.is_empty() {
            let n = budget.allow(chunk.min(rest.len()), marked);
            if n == 0 || shutdown.is_cancelled() {
                // Out of budget: the rest stays unvisited (and is counted
                // below if it is still eligible).
                still.extend_from_slice(rest);
                break;
            }
            let (part, after) = rest.split_at(n);
            rest = after;
            let sql = table.pg_revisit(part.len());
            let done: Vec<Key> = with_retry(
                session,
                &cfg.retry,
                "revisiting locked rows",
                retries,
                |c| {
                    let sql = &sql;
                    async move {
                        let rows = c.query(sql, &key_list_params(value, part)).await?;
                        rows.iter()
                            .map(|r| key::key_from_row(r, table.key_len()))
                            .collect()
                    }
                },
            )
            .await?;
            batches += 1;
            marked += done.len() as u64;
            still.extend(part.iter().filter(|k| !done.contains(k)).cloned());
        }
        keys = still;
    }
    // What is left either is still locked or stopped being eligible (a
    // writer changed it); only the former is worth reporting.
    let mut left = 0u64;
    for part in keys.chunks(chunk) {
        let sql = table.pg_still_eligible(part.len());
        let n: i64 = with_retry(
            session,
            &cfg.retry,
            "counting rows left locked",
            retries,
            |c| {
                let sql = &sql;
                async move {
                    Ok(c.query_one(sql, &key_list_params(value, part))
                        .await?
                        .get(0))
                }
            },
        )
        .await?;
        left += n.max(0) as u64;
    }
    Ok((marked, batches, left))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::types::Type;

    fn k(n: i64) -> Key {
        vec![key::RawKeyPart::new(Type::INT8, n.to_be_bytes().to_vec())]
    }

    fn window(keys: &[(i64, bool)]) -> Vec<(Key, bool)> {
        keys.iter().map(|&(n, m)| (k(n), m)).collect()
    }

    fn walk() -> Walk {
        Walk {
            cursor: None,
            deferred: Vec::new(),
            skipped_locked: 0,
        }
    }

    #[test]
    fn a_fully_marked_window_moves_to_its_end() {
        let mut w = walk();
        w.advance(window(&[(1, true), (2, true), (3, true)]), 10);
        assert_eq!(w.cursor, Some(k(3)));
        assert!(w.deferred.is_empty());
    }

    #[test]
    fn skipped_keys_are_put_aside_and_the_walk_moves_on() {
        let mut w = walk();
        w.advance(window(&[(1, true), (2, false), (3, true), (4, false)]), 10);
        assert_eq!(w.cursor, Some(k(4)));
        assert_eq!(w.deferred, vec![k(2), k(4)]);
        assert_eq!(w.skipped_locked, 2);
    }

    #[test]
    fn past_the_bound_the_cursor_stops_before_the_first_skipped_key() {
        let mut w = walk();
        w.cursor = Some(k(0));
        w.deferred = vec![k(-1)];
        w.advance(window(&[(1, true), (2, false), (3, true)]), 1);
        assert_eq!(w.cursor, Some(k(1)), "key 2 must be read again");
        assert_eq!(w.deferred, vec![k(-1)]);
        // The skipped key heads the next window: the cursor stays put.
        w.advance(window(&[(2, false), (3, true)]), 1);
        assert_eq!(w.cursor, Some(k(1)));
        assert_eq!(w.skipped_locked, 2);
    }

    #[test]
    fn retryable_errors_are_told_apart() {
        assert!(!MarkError::MissingCutoff { table: "t".into() }.is_retryable());
        assert!(!MarkError::NoPrimaryKey { table: "t".into() }.is_retryable());
        assert!(MarkError::RetriesExhausted {
            context: "x".into(),
            attempts: 3,
            last: Box::new(MarkError::Config("y".into()))
        }
        .is_retryable());
    }
}
