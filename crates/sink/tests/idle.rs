//! Idle partitions: resolved messages with no rows. By default they move
//! the watermark through the partition's idle progress object without
//! growing the chain (one object per partition, not one checkpoint per
//! `resolved_checkpoint_interval`), and the chain stays exactly what it
//! would be: the next checkpoint starts at the chain's end + 1 and covers
//! the idle range. With `idle_checkpoint_interval = 0s` every advancing
//! resolved-only range gets a rate-limited checkpoint.

mod common;

use std::time::Duration;

use cdc_changefeed::Hlc;
use cdc_common::storage::ArchiveStore;
use cdc_sink::SinkConfig;
use common::*;
use tokio_util::sync::CancellationToken;

fn hlc(at: i64) -> Option<Hlc> {
    Some(Hlc::new(BASE + at, 0))
}

/// Polls `what` until it returns `want` (or 20 s pass); returns the last value.
async fn wait_for<T: PartialEq, F: std::future::Future<Output = T>>(
    want: T,
    mut what: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = what().await;
        if got == want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_partitions_move_the_watermark_without_growing_the_chain() {
    let topic = cdc_tests::unique("idle");
    cdc_tests::create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let cfg = SinkConfig {
        flush_age: Duration::from_millis(100),
        resolved_checkpoint_interval: Duration::from_millis(300),
        ..config(&topic, storage)
    };
    let t = topic.as_str();
    let start = |cfg: SinkConfig| {
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { cdc_sink::run(&cfg, cancel).await }
        });
        (cancel, task)
    };
    let (cancel, task) = start(cfg.clone());
    // A row and a resolved timestamp covering it: the chain's first
    // checkpoint (offsets 0..=1, or 0..=0 if the age flush came between
    // them; the resolved message then goes to the idle progress).
    produce(&[pg(t, 0, 1, 700, 1, true), resolved(t, 1, 2)]).await;
    let watermark = || async { cdc_checkpoint::watermark(&store, t).await.unwrap() };
    assert_eq!(wait_for(hlc(2), watermark).await, hlc(2));
    let first = cdc_checkpoint::read_chain(&store, t, 0).await.unwrap();
    let end = first.end().expect("the row's checkpoint");
    assert_eq!(first.start(), Some(0));
    // 30 advancing resolved messages over ~3 s (offsets 2..=31): the
    // watermark follows them, the chain does not grow.
    for i in 0..30 {
        produce(&[resolved(t, 2 + i, 3 + i)]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wait_for(hlc(32), watermark).await, hlc(32));
    let idle = cdc_checkpoint::read_idle_progress(&store, t, 0)
        .await
        .unwrap()
        .expect("an idle progress object");
    assert_eq!((idle.base_last_offset, idle.last_offset), (end, 31));
    assert_eq!(idle.resolved, hlc(32).unwrap());
    let chain = cdc_checkpoint::read_chain(&store, t, 0).await.unwrap();
    assert_eq!(chain, first, "resolved-only traffic added checkpoints");
    // A stop writes the idle range as a real checkpoint, contiguous with
    // the chain.
    cancel.cancel();
    task.await.unwrap().unwrap();
    let chain = cdc_checkpoint::read_chain(&store, t, 0).await.unwrap();
    assert_eq!(
        chain.checkpoints.len(),
        first.checkpoints.len() + 1,
        "{:?}",
        chain.checkpoints
    );
    let idle_cp = chain.last().unwrap();
    assert_eq!((idle_cp.first_offset, idle_cp.last_offset), (end + 1, 31));
    assert_eq!(idle_cp.counts.resolved, (31 - end) as u64);
    assert_eq!(chain.resolved(), hlc(32));

    // A restart, more idle traffic, then a row: the row's checkpoint
    // starts right after the chain and covers the idle range before it.
    let (cancel, task) = start(cfg);
    for i in 0..10 {
        produce(&[resolved(t, 32 + i, 40 + i)]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wait_for(hlc(49), watermark).await, hlc(49));
    produce(&[pg(t, 42, 2, 701, 50, true), resolved(t, 43, 51)]).await;
    assert_eq!(wait_for(hlc(51), watermark).await, hlc(51));
    cancel.cancel();
    task.await.unwrap().unwrap();
    let chain = cdc_checkpoint::read_chain(&store, t, 0).await.unwrap();
    assert_eq!(chain.end(), Some(43));
    let row_cp = chain
        .checkpoints
        .iter()
        .find(|c| c.first_offset <= 42 && 42 <= c.last_offset)
        .expect("the row's checkpoint");
    assert_eq!(row_cp.first_offset, 32, "{:?}", chain.checkpoints);
    assert_eq!(row_cp.counts.rows_archived, 1);
    assert!(row_cp.counts.resolved >= 10, "{row_cp:?}");
    assert_eq!(cdc_checkpoint::watermark(&store, t).await.unwrap(), hlc(51));
    // Both rows are archived, as produced.
    let archive = read_archive(&store, t, 1).await;
    let rows: Vec<i64> = archive[0].1.iter().map(|r| r.meta.offset).collect();
    assert_eq!(rows, vec![0, 42]);
}

/// With `idle_checkpoint_interval = 0s` (every resolved-only range goes to
/// the chain): a segment-less checkpoint only when the resolved timestamp
/// advanced and `resolved_checkpoint_interval` passed, instead of one per
/// `flush_age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_only_checkpoints_are_rate_limited() {
    let topic = cdc_tests::unique("resrate");
    cdc_tests::create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let cfg = SinkConfig {
        flush_age: Duration::from_millis(100),
        resolved_checkpoint_interval: Duration::from_secs(3),
        idle_checkpoint_interval: Duration::ZERO,
        ..config(&topic, storage)
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (cfg, cancel) = (cfg.clone(), cancel.clone());
        async move { cdc_sink::run(&cfg, cancel).await }
    });
    // 20 advancing resolved messages over ~4 s.
    let t = topic.as_str();
    for i in 0..20 {
        produce(&[resolved(t, i, i)]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = Some(format!("{}.0000000000", BASE + 19).parse().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let chain = loop {
        let chain = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
        if chain.resolved() == last || tokio::time::Instant::now() > deadline {
            break chain;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(chain.resolved(), last);
    let n = chain.checkpoints.len();
    // ~4 s of traffic at one per 3 s (the first at once): 2 or 3, where
    // one per flush_age would have been about 20.
    assert!(
        (2..=3).contains(&n),
        "{n} checkpoints: {:?}",
        chain.checkpoints
    );
    assert!(chain.checkpoints.iter().all(|c| c.segment.is_none()));
    let times: Vec<chrono::DateTime<chrono::Utc>> = chain
        .checkpoints
        .iter()
        .map(|c| c.created_at.parse().unwrap())
        .collect();
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= chrono::Duration::milliseconds(2500),
            "{times:?}"
        );
    }
    // Resolved messages that do not advance are not worth a checkpoint,
    // however long they wait.
    for i in 20..30 {
        produce(&[resolved(t, i, 19)]).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(after.checkpoints.len(), n, "{:?}", after.checkpoints);
}
