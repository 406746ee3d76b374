//! Reading changes from the slot through wal2json. Changes are only
//! peeked (`pg_logical_slot_peek_changes`, up to the WAL position read
//! before the peek and at most `max_changes_per_peek` of them), never got:
//! the slot moves only when the feed advances it, so a crash re-reads from
//! the last advanced position. A peek's rows are streamed from the server
//! and handed one at a time to the assembler, so memory stays bounded
//! however large a transaction is. On cancel the running peek is cancelled
//! on the server (PostgreSQL finishes a peek before its first row arrives),
//! and the outcome still holds everything handed to the producer up to the
//! last complete transaction. Also here: which wal2json options the plugin
//! accepts (probed at start-up; an unknown option is refused, not ignored)
//! and the replication-origin ids of the `filter_origins` pools, resolved
//! from their names before every peek.

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::assembler::{handle_message, PeekContext, PeekOutcome, Txn};
use crate::error::ChangefeedError;
use crate::hlc::HlcClock;
use crate::publisher::Publisher;
use crate::wal2json;

/// One peek: streams its rows into the producer, and stops early on cancel
/// (cancelling the query on the server: a peek of a huge transaction can
/// run for minutes before its first row). What was handed to the producer
/// up to the last complete transaction is in the outcome either way.
pub(crate) async fn peek_and_publish(
    client: &Client,
    peek: &tokio_postgres::Statement,
    params: &[&(dyn ToSql + Sync)],
    ctx: &PeekContext<'_>,
    clock: &mut HlcClock,
    publisher: &mut Publisher,
    cancel: &CancellationToken,
) -> Result<PeekOutcome, ChangefeedError> {
    let mut outcome = PeekOutcome::default();
    let query = client.query_raw(peek, params.iter().map(|p| *p as &dyn ToSql));
    let rows = tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            cancel_running_query(client).await;
            return Ok(outcome);
        }
        rows = query => rows?,
    };
    pin_mut!(rows);
    let mut txn: Option<Txn> = None;
    loop {
        let row = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                // What follows the last complete transaction is re-sent by
                // the next run.
                cancel_running_query(client).await;
                break;
            }
            row = rows.try_next() => match row? {
                Some(row) => row,
                None => break,
            },
        };
        outcome.rows += 1;
        let lsn: String = row.get(0);
        let data: &str = row.get(1);
        handle_message(data, &lsn, ctx, clock, &mut txn, &mut outcome, publisher).await?;
    }
    Ok(outcome)
}

/// Asks the server to cancel the feed session's running statement (the
/// peek). The rest of its answer is discarded when the row stream is
/// dropped; a cancel that arrives after the peek ended is ignored by an
/// idle session (and [`advance`](crate::slot::advance) retries if it lands
/// on the advance).
async fn cancel_running_query(client: &Client) {
    match client.cancel_token().cancel_query(NoTls).await {
        Ok(()) => info!("stopping: the running peek was cancelled"),
        Err(e) => warn!(error = %e, "stopping: could not cancel the running peek"),
    }
}

/// Whether this wal2json accepts `option` (a constant of this crate) with
/// `value`: a peek that decodes at most one WAL record (`upto_lsn` 0/1)
/// with it. A wal2json that does not know an option refuses it.
pub(crate) async fn probe_option(
    client: &Client,
    slot: &str,
    option: &str,
    value: &str,
) -> Result<bool, ChangefeedError> {
    let sql = "SELECT count(*) FROM pg_logical_slot_peek_changes($1, '0/1'::pg_lsn, 1, \
         'format-version', '2', $2, $3)";
    match client.query_one(sql, &[&slot, &option, &value]).await {
        Ok(_) => Ok(true),
        Err(e) if wal2json::is_unknown_option(&e, option) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The ids of the replication origins in the pools `bases` (each name and
/// its numbered members, see [`cdc_common::db::is_origin_pool_member`]),
/// and their names.
pub(crate) async fn resolve_origins(
    client: &Client,
    stmt: &tokio_postgres::Statement,
    bases: &[String],
) -> Result<(Vec<u32>, Vec<String>), ChangefeedError> {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for row in client.query(stmt, &[]).await? {
        let id: i64 = row.get(0);
        let name: String = row.get(1);
        if bases
            .iter()
            .any(|b| cdc_common::db::is_origin_pool_member(b, &name))
        {
            if let Ok(id) = u32::try_from(id) {
                ids.push(id);
                names.push(name);
            }
        }
    }
    Ok((ids, names))
}
