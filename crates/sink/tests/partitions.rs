//! Quarantine, stopped partitions and rebalances, against the real broker.

mod common;

use std::time::Duration;

use cdc_changefeed::line::OwnedRecord;
use cdc_changefeed::Value;
use cdc_checkpoint::{layout, Checkpoint, Counts};
use cdc_common::storage::ArchiveStore;
use cdc_sink::StopReason;
use common::*;
use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

fn rec(topic: &str, partition: i32, offset: i64, key: Option<&str>, value: &str) -> OwnedRecord {
    OwnedRecord {
        topic: topic.to_owned(),
        partition,
        offset,
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
    }
}

fn row(topic: &str, partition: i32, offset: i64, amount: &str, archived: bool) -> OwnedRecord {
    let value = format!(
        r#"{{"after": {{"amount": {amount}, "archived": {archived}, "id": {offset}}}, "updated": "{}.0000000001"}}"#,
        1_750_000_000_000_000_000i64 + offset
    );
    rec(
        topic,
        partition,
        offset,
        Some(&format!("[{offset}]")),
        &value,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_is_quarantined_and_its_neighbours_archived() {
    let topic = cdc_tests::unique("quar");
    cdc_tests::create_topic(&topic, 1).await;
    let bad = "{\"after\": {\"amount\": 1, ";
    let records = vec![
        row(&topic, 0, 0, "-15.50", true),
        rec(&topic, 0, 1, Some("[1]"), bad),
        row(&topic, 0, 2, "1250.00", true),
        rec(
            &topic,
            0,
            3,
            None,
            r#"{"resolved":"1750000000000000009.0000000000"}"#,
        ),
    ];
    produce(&records).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let summary = run_until_archived(&config(&topic, storage), &store, &topic, 1).await;
    assert_eq!(summary.quarantined, 1);
    assert!(summary.stopped.is_empty());

    let archive = read_archive(&store, &topic, 1).await;
    let (chain, rows) = &archive[0];
    assert_eq!((chain.start(), chain.end()), (Some(0), Some(3)));
    assert_eq!(
        rows.iter().map(|r| r.meta.offset).collect::<Vec<_>>(),
        vec![0, 2]
    );
    assert_eq!(
        rows[0].columns[0],
        ("amount".to_owned(), Value::Number("-15.50".into()))
    );
    assert_eq!(
        rows[1].columns[0],
        ("amount".to_owned(), Value::Number("1250.00".into()))
    );
    let quarantined: u64 = chain.checkpoints.iter().map(|c| c.counts.quarantined).sum();
    assert_eq!(quarantined, 1);
    assert_eq!(
        chain.resolved(),
        Some("1750000000000000009.0000000000".parse().unwrap())
    );

    let q = store
        .store
        .get(&store.path(&layout::quarantine_path(&topic, 0, 1)))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let q: serde_json::Value = serde_json::from_slice(&q).unwrap();
    assert_eq!(q["offset"], 1);
    assert_eq!(q["partition"], 0);
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD
        .decode(q["value_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(value, bad.as_bytes());
    assert_eq!(
        q["key_base64"],
        base64::engine::general_purpose::STANDARD.encode("[1]")
    );
    assert!(!q["error"].as_str().unwrap().is_empty());
}

fn fake_checkpoint(table: &str, partition: i32, first: i64, last: i64) -> Checkpoint {
    Checkpoint {
        counts: Counts {
            events: (last - first + 1) as u64,
            ..Counts::default()
        },
        writer_id: "by-hand".into(),
        created_at: cdc_checkpoint::now_rfc3339(),
        ..cdc_checkpoint::fixtures::checkpoint(table, partition, first, last)
    }
}

/// A chain that claims offsets Kafka never had stops its partition (and
/// only it): partition 1 is archived normally meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_ahead_of_kafka_stops_only_that_partition() {
    let topic = cdc_tests::unique("ahead");
    cdc_tests::create_topic(&topic, 2).await;
    let mut records: Vec<OwnedRecord> = (0..10).map(|o| row(&topic, 0, o, "1.00", true)).collect();
    records.extend((0..10).map(|o| row(&topic, 1, o, "2.00", true)));
    produce(&records).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    cdc_checkpoint::create(&store, &fake_checkpoint(&topic, 0, 0, 100))
        .await
        .unwrap();

    let cancel = CancellationToken::new();
    let cfg = config(&topic, storage);
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { cdc_sink::run(&cfg, cancel).await }
    });
    // Partition 1 archived means both partitions were loaded.
    for _ in 0..300 {
        if cdc_checkpoint::read_chain(&store, &topic, 1)
            .await
            .unwrap()
            .end()
            == Some(9)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.stopped.len(), 1, "{:?}", summary.stopped);
    let (t, p, reason, msg) = &summary.stopped[0];
    assert_eq!(
        (t.as_str(), *p, *reason),
        (topic.as_str(), 0, StopReason::ChainAhead)
    );
    assert!(msg.contains("100"), "{msg}");
    // Nothing was added to the stopped partition's chain.
    let chain = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    assert_eq!(chain.checkpoints.len(), 1);
    assert_eq!(
        cdc_checkpoint::read_chain(&store, &topic, 1)
            .await
            .unwrap()
            .end(),
        Some(9)
    );
}

/// Whether `writer` wrote a checkpoint of any of the topic's `parts`
/// partitions.
async fn has_written(store: &ArchiveStore, topic: &str, parts: i32, writer: &str) -> bool {
    for p in 0..parts {
        let chain = cdc_checkpoint::read_chain(store, topic, p).await.unwrap();
        if chain.checkpoints.iter().any(|c| c.writer_id == writer) {
            return true;
        }
    }
    false
}

/// Two sinks in one group, the second joining mid-stream (a rebalance):
/// the chains verify (no overlap, no gap), every archivable event is in
/// exactly one segment, and both sinks wrote checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_share_partitions_through_a_rebalance() {
    const PARTS: i32 = 4;
    const PER: i64 = 300;
    let topic = cdc_tests::unique("rebal");
    cdc_tests::create_topic(&topic, PARTS).await;
    let half = |range: std::ops::Range<i64>| {
        let mut records = Vec::new();
        for p in 0..PARTS {
            records.extend(
                range
                    .clone()
                    .map(|o| row(&topic, p, o, &format!("{o}.25"), o % 5 != 0)),
            );
        }
        records
    };
    produce(&half(0..PER / 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let mut cfg = config(&topic, storage);
    cfg.flush_rows = 20;

    let cancel = CancellationToken::new();
    let spawn = |cfg: cdc_sink::SinkConfig, id: &str| {
        let cancel = cancel.clone();
        let cfg = cdc_sink::SinkConfig {
            writer_id: Some(id.to_owned()),
            ..cfg
        };
        tokio::spawn(async move { cdc_sink::run(&cfg, cancel).await })
    };
    let a = spawn(cfg.clone(), "sink-a");
    wait_archived(&store, &topic, &topic, PARTS).await;
    // The second sink joins: the group rebalances; then more data arrives.
    let b = spawn(cfg.clone(), "sink-b");
    for _ in 0..300 {
        if group_members(&cfg.group_id) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The broker lists the newcomer before the first sink has given up
    // partitions (that takes it a heartbeat or two), so the second half
    // arrives a slice at a time until the newcomer has archived some: in
    // one burst, the first sink could archive all of it first.
    let mut next = PER / 2;
    while next < PER {
        let end = (next + 10).min(PER);
        produce(&half(next..end)).await;
        next = end;
        if !has_written(&store, &topic, PARTS, "sink-b").await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    wait_archived(&store, &topic, &topic, PARTS).await;
    cancel.cancel();
    let (sa, sb) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert!(sa.stopped.is_empty() && sb.stopped.is_empty());
    let archive = read_archive(&store, &topic, PARTS).await;
    let mut writers = std::collections::BTreeSet::new();
    for (p, (chain, rows)) in archive.iter().enumerate() {
        assert_eq!(
            (chain.start(), chain.end()),
            (Some(0), Some(PER - 1)),
            "p{p}"
        );
        let want: Vec<i64> = (0..PER).filter(|o| o % 5 != 0).collect();
        assert_eq!(
            rows.iter().map(|r| r.meta.offset).collect::<Vec<_>>(),
            want,
            "p{p}"
        );
        writers.extend(chain.checkpoints.iter().map(|c| c.writer_id.clone()));
    }
    assert_eq!(sa.rows + sb.rows, (PARTS as u64) * (PER as u64 * 4 / 5));
    assert_eq!(
        writers.into_iter().collect::<Vec<_>>(),
        vec!["sink-a", "sink-b"]
    );
}

/// Offsets that expired from Kafka before they were archived (retention,
/// or an operator's DeleteRecords, raised the low watermark above the
/// chain's end + 1): the partition stops loudly with `offset_gap`, its
/// chain is not extended past the gap, and the other partition carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_offsets_stop_the_partition_with_an_offset_gap() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let topic = cdc_tests::unique("expired");
    cdc_tests::create_topic(&topic, 2).await;
    let first: Vec<OwnedRecord> = (0..2)
        .flat_map(|p| (0..10).map(move |o| (p, o)))
        .map(|(p, o)| row(&topic, p, o, "1.00", true))
        .collect();
    produce(&first).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let cfg = config(&topic, storage);
    run_until_archived(&cfg, &store, &topic, 2).await;

    // While no sink runs: 20 more offsets per partition, and partition 0
    // loses its offsets below 15 (10..14 were never archived).
    let second: Vec<OwnedRecord> = (0..2)
        .flat_map(|p| (10..30).map(move |o| (p, o)))
        .map(|(p, o)| row(&topic, p, o, "2.00", true))
        .collect();
    produce(&second).await;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(15))
        .unwrap();
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("DeleteRecords");
    assert_eq!(watermarks(&topic, 0), (15, 30));

    // Both partitions are loaded on assignment: once partition 1 is
    // archived, partition 0 has been looked at too.
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (cancel, cfg) = (cancel.clone(), cfg.clone());
        async move { cdc_sink::run(&cfg, cancel).await }
    });
    for _ in 0..300 {
        let end = cdc_checkpoint::read_chain(&store, &topic, 1)
            .await
            .unwrap()
            .end();
        if end == Some(29) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.stopped.len(), 1, "{:?}", summary.stopped);
    let (t, p, reason, msg) = &summary.stopped[0];
    assert_eq!(
        (t.as_str(), *p, *reason),
        (topic.as_str(), 0, StopReason::OffsetGap)
    );
    assert!(msg.contains("15"), "{msg}");
    let p0 = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    assert_eq!(p0.end(), Some(9), "nothing archived across the gap");
    let p1 = cdc_checkpoint::read_chain(&store, &topic, 1).await.unwrap();
    assert_eq!(p1.end(), Some(29));
}

/// A topic deleted and recreated under the same name starts again at
/// offset 0; once it has grown past where the old chain ended, resuming
/// after the chain would skip its first messages as "already archived".
/// The sink checks the message at the chain's last offset and stops the
/// partition (`topic_changed`) instead; the old chain stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_refused_not_skipped() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;

    let topic = cdc_tests::unique("recreated");
    cdc_tests::create_topic(&topic, 1).await;
    let old: Vec<OwnedRecord> = (0..10).map(|o| row(&topic, 0, o, "1.00", true)).collect();
    produce(&old).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let cfg = config(&topic, storage);
    run_until_archived(&cfg, &store, &topic, 1).await;
    let chain = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    assert_eq!(chain.end(), Some(9));
    assert!(chain.last().unwrap().last_message.is_some());

    // Restarted on the same topic: resumes (the check passes).
    let summary = run_until_archived(&cfg, &store, &topic, 1).await;
    assert!(summary.stopped.is_empty(), "{:?}", summary.stopped);

    // The topic is deleted and created again, and grows past offset 9
    // with other messages.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .create()
        .unwrap();
    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
    let mut created = false;
    for _ in 0..100 {
        let t =
            rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(1));
        let r = admin
            .create_topics([&t], &AdminOptions::new())
            .await
            .unwrap();
        if r.iter().all(Result::is_ok) {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(created, "the topic could not be created again");
    let new: Vec<OwnedRecord> = (0..20).map(|o| row(&topic, 0, o, "9.99", true)).collect();
    produce(&new).await;

    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (cancel, cfg) = (cancel.clone(), cfg.clone());
        async move { cdc_sink::run(&cfg, cancel).await }
    });
    // The partition is looked at when it is assigned.
    tokio::time::sleep(Duration::from_secs(5)).await;
    cancel.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.stopped.len(), 1, "{:?}", summary.stopped);
    let (_, p, reason, msg) = &summary.stopped[0];
    assert_eq!((*p, *reason), (0, StopReason::TopicChanged));
    assert!(msg.contains("recreated"), "{msg}");
    let chain = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    assert_eq!(
        chain.end(),
        Some(9),
        "nothing of the new topic was archived"
    );
}
