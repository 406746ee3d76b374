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
//! 4. Across restarts, the clock starts above the database's
//!    `clock_timestamp()` at start-up. Every resolved sent by an earlier
//!    process is the `updated` of a transaction that had committed, so it
//!    is below that start-up time, and every event of the new process
//!    (including re-sent ones) is above it. The price: events re-sent after
//!    a restart carry the restart time in `updated` rather than their first
//!    `updated`; `pg_xid`/`pg_lsn` still name the row version exactly.
//!    (This assumes the database clock does not step back across the
//!    restart by more than the restart took.)

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use cdc_common::retry::Retryable;
use futures::{pin_mut, TryStreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::catalog::{self, TableInfo};
use crate::config::{PgChangefeedConfig, TableConfig};
use crate::encode::{self, Origin};
use crate::error::ChangefeedError;
use crate::hlc::{Hlc, HlcClock};
use crate::partition::partition_for_key;
use crate::wal2json::{self, Column, Message};

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
    // wal2json renders timestamptz in the session's zone; UTC keeps it
    // simple (any offset is still parsed).
    client.batch_execute("SET TimeZone = 'UTC'").await?;

    let producer = make_producer(config)?;
    let mut tables: HashMap<(String, String), Table> = HashMap::new();
    let mut topics: BTreeMap<String, i32> = BTreeMap::new();
    for t in &config.tables {
        let info = catalog::inspect(&client, t).await?;
        let topic = t.topic().to_owned();
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
            },
        );
    }
    ensure_slot(&client, &config.slot_name).await?;
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
    let options: String = wal2json::OPTIONS
        .iter()
        .map(|(k, v)| format!("'{k}', '{v}', "))
        .collect();
    let peek = client
        .prepare(&format!(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2, {options}'add-tables', $3)"
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
        let outcome = {
            let params: [&(dyn ToSql + Sync); 3] =
                [&config.slot_name, &config.max_changes_per_peek, &add_tables];
            let rows = client
                .query_raw(&peek, params.iter().map(|p| *p as &dyn ToSql))
                .await?;
            pin_mut!(rows);
            let mut outcome = PeekOutcome::default();
            let mut txn: Option<Txn> = None;
            while let Some(row) = rows.try_next().await? {
                outcome.rows += 1;
                let lsn: String = row.get(0);
                let data: &str = row.get(1);
                handle_message(
                    data,
                    &lsn,
                    &tables,
                    clock,
                    &mut txn,
                    &mut outcome,
                    &mut publisher,
                )
                .await?;
                if cancel.is_cancelled() {
                    // Stop at any point: what follows the last complete
                    // transaction is re-sent by the next run.
                    break;
                }
            }
            outcome
        };
        publisher.drain().await?;
        if let Some((end_lsn, updated)) = outcome.last_commit {
            client
                .execute(
                    "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                    &[&config.slot_name, &end_lsn],
                )
                .await?;
            debug!(%end_lsn, %updated, rows = outcome.rows, "slot advanced");
            acked = Some(updated);
            *progressed = true;
        }
        if last_resolved_at.elapsed() >= config.resolved_interval {
            match acked {
                Some(ts) if Some(ts) > last_resolved_sent => {
                    publisher.send_resolved(&topics, ts).await?;
                    info!(resolved = %ts, acked_messages = publisher.acked_total, "resolved sent to every partition");
                    last_resolved_sent = Some(ts);
                    last_resolved_at = Instant::now();
                }
                _ if last_heartbeat_at.elapsed() >= config.resolved_interval => {
                    client
                        .execute(
                            "SELECT pg_logical_emit_message(true, $1, $2)",
                            &[&HEARTBEAT_PREFIX, &config.slot_name],
                        )
                        .await?;
                    last_heartbeat_at = Instant::now();
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
        .flush(rdkafka::util::Timeout::After(config.delivery_timeout))?;
    info!(slot = %config.slot_name, "pg-changefeed stopped cleanly");
    Ok(())
}

#[derive(Default)]
struct PeekOutcome {
    rows: usize,
    /// End LSN and `updated` of the last transaction fully decoded (and so
    /// fully handed to the producer).
    last_commit: Option<(String, Hlc)>,
}

fn bad(lsn: &str, reason: impl Into<String>) -> ChangefeedError {
    ChangefeedError::Wal2json {
        lsn: lsn.to_owned(),
        reason: reason.into(),
    }
}

async fn handle_message(
    data: &str,
    lsn: &str,
    tables: &HashMap<(String, String), Table>,
    clock: &mut HlcClock,
    txn: &mut Option<Txn>,
    outcome: &mut PeekOutcome,
    publisher: &mut Publisher,
) -> Result<(), ChangefeedError> {
    let msg = wal2json::parse(data).map_err(|e| bad(lsn, format!("{e}: {data:.200}")))?;
    match msg.action {
        "B" => {
            let xid = msg.xid.ok_or_else(|| bad(lsn, "begin without xid"))?;
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
            if let Some(table) = tables.get(&key) {
                for out in encode_change(&msg, table, &t.origin).map_err(|r| bad(lsn, r))? {
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

/// The records one wal2json row change becomes (zero when filtered, two
/// when an update changed the primary key: a delete of the old key and the
/// new row, as CockroachDB emits).
fn encode_change(msg: &Message<'_>, table: &Table, origin: &Origin) -> Result<Vec<Out>, String> {
    let pk = &table.info.primary_key;
    let full = table.info.full_identity;
    let old = msg.identity.as_deref().map(to_cols);
    let mut out = Vec::new();
    let delete = |old: &Cols, out: &mut Vec<Out>| -> Result<(), String> {
        if table.cfg.emit_deletes {
            let before = full.then(|| Some(encode::row_object(old)));
            out.push(Out {
                key: key_of(old, pk)?,
                value: encode::envelope(None, before.as_ref().map(|b| b.as_deref()), origin),
            });
        }
        Ok(())
    };
    match msg.action {
        "D" => {
            let old = old.ok_or("delete without identity (old key)")?;
            delete(&old, &mut out)?;
        }
        _ => {
            let mut new = to_cols(
                msg.columns
                    .as_deref()
                    .ok_or("insert/update without columns")?,
            );
            let key = key_of(&new, pk)?;
            let mut before: Option<Option<String>> = full.then_some(None);
            if let Some(old) = &old {
                let old_key = key_of(old, pk)?;
                if old_key != key {
                    delete(old, &mut out)?;
                } else if full {
                    // Unchanged TOASTed values are left out of `columns`;
                    // the full old row has them.
                    for (k, v) in old {
                        new.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    before = Some(Some(encode::row_object(old)));
                }
            }
            let passes = match &table.cfg.filter_column {
                Some(col) => new.get(col).map(String::as_str) == Some("true"),
                None => true,
            };
            if passes {
                let after = encode::row_object(&new);
                out.push(Out {
                    key,
                    value: encode::envelope(
                        Some(&after),
                        before.as_ref().map(|b| b.as_deref()),
                        origin,
                    ),
                });
            }
        }
    }
    Ok(out)
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
                Err((e, _)) => return Err(e.into()),
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
            Ok(Err((e, _))) => Err(e.into()),
            Err(_) => Err(KafkaError::Canceled.into()),
        }
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

fn make_producer(config: &PgChangefeedConfig) -> Result<FutureProducer, ChangefeedError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "5")
        .create()?)
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

/// Creates the slot with wal2json if it is missing; refuses a slot of
/// another plugin or database.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<(), ChangefeedError> {
    const LOOKUP: &str =
        "SELECT plugin::text, slot_type, database::text = current_database()::text \
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(full: bool, filter: Option<&str>, emit_deletes: bool) -> Table {
        Table {
            info: TableInfo {
                schema: "public".into(),
                name: "t".into(),
                primary_key: vec!["b".into(), "a".into()],
                full_identity: full,
            },
            cfg: TableConfig {
                name: cdc_common::ident::TableName::parse("t").unwrap(),
                topic: None,
                filter_column: filter.map(str::to_owned),
                emit_deletes,
            },
            topic: "t".into(),
            partitions: 3,
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

    fn encode(json: &str, t: &Table) -> Vec<Out> {
        encode_change(&wal2json::parse(json).unwrap(), t, &origin()).unwrap()
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
        let err = encode_change(&msg, &table(false, None, true), &origin()).unwrap_err();
        assert!(err.contains("\"b\""), "{err}");
    }
}
