//! `checkpoints verify` and `list` on manifest history, on a real local
//! file system archive: each manifest records the SHA-256 of the one it
//! superseded, so a superseded manifest changed afterwards (while gc has
//! not removed it) is a `manifest_hash_mismatch`.

use cdc_changefeed::Hlc;
use cdc_checkpoint::*;
use cdc_common::storage::ArchiveStore;

async fn extend(store: &ArchiveStore, table: &str, firsts: std::ops::Range<i64>) {
    for i in firsts {
        let c = Checkpoint {
            resolved: Some(Hlc::new(i, 0)),
            counts: Counts {
                events: 10,
                resolved: 1,
                ..Counts::default()
            },
            ..fixtures::checkpoint(table, 0, i * 10, i * 10 + 9)
        };
        create(store, &c).await.unwrap();
    }
    let m = plan_manifest(store, table, 0).await.unwrap().unwrap();
    write_manifest(store, &m).await.unwrap();
}

async fn kinds(store: &ArchiveStore, table: &str) -> Vec<&'static str> {
    let r = cdc_retrieve::inspect::verify(store, table, None)
        .await
        .unwrap();
    r.findings.iter().map(|f| f.kind).collect()
}

#[tokio::test]
async fn a_superseded_manifest_changed_afterwards_is_found() {
    let (store, _dir) = cdc_tests::local_archive();
    let table = cdc_tests::unique("manifest_links");
    extend(&store, &table, 0..3).await;
    let first = newest_manifest(&store, &table, 0).await.unwrap().unwrap();
    assert_eq!(first.previous_manifest, None);
    extend(&store, &table, 3..5).await;
    let second = newest_manifest(&store, &table, 0).await.unwrap().unwrap();
    assert_eq!(second.previous_manifest, Some(first.path()));
    let bytes = get_object(&store, &first.path()).await.unwrap().unwrap();
    assert_eq!(second.previous_manifest_sha256, Some(sha256_hex(&bytes)));
    assert_eq!(kinds(&store, &table).await, Vec::<&str>::new());

    // The superseded manifest rewritten (one resolved timestamp changed).
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    doc["checkpoints"][0]["resolved"] = serde_json::json!("99.0000000000");
    object_store::ObjectStoreExt::put(
        &store.store,
        &store.path(&first.path()),
        serde_json::to_vec(&doc).unwrap().into(),
    )
    .await
    .unwrap();
    assert_eq!(kinds(&store, &table).await, ["manifest_hash_mismatch"]);
}
