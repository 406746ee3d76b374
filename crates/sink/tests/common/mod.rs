//! Helpers shared by the sink's integration tests: produce records to the
//! stack's broker, run the sink until a topic is fully checkpointed, read
//! the archive back (verifying every segment against its checkpoint).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use cdc_changefeed::line::{parse_line, OwnedRecord};
use cdc_changefeed::{decode_with, DecodeOptions, Event, Value};
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

/// What the delete files must hold for `records`: every delete event, in
/// offset order, with its `before` row when that was marked archived.
pub fn expected_deletes(records: &[OwnedRecord], partition: i32) -> Vec<DeletedRow> {
    records
        .iter()
        .filter(|r| r.partition == partition)
        .filter_map(|r| match decode_as_fixtures(r) {
            Ok(Event::Row(ev)) if ev.op == cdc_changefeed::Op::Delete || ev.after.is_none() => {
                Some(DeletedRow {
                    meta: RecordMeta {
                        key_json: ev.meta.key_json,
                        updated: ev.meta.updated,
                        mvcc_timestamp: ev.meta.mvcc_timestamp,
                        pg_xid: ev.meta.pg_xid,
                        topic: ev.meta.topic,
                        partition: ev.meta.partition,
                        offset: ev.meta.offset,
                    },
                    before: ev
                        .before
                        .filter(|b| b.get("archived") == Some(&Value::Bool(true)))
                        .map(|b| b.0),
                })
            }
            _ => None,
        })
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

/// What the archive must hold for `records`: rows marked `archived = true`
/// that are not deletes, in offset order per partition.
pub fn expected_rows(records: &[OwnedRecord], partition: i32) -> Vec<ArchivedRow> {
    records
        .iter()
        .filter(|r| r.partition == partition)
        .filter_map(|r| match decode_as_fixtures(r) {
            Ok(Event::Row(ev)) if ev.op != cdc_changefeed::Op::Delete => {
                let after = ev.after?;
                (after.get("archived") == Some(&Value::Bool(true))).then_some(ArchivedRow {
                    op: ev.op,
                    meta: RecordMeta {
                        key_json: ev.meta.key_json,
                        updated: ev.meta.updated,
                        mvcc_timestamp: ev.meta.mvcc_timestamp,
                        pg_xid: ev.meta.pg_xid,
                        topic: ev.meta.topic,
                        partition: ev.meta.partition,
                        offset: ev.meta.offset,
                    },
                    columns: after.0,
                })
            }
            _ => None,
        })
        .collect()
}
