//! The revisit of rows a foreground writer held during the walk
//! (PostgreSQL): a few rounds with a growing pause, spending no more than
//! what is left of the run's `max_rows` and `max_duration`. Rows still
//! locked at the end are counted (they stay eligible for the next run);
//! rows that stopped being eligible meanwhile are not.

use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use crate::key::{self, Key};
use crate::session::{with_retry, Session};
use crate::sql::TableSql;
use crate::{MarkError, MarkerConfig};

/// `$1` the cutoff, then every part of every key in `keys`.
fn key_list_params<'a>(value: &'a String, keys: &'a [Key]) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut p: Vec<&(dyn ToSql + Sync)> = vec![value];
    for k in keys {
        p.extend(k.iter().map(|x| x as &(dyn ToSql + Sync)));
    }
    p
}

/// Revisits keys that were locked during the walk, a few rounds with a
/// growing pause. Returns (marked, batches, still locked).
/// What the revisit may still spend of the run's `max_rows` and
/// `max_duration` (`None`: unlimited).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) rows: Option<u64>,
    pub(crate) deadline: Option<Instant>,
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
pub(crate) async fn revisit(
    session: &mut Session,
    cfg: &MarkerConfig,
    table: &TableSql,
    value: &String,
    mut keys: Vec<Key>,
    budget: Budget,
    retries: &mut u64,
    shutdown: &CancellationToken,
) -> Result<(u64, u64, u64), MarkError> {
    let chunk = (cfg.batching.batch_size as usize).max(1);
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
