//! Every CockroachDB changefeed fixture, produced to a real broker, ends up
//! archived exactly: segments read back field by field, counts and
//! resolved timestamps in the checkpoints. Local file system and S3.

mod common;

use cdc_changefeed::{Event, Value};
use cdc_checkpoint::Counts;
use cdc_common::storage::ArchiveStore;
use common::*;

const FILES: [&str; 6] = [
    "01-wrapped-updated-diff.ndjson",
    "02-wrapped-default-delete.ndjson",
    "03-resolved.ndjson",
    "04-key-in-value-mvcc-timestamp.ndjson",
    "05-cdc-query-bare.ndjson",
    "06-duplicate-redelivery.ndjson",
];

async fn archive_fixture(
    name: &str,
    storage: cdc_common::storage::StorageConfig,
    store: &ArchiveStore,
) -> Vec<String> {
    let topic = cdc_tests::unique("fx");
    cdc_tests::create_topic(&topic, 3).await;
    let records = fixture(name, &topic);
    produce(&records).await;
    let mut config = config(&topic, storage);
    // The fixtures' CDC query selects `event_op() AS op`.
    config.topics[0].op_column = Some("op".into());
    let summary = run_until_archived(&config, store, &topic, 3).await;
    assert!(summary.stopped.is_empty(), "{name}: {:?}", summary.stopped);
    let archive = read_archive(store, &topic, 3).await;
    let mut texts = Vec::new();
    for (p, (chain, rows)) in archive.iter().enumerate() {
        let p = p as i32;
        let in_partition: Vec<_> = records.iter().filter(|r| r.partition == p).collect();
        // The chain covers exactly the partition's offsets.
        if in_partition.is_empty() {
            assert!(chain.checkpoints.is_empty(), "{name} p{p}");
            continue;
        }
        assert_eq!(chain.start(), Some(0), "{name} p{p}");
        assert_eq!(
            chain.end(),
            Some(in_partition.len() as i64 - 1),
            "{name} p{p}"
        );
        // Rows: field by field, in offset order.
        let want = expected_rows(&records, p);
        assert_eq!(rows, &want, "{name} p{p}");
        // Deletes: in the delete files, never among the rows.
        assert!(rows.iter().all(|r| r.op != cdc_changefeed::Op::Delete));
        let deletes = read_deletes(store, chain).await;
        assert_eq!(deletes, expected_deletes(&records, p), "{name} p{p}");
        if name.starts_with("01") && p == 2 {
            // The purger's DELETE of an archived row, with `diff`: its
            // `before` is kept, exact decimal text included.
            let before = deletes[0].before.as_ref().expect("before kept");
            assert!(
                before.contains(&("amount".to_owned(), Value::Number("1250.00".into()))),
                "{before:?}"
            );
        }
        // Counts add up to what the partition held.
        let mut want_counts = Counts {
            events: in_partition.len() as u64,
            ..Counts::default()
        };
        let mut last_resolved = None;
        for r in &in_partition {
            match decode_as_fixtures(r) {
                Ok(Event::Resolved(res)) => {
                    want_counts.resolved += 1;
                    last_resolved = Some(
                        last_resolved
                            .map_or(res.resolved, |x: cdc_changefeed::Hlc| x.max(res.resolved)),
                    );
                }
                Ok(Event::Row(ev)) if ev.after.is_none() || ev.op == cdc_changefeed::Op::Delete => {
                    want_counts.deletes += 1
                }
                Ok(Event::Row(ev))
                    if ev.after.as_ref().and_then(|a| a.get("archived"))
                        == Some(&Value::Bool(true)) =>
                {
                    want_counts.rows_archived += 1
                }
                Ok(Event::Row(_)) => want_counts.not_archived += 1,
                Err(_) => want_counts.quarantined += 1,
            }
        }
        let mut got = Counts::default();
        for c in &chain.checkpoints {
            got.events += c.counts.events;
            got.rows_archived += c.counts.rows_archived;
            got.deletes += c.counts.deletes;
            got.not_archived += c.counts.not_archived;
            got.resolved += c.counts.resolved;
            got.quarantined += c.counts.quarantined;
            assert_eq!(
                c.counts.events,
                (c.last_offset - c.first_offset + 1) as u64,
                "every offset accounted for"
            );
            assert_eq!(c.partitions, 3);
        }
        assert_eq!(got, want_counts, "{name} p{p}");
        assert_eq!(
            chain.resolved(),
            last_resolved,
            "{name} p{p}: resolved timestamp recorded"
        );
        for r in rows {
            for (_, v) in &r.columns {
                texts.push(v.to_json_text());
            }
        }
    }
    // The watermark, from storage alone.
    let all_resolved = archive.iter().all(|(c, _)| c.resolved().is_some());
    let wm = cdc_checkpoint::watermark(store, &topic).await.unwrap();
    if all_resolved {
        assert_eq!(wm, archive.iter().filter_map(|(c, _)| c.resolved()).min());
    } else {
        assert_eq!(wm, None);
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_archived_on_local_file_system() {
    let mut texts = Vec::new();
    for name in FILES {
        let dir = tempfile::tempdir().unwrap();
        let storage = local_storage(dir.path());
        let store = ArchiveStore::open(&storage).unwrap();
        texts.extend(archive_fixture(name, storage, &store).await);
    }
    // Exact decimal text survives end to end.
    assert!(texts.iter().any(|t| t == "1250.00"), "{texts:?}");
}

/// Without `op_column` (the default) a CDC query's top-level `op` is a
/// table column like any other: archived as a column, never swallowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_rows_keep_an_op_column_by_default() {
    let topic = cdc_tests::unique("fxop");
    cdc_tests::create_topic(&topic, 3).await;
    let records = fixture("05-cdc-query-bare.ndjson", &topic);
    produce(&records).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    let summary = run_until_archived(&config(&topic, storage), &store, &topic, 3).await;
    assert!(summary.stopped.is_empty());
    let archive = read_archive(&store, &topic, 3).await;
    let rows: Vec<_> = archive.iter().flat_map(|(_, rows)| rows).collect();
    assert_eq!(rows.len(), 2, "the two rows marked archived");
    for r in &rows {
        assert_eq!(r.op, cdc_changefeed::Op::Upsert);
        let op = r.columns.iter().find(|(c, _)| c == "op").map(|(_, v)| v);
        assert_eq!(op, Some(&Value::String("update".into())));
    }
    // The query's delete (archived = null) is an unmarked row here.
    let deletes: u64 = archive
        .iter()
        .flat_map(|(c, _)| &c.checkpoints)
        .map(|c| c.counts.deletes)
        .sum();
    assert_eq!(deletes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_archived_on_s3() {
    for name in FILES {
        let prefix = cdc_tests::unique("sinkfx");
        let (storage, store) = s3_storage(&prefix);
        archive_fixture(name, storage, &store).await;
    }
}
