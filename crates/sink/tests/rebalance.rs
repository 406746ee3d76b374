//! Two sinks in one consumer group, the second joining in the middle of
//! consumption while the first holds buffered, unflushed events of every
//! partition: the partitions that move are re-read by their new owner
//! from the chain's end, the first sink's buffered work for them is
//! abandoned (never written: no checkpoint, no segment, no conflict), and
//! in the end every partition's chain covers every offset exactly once,
//! with every archivable event in exactly one checkpointed segment.
//! (Its own test binary: the metrics recorder is global to the process.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::time::Duration;

use cdc_changefeed::line::OwnedRecord;
use cdc_common::storage::ArchiveStore;
use cdc_sink::SinkConfig;
use common::*;
use tokio_util::sync::CancellationToken;

const PARTS: i32 = 4;
/// Events per partition produced before the second sink joins, and after.
const HALF: i64 = 60;

fn row(topic: &str, partition: i32, offset: i64) -> OwnedRecord {
    let archived = offset % 5 != 0;
    OwnedRecord {
        topic: topic.to_owned(),
        partition,
        offset,
        key: Some(format!("[{partition}, {offset}]").into_bytes()),
        value: Some(
            format!(
                r#"{{"after": {{"amount": {offset}.25, "archived": {archived}, "id": {offset}, "p": {partition}}}, "mvcc_timestamp": "{t}.0000000000", "updated": "{t}.0000000000"}}"#,
                t = 1_750_000_000_000_000_000i64 + offset
            )
            .into_bytes(),
        ),
    }
}

fn records(topic: &str, range: std::ops::Range<i64>) -> Vec<OwnedRecord> {
    (0..PARTS)
        .flat_map(|p| range.clone().map(move |o| (p, o)))
        .map(|(p, o)| row(topic, p, o))
        .collect()
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn events_total(port: u16, table: &str) -> f64 {
    let label = format!("table=\"{table}\"");
    scrape(port)
        .lines()
        .find(|l| l.starts_with("cdc_sink_events_total{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Writers of each partition's checkpoints.
async fn writers(store: &ArchiveStore, table: &str) -> BTreeMap<i32, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for p in 0..PARTS {
        let chain = cdc_checkpoint::read_chain(store, table, p).await.unwrap();
        out.insert(
            p,
            chain
                .checkpoints
                .iter()
                .map(|c| c.writer_id.clone())
                .collect(),
        );
    }
    out
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_the_first_sink_holds_buffers_loses_and_duplicates_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cdc_common::telemetry::serve_metrics(([127, 0, 0, 1], port).into()).unwrap();
    let topic = cdc_tests::unique("midrebal");
    cdc_tests::create_topic(&topic, PARTS).await;
    produce(&records(&topic, 0..HALF)).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let base = config(&topic, storage);
    let cancel = CancellationToken::new();
    let spawn = |cfg: SinkConfig| {
        let cancel = cancel.clone();
        tokio::spawn(async move { cdc_sink::run(&cfg, cancel).await })
    };
    // Sink A never flushes on its own for 20 s: whatever it holds when
    // the group rebalances is buffered, not checkpointed.
    let a = spawn(SinkConfig {
        writer_id: Some("sink-a".into()),
        flush_age: Duration::from_secs(20),
        flush_rows: 1_000_000,
        resolved_checkpoint_interval: Duration::from_secs(3600),
        ..base.clone()
    });
    let all_first = f64::from(PARTS) * HALF as f64;
    wait_for("sink A buffers the first half", || async {
        events_total(port, &topic) >= all_first
    })
    .await;
    assert_eq!(
        writers(&store, &topic)
            .await
            .values()
            .map(BTreeSet::len)
            .sum::<usize>(),
        0,
        "sink A has checkpointed nothing: its events are buffered"
    );

    // Sink B joins: the group rebalances in the middle of consumption.
    let b = spawn(SinkConfig {
        writer_id: Some("sink-b".into()),
        ..base.clone()
    });
    wait_for("both sinks in the group", || async {
        group_members(&base.group_id) == 2
    })
    .await;
    // Partitions moved to B, which re-reads them from the (empty) chain.
    wait_for("sink B checkpoints a partition it took over", || async {
        writers(&store, &topic)
            .await
            .values()
            .any(|w| w.contains("sink-b"))
    })
    .await;
    // Still nothing by A: its buffers for those partitions were abandoned.
    assert!(writers(&store, &topic)
        .await
        .values()
        .all(|w| !w.contains("sink-a")));
    produce(&records(&topic, HALF..2 * HALF)).await;
    wait_archived(&store, &topic, &topic, PARTS).await;
    cancel.cancel();
    let (sa, sb) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert!(sa.stopped.is_empty() && sb.stopped.is_empty());

    // Every offset exactly once, every archivable event in exactly one
    // checkpointed segment, in order.
    let archive = read_archive(&store, &topic, PARTS).await;
    for (p, (chain, rows)) in archive.iter().enumerate() {
        assert_eq!(
            (chain.start(), chain.end()),
            (Some(0), Some(2 * HALF - 1)),
            "p{p}"
        );
        let events: u64 = chain.checkpoints.iter().map(|c| c.counts.events).sum();
        assert_eq!(events, 2 * HALF as u64, "p{p}: no offset claimed twice");
        let want: Vec<i64> = (0..2 * HALF).filter(|o| o % 5 != 0).collect();
        assert_eq!(
            rows.iter().map(|r| r.meta.offset).collect::<Vec<_>>(),
            want,
            "p{p}"
        );
    }
    // Each partition has one owner after the rebalance; both own some.
    let w = writers(&store, &topic).await;
    let owned_by = |id: &str| w.values().filter(|s| s.contains(id)).count();
    assert!(w.values().all(|s| s.len() == 1), "{w:?}");
    assert!(owned_by("sink-a") > 0 && owned_by("sink-b") > 0, "{w:?}");
    // A's abandoned work was never written: no conflict, no segment
    // without a checkpoint; its events were re-read instead.
    assert_eq!((sa.conflicts, sb.conflicts), (0, 0));
    assert_eq!(
        cdc_checkpoint::orphans(&store, &topic).await.unwrap(),
        vec![]
    );
    let archivable = (PARTS as u64) * (2 * HALF as u64 * 4 / 5);
    assert_eq!(sa.rows + sb.rows, archivable);
    assert!(
        events_total(port, &topic) >= all_first + f64::from(PARTS) * 2.0 * HALF as f64,
        "the abandoned events were read again by their new owner"
    );
}
