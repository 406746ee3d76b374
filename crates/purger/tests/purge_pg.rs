//! The purger against real PostgreSQL and a real (local) object store.

mod common;

use std::collections::BTreeSet;

use cdc_purger::{CheckpointStatus, PurgeError, PurgeOptions};
use common::{as_snapshot_values, Fixture};
use object_store::{ObjectStoreExt, PutPayload};

fn opts() -> PurgeOptions {
    PurgeOptions::default()
}

#[tokio::test]
async fn deletes_exactly_the_archived_versions_and_nothing_else() {
    let f = Fixture::new(100).await;
    f.mark(1, 61).await;
    let cp1 = f.archive(0, 0, 1, 30, true).await;
    let cp2 = f.archive(0, 30, 31, 60, true).await;
    // After archiving: row 5 changes (new xmin, still marked), row 6 is
    // un-marked (legal hold), row 7 disappears. Row 61 is marked but was
    // never archived.
    f.sql("UPDATE {t} SET payload = 'changed' WHERE id = 5")
        .await;
    f.sql("UPDATE {t} SET archived = false WHERE id = 6").await;
    f.sql("DELETE FROM {t} WHERE id = 7").await;
    let before = f.snapshot().await;

    let s = f.purge(&opts()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    assert_eq!(s.checkpoints.len(), 2);
    assert!(s
        .checkpoints
        .iter()
        .all(|c| c.status == CheckpointStatus::Purged));
    let c1 = s.checkpoints[0].counts;
    assert_eq!(
        (
            c1.rows,
            c1.deleted,
            c1.already_gone,
            c1.skipped_changed,
            c1.skipped_unmarked
        ),
        (30, 27, 1, 1, 1)
    );
    let c2 = s.checkpoints[1].counts;
    assert_eq!(
        (
            c2.rows,
            c2.deleted,
            c2.already_gone,
            c2.skipped_changed,
            c2.skipped_unmarked
        ),
        (30, 30, 0, 0, 0)
    );
    assert!(
        s.batches >= 8,
        "batch_size 8 over 60 rows: {} batches",
        s.batches
    );

    let after = f.snapshot().await;
    let deleted: BTreeSet<i64> = before
        .keys()
        .filter(|id| !after.contains_key(id))
        .copied()
        .collect();
    let expected: BTreeSet<i64> = (1..=60).filter(|id| ![5, 6, 7].contains(id)).collect();
    assert_eq!(deleted, expected);
    // Every deleted row is in the archive with identical values.
    let mut archived = std::collections::BTreeMap::new();
    for cp in [&cp1, &cp2] {
        for r in f.archived_rows(cp).await {
            let id: i64 = r.key_json.trim_matches(['[', ']']).parse().unwrap();
            archived.insert(id, (as_snapshot_values(&r), r.pg_xid.unwrap().to_string()));
        }
    }
    for id in &deleted {
        let (payload, amount, marked, xmin) = before[id].clone();
        assert!(marked);
        assert_eq!(archived[id], ((payload, amount), xmin), "row {id}");
    }
    // No row outside the archive was touched (same values, same xmin).
    for (id, row) in &after {
        assert_eq!(&before[id], row, "row {id} changed");
    }
    assert_eq!(after.len(), 100 - 60 + 2); // 5, 6 kept; 7 gone before; 61..100 kept

    // Purge records are written; a rerun is a no-op.
    let rec = f.purge_record(0, 0).await.unwrap();
    assert_eq!(
        (
            rec.deleted,
            rec.already_gone,
            rec.skipped_changed,
            rec.skipped_unmarked
        ),
        (27, 1, 1, 1)
    );
    assert_eq!(rec.segment, cp1.segment.as_ref().map(|s| s.path.clone()));
    let again = f.purge(&opts()).await.unwrap();
    assert!(again
        .checkpoints
        .iter()
        .all(|c| c.status == CheckpointStatus::AlreadyPurged));
    assert_eq!(again.totals.deleted, 0);
    assert_eq!(again.batches, 0);
    assert_eq!(f.snapshot().await, after);
    f.drop().await;
}

#[tokio::test]
async fn a_changed_row_is_deleted_once_its_new_version_is_archived() {
    let f = Fixture::archived(10).await;
    f.sql("UPDATE {t} SET payload = 'v2' WHERE id = 3").await;
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!((s.totals.deleted, s.totals.skipped_changed), (9, 1));
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        vec![3]
    );
    // The sink archives the new version in the next checkpoint.
    f.archive(0, 10, 3, 3, true).await;
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!(s.totals.deleted, 1);
    assert!(f.snapshot().await.is_empty());
    f.drop().await;
}

#[tokio::test]
async fn versionless_events_are_never_deleted() {
    let f = Fixture::new(5).await;
    f.mark(1, 5).await;
    f.archive(0, 0, 1, 5, false).await;
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!((s.totals.deleted, s.totals.skipped_no_version), (0, 5));
    assert_eq!(f.snapshot().await.len(), 5);
    let rec = f.purge_record(0, 0).await.unwrap();
    assert_eq!((rec.deleted, rec.skipped_changed), (0, 5));
    f.drop().await;
}

#[tokio::test]
async fn missing_or_altered_segments_are_refused_and_their_rows_stay() {
    let f = Fixture::new(40).await;
    f.mark(1, 40).await;
    // Partition 0: one checkpoint whose segment was deleted.
    let gone = f.archive(0, 0, 1, 10, true).await;
    // Partition 1: a good checkpoint, then one with a flipped byte, then a
    // good one after it (must wait: the partition stops at the refusal).
    f.archive(1, 0, 11, 20, true).await;
    let bad = f.archive(1, 10, 21, 30, true).await;
    f.archive(1, 20, 31, 40, true).await;
    let seg = gone.segment.as_ref().unwrap();
    f.store
        .store
        .delete(&f.store.path(&seg.path))
        .await
        .unwrap();
    let seg = bad.segment.as_ref().unwrap();
    let path = f.store.path(&seg.path);
    let mut bytes = f
        .store
        .store
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    f.store
        .store
        .put(&path, PutPayload::from(bytes))
        .await
        .unwrap();

    let s = f.purge(&opts()).await.unwrap();
    assert!(!s.ok());
    assert_eq!(s.refused.len(), 2, "{}", s.render());
    assert_eq!(s.refused[0].checkpoint, gone.path());
    assert!(
        s.refused[0].reason.contains("missing")
            && s.refused[0]
                .reason
                .contains(&gone.segment.as_ref().unwrap().path)
    );
    assert_eq!(s.refused[1].checkpoint, bad.path());
    assert!(
        s.refused[1].reason.contains("corrupt"),
        "{}",
        s.refused[1].reason
    );
    let statuses: Vec<_> = s
        .checkpoints
        .iter()
        .map(|c| (c.partition, c.first_offset, c.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (0, 0, CheckpointStatus::Refused),
            (1, 0, CheckpointStatus::Purged),
            (1, 10, CheckpointStatus::Refused)
        ]
    );
    let left: Vec<i64> = f.snapshot().await.keys().copied().collect();
    assert_eq!(left, (1..=10).chain(21..=40).collect::<Vec<_>>());
    assert!(f.purge_record(0, 0).await.is_none());
    assert!(f.purge_record(1, 10).await.is_none());
    assert!(f.purge_record(1, 20).await.is_none());
    f.drop().await;
}

#[tokio::test]
async fn dry_run_counts_and_deletes_nothing() {
    let f = Fixture::archived(20).await;
    f.sql("UPDATE {t} SET archived = false WHERE id = 1").await;
    let before = f.snapshot().await;
    let s = f.dry_run(&opts()).await.unwrap();
    assert_eq!(s.checkpoints[0].status, CheckpointStatus::DryRun);
    assert_eq!(
        (
            s.totals.would_delete,
            s.totals.deleted,
            s.totals.skipped_unmarked
        ),
        (19, 0, 1)
    );
    assert_eq!(f.snapshot().await, before);
    assert!(f.purge_record(0, 0).await.is_none());
    f.drop().await;
}

#[tokio::test]
async fn unindexed_foreign_key_refuses_with_the_create_index_statement() {
    let f = Fixture::archived(5).await;
    let (child, qc) = f.child_table("CASCADE", "").await;
    let err = f.purge(&opts()).await.unwrap_err();
    assert!(matches!(err, PurgeError::UnindexedForeignKeys { .. }));
    let expected = format!("CREATE INDEX ON \"public\".\"{child}\" (\"parent_id\");");
    assert!(err.to_string().contains(&expected), "{err}");
    assert_eq!(f.snapshot().await.len(), 5, "nothing deleted");
    // The dry run refuses the same way.
    let err = f.dry_run(&opts()).await.unwrap_err();
    assert!(err.to_string().contains(&expected));
    // The override works, and so does the fix.
    f.client.batch_execute(&expected).await.unwrap();
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!(s.totals.deleted, 5);
    assert_eq!(s.preflight.referencing.len(), 1);
    assert!(s.preflight.referencing[0].indexed);
    let _ = f.client.batch_execute(&format!("DROP TABLE {qc}")).await;
    f.drop().await;
}

#[tokio::test]
async fn restrict_foreign_keys_are_reported_and_block_only_their_rows_batch() {
    let f = Fixture::archived(5).await;
    let (_, qc) = f
        .child_table("RESTRICT", " INSERT INTO {c} VALUES (1, 3);")
        .await;
    let mut o = opts();
    o.allow_unindexed_foreign_keys = true;
    let err = f.purge(&o).await.unwrap_err();
    assert!(err.to_string().contains("foreign key"), "{err}");
    assert_eq!(f.snapshot().await.len(), 5, "the failed batch rolled back");
    let s = f.dry_run(&o).await.unwrap();
    assert!(s.preflight.referencing[0].blocks_deletes());
    assert!(s.render().contains("ON DELETE RESTRICT"), "{}", s.render());
    let _ = f.client.batch_execute(&format!("DROP TABLE {qc}")).await;
    f.drop().await;
}

#[tokio::test]
async fn lock_timeouts_are_retried_with_a_smaller_batch() {
    let mut f = Fixture::archived(40).await;
    // The purger's session gives up on a row lock after 50ms (SQLSTATE
    // 55P03, retryable); a foreground transaction holds row 20 for a while.
    let sep = if f.cfg.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    f.cfg.database_url = format!("{}{sep}options=-c%20lock_timeout%3D50", f.cfg.database_url);
    f.cfg.retry.initial_delay = std::time::Duration::from_millis(20);
    f.cfg.retry.max_delay = std::time::Duration::from_millis(100);
    f.cfg.retry.max_retries = 1000;
    let mut holder = cdc_tests::pg().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        &format!("SELECT 1 FROM {} WHERE id = 20 FOR UPDATE", f.q()),
        &[],
    )
    .await
    .unwrap();
    let release = async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        tx.commit().await.unwrap();
    };
    let o = PurgeOptions::default();
    let (s, ()) = tokio::join!(f.purge(&o), release);
    let s = s.unwrap();
    assert!(
        s.retries >= 1,
        "the locked row made a batch retry: {}",
        s.render()
    );
    assert!(s.batch_size_cuts >= 1);
    assert_eq!(s.totals.deleted, 40);
    assert!(f.snapshot().await.is_empty());
    f.drop().await;
}
