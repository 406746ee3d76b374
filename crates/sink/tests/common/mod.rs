//! Helpers shared by the sink's integration tests: produce records to the
//! stack's broker, run the sink until a topic is fully checkpointed, read
//! the archive back (verifying every segment against its checkpoint).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use cdc_changefeed::line::{parse_line, OwnedRecord};
use cdc_changefeed::{decode_with, DecodeOptions, Value};
use cdc_checkpoint::Chain;
use cdc_common::storage::{ArchiveStore, StorageConfig};
use cdc_segment::{ArchivedRow, DeletedRow, RecordMeta};
use cdc_sink::{SinkConfig, SinkSummary, TopicConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

/// The repository's CockroachDB changefeed fixtures
/// (`tests/fixtures/cockroachdb-changefeed` at the workspace root).
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cockroachdb-changefeed")
}

/// The records of a fixture file, renamed to `topic`, offsets per partition
/// in file order (what the broker will assign).
pub fn fixture(name: &str, topic: &str) -> Vec<OwnedRecord> {
    let text = std::fs::read_to_string(fixture_dir().join(name)).expect("fixture");
    let mut next = std::collections::HashMap::new();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let mut r = parse_line(l, i as u64 + 1).expect("fixture line");
            r.topic = topic.to_owned();
            let o = next.entry(r.partition).or_insert(0i64);
            r.offset = *o;
            *o += 1;
            r
        })
        .collect()
}

pub async fn produce(records: &[OwnedRecord]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    // One at a time per partition keeps the file's order = offset order.
    for r in records {
        let mut rec: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&r.topic).partition(r.partition);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        let d = producer
            .send(rec, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        let (p, o) = (d.partition, d.offset);
        assert_eq!(
            (p, o),
            (r.partition, r.offset),
            "broker assigned an unexpected offset"
        );
    }
}

pub fn config(topic: &str, storage: StorageConfig) -> SinkConfig {
    SinkConfig {
        brokers: cdc_tests::kafka_brokers(),
        group_id: cdc_tests::unique("sinkgrp"),
        topics: vec![TopicConfig {
            name: topic.to_owned(),
            table: None,
            op_column: None,
        }],
        flush_age: Duration::from_millis(300),
        resolved_checkpoint_interval: Duration::from_millis(300),
        storage,
        metrics_addr: None,
        ..SinkConfig::default()
    }
}

pub fn local_storage(dir: &std::path::Path) -> StorageConfig {
    StorageConfig {
        url: format!("file://{}", dir.display()),
        ..Default::default()
    }
}

/// S3 storage config for the stack's server under `prefix`, and the same
/// archive opened by the test helper for reading back.
pub fn s3_storage(prefix: &str) -> (StorageConfig, ArchiveStore) {
    // The local test server accepts any credentials.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
    let cfg = StorageConfig {
        url: format!("s3://{}/{prefix}", cdc_tests::s3_bucket()),
        s3_endpoint: Some(cdc_tests::s3_endpoint()),
        allow_http: true,
    };
    (cfg, cdc_tests::s3_archive(prefix))
}

/// Members of consumer group `group` the broker lists (0 if it lists no
/// such group).
pub fn group_members(group: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .create()
        .unwrap();
    c.fetch_group_list(Some(group), Duration::from_secs(10))
        .map(|l| l.groups().first().map_or(0, |g| g.members().len()))
        .unwrap_or(0)
}

/// Kafka's (low, high) watermarks.
pub fn watermarks(topic: &str, partition: i32) -> (i64, i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .create()
        .unwrap();
    c.fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap()
}

/// Waits until every partition's chain ends at Kafka's last offset (or the
/// deadline passes: the caller's assertions then report what is missing).
pub async fn wait_archived(store: &ArchiveStore, table: &str, topic: &str, partitions: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut done = true;
        for p in 0..partitions {
            let (_, high) = watermarks(topic, p);
            let end = cdc_checkpoint::read_chain(store, table, p)
                .await
                .ok()
                .and_then(|c| c.end());
            if high > 0 && end != Some(high - 1) {
                done = false;
            }
        }
        if done || tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the sink until the topic is archived, then stops it (as SIGTERM would).
pub async fn run_until_archived(
    config: &SinkConfig,
    store: &ArchiveStore,
    topic: &str,
    partitions: i32,
) -> SinkSummary {
    let cancel = CancellationToken::new();
    let cfg = config.clone();
    let c2 = cancel.clone();
    let task = tokio::spawn(async move { cdc_sink::run(&cfg, c2).await });
    wait_archived(store, config.topics[0].table(), topic, partitions).await;
    cancel.cancel();
    task.await.expect("sink task").expect("sink run")
}

/// Every partition's chain and its rows, segments verified against their checkpoints.
pub async fn read_archive(
    store: &ArchiveStore,
    table: &str,
    partitions: i32,
) -> Vec<(Chain, Vec<ArchivedRow>)> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let chain = cdc_checkpoint::read_chain(store, table, p)
            .await
            .expect("chain verifies");
        let mut rows = Vec::new();
        for c in &chain.checkpoints {
            if let Some(seg) = &c.segment {
                let bytes = cdc_checkpoint::verify_segment(store, seg)
                    .await
                    .expect("segment verifies");
                let decoded = cdc_segment::decode_segment(&bytes).expect("segment decodes");
                assert_eq!(
                    (decoded.meta.first_offset, decoded.meta.last_offset),
                    (c.first_offset, c.last_offset)
                );
                assert_eq!(decoded.rows.len() as u64, seg.rows);
                assert!(decoded
                    .rows
                    .iter()
                    .all(|r| (c.first_offset..=c.last_offset).contains(&r.meta.offset)));
                rows.extend(decoded.rows);
            }
        }
        out.push((chain, rows));
    }
    out
}

/// Every delete record of a chain, in chain order, each delete file
/// verified against its checkpoint (size, sha256, record count, range).
pub async fn read_deletes(store: &ArchiveStore, chain: &Chain) -> Vec<DeletedRow> {
    let mut out = Vec::new();
    for c in &chain.checkpoints {
        let Some(d) = &c.deletes else {
            assert_eq!(c.counts.deletes, 0, "deletes counted but not recorded");
            continue;
        };
        assert!(d.path.contains("/deletes/"), "{}", d.path);
        let bytes = cdc_checkpoint::verify_deletes(store, d)
            .await
            .expect("delete file verifies");
        let decoded = cdc_segment::decode_deletes(&bytes).expect("delete file decodes");
        assert_eq!(
            (decoded.meta.first_offset, decoded.meta.last_offset),
            (c.first_offset, c.last_offset)
        );
        assert_eq!(decoded.deletes.len() as u64, d.records);
        assert_eq!(d.records, c.counts.deletes, "counts reconcile");
        assert!(decoded
            .deletes
            .iter()
            .all(|r| (c.first_offset..=c.last_offset).contains(&r.meta.offset)));
        out.extend(decoded.deletes);
    }
    out
}

/// One archived record as a test states it. The expected side is read
/// from the messages' JSON text alone, by the rules of CockroachDB's
/// changefeed documentation (no decoder, no sink code); the observed side
/// is the archive's record in the same terms. Column values are compared
/// as the JSON text that was sent (numbers and JSON byte for byte, strings
/// by value), sorted by column name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub partition: i32,
    pub offset: i64,
    pub key_json: String,
    /// `insert`, `update`, `upsert` (no `diff`: insert and update look the
    /// same) or `delete`.
    pub op: String,
    pub updated: Option<String>,
    pub mvcc_timestamp: Option<String>,
    pub pg_xid: Option<u64>,
    /// Rows: the `after` columns. Deletes: the `before` columns, kept only
    /// when that version was itself marked archived.
    pub columns: Option<Vec<(String, String)>>,
}

type Object = std::collections::HashMap<String, Box<serde_json::value::RawValue>>;

fn object(text: &str) -> Option<Object> {
    serde_json::from_str(text).ok()
}

/// A column's sent text in comparable form: a JSON string by its value,
/// anything else exactly as written.
fn comparable(text: &str) -> String {
    match serde_json::from_str::<String>(text) {
        Ok(s) => format!("string {s}"),
        Err(_) => text.to_owned(),
    }
}

fn sorted_columns(o: &Object, skip: &[&str]) -> Vec<(String, String)> {
    let mut c: Vec<(String, String)> = o
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), comparable(v.get())))
        .collect();
    c.sort();
    c
}

fn string_field(o: &Object, name: &str) -> Option<String> {
    o.get(name).and_then(|v| {
        serde_json::from_str::<Option<String>>(v.get())
            .ok()
            .flatten()
    })
}

fn is_archived(o: &Object) -> bool {
    o.get("archived").map(|v| v.get()) == Some("true")
}

/// Every row event of `records` in `partition`, in offset order, stated
/// from its JSON: `columns` holds the version it carries (a row's `after`,
/// a delete's `before`) only when that version was marked archived.
fn stated(records: &[OwnedRecord], partition: i32) -> Vec<Expect> {
    let mut out: Vec<(Expect, Option<Object>, &[&str])> = Vec::new();
    for r in records.iter().filter(|r| r.partition == partition) {
        let (Some(key), Some(value)) = (&r.key, &r.value) else {
            continue;
        };
        let Some(top) = object(std::str::from_utf8(value).expect("utf-8")) else {
            continue;
        };
        let expect = |op: &str, meta: &Object, columns| Expect {
            partition: r.partition,
            offset: r.offset,
            key_json: String::from_utf8(key.clone()).expect("utf-8 key"),
            op: op.to_owned(),
            updated: string_field(meta, "updated"),
            mvcc_timestamp: string_field(meta, "mvcc_timestamp"),
            pg_xid: string_field(meta, "pg_xid").map(|x| x.parse().expect("pg_xid")),
            columns,
        };
        if let Some(crdb) = top.get("__crdb__") {
            // Bare envelope (CDC query): the columns at the top level, the
            // metadata under `__crdb__`, the op in the projected `op` column.
            let meta = object(crdb.get()).expect("__crdb__ object");
            let op = string_field(&top, "op").unwrap_or_else(|| "upsert".into());
            let columns = (op != "delete").then(|| top.clone());
            out.push((expect(&op, &meta, None), columns, &["__crdb__", "op"]));
        } else if let Some(after) = top.get("after") {
            // Wrapped envelope: `after` null is a delete; `before` present
            // (the `diff` option) tells an insert (null) from an update.
            let after = object(after.get());
            let before = top.get("before").map(|b| object(b.get()));
            let op = match (&after, &before) {
                (None, _) => "delete",
                (Some(_), None) => "upsert",
                (Some(_), Some(None)) => "insert",
                (Some(_), Some(Some(_))) => "update",
            };
            let kept = if op == "delete" {
                before.flatten()
            } else {
                after
            };
            out.push((expect(op, &top, None), kept, &[]));
        }
    }
    out.into_iter()
        .map(|(mut e, columns, skip)| {
            e.columns = columns
                .filter(is_archived)
                .map(|c| sorted_columns(&c, skip));
            e
        })
        .collect()
}

fn observed(meta: &RecordMeta, op: &str, columns: Option<&[(String, Value)]>) -> Expect {
    Expect {
        partition: meta.partition,
        offset: meta.offset,
        key_json: meta.key_json.clone(),
        op: op.to_owned(),
        updated: meta.updated.map(|h| h.to_string()),
        mvcc_timestamp: meta.mvcc_timestamp.map(|h| h.to_string()),
        pg_xid: meta.pg_xid,
        columns: columns.map(|c| {
            let mut c: Vec<(String, String)> = c
                .iter()
                .map(|(k, v)| (k.clone(), comparable(&v.to_json_text())))
                .collect();
            c.sort();
            c
        }),
    }
}

impl PartialEq<Expect> for ArchivedRow {
    fn eq(&self, e: &Expect) -> bool {
        let op = serde_json::to_value(self.op).expect("op");
        observed(
            &self.meta,
            op.as_str().expect("op name"),
            Some(&self.columns),
        ) == *e
    }
}

impl PartialEq<Expect> for DeletedRow {
    fn eq(&self, e: &Expect) -> bool {
        observed(&self.meta, "delete", self.before.as_deref()) == *e
    }
}

/// What the delete files must hold for `records`: every delete event, in
/// offset order, with its `before` row when that was marked archived.
pub fn expected_deletes(records: &[OwnedRecord], partition: i32) -> Vec<Expect> {
    stated(records, partition)
        .into_iter()
        .filter(|e| e.op == "delete")
        .collect()
}

/// What the archive must hold for `records`: the versions marked
/// `archived = true` that are not deletes, in offset order.
pub fn expected_rows(records: &[OwnedRecord], partition: i32) -> Vec<Expect> {
    stated(records, partition)
        .into_iter()
        .filter(|e| e.op != "delete" && e.columns.is_some())
        .collect()
}

/// Decodes `r` as a sink with `op_column = "op"` does: the fixtures' CDC
/// query selects `event_op() AS op` (wrapped envelopes are unaffected).
#[allow(clippy::result_large_err)]
pub fn decode_as_fixtures(
    r: &OwnedRecord,
) -> Result<cdc_changefeed::Event, cdc_changefeed::DecodeError> {
    decode_with(&r.as_raw(), &DecodeOptions::with_op_column("op"))
}

/// The HLC wall time (ns) the PostgreSQL messages below count from.
pub const BASE: i64 = 1_760_000_000_000_000_000;

/// One PostgreSQL changefeed message (the wrapped envelope pg-changefeed writes).
pub fn pg(
    topic: &str,
    offset: i64,
    key: i64,
    xid: u64,
    updated: i64,
    archived: bool,
) -> OwnedRecord {
    let value = format!(
        r#"{{"after": {{"archived": {archived}, "id": {key}, "version": {offset}}}, "before": null, "pg_lsn": "0/16B{xid:04X}", "pg_xid": "{xid}", "updated": "{}.0000000000"}}"#,
        BASE + updated
    );
    OwnedRecord {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        key: Some(format!("[{key}]").into_bytes()),
        value: Some(value.into_bytes()),
    }
}

/// A resolved message on partition 0.
pub fn resolved(topic: &str, offset: i64, at: i64) -> OwnedRecord {
    OwnedRecord {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        key: None,
        value: Some(format!(r#"{{"resolved": "{}.0000000000"}}"#, BASE + at).into_bytes()),
    }
}
