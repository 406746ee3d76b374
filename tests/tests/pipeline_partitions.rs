//! A topic whose partition count grows while the PostgreSQL changefeed and
//! the sink run (a common operation: users add partitions to spread load):
//! no event is lost, the new partitions get keys and resolved timestamps,
//! checkpoints record the new count, and the archive watermark covers the
//! new partitions before it passes anything written after the growth,
//! even while no sink consumes them yet.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Pipeline;

const TABLE: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, created date NOT NULL,
       note text, archived bool NOT NULL DEFAULT false);
       ALTER TABLE {t} REPLICA IDENTITY FULL;";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_added_while_running_lose_nothing_and_join_the_watermark() {
    let mut p = Pipeline::create("pp_grow", TABLE, 2, 500).await;
    // The sink notices the new partitions late (no metadata refresh, no
    // group check for an hour): until it is restarted it consumes only the
    // two old partitions.
    p.sink_cfg.group_check_interval = Duration::from_secs(3600);
    p.sink_cfg.kafka.insert(
        "topic.metadata.refresh.interval.ms".into(),
        "3600000".into(),
    );
    p.start_feed().await;
    p.start_sink();
    p.client
        .batch_execute(&format!(
            "INSERT INTO {t} (id, created, note) SELECT g, current_date - 30, 'n' || g
             FROM generate_series(1, 6000) g",
            t = p.qt
        ))
        .await
        .unwrap();
    // Before: two partitions.
    p.client
        .batch_execute(&format!(
            "UPDATE {t} SET archived = true WHERE id <= 2000",
            t = p.qt
        ))
        .await
        .unwrap();
    p.wait_archived(p.db_now().await).await;
    assert_eq!(
        cdc_checkpoint::progress(&p.archive, &p.table)
            .await
            .unwrap()
            .partitions,
        2
    );

    // The topic grows to five partitions while rows keep being marked, in
    // many transactions spread over a few seconds.
    let topic = p.sink_cfg.topics[0].name.clone();
    cdc_tests::grow_topic(&topic, 5).await;
    let grown = Instant::now();
    for lo in (2001..=6000).step_by(250) {
        p.client
            .batch_execute(&format!(
                "UPDATE {t} SET archived = true WHERE id BETWEEN {lo} AND {hi}",
                t = p.qt,
                hi = lo + 249
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = p.db_now().await;
    let target = after.timestamp_nanos_opt().unwrap();

    // The old partitions' chains get past the last write, and record the
    // topic's new count: the watermark waits for the three partitions
    // that nobody consumes yet instead of passing over them.
    let start = Instant::now();
    loop {
        let progress = cdc_checkpoint::progress(&p.archive, &p.table)
            .await
            .unwrap();
        let old_past = (0..2).all(|q| {
            progress
                .resolved
                .get(&q)
                .copied()
                .flatten()
                .is_some_and(|r| r.wall > target)
        });
        if old_past {
            assert_eq!(progress.partitions, 5, "{progress:?}");
            assert!(
                progress.watermark().is_none_or(|w| w.wall <= target),
                "the watermark passed rows of partitions no sink consumes: {progress:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < common::LIMIT,
            "the old partitions never passed the last write"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A restarted sink consumes all five partitions; the archive catches up.
    p.stop_sink().await;
    p.start_sink();
    p.wait_archived(after).await;
    eprintln!(
        "archive past the last write {:.1}s after the topic grew",
        grown.elapsed().as_secs_f64()
    );
    // The watermark that passed `after` is over all five partitions: each
    // has a chain whose resolved timestamp is past it, and the chains of
    // the old partitions record the new count.
    let progress = cdc_checkpoint::progress(&p.archive, &p.table)
        .await
        .unwrap();
    assert_eq!(progress.partitions, 5, "{progress:?}");
    let target = after.timestamp_nanos_opt().unwrap();
    for part in 0..5 {
        let chain = cdc_checkpoint::read_chain(&p.archive, &p.table, part)
            .await
            .expect("a contiguous chain");
        let last = chain.last().expect("a checkpoint in every partition");
        assert_eq!(last.partitions, 5, "p{part}");
        assert!(last.resolved.is_some_and(|r| r.wall > target), "p{part}");
    }
    // Nothing lost: every marked row is archived, and keys reached the new
    // partitions.
    let archived: BTreeSet<i64> = p
        .archived_text(&["id"])
        .await
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(archived, (1..=6000).collect::<BTreeSet<i64>>());
    let mut new_partition_rows = 0;
    for part in 2..5 {
        let chain = cdc_checkpoint::read_chain(&p.archive, &p.table, part)
            .await
            .unwrap();
        new_partition_rows += chain
            .checkpoints
            .iter()
            .map(|c| c.counts.rows_archived)
            .sum::<u64>();
    }
    assert!(new_partition_rows > 0, "no key reached the new partitions");
    p.stop().await;
}
