//! [`mark`]: one marker run over one table. Each batch is one short
//! statement over at most the current (adaptive) batch size; retryable
//! failures are retried with jittered backoff, halving the batch; a
//! shutdown lets the batch in flight finish. After the walk, rows found
//! locked are revisited within what is left of the run's limits, and the
//! position of the last write is read so that a caller can wait until the
//! changefeed has passed it.

use std::time::Instant;

use cdc_common::db::Dialect;
use cdc_common::retry::{Retrier, Retryable};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::revisit::{revisit, Budget};
use crate::session::{prepare, session_lost, with_retry};
use crate::walk::{crdb_batch, pg_batch, Walk};
use crate::{MarkError, MarkSummary, MarkerConfig, Progress, StopReason, WritePosition};

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

    let (mut aimd, mut pacer) = cfg.batching.controllers(Instant::now());
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
        batch_size_target: cfg.batching.batch_size,
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
