//! PostgreSQL changefeed transactions against the real broker: the sink
//! never ends a checkpoint between two events of one source transaction
//! (same `pg_xid`) unless the partition proved the transaction complete,
//! so the purger's `xmin = X AND archived` guard can never delete a version
//! that only a later checkpoint holds.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use cdc_changefeed::line::OwnedRecord;
use cdc_checkpoint::Chain;
use cdc_common::storage::ArchiveStore;
use cdc_sink::SinkConfig;
use common::*;
use tokio_util::sync::CancellationToken;

/// Per checkpoint (chain order): the xids of its rows.
async fn xids_per_checkpoint(store: &ArchiveStore, chain: &Chain) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for c in &chain.checkpoints {
        let mut xids = Vec::new();
        if let Some(seg) = &c.segment {
            let bytes = cdc_checkpoint::verify_segment(store, seg).await.unwrap();
            let decoded = cdc_segment::decode_segment(&bytes).unwrap();
            xids.extend(decoded.rows.iter().map(|r| r.meta.pg_xid.unwrap()));
        }
        out.push(xids);
    }
    out
}

/// No xid's rows in two checkpoints, unless the earlier one declares it
/// `open_tail_xid`.
fn assert_no_split(chain: &Chain, xids: &[Vec<u64>]) {
    let mut first_seen: HashMap<u64, usize> = HashMap::new();
    for (i, list) in xids.iter().enumerate() {
        for x in list {
            let at = *first_seen.entry(*x).or_insert(i);
            if at != i {
                assert!(
                    (at..i).all(|j| chain.checkpoints[j].open_tail_xid == Some(*x)
                        || !xids[j].contains(x)),
                    "transaction {x} split between checkpoints {at} and {i} without open_tail_xid: {xids:?}"
                );
            }
        }
    }
}

fn pg_config(topic: &str, storage: cdc_common::storage::StorageConfig) -> SinkConfig {
    SinkConfig {
        // A flush after every archived row: the row threshold would cut
        // between the two versions of a row if nothing held it back.
        flush_rows: 1,
        ..config(topic, storage)
    }
}

/// Two versions of one row in one transaction, with `flush_rows = 1`; a
/// trailing transaction with no proof is not checkpointed at shutdown, and
/// the next run (after its proof arrives) archives it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_never_split_across_checkpoints() {
    let topic = cdc_tests::unique("pgtx");
    cdc_tests::create_topic(&topic, 1).await;
    let t = topic.as_str();
    let mut records = vec![
        // xid 700: row 1 inserted then updated in the same transaction.
        pg(t, 0, 1, 700, 1, true),
        pg(t, 1, 1, 700, 1, true),
        // xid 701: three rows, one twice, one not marked archived.
        pg(t, 2, 2, 701, 2, true),
        pg(t, 3, 3, 701, 2, false),
        pg(t, 4, 2, 701, 2, true),
        // resolved below 702's updated proves 701 only (as 702 does).
        resolved(t, 5, 2),
        // xid 702: row 4 twice, then a resolved that proves it.
        pg(t, 6, 4, 702, 3, true),
        pg(t, 7, 4, 702, 3, true),
        resolved(t, 8, 3),
        // xid 703: trailing, nothing proves it complete yet.
        pg(t, 9, 5, 703, 4, true),
        pg(t, 10, 5, 703, 4, true),
    ];
    produce(&records).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let cfg = pg_config(&topic, storage);

    // Run until everything provable is checkpointed (chain end 8), then stop.
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (cfg, cancel) = (cfg.clone(), cancel.clone());
        async move { cdc_sink::run(&cfg, cancel).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let end = cdc_checkpoint::read_chain(&store, &topic, 0)
            .await
            .unwrap()
            .end();
        if end == Some(8) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several age ticks with the trailing transaction buffered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cancel.cancel();
    let summary = task.await.unwrap().unwrap();
    assert!(summary.stopped.is_empty());
    let chain = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    assert_eq!(
        chain.end(),
        Some(8),
        "the unproven trailing transaction 703 is not checkpointed, even at shutdown"
    );
    let xids = xids_per_checkpoint(&store, &chain).await;
    assert_no_split(&chain, &xids);
    assert!(chain.checkpoints.iter().all(|c| c.open_tail_xid.is_none()));
    // Every version of 700, 701 and 702 is archived.
    let all: Vec<u64> = xids.iter().flatten().copied().collect();
    assert_eq!(all, vec![700, 700, 701, 701, 702, 702]);
    // With flush_rows = 1 the cuts fall exactly at the transaction boundaries.
    let ranges: Vec<(i64, i64)> = chain
        .checkpoints
        .iter()
        .map(|c| (c.first_offset, c.last_offset))
        .collect();
    assert!(ranges.contains(&(0, 1)), "{ranges:?}");

    // The next owner re-reads 703 from the chain end; its proof arrives.
    let more = vec![resolved(t, 11, 4), pg(t, 12, 6, 704, 5, false)];
    produce(&more).await;
    records.extend(more);
    let summary = run_until_archived(&cfg, &store, &topic, 1).await;
    assert!(summary.stopped.is_empty());
    let chain = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    assert_eq!(chain.end(), Some(12));
    let xids = xids_per_checkpoint(&store, &chain).await;
    assert_no_split(&chain, &xids);
    let all: Vec<u64> = xids.iter().flatten().copied().collect();
    assert_eq!(all, vec![700, 700, 701, 701, 702, 702, 703, 703]);
    // Row versions, field by field, as produced.
    let archive = read_archive(&store, &topic, 1).await;
    assert_eq!(archive[0].1, expected_rows(&records, 0));
}

/// A transaction too large for the memory budget is cut anyway, and the
/// checkpoint says so (`open_tail_xid`) for the purger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_the_memory_budget_is_cut_with_open_tail_xid() {
    let topic = cdc_tests::unique("pgbig");
    cdc_tests::create_topic(&topic, 1).await;
    let t = topic.as_str();
    let mut records: Vec<OwnedRecord> = (0..6).map(|o| pg(t, o, o % 2, 900, 1, true)).collect();
    records.push(pg(t, 6, 7, 901, 2, true));
    records.push(resolved(t, 7, 2));
    produce(&records).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let cfg = SinkConfig {
        // About two rows.
        memory_budget: 2000,
        ..config(&topic, storage)
    };
    run_until_archived(&cfg, &store, &topic, 1).await;
    let chain = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    assert_eq!(chain.end(), Some(7));
    let xids = xids_per_checkpoint(&store, &chain).await;
    assert_no_split(&chain, &xids);
    // 900 had to be cut: every checkpoint holding some of it except the
    // last carries open_tail_xid = 900 (the last one too if it was forced:
    // a forced cut cannot know that the transaction ends there).
    let holding: Vec<usize> = (0..xids.len())
        .filter(|i| xids[*i].contains(&900))
        .collect();
    assert!(holding.len() > 1, "{xids:?}");
    for i in &holding[..holding.len() - 1] {
        assert_eq!(chain.checkpoints[*i].open_tail_xid, Some(900), "{i}");
    }
    // Transaction 901 was never over the budget alone: not flagged.
    assert!(chain
        .checkpoints
        .iter()
        .all(|c| c.open_tail_xid.is_none() || c.open_tail_xid == Some(900)));
    let archive = read_archive(&store, &topic, 1).await;
    assert_eq!(archive[0].1, expected_rows(&records, 0));
}

/// Review finding (liveness): every checkpoint forced inside an open
/// transaction strands that transaction's rows of it (the purger keeps
/// them), so a budget overflow cuts as few held-back tails as it must: the
/// largest first, and only until the sink is back under the budget, not
/// under half of it. Three partitions each hold one unproven transaction
/// (4, 3 and 2 rows of one size r); the budget is 8.5 r, so only the
/// last of the 9 rows to arrive overflows it, whatever the interleaving.
/// Cutting the 4-row tail is enough (5 r left); cutting on to half the
/// budget (4.25 r) would also cut the 3-row one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_overflow_cuts_as_few_open_transactions_as_it_must() {
    let topic = cdc_tests::unique("pgcuts");
    cdc_tests::create_topic(&topic, 3).await;
    let t = topic.as_str();
    let in_partition = |partition: i32, mut r: OwnedRecord| {
        r.partition = partition;
        r
    };
    let mut records = Vec::new();
    for (partition, rows, xid) in [(0, 4, 900), (1, 3, 901), (2, 2, 902)] {
        for o in 0..rows {
            records.push(in_partition(partition, pg(t, o, 1 + o % 2, xid, 1, true)));
        }
    }
    // What the sink will count for them.
    let mut sizes = Vec::new();
    for partition in 0..3 {
        let mut b = cdc_sink::partition::PartitionBuffer::new(
            t.to_owned(),
            t.to_owned(),
            partition,
            3,
            0,
            None,
        );
        for r in records.iter().filter(|r| r.partition == partition) {
            let event = cdc_changefeed::decode(&r.as_raw()).map_err(|_| ());
            b.push(r.offset, event, "archived");
        }
        assert_eq!(b.held_back_events(), b.pending_events());
        sizes.push(b.bytes);
    }
    let row = sizes[2] / 2;
    assert_eq!(sizes, vec![4 * row, 3 * row, 2 * row], "rows of one size");
    let budget = 9 * row - row / 2;
    produce(&records).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let cfg = SinkConfig {
        memory_budget: budget,
        ..config(&topic, storage)
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (cfg, cancel) = (cfg.clone(), cancel.clone());
        async move { cdc_sink::run(&cfg, cancel).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cdc_checkpoint::read_chain(&store, &topic, 0)
        .await
        .unwrap()
        .end()
        .is_none()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Any further cut of the same pass would follow at once; give it time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cancel.cancel();
    let summary = task.await.unwrap().unwrap();
    assert!(summary.stopped.is_empty());
    let mut forced = Vec::new();
    for partition in 0..3 {
        let chain = cdc_checkpoint::read_chain(&store, &topic, partition)
            .await
            .unwrap();
        for c in &chain.checkpoints {
            forced.push((partition, c.first_offset, c.last_offset, c.open_tail_xid));
        }
    }
    assert_eq!(
        forced,
        vec![(0, 0, 3, Some(900))],
        "exactly one forced cut, of the largest held-back transaction"
    );

    // Their proofs arrive: everything is archived, 901 and 902 whole.
    let more: Vec<OwnedRecord> = [(0, 4), (1, 3), (2, 2)]
        .into_iter()
        .map(|(partition, offset)| in_partition(partition, resolved(t, offset, 1)))
        .collect();
    produce(&more).await;
    records.extend(more);
    let summary = run_until_archived(&cfg, &store, &topic, 3).await;
    assert!(summary.stopped.is_empty());
    let archive = read_archive(&store, &topic, 3).await;
    for (partition, (chain, rows)) in archive.iter().enumerate() {
        assert_eq!(rows, &expected_rows(&records, partition as i32));
        let xids = xids_per_checkpoint(&store, chain).await;
        assert_no_split(chain, &xids);
        let tails: Vec<Option<u64>> = chain.checkpoints.iter().map(|c| c.open_tail_xid).collect();
        let expected = if partition == 0 {
            vec![Some(900), None]
        } else {
            vec![None]
        };
        assert_eq!(tails, expected, "partition {partition}");
    }
}

/// Review finding: the PostgreSQL changefeed published part of
/// transaction 11, stopped, and re-sent from its slot, starting with
/// transaction 10 (committed earlier: another xid, an earlier commit
/// LSN). With `flush_rows = 1` every archived row asks for a flush; the
/// re-sent 10 must not be taken as the end of 11, so no checkpoint ends
/// between 11's versions of key 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_earlier_transaction_does_not_end_a_checkpoint_inside_a_later_one() {
    let topic = cdc_tests::unique("pgresend");
    cdc_tests::create_topic(&topic, 1).await;
    let t = topic.as_str();
    let records = vec![
        pg(t, 0, 5, 10, 1, true),
        // 11: version A of key 1; the changefeed stops before version B.
        pg(t, 1, 1, 11, 2, true),
        // The restart re-sends from the slot, with new `updated`.
        pg(t, 2, 5, 10, 3, true),
        pg(t, 3, 1, 11, 4, true),
        pg(t, 4, 1, 11, 4, true),
        // A later commit: 11 is complete.
        pg(t, 5, 7, 12, 5, true),
        resolved(t, 6, 5),
    ];
    produce(&records).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let summary = run_until_archived(&pg_config(&topic, storage), &store, &topic, 1).await;
    assert!(summary.stopped.is_empty());
    let chain = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    assert_eq!(chain.end(), Some(6));
    // The cuts fall only where a later commit proved what came before
    // complete (10 is archived twice, whole each time: a re-send).
    let ranges: Vec<(i64, i64)> = chain
        .checkpoints
        .iter()
        .map(|c| (c.first_offset, c.last_offset))
        .collect();
    assert_eq!(ranges, vec![(0, 0), (1, 4), (5, 6)]);
    let xids = xids_per_checkpoint(&store, &chain).await;
    assert_eq!(xids, vec![vec![10], vec![11, 10, 11, 11], vec![12]]);
    assert!(chain.checkpoints.iter().all(|c| c.open_tail_xid.is_none()));
    // Every checkpoint holding a version of 11 holds its last one.
    for (c, list) in chain.checkpoints.iter().zip(&xids) {
        if list.contains(&11) {
            assert!(
                (c.first_offset..=c.last_offset).contains(&4),
                "{:?}",
                (c.first_offset, c.last_offset)
            );
        }
    }
    let archive = read_archive(&store, &topic, 1).await;
    assert_eq!(archive[0].1, expected_rows(&records, 0));
}
