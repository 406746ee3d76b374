//! Helpers shared by the changefeed's integration tests: a per-test slot
//! and table guard that cleans up even when the test panics, and a Kafka
//! reader that decodes with `cdc_changefeed::decode`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cdc_changefeed::{decode, Event, RawRecord, Value};
use cdc_pg_changefeed::{ChangefeedError, PgChangefeedConfig, TableConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Drops the replication slot and the tables when the test ends, passed or
/// failed: a forgotten slot pins WAL forever.
pub struct Cleanup {
    pub slot: String,
    pub tables: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let slot = self.slot.clone();
        let tables = self.tables.clone();
        on_fresh_runtime(async move {
            let c = cdc_tests::pg().await;
            // The slot is busy while a (killed) feed's peek finishes.
            drop_slot(&c, &slot).await;
            for t in tables {
                let _ = c
                    .batch_execute(&format!(
                        "DROP TABLE IF EXISTS {}",
                        cdc_common::ident::quote_ident(&t)
                    ))
                    .await;
            }
        });
    }
}

/// Runs `f` to completion on a fresh runtime on a fresh thread: for Drop,
/// which may run inside (or outside) a test's runtime, during a panic.
pub fn on_fresh_runtime(f: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f);
    })
    .join();
}

/// Runs `sql` (one `$1` text parameter) until it succeeds, up to 30s: the
/// object it drops may still be held by a session that is ending.
pub async fn drop_retrying(c: &tokio_postgres::Client, sql: &str, name: &str) {
    for _ in 0..150 {
        match c.execute(sql, &[&name]).await {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Drops replication slot `slot` if it exists (see [`drop_retrying`]).
pub async fn drop_slot(c: &tokio_postgres::Client, slot: &str) {
    drop_retrying(
        c,
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        slot,
    )
    .await;
}

/// An in-process changefeed.
pub struct Feed {
    cancel: CancellationToken,
    handle: JoinHandle<Result<(), ChangefeedError>>,
}

impl Feed {
    /// Starts the feed and returns once its slot exists and is consistent
    /// (changes committed from then on are in the slot). A logical slot is
    /// listed as soon as its creation starts, but it decodes only what
    /// commits after every transaction running at that moment (in any
    /// database) has ended; `confirmed_flush_lsn` is set then.
    pub async fn start(cfg: PgChangefeedConfig) -> Self {
        let cancel = CancellationToken::new();
        let slot = cfg.slot_name.clone();
        let handle = tokio::spawn({
            let cancel = cancel.clone();
            async move { cdc_pg_changefeed::run(&cfg, cancel).await }
        });
        let pg = cdc_tests::pg().await;
        while pg
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL",
                &[&slot],
            )
            .await
            .unwrap()
            .is_none()
        {
            assert!(!handle.is_finished(), "feed stopped: {:?}", handle.await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { cancel, handle }
    }

    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Waits up to `limit` for the feed to stop on its own (an error that
    /// is not retried); its result.
    pub async fn finished(self, limit: Duration) -> Result<(), ChangefeedError> {
        match tokio::time::timeout(limit, self.handle).await {
            Ok(r) => r.expect("the feed task does not panic"),
            Err(_) => panic!("the feed was still running after {limit:?}"),
        }
    }

    /// Cancels, as SIGTERM does, and insists on a clean stop.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.handle
            .await
            .unwrap()
            .expect("the feed stops cleanly on cancel");
    }
}

/// Per key (Kafka key text), the integer column `col` of every row event in
/// offset order (one key lives in one partition, so this is its order).
pub fn versions(t: &Topic, col: &str) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (p, evs) in &t.events {
        for (_, _, ev) in evs {
            if let Event::Row(r) = ev {
                assert_eq!(r.meta.partition, *p);
                assert!(r.meta.pg_xid.is_some(), "pg_xid on every row event");
                let Some(Value::Number(v)) = r.after.as_ref().and_then(|a| a.get(col)) else {
                    panic!("row event without numeric {col}: {r:?}")
                };
                out.entry(r.meta.key_json.clone())
                    .or_default()
                    .push(v.parse().unwrap());
            }
        }
    }
    out
}

/// At least once and in per-key order: for every key, the first
/// appearance of each version is exactly `0..=last` in order (re-sent
/// copies may repeat earlier versions, never skip or reorder one).
pub fn assert_every_version_in_order(per_key: &BTreeMap<String, Vec<i64>>, keys: usize, last: i64) {
    assert_eq!(per_key.len(), keys, "every key");
    for (key, seen) in per_key {
        let mut firsts = Vec::new();
        for v in seen {
            if !firsts.contains(v) {
                firsts.push(*v);
            }
        }
        assert_eq!(
            firsts,
            (0..=last).collect::<Vec<_>>(),
            "key {key}: {seen:?}"
        );
    }
}

/// True once every one of `keys` keys has reached version `last`.
pub fn all_reached(t: &Topic, col: &str, keys: usize, last: i64) -> bool {
    let mut max: BTreeMap<&str, i64> = BTreeMap::new();
    for r in t.rows() {
        if let Some(Value::Number(v)) = r.after.as_ref().and_then(|a| a.get(col)) {
            let m = max.entry(r.meta.key_json.as_str()).or_default();
            *m = (*m).max(v.parse().unwrap_or(-1));
        }
    }
    max.len() == keys && max.values().all(|v| *v == last)
}

pub fn table(name: &str) -> TableConfig {
    TableConfig {
        name: cdc_common::ident::TableName::parse(name).unwrap(),
        topic: None,
        filter_column: None,
        emit_deletes: true,
    }
}

pub fn config(slot: &str, tables: Vec<TableConfig>) -> PgChangefeedConfig {
    PgChangefeedConfig {
        database_url: cdc_tests::pg_url(),
        brokers: cdc_tests::kafka_brokers(),
        slot_name: slot.to_owned(),
        tables,
        resolved_interval: Duration::from_millis(300),
        poll_interval: Duration::from_millis(50),
        max_changes_per_peek: 200,
        ..PgChangefeedConfig::default()
    }
}

/// Decoded records of one topic, in per-partition offset order.
#[derive(Default)]
pub struct Topic {
    pub name: String,
    pub partitions: i32,
    /// Per partition: (offset, raw key, event).
    pub events: BTreeMap<i32, Vec<(i64, Option<String>, Event)>>,
}

impl Topic {
    pub fn rows(&self) -> Vec<&cdc_changefeed::RowEvent> {
        self.events
            .values()
            .flatten()
            .filter_map(|(_, _, e)| match e {
                Event::Row(r) => Some(r),
                Event::Resolved(_) => None,
            })
            .collect()
    }

    /// The smallest resolved seen across partitions (`None` unless every
    /// partition has one).
    pub fn min_resolved(&self) -> Option<cdc_changefeed::Hlc> {
        let mut min = None;
        for p in 0..self.partitions {
            let last = self
                .events
                .get(&p)?
                .iter()
                .rev()
                .find_map(|(_, _, e)| match e {
                    Event::Resolved(r) => Some(r.resolved),
                    Event::Row(_) => None,
                })?;
            min = Some(match min {
                Some(m) if m < last => m,
                _ => last,
            });
        }
        min
    }
}

/// Reads a topic from the beginning, keeping what arrives.
pub struct Reader {
    consumer: BaseConsumer,
    pub topic: Topic,
}

impl Reader {
    pub fn new(topic: &str, partitions: i32) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cdc_tests::kafka_brokers())
            .set("group.id", cdc_tests::unique("pgcf_reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        Self {
            consumer,
            topic: Topic {
                name: topic.to_owned(),
                partitions,
                events: BTreeMap::new(),
            },
        }
    }

    /// Polls until `done` holds; panics after `limit` (a liveness bound,
    /// not a performance assertion).
    pub async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Topic) -> bool,
    ) {
        let start = Instant::now();
        while !done(&self.topic) {
            assert!(
                start.elapsed() < limit,
                "gave up waiting for {what} on topic {}",
                self.topic.name
            );
            self.poll_some();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Keeps reading for `d` (to see that nothing more arrives).
    pub async fn poll_for(&mut self, d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            self.poll_some();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn poll_some(&mut self) {
        while let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            let rec = RawRecord {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key(),
                value: m.payload(),
            };
            let ev =
                decode(&rec).unwrap_or_else(|e| panic!("our own message does not decode: {e}"));
            let key = m.key().map(|k| String::from_utf8(k.to_vec()).unwrap());
            self.topic
                .events
                .entry(m.partition())
                .or_default()
                .push((m.offset(), key, ev));
        }
    }
}

/// The resolved guarantee, checked on everything read: in each partition,
/// no row event follows a resolved T with `updated <= T`. Returns how many
/// row events followed some resolved (so a test can insist the check was
/// exercised).
pub fn check_resolved_guarantee(t: &Topic) -> usize {
    let mut exercised = 0;
    for (p, evs) in &t.events {
        let mut resolved: Option<cdc_changefeed::Hlc> = None;
        for (off, _, e) in evs {
            match e {
                Event::Resolved(r) => {
                    assert!(
                        resolved.is_none_or(|prev| prev <= r.resolved),
                        "resolved went backwards at {p}/{off}"
                    );
                    resolved = Some(r.resolved);
                }
                Event::Row(r) => {
                    if let Some(res) = resolved {
                        let u = r.meta.updated.expect("updated");
                        assert!(
                            u > res,
                            "partition {p} offset {off}: row updated {u} after resolved {res}"
                        );
                        exercised += 1;
                    }
                }
            }
        }
    }
    exercised
}

/// One test's table, created as `CREATE TABLE <t> (<columns>)`, with unique
/// table and slot names; `cleanup` drops both when the test ends.
pub struct OneTable {
    pub pg: tokio_postgres::Client,
    pub t: String,
    pub qt: String,
    pub slot: String,
    pub cleanup: Cleanup,
}

/// Creates the table and, when `partitions` is given, its topic.
pub async fn one_table(prefix: &str, columns: &str, partitions: Option<i32>) -> OneTable {
    let pg = cdc_tests::pg().await;
    let t = cdc_tests::unique(prefix);
    let slot = cdc_tests::unique("pgcf_slot");
    let cleanup = Cleanup {
        slot: slot.clone(),
        tables: vec![t.clone()],
    };
    let qt = cdc_common::ident::quote_ident(&t);
    pg.batch_execute(&format!("CREATE TABLE {qt} ({columns})"))
        .await
        .unwrap();
    if let Some(p) = partitions {
        cdc_tests::create_topic(&t, p).await;
    }
    OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup,
    }
}

/// Creates the slot first, so that what is written next is in it, then
/// inserts `keys` rows `(k, 0)` into the `(k, v)` table `qt`.
pub async fn slot_then_rows(pg: &tokio_postgres::Client, slot: &str, qt: &str, keys: i32) {
    pg.execute(
        "SELECT pg_create_logical_replication_slot($1, 'wal2json')",
        &[&slot],
    )
    .await
    .unwrap();
    pg.execute(
        &format!("INSERT INTO {qt} SELECT k, 0 FROM generate_series(1, {keys}) k"),
        &[],
    )
    .await
    .unwrap();
}

/// Row changes of table `t` (public schema) still unconfirmed in `slot`
/// (a peek: nothing is consumed).
pub async fn unconfirmed_changes(pg: &tokio_postgres::Client, slot: &str, t: &str) -> i64 {
    pg.query_one(
        "SELECT count(*) FROM pg_logical_slot_peek_changes($1, NULL, NULL, 'format-version', '2', 'add-tables', $2) \
         WHERE data::jsonb->>'action' IN ('I', 'U', 'D')",
        &[&slot, &format!("public.{t}")],
    )
    .await
    .unwrap()
    .get(0)
}

/// The row version's `xmin` as PostgreSQL prints it, from a 64-bit `pg_xid`.
pub fn xmin_of(pg_xid: u64) -> String {
    (pg_xid & 0xFFFF_FFFF).to_string()
}

/// The current xid epoch (`next xid >> 32`).
pub async fn current_epoch(pg: &tokio_postgres::Client) -> u64 {
    let next: i64 = pg
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (next as u64) >> 32
}

/// The 64-bit id of the row version of `table` (quoted) whose key matches
/// `key_sql` (`WHERE` text): the row's `xmin` widened with the current epoch
/// (as the changefeed does; tests do not run across an epoch boundary).
pub async fn row_xid8(pg: &tokio_postgres::Client, qt: &str, key_sql: &str) -> u64 {
    let xmin: String = pg
        .query_one(&format!("SELECT xmin::text FROM {qt} WHERE {key_sql}"), &[])
        .await
        .unwrap()
        .get(0);
    (current_epoch(pg).await << 32) | xmin.parse::<u64>().unwrap()
}

/// A `database_url` for database `db` on the stack's server.
pub fn url_for_database(db: &str) -> String {
    let url = cdc_tests::pg_url();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b.to_owned(), format!("?{q}")),
            None => (url.clone(), String::new()),
        };
        let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
        let base = match base[after_scheme..].find('/') {
            Some(i) => base[..after_scheme + i].to_owned(),
            None => base,
        };
        format!("{base}/{db}{query}")
    } else {
        format!("{url} dbname={db}")
    }
}

/// `url` with extra server options (`-c name=value ...`), as a libpq URL
/// `options` parameter would set them for the session.
pub fn url_with_options(url: &str, options: &str) -> String {
    let encoded: String = options
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options={encoded}")
    } else {
        format!(
            "{url} options='{}'",
            options.replace('\\', "\\\\").replace('\'', "\\'")
        )
    }
}

/// A database of its own (so that what a test writes there is decoded by
/// no other test's slot, and no other test's transactions reach its own
/// slot), dropped with the slot at the end.
pub struct OwnDatabase {
    pub name: String,
    pub slot: String,
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let (name, slot) = (self.name.clone(), self.slot.clone());
        on_fresh_runtime(async move {
            let c = cdc_tests::pg().await;
            drop_slot(&c, &slot).await;
            let _ = c
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    cdc_common::ident::quote_ident(&name)
                ))
                .await;
        });
    }
}
