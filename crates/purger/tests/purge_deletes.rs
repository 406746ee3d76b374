//! Delete events recorded by the sink (a checkpoint's delete file) are
//! never row versions to the purger: against real PostgreSQL and a real
//! (local) object store.

mod common;

use cdc_changefeed::Hlc;
use cdc_checkpoint::{Checkpoint, Counts, DeletesRef, SegmentRef};
use cdc_purger::{CheckpointStatus, PurgeOptions};
use cdc_segment::{ArchivedRow, DeletedRow, RecordMeta, SegmentMeta};
use common::Fixture;
use object_store::{ObjectStoreExt, PutPayload};

/// Writes `rows` as the segment and `deletes` as the delete file of one
/// checkpoint covering `first..=last`, the sink's way (objects first,
/// then the checkpoint). `segment_is_delete_file` names the delete file as
/// the checkpoint's segment (a damaged or forged checkpoint).
async fn write(
    f: &Fixture,
    first: i64,
    last: i64,
    rows: &[ArchivedRow],
    deletes: &[DeletedRow],
    segment_is_delete_file: bool,
) -> Checkpoint {
    let meta = SegmentMeta {
        table: f.table.clone(),
        topic: f.table.clone(),
        partition: 0,
        first_offset: first,
        last_offset: last,
    };
    let put = |path: String, bytes: Vec<u8>| async move {
        f.store
            .store
            .put(&f.store.path(&path), PutPayload::from(bytes))
            .await
            .unwrap();
    };
    let d_bytes = cdc_segment::encode_deletes(&meta, deletes).unwrap();
    let d_path = cdc_checkpoint::layout::deletes_path(&f.table, 0, first, last, "t");
    put(d_path.clone(), d_bytes.clone()).await;
    let segment = if segment_is_delete_file {
        SegmentRef::describe(
            d_path.clone(),
            &d_bytes,
            deletes.len() as u64,
            vec!["id".into()],
        )
    } else {
        let bytes = cdc_segment::encode_segment(&meta, rows).unwrap();
        let path = cdc_checkpoint::layout::segment_path(&f.table, 0, first, last, "t");
        put(path.clone(), bytes.clone()).await;
        let columns = rows[0].columns.iter().map(|(c, _)| c.clone()).collect();
        SegmentRef::describe(path, &bytes, rows.len() as u64, columns)
    };
    let cp = Checkpoint {
        partitions: 1,
        segment: Some(segment),
        deletes: Some(DeletesRef::describe(d_path, &d_bytes, deletes.len() as u64)),
        counts: Counts {
            events: (last - first + 1) as u64,
            rows_archived: rows.len() as u64,
            deletes: deletes.len() as u64,
            ..Counts::default()
        },
        min_updated: rows.iter().filter_map(|r| r.meta.updated).min(),
        max_updated: rows.iter().filter_map(|r| r.meta.updated).max(),
        writer_id: "purger-test".into(),
        created_at: cdc_checkpoint::now_rfc3339(),
        ..cdc_checkpoint::fixtures::checkpoint(&f.table, 0, first, last)
    };
    cdc_checkpoint::create(&f.store, &cp).await.unwrap();
    cp
}

/// The delete record of row `id` at `offset`, by transaction `xid`, as
/// the sink keeps it (with the deleted, archived row as `before`).
fn delete_of(f: &Fixture, row: &ArchivedRow, offset: i64, xid: u64) -> DeletedRow {
    DeletedRow {
        meta: RecordMeta {
            key_json: row.meta.key_json.clone(),
            updated: Some(Hlc::new(1_700_000_000_000_000_000 + offset, 0)),
            mvcc_timestamp: None,
            pg_xid: Some(xid),
            topic: f.table.clone(),
            partition: 0,
            offset,
        },
        before: Some(row.columns.clone()),
    }
}

/// Transaction X deletes row 3 and inserts it again, marked archived: the
/// new row's `xmin` is X, and the delete record carries X too. The sink may
/// end a checkpoint right after the delete (X had no archivable row yet),
/// so the re-inserted version is in no durable segment. A purger that took
/// the delete record for row 3's latest version would run
/// `DELETE … WHERE id = 3 AND xmin = X AND archived` and remove it. It must
/// not: the delete file is not read, the row stays, and the counts
/// reconcile with the segment's rows alone.
#[tokio::test]
async fn delete_records_are_never_row_versions_to_delete() {
    let f = Fixture::new(4).await;
    f.mark(1, 4).await;
    let old = f.snapshot().await;
    let rows: Vec<ArchivedRow> = (1..=4)
        .map(|id| f.event(&old, id, 0, id - 1, Some(Fixture::xmin(&old, id))))
        .collect();
    f.sql(
        "BEGIN; DELETE FROM {t} WHERE id = 3; \
         INSERT INTO {t} (id, payload, amount, archived) VALUES (3, 'again', 3.75, true); COMMIT;",
    )
    .await;
    let new = f.snapshot().await;
    let x = Fixture::xmin(&new, 3);
    assert_ne!(x, Fixture::xmin(&old, 3));
    assert!(new[&3].2, "the re-inserted row is marked archived");
    // Offsets 0..=3: the four archived versions; 4: X's delete of row 3.
    let deletes = vec![delete_of(&f, &rows[2], 4, x)];
    let cp = write(&f, 0, 4, &rows, &deletes, false).await;

    let s = f.purge(&PurgeOptions::default()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    let c = s.checkpoints[0].counts;
    assert_eq!(
        (
            c.rows,
            c.deleted,
            c.skipped_changed,
            c.already_gone,
            c.superseded
        ),
        (4, 3, 1, 0, 0),
        "{c:?}"
    );
    assert_eq!(c.rows, c.accounted());
    let left = f.snapshot().await;
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), vec![3]);
    assert_eq!(left[&3], new[&3], "the re-inserted row is untouched");
    let rec = f.purge_record(0, 0).await.unwrap();
    assert_eq!(rec.accounted_rows(), cp.segment.as_ref().unwrap().rows);
    assert_eq!(rec.deleted, 3);

    // The insert of X arrives in the next checkpoint: now it is archived,
    // and purged.
    let again = f.event(&new, 3, 0, 5, Some(x));
    let next = write(
        &f,
        5,
        6,
        &[again],
        &[delete_of(&f, &rows[0], 6, x + 1)],
        false,
    )
    .await;
    let s = f.purge(&PurgeOptions::default()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    assert_eq!(s.totals.deleted, 1, "{}", s.render());
    assert!(f.snapshot().await.is_empty());
    let rec = f.purge_record(0, next.first_offset).await.unwrap();
    assert_eq!(rec.accounted_rows(), 1);
    f.drop().await;
}

/// Defence in depth: a delete file is not a segment to either of the
/// purger's readers, so a checkpoint that names one as its segment is
/// refused and nothing is deleted, even where every delete record's key
/// and xid match a live, marked row.
#[tokio::test]
async fn a_delete_file_named_as_a_segment_is_refused() {
    let f = Fixture::new(2).await;
    f.mark(1, 2).await;
    let snap = f.snapshot().await;
    let rows: Vec<ArchivedRow> = (1..=2)
        .map(|id| f.event(&snap, id, 0, id - 1, Some(Fixture::xmin(&snap, id))))
        .collect();
    let deletes: Vec<DeletedRow> = rows
        .iter()
        .map(|r| delete_of(&f, r, r.meta.offset, r.meta.pg_xid.unwrap()))
        .collect();
    let meta = SegmentMeta {
        table: f.table.clone(),
        topic: f.table.clone(),
        partition: 0,
        first_offset: 0,
        last_offset: 1,
    };
    let bytes = cdc_segment::encode_deletes(&meta, &deletes).unwrap();
    assert!(matches!(
        cdc_purger::decode::versions(&bytes).unwrap(),
        cdc_purger::decode::Fast::Unsupported(_)
    ));
    assert!(cdc_segment::decode_segment(&bytes).is_err());

    write(&f, 0, 1, &rows, &deletes, true).await;
    let s = f.purge(&PurgeOptions::default()).await.unwrap();
    assert!(!s.ok());
    assert_eq!(s.checkpoints[0].status, CheckpointStatus::Refused);
    assert!(
        s.refused[0].reason.contains("does not decode"),
        "{}",
        s.refused[0].reason
    );
    assert_eq!(f.snapshot().await, snap);
    f.drop().await;
}
