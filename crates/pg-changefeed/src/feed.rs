//! The changefeed loop: peek a bounded batch of changes from the slot,
//! publish them, wait for Kafka to acknowledge every message, advance the
//! slot to the end of the last complete transaction, and every
//! `resolved_interval` send a resolved timestamp to every partition.
//!
//! # Why the resolved timestamps are safe
//!
//! The promise (CockroachDB's): once resolved `T` is sent to a partition,
//! no row event with `updated <= T` that was not already sent will follow.
//!
//! 1. `updated` is not the raw commit time: every transaction, in the
//!    order the slot decodes them (commit order), gets the next value of one
//!    [`HlcClock`], which is strictly increasing. So every transaction
//!    decoded after transaction X has `updated > updated(X)`, even if its
//!    commit timestamp is earlier (PostgreSQL takes the commit timestamp
//!    before inserting the commit record, so two concurrent commits can
//!    reach the WAL in the opposite order of their timestamps).
//! 2. Resolved `T` is always the `updated` of a transaction X whose
//!    messages, and those of every transaction before it, Kafka has
//!    acknowledged. The resolved records are produced after those
//!    acknowledgements, so they sit behind them in each partition, and by
//!    (1) everything produced later has `updated > T`.
//! 3. No "now" is ever used for resolved: a transaction could commit with a
//!    timestamp before "now" and appear in the slot only after we looked.
//!    Instead, when the database is idle, the changefeed writes a heartbeat
//!    transaction (`pg_logical_emit_message(true, 'cdc-archiver', ...)`,
//!    which touches no table); it arrives through the slot like any other
//!    transaction and resolved advances to its `updated` by (2).
//! 4. Across restarts, the clock starts at the latest resolved timestamp an
//!    earlier process sent (read back from the topics: every resolved goes
//!    to every partition, partition 0 first, so the newest one is in
//!    partition 0), so every event of the new process is above every
//!    resolved ever sent. Every resolved sent is the `updated` of a
//!    transaction the slot had advanced past, and the slot re-sends only
//!    transactions after that, so a re-sent transaction gets what its
//!    first delivery got: its commit time (unless commit times ran
//!    backwards there, when both deliveries were bumped just above the
//!    previous transaction, by a few logical ticks at most). Like
//!    CockroachDB's `updated`, it does not change across re-deliveries.
//!    When the topics cannot be read back, the clock starts above the
//!    database's `clock_timestamp()` at start-up instead (honest, but
//!    re-sent events then carry the restart time).
//!
//! # Why an archived row is complete (or carries no version)
//!
//! The purger deletes a row by the version (`pg_xid`) of its archived
//! copy, so a copy that lacks a column must not carry one. wal2json leaves
//! out of an update every out-of-line (TOASTed) value the update did not
//! change. With `REPLICA IDENTITY FULL` the old row is logged whole and
//! fills them in; a table without it that has such columns is refused at
//! start-up ([`catalog::inspect`]). Defence in depth, at run time: every
//! insert/update is checked against the table's columns in the catalog,
//! and one that still lacks a column (or, with a wal2json too old to send
//! numbers as strings, has a `null` float/numeric value that may have been
//! a NaN or an infinity) is sent without `pg_xid`, counted in
//! `cdc_pgcf_unversioned_rows_total` and logged. The catalog is re-read
//! before every peek, after reading the WAL position the peek stops at
//! (`upto_lsn`): a transaction that wrote a column added by `ALTER TABLE`
//! waited for the `ALTER`'s lock, so the `ALTER` is visible to that
//! re-read, and a change decoded by the peek is checked against a catalog
//! that knows its columns.
//!
//! # Stopping
//!
//! On cancel (SIGTERM) a running peek is cancelled on the server
//! (PostgreSQL finishes a peek, possibly of a huge transaction, before the
//! first row arrives), the messages already handed to Kafka are awaited,
//! and the slot is advanced to the end of the last transaction that was
//! completely published, never further.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use cdc_common::db::parse_lsn;
use cdc_common::retry::Retryable;
use futures::{pin_mut, TryStreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::catalog::{self, TableInfo};
use crate::config::{PgChangefeedConfig, TableConfig};
use crate::encode::{self, Origin};
use crate::error::ChangefeedError;
use crate::hlc::{Hlc, HlcClock};
use crate::partition::partition_for_key;
use crate::wal2json::{self, Column, Message};
use crate::xid;

/// Prefix of the heartbeat logical messages (visible in the WAL, ignored by
/// this changefeed).
pub const HEARTBEAT_PREFIX: &str = "cdc-archiver";

/// Runs the changefeed until `cancel` fires (then it finishes the current
/// batch, advances the slot to what Kafka acknowledged and returns `Ok`),
/// or until an error that a retry cannot heal. Retryable errors (database or
/// broker unavailable) restart the session with backoff; nothing is skipped
/// because the slot only moves after acknowledgements.
pub async fn run(
    config: &PgChangefeedConfig,
    cancel: CancellationToken,
) -> Result<(), ChangefeedError> {
    config.validate()?;
    let mut clock: Option<HlcClock> = None;
    let mut backoff = config.retry.backoff().build();
    loop {
        let mut progressed = false;
        match run_session(config, &cancel, &mut clock, &mut progressed).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                if progressed {
                    backoff = config.retry.backoff().build();
                }
                let Some(delay) = backoff.next() else {
                    return Err(e);
                };
                warn!(error = %e, ?delay, "pg-changefeed session failed; retrying from the last advanced position");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A fed table: catalog facts plus where its messages go.
struct Table {
    info: TableInfo,
    cfg: TableConfig,
    topic: String,
    partitions: i32,
    /// The "needs REPLICA IDENTITY FULL" warning was logged (after an
    /// `ALTER TABLE` while running).
    toast_warned: bool,
}

/// What every change of one peek is decoded against.
struct PeekContext<'a> {
    tables: &'a HashMap<(String, String), Table>,
    /// wal2json sends numbers as strings (NaN/Infinity survive). Turned off
    /// for the session if a number arrives bare after all (a wal2json that
    /// ignored the option instead of refusing it).
    numeric_as_string: AtomicBool,
    /// A full transaction id read just before the peek: the epoch source.
    xid_reference: u64,
}

/// The transaction being decoded.
struct Txn {
    origin: Origin,
}

async fn run_session(
    config: &PgChangefeedConfig,
    cancel: &CancellationToken,
    clock: &mut Option<HlcClock>,
    progressed: &mut bool,
) -> Result<(), ChangefeedError> {
    // The slot in the application name lets an operator find (and a test
    // terminate) exactly this feed's session.
    let app = format!("cdc-pgcf:{}", config.slot_name);
    let client = cdc_common::db::connect(&config.database_url, &app).await?;
    // Session settings (values print as the purger reads them back):
    // pinned by `cdc_common::db::connect`.
    let server_version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await?
        .get(0);

    let producer = make_producer(config)?;
    let mut tables: HashMap<(String, String), Table> = HashMap::new();
    let mut topics: BTreeMap<String, i32> = BTreeMap::new();
    for t in &config.tables {
        let info = catalog::inspect(&client, t).await?;
        let topic = t.topic();
        let partitions = match topics.get(&topic) {
            Some(p) => *p,
            None => topic_partitions(&producer, &topic).await?,
        };
        topics.insert(topic.clone(), partitions);
        tables.insert(
            (info.schema.clone(), info.name.clone()),
            Table {
                info,
                cfg: t.clone(),
                topic,
                partitions,
                toast_warned: false,
            },
        );
    }
    // Where the slot stands: how much WAL a peek that found nothing has
    // read in vain (see `SKIP_HEARTBEAT_BYTES`).
    refuse_lost_slot(&client, &producer, config, &topics).await?;
    let mut confirmed = ensure_slot(&client, &config.slot_name).await?;
    let filter_origins = !config.filter_origins.is_empty()
        && {
            let supported =
                probe_option(&client, &config.slot_name, wal2json::FILTER_ORIGINS, "0").await?;
            if !supported {
                warn!(
                "this wal2json does not support `{}`: transactions of the replication origins {:?} (the \
                 purger's deletes) are sent like any other, as delete events",
                wal2json::FILTER_ORIGINS,
                config.filter_origins
            );
            }
            supported
        };
    let mut numeric_as_string =
        probe_option(&client, &config.slot_name, wal2json::NUMERIC_AS_STRING, "1").await?;
    if !numeric_as_string {
        warn!(
            "this wal2json does not support `{}` (wal2json 2.6+): it writes float/numeric NaN and \
             Infinity as null, so inserts and updates with a null float/numeric value are sent \
             without pg_xid and the purger keeps those rows; upgrade wal2json to archive them",
            wal2json::NUMERIC_AS_STRING
        );
    }
    if clock.is_none() {
        match resolved_floor(config, &topics).await {
            Some(Some(floor)) => {
                info!(%floor, "clock continues from the latest resolved timestamp in the topics");
                *clock = Some(HlcClock::new(floor));
            }
            // No resolved was ever sent: nothing to stay above; `updated`
            // is each transaction's commit time.
            Some(None) => {
                *clock = Some(HlcClock::new(Hlc {
                    wall: 0,
                    logical: 0,
                }))
            }
            None => {}
        }
    }
    if clock.is_none() {
        let now_us: i64 = client
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
                &[],
            )
            .await?
            .get(0);
        *clock = Some(HlcClock::new(Hlc {
            wall: now_us.saturating_mul(1000),
            logical: 0,
        }));
    }
    let Some(clock) = clock.as_mut() else {
        unreachable!("set above")
    };

    let add_tables = tables
        .values()
        .map(|t| {
            format!(
                "{}.{}",
                wal2json::escape_add_table(&t.info.schema),
                wal2json::escape_add_table(&t.info.name)
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    // The option names and values are constants of this crate; the only
    // variable parts are bound.
    let options: String = wal2json::options(numeric_as_string)
        .map(|(k, v)| format!("'{k}', '{v}', "))
        .collect();
    // The origin ids are bound: they are re-read before every peek.
    let origins_option = if filter_origins {
        format!(", '{}', $5", wal2json::FILTER_ORIGINS)
    } else {
        String::new()
    };
    let peek = client
        .prepare(&format!(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, $2::text::pg_lsn, $3, {options}'add-tables', $4{origins_option})"
        ))
        .await?;
    let origin_ids = client
        .prepare("SELECT roident::int8, roname::text FROM pg_catalog.pg_replication_origin ORDER BY roident")
        .await?;
    // The `filter-origins` value of the last peek (never empty once set),
    // so that a change of the pool's origins is logged once.
    let mut filtered = String::new();
    // Where the next peek stops, and the epoch source for its xids; read
    // before the catalog is re-read (see the module docs).
    let position = client
        .prepare(&format!(
            "SELECT pg_current_wal_flush_lsn()::text, {}",
            xid::reference_sql(server_version)
        ))
        .await?;
    info!(slot = %config.slot_name, tables = tables.len(), "pg-changefeed started");

    let mut publisher = Publisher {
        producer,
        inflight: VecDeque::new(),
        acked_total: 0,
        max_in_flight: config.max_in_flight,
    };
    let mut acked: Option<Hlc> = None;
    let mut last_resolved_sent: Option<Hlc> = None;
    let mut last_resolved_at = Instant::now();
    let mut last_heartbeat_at = Instant::now();
    while !cancel.is_cancelled() {
        let pos = client.query_one(&position, &[]).await?;
        let upto: String = pos.get(0);
        let reference: i64 = pos.get(1);
        refresh_catalog(&client, &mut tables).await?;
        // Also after reading where the peek stops: an origin used by a
        // transaction before that point was created before it, so it is
        // known here.
        let ids = if filter_origins {
            let (ids, names) =
                resolve_origins(&client, &origin_ids, &config.filter_origins).await?;
            let value = wal2json::filter_origins_value(&ids);
            if value != filtered {
                info!(origins = ?names, ?ids, "transactions of these replication origins are left out");
                filtered.clone_from(&value);
            }
            value
        } else {
            String::new()
        };
        let ctx = PeekContext {
            tables: &tables,
            numeric_as_string: AtomicBool::new(numeric_as_string),
            xid_reference: u64::try_from(reference).unwrap_or_default(),
        };
        let params: [&(dyn ToSql + Sync); 5] = [
            &config.slot_name,
            &upto,
            &config.max_changes_per_peek,
            &add_tables,
            &ids,
        ];
        let params = if filter_origins {
            &params[..]
        } else {
            &params[..4]
        };
        let outcome =
            peek_and_publish(&client, &peek, params, &ctx, clock, &mut publisher, cancel).await?;
        numeric_as_string = ctx.numeric_as_string.load(Ordering::Relaxed);
        report_unversioned(&outcome);
        publisher.drain().await?;
        if let Some((end_lsn, updated)) = &outcome.last_commit {
            advance(&client, &config.slot_name, end_lsn, cancel).await?;
            debug!(%end_lsn, %updated, rows = outcome.rows, "slot advanced");
            confirmed = parse_lsn(end_lsn).or(confirmed);
            acked = Some(*updated);
            *progressed = true;
        }
        if cancel.is_cancelled() {
            break;
        }
        // Nothing came through although the WAL moved on: transactions
        // left out by origin (a purge) or of another database give the
        // peek no commit to advance the slot to, so every peek would read
        // that WAL again until the idle heartbeat. A heartbeat now is a
        // commit to advance to (the next peek, after the usual pause).
        if outcome.last_commit.is_none()
            && parse_lsn(&upto)
                .zip(confirmed)
                .is_some_and(|(u, c)| u.saturating_sub(c) >= SKIP_HEARTBEAT_BYTES)
        {
            debug!(%upto, "WAL read without a transaction to send: heartbeat, so the slot can advance");
            last_heartbeat_at = heartbeat(&client, &config.slot_name).await?;
        }
        if last_resolved_at.elapsed() >= config.resolved_interval {
            // Between peeks, with nothing in flight: a partition added to a
            // topic gets the keys that hash to it from the next transaction
            // on, and every resolved timestamp from this one on.
            refresh_partitions(&publisher.producer, &mut topics, &mut tables).await;
            match acked {
                Some(ts) if Some(ts) > last_resolved_sent => {
                    publisher.send_resolved(&topics, ts).await?;
                    info!(resolved = %ts, acked_messages = publisher.acked_total, "resolved sent to every partition");
                    last_resolved_sent = Some(ts);
                    last_resolved_at = Instant::now();
                }
                _ if last_heartbeat_at.elapsed() >= config.resolved_interval => {
                    last_heartbeat_at = heartbeat(&client, &config.slot_name).await?;
                    continue;
                }
                _ => {}
            }
        }
        if outcome.rows == 0 {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
            }
        }
    }
    publisher.drain().await?;
    publisher
        .producer
        .flush(rdkafka::util::Timeout::After(config.delivery_timeout))
        .map_err(|e| fatal_or(&publisher.producer, e))?;
    info!(slot = %config.slot_name, "pg-changefeed stopped cleanly");
    Ok(())
}

#[derive(Default)]
struct PeekOutcome {
    rows: usize,
    /// End LSN and `updated` of the last transaction fully decoded (and so
    /// fully handed to the producer).
    last_commit: Option<(String, Hlc)>,
    /// Per table: row versions sent without `pg_xid` in this peek.
    unversioned: BTreeMap<String, Unversioned>,
}

/// Row versions of one table sent without `pg_xid` during one peek.
#[derive(Default)]
struct Unversioned {
    count: u64,
    /// LSN of the first such change.
    first_lsn: String,
    /// Columns missing from the new row.
    missing: std::collections::BTreeSet<String>,
    /// Float/numeric columns whose `null` may be a dropped NaN/Infinity.
    maybe_special: std::collections::BTreeSet<String>,
}

/// One peek: streams its rows into the producer, and stops early on cancel
/// (cancelling the query on the server: a peek of a huge transaction can
/// run for minutes before its first row). What was handed to the producer
/// up to the last complete transaction is in the outcome either way.
async fn peek_and_publish(
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
/// idle session (and [`advance`] retries if it lands on the advance).
async fn cancel_running_query(client: &Client) {
    match client.cancel_token().cancel_query(NoTls).await {
        Ok(()) => info!("stopping: the running peek was cancelled"),
        Err(e) => warn!(error = %e, "stopping: could not cancel the running peek"),
    }
}

/// Moves the slot to `end_lsn` (the end of a transaction whose every
/// message Kafka acknowledged).
async fn advance(
    client: &Client,
    slot: &str,
    end_lsn: &str,
    cancel: &CancellationToken,
) -> Result<(), ChangefeedError> {
    const SQL: &str = "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)";
    match client.execute(SQL, &[&slot, &end_lsn]).await {
        // Our own cancel request of a peek can, in a narrow race, reach the
        // session only once it runs the advance.
        Err(e) if cancel.is_cancelled() && e.code() == Some(&SqlState::QUERY_CANCELED) => {
            client.execute(SQL, &[&slot, &end_lsn]).await?;
        }
        r => {
            r?;
        }
    }
    Ok(())
}

/// Logs (once per table and peek) the row versions sent without `pg_xid`.
fn report_unversioned(outcome: &PeekOutcome) {
    for (table, u) in &outcome.unversioned {
        warn!(
            table = %table,
            rows = u.count,
            first_lsn = %u.first_lsn,
            missing_columns = ?u.missing,
            maybe_nan_or_infinity = ?u.maybe_special,
            "row versions sent without pg_xid: their new row is not known to be complete \
             (an unchanged out-of-line value was left out: set REPLICA IDENTITY FULL; or a \
             float/numeric null may be a NaN/Infinity this wal2json cannot send: upgrade to \
             wal2json 2.6+), so the purger keeps those rows"
        );
    }
}

/// Re-reads replica identity and columns of the fed tables, so that a
/// change is checked against columns added since start-up.
async fn refresh_catalog(
    client: &Client,
    tables: &mut HashMap<(String, String), Table>,
) -> Result<(), ChangefeedError> {
    let oids: Vec<u32> = tables.values().map(|t| t.info.oid).collect();
    for (oid, cols) in catalog::columns(client, &oids).await? {
        let Some(t) = tables.values_mut().find(|t| t.info.oid == oid) else {
            continue;
        };
        if t.info.columns == cols.columns
            && t.info.full_identity == cols.full_identity
            && t.info.toastable == cols.toastable
        {
            continue;
        }
        info!(
            table = %t.cfg.name,
            columns = ?cols.columns,
            identity = %cols.identity,
            "table definition changed; changes are now checked against it"
        );
        if !cols.full_identity && !cols.toastable.is_empty() && !t.toast_warned {
            warn!(
                table = %t.cfg.name,
                "{} (updates that leave such a value unchanged are sent without pg_xid until then; \
                 a restart refuses the table)",
                catalog::toast_refusal(&t.info.quoted(), &cols.toastable)
            );
            t.toast_warned = true;
        }
        t.info.columns = cols.columns;
        t.info.toastable = cols.toastable;
        t.info.full_identity = cols.full_identity;
    }
    Ok(())
}

/// Whether this wal2json accepts `option` (a constant of this crate) with
/// `value`: a peek that decodes at most one WAL record (`upto_lsn` 0/1)
/// with it. A wal2json that does not know an option refuses it.
async fn probe_option(
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
async fn resolve_origins(
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

/// Writes a heartbeat: a transactional logical message, i.e. a commit the
/// next peek can advance the slot to. Returns when it was written.
async fn heartbeat(client: &Client, slot: &str) -> Result<Instant, ChangefeedError> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&HEARTBEAT_PREFIX, &slot],
        )
        .await?;
    Ok(Instant::now())
}

/// WAL a peek may read without finding a transaction to send (all of it
/// left out by origin, or not yet committed) before the feed writes a
/// heartbeat transaction at once, instead of after `resolved_interval`, so
/// that the next peek can advance the slot past it and peeks do not read
/// the same WAL again and again while a purge runs.
const SKIP_HEARTBEAT_BYTES: u64 = 1 << 20;

fn bad(lsn: &str, reason: impl Into<String>) -> ChangefeedError {
    ChangefeedError::Wal2json {
        lsn: lsn.to_owned(),
        reason: reason.into(),
    }
}

async fn handle_message(
    data: &str,
    lsn: &str,
    ctx: &PeekContext<'_>,
    clock: &mut HlcClock,
    txn: &mut Option<Txn>,
    outcome: &mut PeekOutcome,
    publisher: &mut Publisher,
) -> Result<(), ChangefeedError> {
    // Never the line itself in the error: it is row data.
    let msg =
        wal2json::parse(data).map_err(|e| bad(lsn, wal2json::describe_parse_error(data, &e)))?;
    match msg.action {
        "B" => {
            let xid32 = msg
                .xid
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(lsn, "begin without a 32-bit xid"))?;
            let xid = xid::widen(xid32, ctx.xid_reference).ok_or_else(|| {
                bad(
                    lsn,
                    format!(
                        "xid {xid32} cannot be placed in an epoch near the next xid {}",
                        ctx.xid_reference
                    ),
                )
            })?;
            let ts = msg
                .timestamp
                .as_deref()
                .ok_or_else(|| bad(lsn, "begin without timestamp"))?;
            let wall = wal2json::parse_commit_timestamp(ts)
                .ok_or_else(|| bad(lsn, format!("bad timestamp {ts:?}")))?;
            let commit_lsn = msg.lsn.as_deref().unwrap_or(lsn).to_owned();
            *txn = Some(Txn {
                origin: Origin {
                    updated: clock.next(wall),
                    xid,
                    commit_lsn,
                },
            });
        }
        "C" => {
            let t = txn.take().ok_or_else(|| bad(lsn, "commit without begin"))?;
            // The peek's own LSN of a commit row is the end of the commit
            // record: where decoding of the next transaction starts.
            let end = msg.nextlsn.as_deref().unwrap_or(lsn).to_owned();
            outcome.last_commit = Some((end, t.origin.updated));
        }
        "I" | "U" | "D" => {
            let t = txn
                .as_ref()
                .ok_or_else(|| bad(lsn, "change outside a transaction"))?;
            let key = (
                msg.schema.clone().unwrap_or_default(),
                msg.table.clone().unwrap_or_default(),
            );
            if let Some(table) = ctx.tables.get(&key) {
                let enc = encode_change(
                    &msg,
                    table,
                    &t.origin,
                    ctx.numeric_as_string.load(Ordering::Relaxed),
                )
                .map_err(|r| bad(lsn, r))?;
                if enc.numbers_were_bare && ctx.numeric_as_string.swap(false, Ordering::Relaxed) {
                    warn!(
                        %lsn,
                        "wal2json accepted `{}` but still writes numbers bare: NaN/Infinity may \
                         arrive as null, so rows with a null float/numeric value are sent without \
                         pg_xid from now on",
                        wal2json::NUMERIC_AS_STRING
                    );
                }
                if let Some(inc) = enc.incomplete {
                    let name = table.cfg.name.to_string();
                    let reason = if inc.missing.is_empty() {
                        "maybe_nan_or_infinity"
                    } else {
                        "missing_column"
                    };
                    metrics::counter!("cdc_pgcf_unversioned_rows_total", "table" => name.clone(), "reason" => reason)
                        .increment(1);
                    let u = outcome.unversioned.entry(name).or_default();
                    if u.count == 0 {
                        u.first_lsn = lsn.to_owned();
                    }
                    u.count += 1;
                    u.missing.extend(inc.missing);
                    u.maybe_special.extend(inc.maybe_special);
                }
                for out in enc.outs {
                    let partition = partition_for_key(out.key.as_bytes(), table.partitions);
                    publisher
                        .send(
                            &table.topic,
                            partition,
                            Some(out.key.as_bytes()),
                            out.value.as_bytes(),
                        )
                        .await?;
                }
            }
        }
        // Logical messages (our heartbeats) and truncates: nothing to send.
        // A TRUNCATE is not a row change in CockroachDB either.
        _ => {}
    }
    Ok(())
}

/// One Kafka record.
#[derive(Debug, PartialEq)]
pub struct Out {
    /// Key bytes (JSON array).
    pub key: String,
    /// Value bytes (wrapped envelope).
    pub value: String,
}

type Cols = BTreeMap<String, String>;

fn to_cols(cols: &[Column<'_>]) -> Cols {
    cols.iter()
        .map(|c| (c.name.clone(), encode::map_value(c.typeoid, c.value)))
        .collect()
}

fn key_of(cols: &Cols, pk: &[String]) -> Result<String, String> {
    let mut vals = Vec::with_capacity(pk.len());
    for k in pk {
        vals.push(
            cols.get(k)
                .ok_or_else(|| format!("primary-key column {k:?} missing from the change"))?
                .as_str(),
        );
    }
    Ok(encode::key_array(&vals))
}

/// Why a row version was sent without `pg_xid`.
#[derive(Debug, Default, PartialEq)]
struct Incomplete {
    /// Catalog columns the new row lacks (after filling from the old row).
    missing: Vec<String>,
    /// Float/numeric columns with a `null` that may be a NaN or an
    /// infinity dropped by a wal2json without numeric strings.
    maybe_special: Vec<String>,
}

/// What one wal2json row change becomes.
#[derive(Debug, Default)]
struct Encoded {
    outs: Vec<Out>,
    /// Set when the new row was sent without `pg_xid`.
    incomplete: Option<Incomplete>,
    /// Numbers were expected as strings but a number column came bare.
    numbers_were_bare: bool,
}

fn is_null(c: &Column<'_>) -> bool {
    c.value.is_none_or(|v| v.get() == "null")
}

/// The records one wal2json row change becomes (zero when filtered, two
/// when an update changed the primary key: a delete of the old key and the
/// new row, as CockroachDB emits). An insert or update whose new row is
/// not known to be complete is sent without `pg_xid`.
fn encode_change(
    msg: &Message<'_>,
    table: &Table,
    origin: &Origin,
    numeric_as_string: bool,
) -> Result<Encoded, String> {
    let pk = &table.info.primary_key;
    let full = table.info.full_identity;
    let old_cols = msg.identity.as_deref();
    let old = old_cols.map(to_cols);
    let mut enc = Encoded::default();
    let delete = |old: &Cols, out: &mut Vec<Out>| -> Result<(), String> {
        if table.cfg.emit_deletes {
            let before = full.then(|| Some(encode::row_object(old)));
            out.push(Out {
                key: key_of(old, pk)?,
                value: encode::envelope(None, before.as_ref().map(|b| b.as_deref()), origin, true),
            });
        }
        Ok(())
    };
    match msg.action {
        "D" => {
            let old = old.ok_or("delete without identity (old key)")?;
            delete(&old, &mut enc.outs)?;
        }
        _ => {
            let cols = msg
                .columns
                .as_deref()
                .ok_or("insert/update without columns")?;
            let mut new = to_cols(cols);
            // Trust "numbers as strings" only as long as wal2json keeps to it.
            let bare = |c: &Column<'_>| {
                encode::is_number_type(c.typeoid)
                    && c.value.is_some_and(|v| !v.get().starts_with(['"', 'n']))
            };
            if numeric_as_string && cols.iter().chain(old_cols.unwrap_or_default()).any(bare) {
                enc.numbers_were_bare = true;
            }
            let numeric_as_string = numeric_as_string && !enc.numbers_were_bare;
            // A `null` that may stand for a NaN or an infinity.
            let mut maybe_special: Vec<String> = Vec::new();
            let mut check_special = |c: &Column<'_>| {
                if !numeric_as_string && encode::has_special_values(c.typeoid) && is_null(c) {
                    maybe_special.push(c.name.clone());
                }
            };
            cols.iter().for_each(&mut check_special);
            // Unchanged out-of-line (TOASTed) values are left out of
            // `columns`; an old row logged whole (REPLICA IDENTITY FULL) has
            // them, whether or not the key changed. (A DEFAULT identity
            // only logs key columns, which the new row has.)
            for c in old_cols.unwrap_or_default() {
                if !new.contains_key(&c.name) {
                    check_special(c);
                    new.insert(c.name.clone(), encode::map_value(c.typeoid, c.value));
                }
            }
            let key = key_of(&new, pk)?;
            let mut before: Option<Option<String>> = full.then_some(None);
            if let Some(old) = &old {
                if key_of(old, pk)? != key {
                    delete(old, &mut enc.outs)?;
                } else if full {
                    before = Some(Some(encode::row_object(old)));
                }
            }
            let passes = match &table.cfg.filter_column {
                Some(col) => new.get(col).map(String::as_str) == Some("true"),
                None => true,
            };
            if passes {
                let missing: Vec<String> = table
                    .info
                    .columns
                    .iter()
                    .filter(|c| !new.contains_key(*c))
                    .cloned()
                    .collect();
                let versioned = missing.is_empty() && maybe_special.is_empty();
                if !versioned {
                    enc.incomplete = Some(Incomplete {
                        missing,
                        maybe_special,
                    });
                }
                let after = encode::row_object(&new);
                enc.outs.push(Out {
                    key,
                    value: encode::envelope(
                        Some(&after),
                        before.as_ref().map(|b| b.as_deref()),
                        origin,
                        versioned,
                    ),
                });
            }
        }
    }
    Ok(enc)
}

/// The producer plus the messages it has not yet acknowledged.
struct Publisher {
    producer: FutureProducer,
    /// Messages Kafka acknowledged in this session (for the logs).
    acked_total: u64,
    inflight: VecDeque<DeliveryFuture>,
    max_in_flight: usize,
}

impl Publisher {
    async fn send(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), ChangefeedError> {
        loop {
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .partition(partition)
                .payload(payload);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            match self.producer.send_result(rec) {
                Ok(f) => {
                    self.inflight.push_back(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if !self.await_oldest().await? {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((e, _)) => return Err(self.kafka_error(e)),
            }
        }
        while self.inflight.len() > self.max_in_flight {
            self.await_oldest().await?;
        }
        Ok(())
    }

    /// Waits for the oldest unacknowledged message; `false` if none.
    async fn await_oldest(&mut self) -> Result<bool, ChangefeedError> {
        let Some(f) = self.inflight.pop_front() else {
            return Ok(false);
        };
        match f.await {
            Ok(Ok(_)) => {
                self.acked_total += 1;
                Ok(true)
            }
            Ok(Err((e, _))) => Err(self.kafka_error(e)),
            Err(_) => Err(self.kafka_error(KafkaError::Canceled)),
        }
    }

    /// A produce or delivery error, or the producer's fatal error if it
    /// raised one (the failed message's own error is then a consequence:
    /// the failed batch's broker error, or a purge of the queue).
    fn kafka_error(&self, e: KafkaError) -> ChangefeedError {
        fatal_or(&self.producer, e)
    }

    async fn drain(&mut self) -> Result<(), ChangefeedError> {
        while self.await_oldest().await? {}
        Ok(())
    }

    /// Resolved `ts` to every partition of every topic, acknowledged.
    async fn send_resolved(
        &mut self,
        topics: &BTreeMap<String, i32>,
        ts: Hlc,
    ) -> Result<(), ChangefeedError> {
        let value = encode::resolved(ts);
        for (topic, partitions) in topics {
            for p in 0..*partitions {
                self.send(topic, p, None, value.as_bytes()).await?;
            }
        }
        self.drain().await?;
        Ok(())
    }
}

/// `e`, unless the producer has raised a fatal error: then that, as
/// [`ChangefeedError::KafkaFatal`] (not retried).
fn fatal_or(producer: &FutureProducer, e: KafkaError) -> ChangefeedError {
    match producer.client().fatal_error() {
        Some((code, reason)) => {
            tracing::error!(%code, %reason, "Kafka producer fatal error: stopping without advancing the slot");
            ChangefeedError::KafkaFatal {
                code: format!("{code:?}"),
                reason,
            }
        }
        None => e.into(),
    }
}

/// The idempotent producer (no duplicates or reordering from its own
/// retries), with the gapless guarantee: a message that fails for good in
/// a way that would let later messages of its partition be acknowledged
/// after it (a gap) is instead a fatal error that stops the producer, so
/// every partition's acknowledged messages are a prefix of what was sent,
/// in order (the sink's hold-back of open transactions relies on that
/// order). A fatal error stops the changefeed, see
/// [`ChangefeedError::KafkaFatal`]. Messages that fail by
/// `message.timeout.ms` are not covered by librdkafka's guarantee; they
/// fail the delivery and the session, and the slot is not advanced.
fn make_producer(config: &PgChangefeedConfig) -> Result<FutureProducer, ChangefeedError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "5")
        .create()?)
}

/// Re-reads every topic's partition count; a topic that grew is used with
/// its new count from now on (a count the broker does not state now is
/// kept as it was).
async fn refresh_partitions(
    producer: &FutureProducer,
    topics: &mut BTreeMap<String, i32>,
    tables: &mut HashMap<(String, String), Table>,
) {
    for (topic, count) in topics.iter_mut() {
        match topic_partitions(producer, topic).await {
            Ok(n) if n > *count => {
                info!(%topic, from = *count, to = n, "the topic has more partitions now: keys are spread over all of them from the next transaction on");
                *count = n;
                for t in tables.values_mut().filter(|t| &t.topic == topic) {
                    t.partitions = n;
                }
            }
            Ok(_) => {}
            Err(e) => debug!(%topic, error = %e, "partition count not refreshed"),
        }
    }
}

async fn topic_partitions(producer: &FutureProducer, topic: &str) -> Result<i32, ChangefeedError> {
    let p = producer.clone();
    let t = topic.to_owned();
    let md = tokio::task::spawn_blocking(move || {
        p.client().fetch_metadata(Some(&t), Duration::from_secs(10))
    })
    .await
    .map_err(|e| ChangefeedError::Topic {
        topic: topic.to_owned(),
        reason: format!("metadata lookup failed: {e}"),
    })??;
    let found = md.topics().iter().find(|m| m.name() == topic);
    match found {
        Some(m) if m.error().is_none() && !m.partitions().is_empty() => {
            Ok(m.partitions().len() as i32)
        }
        _ => Err(ChangefeedError::Topic {
            topic: topic.to_owned(),
            reason: "does not exist on the broker: create it with the partition count you want"
                .into(),
        }),
    }
}

/// How far back [`resolved_floor`] reads a partition at most.
const FLOOR_SEARCH_LIMIT: i64 = 1 << 20;

/// The latest resolved timestamp an earlier changefeed sent to `topics`:
/// the greatest of the last resolved message of every partition (each is
/// sent to every partition, and a crash may have stopped that part way),
/// each read backwards in growing windows from the end. `Some(None)`: the
/// topics hold messages of no resolved timestamp at all (a new changefeed:
/// nothing to stay above). `None` (the caller falls back to the database
/// clock): a topic cannot be read, or a partition that holds messages has
/// no resolved one within its last [`FLOOR_SEARCH_LIMIT`] (one may lie
/// further back, or have expired).
async fn resolved_floor(
    config: &PgChangefeedConfig,
    topics: &BTreeMap<String, i32>,
) -> Option<Option<Hlc>> {
    let brokers = config.brokers.clone();
    let topics: BTreeMap<String, i32> = topics.clone();
    let found = tokio::task::spawn_blocking(move || -> Option<Option<Hlc>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message as _;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "cdc-archiver-pgcf-floor")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .ok()?;
        let timeout = Duration::from_secs(10);
        let mut floor: Option<Hlc> = None;
        let partitions: Vec<(String, i32)> = topics
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
            .collect();
        for (topic, partition) in &partitions {
            let (topic, partition) = (topic, *partition);
            let (low, high) = match consumer.fetch_watermarks(topic, partition, timeout) {
                Ok(w) => w,
                Err(e) => {
                    warn!(%topic, error = %e, "reading the topic's watermarks for its latest resolved timestamp");
                    return None;
                }
            };
            let mut window = 1024;
            let mut end = high;
            while end > low {
                let start = (end - window).max(low);
                let mut tpl = rdkafka::TopicPartitionList::new();
                tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(start))
                    .ok()?;
                consumer.assign(&tpl).ok()?;
                let mut last: Option<Hlc> = None;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if Instant::now() > deadline {
                        return None;
                    }
                    match consumer.poll(Duration::from_millis(500)) {
                        Some(Ok(m)) => {
                            if m.offset() >= end {
                                break;
                            }
                            if m.key().is_none() {
                                if let Some(h) = m.payload().and_then(encode::parse_resolved) {
                                    last = Some(h);
                                }
                            }
                            if m.offset() + 1 >= end {
                                break;
                            }
                        }
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                        Some(Err(e)) => {
                            warn!(%topic, error = %e, "reading the topic back for its latest resolved timestamp");
                            return None;
                        }
                        None => {}
                    }
                }
                if let Some(h) = last {
                    floor = floor.max(Some(h));
                    break;
                }
                if high - start >= FLOOR_SEARCH_LIMIT {
                    warn!(%topic, partition, "no resolved timestamp in the last {FLOOR_SEARCH_LIMIT} messages");
                    return None;
                }
                end = start;
                window *= 4;
            }
        }
        Some(floor)
    })
    .await
    .ok()
    .flatten();
    if found.is_none() {
        warn!("could not read the topics back for their latest resolved timestamp; the clock starts at the database's clock");
    }
    found
}

/// A missing slot is created only for topics that hold nothing yet (a new
/// changefeed), or with `recreate_slot`: topics that hold messages mean an
/// earlier slot of this changefeed is gone, and the changes made since it
/// went never reach Kafka, silently, if a new slot is simply created.
async fn refuse_lost_slot(
    client: &Client,
    producer: &FutureProducer,
    config: &PgChangefeedConfig,
    topics: &BTreeMap<String, i32>,
) -> Result<(), ChangefeedError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot_name],
        )
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let mut used = Vec::new();
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            let (c, t) = (producer.clone(), topic.clone());
            let high = tokio::task::spawn_blocking(move || {
                c.client()
                    .fetch_watermarks(&t, p, Duration::from_secs(10))
                    .map(|(_, h)| h)
            })
            .await
            .map_err(|e| ChangefeedError::Topic {
                topic: topic.clone(),
                reason: format!("watermark lookup failed: {e}"),
            })??;
            if high > 0 {
                used.push(topic.clone());
                break;
            }
        }
    }
    if used.is_empty() {
        return Ok(());
    }
    if config.recreate_slot {
        warn!(slot = %config.slot_name, topics = ?used,
            "creating the replication slot again (--recreate-slot): changes made while there was none are not \
             in Kafka; run `cdc-archiver retouch` for each table so that its marked rows are archived again");
        return Ok(());
    }
    Err(ChangefeedError::Slot {
        slot: config.slot_name.clone(),
        reason: format!(
            "does not exist, but topics {used:?} already hold this changefeed's messages: the slot was dropped \
             or lost (a failover), and the changes made since are not in Kafka. Start once with \
             `--recreate-slot` (config `recreate_slot = true`), then run `cdc-archiver retouch --table <t>` \
             for each table, so that rows marked meanwhile are archived from their current state"
        ),
    })
}

/// Creates the slot with wal2json if it is missing; refuses a slot of
/// another plugin or database. Returns the slot's `confirmed_flush_lsn`.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<Option<u64>, ChangefeedError> {
    const LOOKUP: &str =
        "SELECT plugin::text, slot_type, database::text = current_database()::text, \
                confirmed_flush_lsn::text \
                          FROM pg_replication_slots WHERE slot_name = $1";
    if client.query_opt(LOOKUP, &[&slot]).await?.is_none() {
        match client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'wal2json')",
                &[&slot],
            )
            .await
        {
            Ok(_) => info!(slot, "replication slot created"),
            // Another process created it first: check it below.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let row = client
        .query_opt(LOOKUP, &[&slot])
        .await?
        .ok_or_else(|| ChangefeedError::Slot {
            slot: slot.to_owned(),
            reason: "vanished right after creation".into(),
        })?;
    let plugin: Option<String> = row.get(0);
    let kind: String = row.get(1);
    let same_db: Option<bool> = row.get(2);
    if kind != "logical" || plugin.as_deref() != Some("wal2json") || same_db != Some(true) {
        return Err(ChangefeedError::Slot {
            slot: slot.to_owned(),
            reason: format!(
                "exists but is a {kind} slot of plugin {plugin:?} in {} database: choose another slot_name",
                if same_db == Some(true) { "this" } else { "another" }
            ),
        });
    }
    Ok(row
        .get::<_, Option<String>>(3)
        .as_deref()
        .and_then(parse_lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(full: bool, filter: Option<&str>, emit_deletes: bool) -> Table {
        Table {
            info: TableInfo {
                oid: 1,
                schema: "public".into(),
                name: "t".into(),
                primary_key: vec!["b".into(), "a".into()],
                full_identity: full,
                columns: vec!["a".into(), "b".into()],
                toastable: vec![],
            },
            cfg: TableConfig {
                name: cdc_common::ident::TableName::parse("t").unwrap(),
                topic: None,
                filter_column: filter.map(str::to_owned),
                emit_deletes,
            },
            topic: "t".into(),
            partitions: 3,
            toast_warned: false,
        }
    }

    fn origin() -> Origin {
        Origin {
            updated: Hlc {
                wall: 5,
                logical: 1,
            },
            xid: 42,
            commit_lsn: "0/10".into(),
        }
    }

    const META: &str = r#""pg_lsn": "0/10", "pg_xid": "42", "updated": "5.0000000001"}"#;
    /// The metadata of a row version sent without `pg_xid`.
    const UNVERSIONED: &str = r#""pg_lsn": "0/10", "updated": "5.0000000001"}"#;

    fn encode_full(json: &str, t: &Table, numeric_as_string: bool) -> Encoded {
        encode_change(
            &wal2json::parse(json).unwrap(),
            t,
            &origin(),
            numeric_as_string,
        )
        .unwrap()
    }

    fn encode(json: &str, t: &Table) -> Vec<Out> {
        let enc = encode_full(json, t, true);
        assert_eq!(enc.incomplete, None, "{json}");
        enc.outs
    }

    #[test]
    fn key_follows_primary_key_order_not_column_order() {
        let out = encode(
            r#"{"action":"I","columns":[{"name":"a","typeoid":23,"value":1},{"name":"b","typeoid":25,"value":"x"}]}"#,
            &table(false, None, true),
        );
        assert_eq!(
            out,
            vec![Out {
                key: r#"["x", 1]"#.into(),
                value: format!(r#"{{"after": {{"a": 1, "b": "x"}}, {META}"#)
            }]
        );
    }

    #[test]
    fn filter_and_deletes() {
        let t = table(false, Some("archived"), false);
        let ins = r#"{"action":"U","columns":[{"name":"a","value":1},{"name":"b","value":"x"},{"name":"archived","typeoid":16,"value":false}]}"#;
        assert!(encode(ins, &t).is_empty(), "not archived: filtered out");
        let upd = ins.replace("false", "true");
        assert_eq!(encode(&upd, &t).len(), 1);
        let del = r#"{"action":"D","identity":[{"name":"a","value":1},{"name":"b","value":"x"}]}"#;
        assert!(encode(del, &t).is_empty(), "emit_deletes = false");
        let out = encode(del, &table(false, Some("archived"), true));
        assert_eq!(
            out,
            vec![Out {
                key: r#"["x", 1]"#.into(),
                value: format!(r#"{{"after": null, {META}"#)
            }]
        );
    }

    #[test]
    fn full_identity_gives_before_and_fills_unchanged_toast() {
        let t = table(true, None, true);
        let upd = r#"{"action":"U","columns":[{"name":"a","value":1},{"name":"b","value":"x"}],
                      "identity":[{"name":"a","value":1},{"name":"b","value":"x"},{"name":"big","value":"old"}]}"#;
        let out = encode(upd, &t);
        assert_eq!(
            out[0].value,
            format!(
                r#"{{"after": {{"a": 1, "b": "x", "big": "old"}}, "before": {{"a": 1, "b": "x", "big": "old"}}, {META}"#
            )
        );
        let ins = r#"{"action":"I","columns":[{"name":"a","value":1},{"name":"b","value":"x"}]}"#;
        assert_eq!(
            encode(ins, &t)[0].value,
            format!(r#"{{"after": {{"a": 1, "b": "x"}}, "before": null, {META}"#)
        );
    }

    #[test]
    fn primary_key_change_is_delete_then_insert() {
        let upd = r#"{"action":"U","columns":[{"name":"a","value":2},{"name":"b","value":"x"}],
                      "identity":[{"name":"a","value":1},{"name":"b","value":"x"}]}"#;
        let out = encode(upd, &table(false, None, true));
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            Out {
                key: r#"["x", 1]"#.into(),
                value: format!(r#"{{"after": null, {META}"#)
            }
        );
        assert_eq!(out[1].key, r#"["x", 2]"#);
    }

    #[test]
    fn missing_key_column_is_an_error() {
        let msg = wal2json::parse(r#"{"action":"I","columns":[{"name":"a","value":1}]}"#).unwrap();
        let err = encode_change(&msg, &table(false, None, true), &origin(), true).unwrap_err();
        assert!(err.contains("\"b\""), "{err}");
    }

    /// An update that lacks a column of the table (an unchanged TOASTed
    /// value under DEFAULT identity) is sent, but without `pg_xid`: the
    /// purger cannot delete a row by an incomplete copy.
    #[test]
    fn incomplete_row_is_sent_without_pg_xid() {
        let mut t = table(false, Some("archived"), true);
        t.info.columns = vec!["a".into(), "archived".into(), "b".into(), "big".into()];
        let upd = r#"{"action":"U","columns":[{"name":"a","value":1},{"name":"b","value":"x"},{"name":"archived","typeoid":16,"value":true}],
                      "identity":[{"name":"a","value":1},{"name":"b","value":"x"}]}"#;
        let enc = encode_full(upd, &t, true);
        assert_eq!(
            enc.outs,
            vec![Out {
                key: r#"["x", 1]"#.into(),
                value: format!(
                    r#"{{"after": {{"a": 1, "archived": true, "b": "x"}}, {UNVERSIONED}"#
                )
            }]
        );
        assert_eq!(
            enc.incomplete,
            Some(Incomplete {
                missing: vec!["big".into()],
                maybe_special: vec![]
            })
        );
        // The same row complete: versioned.
        let complete = upd.replace(
            r#"{"name":"archived","typeoid":16,"value":true}"#,
            r#"{"name":"archived","typeoid":16,"value":true},{"name":"big","typeoid":25,"value":"v"}"#,
        );
        let enc = encode_full(&complete, &t, true);
        assert_eq!(enc.incomplete, None);
        assert!(enc.outs[0].value.contains(r#""pg_xid": "42""#));
        // Filtered out: nothing sent, nothing to report.
        let not_archived = upd.replace("true}]", "false}]");
        let enc = encode_full(&not_archived, &t, true);
        assert!(enc.outs.is_empty() && enc.incomplete.is_none());
    }

    /// Under FULL identity the old row fills unchanged values, also when
    /// the primary key changed (the new key's insert is complete).
    #[test]
    fn full_identity_fills_on_key_change_too() {
        let mut t = table(true, None, true);
        t.info.columns = vec!["a".into(), "b".into(), "big".into()];
        let upd = r#"{"action":"U","columns":[{"name":"a","value":2},{"name":"b","value":"x"}],
                      "identity":[{"name":"a","value":1},{"name":"b","value":"x"},{"name":"big","value":"old"}]}"#;
        let enc = encode_full(upd, &t, true);
        assert_eq!(enc.incomplete, None);
        assert_eq!(enc.outs.len(), 2);
        assert_eq!(
            enc.outs[1].value,
            format!(r#"{{"after": {{"a": 2, "b": "x", "big": "old"}}, "before": null, {META}"#)
        );
    }

    /// A wal2json that ignored `numeric-data-types-as-string` (numbers
    /// still bare): its nulls are not trusted either.
    #[test]
    fn bare_numbers_despite_the_option_are_not_trusted() {
        let mut t = table(false, None, true);
        t.info.columns = vec!["a".into(), "b".into(), "f".into()];
        let ins = r#"{"action":"I","columns":[{"name":"a","typeoid":23,"value":1},{"name":"b","typeoid":25,"value":"x"},
                      {"name":"f","typeoid":701,"value":null}]}"#;
        let enc = encode_full(ins, &t, true);
        assert!(enc.numbers_were_bare);
        assert!(enc.incomplete.is_some() && !enc.outs[0].value.contains("pg_xid"));
        let strings = ins.replace(r#""value":1}"#, r#""value":"1"}"#);
        let enc = encode_full(&strings, &t, true);
        assert!(!enc.numbers_were_bare && enc.incomplete.is_none());
        assert!(enc.outs[0].key == r#"["x", 1]"#, "{:?}", enc.outs);
    }

    /// Without numeric strings (wal2json < 2.6), a null float/numeric value
    /// may be a NaN or an infinity that wal2json dropped: no `pg_xid`.
    #[test]
    fn null_numbers_are_unversioned_without_numeric_strings() {
        let mut t = table(false, None, true);
        t.info.columns = vec!["a".into(), "b".into(), "f".into(), "n".into()];
        let ins = r#"{"action":"I","columns":[{"name":"a","typeoid":23,"value":1},{"name":"b","typeoid":25,"value":"x"},
                      {"name":"f","typeoid":701,"value":null},{"name":"n","typeoid":1700,"value":2.5}]}"#;
        let enc = encode_full(ins, &t, false);
        assert_eq!(
            enc.incomplete,
            Some(Incomplete {
                missing: vec![],
                maybe_special: vec!["f".into()]
            })
        );
        assert!(!enc.outs[0].value.contains("pg_xid"));
        // With numeric strings a null is a SQL NULL.
        let strings = ins
            .replace(r#""value":1}"#, r#""value":"1"}"#)
            .replace(r#""value":2.5}"#, r#""value":"2.5"}"#);
        let enc = encode_full(&strings, &t, true);
        assert_eq!(enc.incomplete, None);
        assert!(enc.outs[0].value.contains(r#""n": 2.5"#), "{:?}", enc.outs);
        // A null text column is always a SQL NULL.
        let text_null = ins
            .replace(
                r#""typeoid":701,"value":null"#,
                r#""typeoid":701,"value":1.5"#,
            )
            .replace(
                r#""typeoid":25,"value":"x""#,
                r#""typeoid":25,"value":"x"},{"name":"z","typeoid":25,"value":null"#,
            );
        assert_eq!(encode_full(&text_null, &t, false).incomplete, None);
    }
}
