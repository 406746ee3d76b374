//! A checkpoint is trusted only if its segment is fully readable (as
//! `retrieve`/`restore` read it) and is the segment the checkpoint
//! describes. Each case below is a segment whose size and sha256 the
//! checkpoint records correctly (so the checksum check passes), but which
//! the full decode cannot read, or whose metadata names another table,
//! partition or offset range: refused, nothing deleted.

mod common;

use apache_avro::types::Value as Avro;
use cdc_checkpoint::{Checkpoint, SegmentRef};
use cdc_purger::{PurgeOptions, PurgeSummary};
use common::Fixture;
use object_store::{ObjectStoreExt, PutPayload};

/// Rewrites the checkpoint's segment (uncompressed) with metadata changed
/// by `md` (`None` removes the entry) and every record passed through
/// `rec`, then replaces the checkpoint with one that records the new
/// bytes' size and checksum.
async fn tamper(
    f: &Fixture,
    cp: &Checkpoint,
    md: &[(&str, Option<&str>)],
    rec: impl FnMut(&mut Vec<(String, Avro)>),
) {
    let seg = cp.segment.as_ref().unwrap();
    let bytes = cdc_checkpoint::verify_segment(&f.store, seg).await.unwrap();
    let bytes = cdc_segment::fixtures::rewrite(&bytes, md, rec);
    f.store
        .store
        .put(&f.store.path(&seg.path), PutPayload::from(bytes.clone()))
        .await
        .unwrap();
    f.store
        .store
        .delete(&f.store.path(&cp.path()))
        .await
        .unwrap();
    let cp = Checkpoint {
        segment: Some(SegmentRef::describe(
            seg.path.clone(),
            &bytes,
            seg.rows,
            seg.columns.clone(),
        )),
        ..cp.clone()
    };
    cdc_checkpoint::create(&f.store, &cp).await.unwrap();
}

fn set(fields: &mut [(String, Avro)], name: &str, v: Avro) {
    fields.iter_mut().find(|(n, _)| n == name).unwrap().1 = v;
}

/// Archives 10 marked rows as one checkpoint, tampers with it, purges.
async fn purge_tampered(
    md: &[(&str, Option<&str>)],
    rec: impl FnMut(&mut Vec<(String, Avro)>),
) -> (Fixture, PurgeSummary) {
    let f = Fixture::new(10).await;
    f.mark(1, 10).await;
    let cp = f.archive(0, 0, 1, 10, true).await;
    tamper(&f, &cp, md, rec).await;
    let s = f.purge(&PurgeOptions::default()).await.unwrap();
    (f, s)
}

async fn assert_refused(what: &str, f: Fixture, s: &PurgeSummary, reason: &str) {
    assert!(!s.ok(), "{what}: {}", s.render());
    assert_eq!(s.refused.len(), 1, "{what}: {}", s.render());
    assert!(
        s.refused[0].reason.contains(reason),
        "{what}: {:?} does not say {reason:?}",
        s.refused[0].reason
    );
    assert_eq!(s.totals.deleted, 0, "{what}");
    assert_eq!(f.snapshot().await.len(), 10, "{what}: nothing deleted");
    assert!(f.purge_record(0, 0).await.is_none(), "{what}: no record");
    f.drop().await;
}

#[tokio::test]
async fn an_untampered_rewrite_is_purged() {
    // The control: rewriting alone (uncompressed, same records) keeps the
    // segment readable and the checkpoint trusted.
    let (f, s) = purge_tampered(&[], |_| {}).await;
    assert!(s.ok(), "{}", s.render());
    assert_eq!(s.totals.deleted, 10);
    assert!(f.snapshot().await.is_empty());
    f.drop().await;
}

#[tokio::test]
async fn a_segment_without_cdc_columns_is_refused() {
    let (f, s) = purge_tampered(&[("cdc.columns", None)], |_| {}).await;
    assert_refused("no cdc.columns", f, &s, "cdc.columns").await;
}

#[tokio::test]
async fn a_segment_whose_cdc_columns_do_not_match_its_schema_is_refused() {
    // Three columns listed, four in the records: the full decode refuses
    // every record.
    let columns = r#"[{"field":"id","name":"id","encoding":"json"},{"field":"payload","name":"payload","encoding":"string"},{"field":"amount","name":"amount","encoding":"json"}]"#;
    let (f, s) = purge_tampered(&[("cdc.columns", Some(columns))], |_| {}).await;
    assert_refused("cdc.columns one short", f, &s, "does not decode").await;
}

#[tokio::test]
async fn a_segment_without_cdc_table_is_refused() {
    let (f, s) = purge_tampered(&[("cdc.table", None)], |_| {}).await;
    assert_refused("no cdc.table", f, &s, "cdc.table").await;
}

#[tokio::test]
async fn bad_json_in_a_json_encoded_column_is_refused() {
    // `amount` (NUMERIC) is stored as its exact JSON text.
    let mut n = 0;
    let (f, s) = purge_tampered(&[], |fields| {
        n += 1;
        if n == 7 {
            set(
                fields,
                "amount",
                Avro::Union(1, Box::new(Avro::String("8.75.1".into()))),
            );
        }
    })
    .await;
    assert_refused("bad JSON", f, &s, "amount").await;
}

#[tokio::test]
async fn a_segment_of_another_range_or_partition_is_refused() {
    // A segment of partition 1 (metadata and records) named by a
    // checkpoint of partition 0.
    let (f, s) = purge_tampered(&[("cdc.partition", Some("1"))], |fields| {
        set(fields, "_partition", Avro::Int(1));
    })
    .await;
    assert_refused(
        "another partition",
        f,
        &s,
        "cdc.partition 1 (checkpoint: 0)",
    )
    .await;
    // Records of partition 0 in a segment that says partition 1.
    let (f, s) = purge_tampered(&[("cdc.partition", Some("1"))], |_| {}).await;
    assert_refused("records of another partition", f, &s, "partition").await;
    for (what, md, reason) in [
        (
            "another range",
            [("cdc.first_offset", Some("3"))],
            "cdc.first_offset 3 (checkpoint: 0)",
        ),
        (
            "another range's end",
            [("cdc.last_offset", Some("99"))],
            "cdc.last_offset 99 (checkpoint: 9)",
        ),
        (
            "another table",
            [("cdc.table", Some("other_table"))],
            "cdc.table \"other_table\"",
        ),
    ] {
        let (f, s) = purge_tampered(&md, |_| {}).await;
        assert_refused(what, f, &s, reason).await;
    }
}
