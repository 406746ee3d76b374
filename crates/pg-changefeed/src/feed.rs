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
use std::time::Instant;

use cdc_common::db::parse_lsn;
use cdc_common::retry::Retrier;
use rdkafka::producer::{FutureProducer, Producer};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::assembler::{report_unversioned, PeekContext, Table};
use crate::catalog;
use crate::config::PgChangefeedConfig;
use crate::error::ChangefeedError;
use crate::hlc::{Hlc, HlcClock};
use crate::publisher::{fatal_or, make_producer, resolved_floor, topic_partitions, Publisher};
use crate::reader::{peek_and_publish, probe_option, resolve_origins};
use crate::slot::{advance, heartbeat, refuse_lost_slot, SKIP_HEARTBEAT_BYTES};
use crate::{wal2json, xid};

pub use crate::assembler::Out;
pub use crate::slot::{ensure_slot, HEARTBEAT_PREFIX};

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
    let mut retrier = Retrier::new(&config.retry);
    loop {
        let mut progressed = false;
        match run_session(config, &cancel, &mut clock, &mut progressed).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                if progressed {
                    retrier.reset();
                }
                let Some(delay) = retrier.next_delay(&e) else {
                    return Err(e);
                };
                warn!(error = %e, ?delay, "pg-changefeed session failed; retrying from the last advanced position");
                if !Retrier::wait(delay, Some(&cancel)).await {
                    return Ok(());
                }
            }
        }
    }
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
