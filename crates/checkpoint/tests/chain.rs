//! Checkpoint chain operations against a real local file system archive and
//! the stack's S3-compatible server.

use std::time::Duration;

use cdc_checkpoint::*;
use cdc_common::storage::ArchiveStore;
use cdc_types::Hlc;
use object_store::{ObjectStoreExt, PutPayload};

fn checkpoint(
    table: &str,
    partition: i32,
    first: i64,
    last: i64,
    resolved: Option<Hlc>,
    writer: &str,
) -> Checkpoint {
    Checkpoint {
        topic: format!("topic_{table}"),
        counts: Counts {
            events: (last - first + 1) as u64,
            resolved: 1,
            ..Counts::default()
        },
        resolved,
        writer_id: writer.into(),
        created_at: now_rfc3339(),
        ..fixtures::checkpoint(table, partition, first, last)
    }
}

async fn put(store: &ArchiveStore, relative: &str, bytes: Vec<u8>) {
    store
        .store
        .put(&store.path(relative), PutPayload::from(bytes))
        .await
        .unwrap();
}

async fn chain_ops(store: &ArchiveStore) {
    let table = cdc_tests::unique("chain");
    assert_eq!(read_chain(store, &table, 0).await.unwrap().end(), None);
    assert_eq!(watermark(store, &table).await.unwrap(), None);

    let c0 = checkpoint(&table, 0, 0, 9, Some(Hlc::new(100, 0)), "w1");
    assert_eq!(create(store, &c0).await.unwrap(), Created::Created);
    // Retrying the identical create (a lost response) is a success.
    assert_eq!(create(store, &c0).await.unwrap(), Created::AlreadyThere);
    // A zombie writing a different checkpoint at the same offset loses.
    match create(store, &checkpoint(&table, 0, 0, 12, None, "zombie")).await {
        Err(CheckpointError::Conflict {
            existing_writer,
            path,
        }) => {
            assert_eq!(existing_writer.as_deref(), Some("w1"));
            assert_eq!(path, layout::checkpoint_path(&table, 0, 0));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let c1 = checkpoint(&table, 0, 10, 19, Some(Hlc::new(300, 1)), "w1");
    create(store, &c1).await.unwrap();
    let chain = read_chain(store, &table, 0).await.unwrap();
    assert_eq!(chain.checkpoints, vec![c0.clone(), c1.clone()]);
    assert_eq!((chain.start(), chain.end()), (Some(0), Some(19)));

    // Only one of two partitions has a resolved timestamp: no watermark yet.
    assert_eq!(partitions(store, &table).await.unwrap(), vec![0]);
    assert_eq!(watermark(store, &table).await.unwrap(), None);
    create(
        store,
        &checkpoint(&table, 1, 5, 7, Some(Hlc::new(200, 0)), "w2"),
    )
    .await
    .unwrap();
    assert_eq!(
        watermark(store, &table).await.unwrap(),
        Some(Hlc::new(200, 0))
    );

    // A gap breaks the chain and names both objects.
    create(store, &checkpoint(&table, 0, 25, 30, None, "w1"))
        .await
        .unwrap();
    match read_chain(store, &table, 0).await {
        Err(CheckpointError::Broken {
            previous,
            next,
            reason,
            ..
        }) => {
            assert_eq!(previous, layout::checkpoint_path(&table, 0, 10));
            assert_eq!(next, layout::checkpoint_path(&table, 0, 25));
            assert!(reason.starts_with("gap"), "{reason}");
        }
        other => panic!("expected Broken, got {other:?}"),
    }
}

async fn segments_and_orphans(store: &ArchiveStore) {
    let table = cdc_tests::unique("seg");
    let body = b"segment bytes".to_vec();
    let path = layout::segment_path(&table, 0, 0, 9, "n1");
    put(store, &path, body.clone()).await;
    let orphan_path = layout::segment_path(&table, 0, 0, 9, "n0");
    put(store, &orphan_path, b"zombie".to_vec()).await;
    let seg = SegmentRef::describe(path.clone(), &body, 3, vec!["id".into()]);
    let mut c = checkpoint(&table, 0, 0, 9, None, "w1");
    c.segment = Some(seg.clone());
    create(store, &c).await.unwrap();

    assert_eq!(
        verify_segment(store, &seg).await.unwrap().as_ref(),
        body.as_slice()
    );
    let mut bad = seg.clone();
    bad.sha256 = sha256_hex(b"other");
    assert!(matches!(
        verify_segment(store, &bad).await,
        Err(CheckpointError::SegmentCorrupt { .. })
    ));
    let mut gone = seg.clone();
    gone.path = layout::segment_path(&table, 0, 0, 9, "missing");
    assert!(matches!(
        verify_segment(store, &gone).await,
        Err(CheckpointError::SegmentMissing { .. })
    ));

    let orphans = orphans(store, &table).await.unwrap();
    assert_eq!(
        orphans.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        vec![orphan_path.as_str()]
    );
    assert_eq!(orphans[0].size, 6);
    // Inside the grace period nothing is deleted.
    assert!(clean_orphans(store, &table, Duration::from_secs(3600))
        .await
        .unwrap()
        .is_empty());
    let deleted = clean_orphans(store, &table, Duration::ZERO).await.unwrap();
    assert_eq!(deleted.len(), 1);
    assert!(cdc_checkpoint::orphans(store, &table)
        .await
        .unwrap()
        .is_empty());
    // The trusted segment is still there.
    verify_segment(store, &seg).await.unwrap();
}

/// A checkpoint's delete file: verified like a segment, listed as an
/// orphan when no checkpoint names it, and absent from the JSON of a
/// checkpoint without deletes (which reads as before).
async fn delete_files(store: &ArchiveStore) {
    let table = cdc_tests::unique("dels");
    let body = b"delete file bytes".to_vec();
    let path = layout::deletes_path(&table, 0, 0, 9, "n1");
    put(store, &path, body.clone()).await;
    let zombie = layout::deletes_path(&table, 0, 0, 9, "n0");
    put(store, &zombie, b"zombie".to_vec()).await;
    let beyond = layout::deletes_path(&table, 0, 10, 19, "stalled");
    put(store, &beyond, b"stalled".to_vec()).await;
    let dref = DeletesRef::describe(path.clone(), &body, 2);
    let mut c = checkpoint(&table, 0, 0, 9, None, "w1");
    c.counts.deletes = 2;
    c.counts.resolved = 0;
    c.deletes = Some(dref.clone());
    create(store, &c).await.unwrap();
    let back = read_chain(store, &table, 0).await.unwrap();
    assert_eq!(back.checkpoints, vec![c.clone()]);
    assert_eq!(
        verify_deletes(store, &dref).await.unwrap().as_ref(),
        body.as_slice()
    );
    let mut bad = dref.clone();
    bad.size += 1;
    assert!(matches!(
        verify_deletes(store, &bad).await,
        Err(CheckpointError::SegmentCorrupt { .. })
    ));
    let listed: Vec<(String, bool)> = orphans(store, &table)
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.path, o.covered))
        .collect();
    let mut want = vec![(zombie.clone(), true), (beyond.clone(), false)];
    want.sort();
    assert_eq!(listed, want);
    let deleted = clean_orphans(store, &table, Duration::ZERO).await.unwrap();
    assert_eq!(
        deleted.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        vec![zombie.as_str()]
    );
    verify_deletes(store, &dref).await.unwrap();

    // Without deletes the field is not written: such checkpoints are
    // byte-for-byte what earlier versions wrote, and read back the same.
    let plain = checkpoint(&table, 1, 0, 0, None, "w1");
    let json = String::from_utf8(plain.to_json()).unwrap();
    let top: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(top.get("deletes").is_none(), "{json}");
    let parsed: Checkpoint = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, plain);
}

/// The orphan cleaner never deletes a segment beyond its partition's chain
/// end (it may belong to a sink between upload and checkpoint), however
/// old; only orphans whose offsets the chain already covers go.
async fn orphans_beyond_the_chain_end_are_kept(store: &ArchiveStore) {
    let table = cdc_tests::unique("orph");
    // Partition 0: chain 0..=9 (segment-less), then 10..=19.
    create(store, &checkpoint(&table, 0, 0, 9, None, "w1"))
        .await
        .unwrap();
    create(store, &checkpoint(&table, 0, 10, 19, None, "w1"))
        .await
        .unwrap();
    // A zombie's segment inside the chain, one ending exactly at its end,
    // and a stalled sink's segment just past it.
    let inside = layout::segment_path(&table, 0, 0, 9, "zombie");
    let at_end = layout::segment_path(&table, 0, 10, 19, "zombie");
    let beyond = layout::segment_path(&table, 0, 20, 29, "stalled");
    // Straddling the end: offsets 20..=25 are not covered yet.
    let straddling = layout::segment_path(&table, 0, 15, 25, "stalled");
    // Partition 1 has no chain at all: its segment is beyond the (empty) end.
    let no_chain = layout::segment_path(&table, 1, 0, 9, "stalled");
    for p in [&inside, &at_end, &beyond, &straddling, &no_chain] {
        put(store, p, b"x".to_vec()).await;
    }
    let listed = orphans(store, &table).await.unwrap();
    let covered: Vec<(&str, bool)> = listed
        .iter()
        .map(|o| (o.path.as_str(), o.covered))
        .collect();
    let mut want = vec![
        (inside.as_str(), true),
        (at_end.as_str(), true),
        (beyond.as_str(), false),
        (straddling.as_str(), false),
        (no_chain.as_str(), false),
    ];
    want.sort();
    assert_eq!(covered, want);

    let deleted = clean_orphans(store, &table, Duration::ZERO).await.unwrap();
    let mut deleted: Vec<&str> = deleted.iter().map(|o| o.path.as_str()).collect();
    deleted.sort();
    let mut want_deleted = vec![inside.as_str(), at_end.as_str()];
    want_deleted.sort();
    assert_eq!(deleted, want_deleted);
    // The stalled sink now writes its checkpoint: the segment it names is there.
    let mut c = checkpoint(&table, 0, 20, 29, None, "stalled");
    c.segment = Some(SegmentRef::describe(
        beyond.clone(),
        b"x",
        1,
        vec!["id".into()],
    ));
    create(store, &c).await.unwrap();
    let chain = read_chain(store, &table, 0).await.unwrap();
    verify_segment(store, chain.last().unwrap().segment.as_ref().unwrap())
        .await
        .unwrap();
    // Now the straddling one is covered (the chain ends at 29) and goes.
    let deleted = clean_orphans(store, &table, Duration::ZERO).await.unwrap();
    assert_eq!(
        deleted.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        vec![straddling.as_str()]
    );

    // A broken chain covers nothing: its partition's orphans stay.
    let broken = cdc_tests::unique("orphb");
    create(store, &checkpoint(&broken, 0, 0, 9, None, "w1"))
        .await
        .unwrap();
    create(store, &checkpoint(&broken, 0, 20, 29, None, "w1"))
        .await
        .unwrap();
    let seg = layout::segment_path(&broken, 0, 0, 9, "zombie");
    put(store, &seg, b"x".to_vec()).await;
    assert!(clean_orphans(store, &broken, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(orphans(store, &broken).await.unwrap().len(), 1);
}

/// A long chain is read concurrently but in order, and a gap deep inside
/// it is still found.
async fn long_chain_reads_in_order(store: &ArchiveStore) {
    let table = cdc_tests::unique("long");
    let n = 3 * READ_CONCURRENCY as i64 + 5;
    for i in 0..n {
        create(
            store,
            &checkpoint(&table, 0, i * 10, i * 10 + 9, Some(Hlc::new(i, 0)), "w1"),
        )
        .await
        .unwrap();
    }
    let chain = read_chain(store, &table, 0).await.unwrap();
    assert_eq!(chain.checkpoints.len() as i64, n);
    assert!(chain
        .checkpoints
        .iter()
        .enumerate()
        .all(|(i, c)| c.first_offset == i as i64 * 10));
    assert_eq!(chain.resolved(), Some(Hlc::new(n - 1, 0)));
    // A gap after the last one.
    create(
        store,
        &checkpoint(&table, 0, n * 10 + 5, n * 10 + 9, None, "w1"),
    )
    .await
    .unwrap();
    match read_chain(store, &table, 0).await {
        Err(CheckpointError::Broken { previous, next, .. }) => {
            assert_eq!(previous, layout::checkpoint_path(&table, 0, (n - 1) * 10));
            assert_eq!(next, layout::checkpoint_path(&table, 0, n * 10 + 5));
        }
        other => panic!("expected Broken, got {other:?}"),
    }
}

async fn purge_records(store: &ArchiveStore) {
    let table = cdc_tests::unique("purge");
    let rec = PurgeRecord {
        format_version: FORMAT_VERSION,
        table: table.clone(),
        partition: 0,
        first_offset: 10,
        last_offset: 19,
        segment: Some("x.avro".into()),
        deleted: 5,
        already_gone: 1,
        skipped_changed: 2,
        skipped_unmarked: 0,
        skipped_no_version: 0,
        skipped_open_transaction: 0,
        skipped_xid_too_old: 0,
        skipped_referenced: 0,
        superseded: 0,
        dry_run: false,
        purger_id: "p1".into(),
        started_at: now_rfc3339(),
        finished_at: now_rfc3339(),
    };
    assert_eq!(read_purge_record(store, &table, 0, 10).await.unwrap(), None);
    assert_eq!(
        write_purge_record(store, &rec).await.unwrap(),
        PurgeWrite::Written
    );
    assert_eq!(
        write_purge_record(store, &rec).await.unwrap(),
        PurgeWrite::Written
    );
    let mut other = rec.clone();
    other.purger_id = "p2".into();
    assert_eq!(
        write_purge_record(store, &other).await.unwrap(),
        PurgeWrite::AlreadyPurged(Box::new(rec.clone()))
    );
    assert_eq!(
        read_purge_record(store, &table, 0, 10).await.unwrap(),
        Some(rec)
    );
}

/// The store refuses a second create of one object (what the sink checks
/// at start), and the probe leaves nothing behind.
async fn conditional_create_is_honoured(store: &ArchiveStore) {
    assert!(conditional_create_holds(store).await.unwrap());
    let left = store
        .store
        .list_with_delimiter(Some(&store.path("_probe")))
        .await
        .unwrap();
    assert!(left.objects.is_empty(), "{left:?}");
}

/// Manifests: `plan_manifest` covers the whole verified chain; after one
/// is written, readers take the chain from it plus the checkpoints named
/// after it (listed from its last name, not in full); a gap after it, or a
/// manifest that is not this partition's, fails the read instead of being
/// trusted.
async fn manifests(store: &ArchiveStore) {
    let table = cdc_tests::unique("manifest");
    let w = "w1";
    let mut chain = Vec::new();
    for i in 0..12i64 {
        let mut c = checkpoint(&table, 0, i * 10, i * 10 + 9, Some(Hlc::new(100 + i, 0)), w);
        if i == 5 {
            // One with a segment: once only the manifest names it, it is
            // still no orphan.
            let path = layout::segment_path(&table, 0, 50, 59, "m0");
            put(store, &path, b"segment bytes".to_vec()).await;
            c.segment = Some(SegmentRef::describe(path, b"segment bytes", 1, vec![]));
        }
        create(store, &c).await.unwrap();
        chain.push(c);
    }
    let before = read_chain(store, &table, 0).await.unwrap();
    assert_eq!(before.checkpoints, chain);
    let m = plan_manifest(store, &table, 0)
        .await
        .unwrap()
        .expect("a plan");
    // Runs of checkpoints that name no file are merged (offsets and counts
    // summed, the last one's resolved); the one with a segment and the
    // last are copied as stored.
    assert_eq!(
        (m.first_offset, m.last_offset, m.checkpoints.len()),
        (0, 119, 4)
    );
    let merged = |e: &Checkpoint| {
        (
            e.first_offset,
            e.last_offset,
            e.merged,
            e.counts.events,
            e.counts.resolved,
            e.resolved,
        )
    };
    assert_eq!(
        merged(&m.checkpoints[0]),
        (0, 49, Some(5), 50, 5, Some(Hlc::new(104, 0)))
    );
    assert_eq!(m.checkpoints[1], chain[5]);
    assert_eq!(
        merged(&m.checkpoints[2]),
        (60, 109, Some(5), 50, 5, Some(Hlc::new(110, 0)))
    );
    assert_eq!(m.checkpoints[3], chain[11]);
    // Readers now take the manifest's entries: the same offsets, segments
    // and resolved timestamps as the objects.
    let compacted = |tail: &[Checkpoint]| -> Vec<Checkpoint> {
        m.checkpoints.iter().chain(tail).cloned().collect()
    };
    assert_eq!(write_manifest(store, &m).await.unwrap(), Created::Created);
    assert_eq!(
        write_manifest(store, &m).await.unwrap(),
        Created::AlreadyThere
    );
    let read = read_chain(store, &table, 0).await.unwrap();
    assert_eq!(read.checkpoints, compacted(&[]));
    assert_eq!(read.resolved(), before.resolved());
    assert!(plan_manifest(store, &table, 0).await.unwrap().is_none());
    // No tail yet: the latest is the manifest's last.
    assert_eq!(
        newest_manifest_end(store, &table, 0).await.unwrap(),
        Some((119, 110))
    );
    assert_eq!(
        latest(store, &table, 0).await.unwrap().as_ref(),
        chain.last()
    );
    // Three more checkpoints after it: the chain is manifest + tail.
    for i in 12..15i64 {
        let c = checkpoint(&table, 0, i * 10, i * 10 + 9, Some(Hlc::new(100 + i, 0)), w);
        create(store, &c).await.unwrap();
        chain.push(c);
    }
    assert_eq!(
        list_checkpoints_after(store, &table, 0, 110).await.unwrap(),
        vec![120, 130, 140]
    );
    // The covered checkpoint objects removed (as a later `gc` would): the
    // chain still reads whole, from the manifest, and so do latest and
    // the watermark.
    for c in &chain[..12] {
        store.store.delete(&store.path(&c.path())).await.unwrap();
    }
    let after = read_chain(store, &table, 0).await.unwrap();
    assert_eq!(after.checkpoints, compacted(&chain[12..]));
    assert_eq!(
        latest(store, &table, 0).await.unwrap().as_ref(),
        chain.last()
    );
    // A gap after the manifest fails the read.
    let c = checkpoint(&table, 0, 160, 169, None, w);
    create(store, &c).await.unwrap();
    assert!(matches!(
        read_chain(store, &table, 0).await,
        Err(CheckpointError::Broken { .. })
    ));
    // A manifest in p1's folder that is p0's is refused, not used.
    let mut foreign = m.clone();
    foreign.table = table.clone();
    put(
        store,
        &manifest_path_of(&table, 1, foreign.last_offset, foreign.tail_first()),
        serde_json::to_vec(&foreign).unwrap(),
    )
    .await;
    create(store, &checkpoint(&table, 1, 0, 9, None, w))
        .await
        .unwrap();
    assert!(matches!(
        read_chain(store, &table, 1).await,
        Err(CheckpointError::Broken { .. })
    ));
}

/// A manifest written by the version before merged runs (format 1, every
/// checkpoint verbatim) still reads; format 1 with a merged entry, or a
/// merged entry that names a file, is refused.
async fn manifest_formats(store: &ArchiveStore) {
    let table = cdc_tests::unique("manifest_v1");
    let chain: Vec<Checkpoint> = (0..4i64)
        .map(|i| {
            checkpoint(
                &table,
                0,
                i * 10,
                i * 10 + 9,
                Some(Hlc::new(100 + i, 0)),
                "w",
            )
        })
        .collect();
    for c in &chain {
        create(store, c).await.unwrap();
    }
    let v1 = Manifest {
        format_version: 1,
        table: table.clone(),
        partition: 0,
        first_offset: 0,
        last_offset: 39,
        checkpoints: chain.clone(),
        purged_through: None,
        previous_manifest: None,
        previous_manifest_sha256: None,
    };
    put(store, &v1.path(), serde_json::to_vec(&v1).unwrap()).await;
    assert_eq!(
        read_chain(store, &table, 0).await.unwrap().checkpoints,
        chain
    );
    // Format 1 does not merge.
    let mut bad = Manifest::of(&table, 0, chain.clone());
    assert_eq!(bad.checkpoints[0].merged, Some(3));
    bad.format_version = 1;
    let table2 = cdc_tests::unique("manifest_v1_merged");
    let rename = |m: &mut Manifest, t: &str| {
        m.table = t.to_owned();
        for c in &mut m.checkpoints {
            c.table = t.to_owned();
        }
    };
    rename(&mut bad, &table2);
    put(store, &bad.path(), serde_json::to_vec(&bad).unwrap()).await;
    assert!(matches!(
        read_chain(store, &table2, 0).await,
        Err(CheckpointError::Broken { .. })
    ));
    // A merged entry that names a segment is refused.
    let table3 = cdc_tests::unique("manifest_merged_segment");
    let mut bad = Manifest::of(&table3, 0, chain.clone());
    rename(&mut bad, &table3);
    bad.checkpoints[0].segment = Some(SegmentRef::describe("x".into(), b"x", 1, vec![]));
    put(store, &bad.path(), serde_json::to_vec(&bad).unwrap()).await;
    assert!(matches!(
        read_chain(store, &table3, 0).await,
        Err(CheckpointError::Broken { .. })
    ));
}

/// `gc` after a compaction: it removes only what the newest manifest holds
/// (never its last checkpoint), superseded manifests and covered orphans,
/// all older than the safety age, records it first, keeps a checkpoint
/// object that differs from the manifest, and readers see the same chain
/// before and after.
async fn gc_after_compaction(store: &ArchiveStore) {
    let table = cdc_tests::unique("gc");
    let mut chain = Vec::new();
    for i in 0..8i64 {
        let mut c = checkpoint(
            &table,
            0,
            i * 10,
            i * 10 + 9,
            Some(Hlc::new(100 + i, 0)),
            "w",
        );
        if i == 2 || i == 5 {
            let path = layout::segment_path(&table, 0, i * 10, i * 10 + 9, "g");
            put(store, &path, b"rows".to_vec()).await;
            c.segment = Some(SegmentRef::describe(path, b"rows", 1, vec![]));
            c.counts.rows_archived = 1;
        }
        create(store, &c).await.unwrap();
        chain.push(c);
    }
    // A covered orphan (a crashed upload of offsets 20..=29).
    let orphan = layout::segment_path(&table, 0, 20, 29, "crashed");
    put(store, &orphan, b"lost upload".to_vec()).await;
    let m = plan_manifest(store, &table, 0).await.unwrap().unwrap();
    write_manifest(store, &m).await.unwrap();
    let before = read_chain(store, &table, 0).await.unwrap();

    // The manifest is younger than the safety age: nothing is planned.
    let young = plan_gc(store, &table, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(young.remove.is_empty(), "{young:?}");
    assert!(young.kept.iter().any(|k| k.path == m.path()));

    // A checkpoint object that differs from its copy is kept.
    let mut tampered = chain[2].clone();
    tampered.counts.rows_archived = 7;
    put(store, &tampered.path(), tampered.to_json()).await;

    let plan = plan_gc(store, &table, Duration::ZERO).await.unwrap();
    let planned: Vec<&str> = plan.remove.iter().map(|i| i.path.as_str()).collect();
    // Kept: 0 (the chain's first, an anchor), 2 (altered), 7 (the last).
    let mut expected: Vec<String> = [1usize, 3, 4, 5, 6]
        .iter()
        .map(|&i| chain[i].path())
        .collect();
    expected.push(orphan.clone());
    expected.sort();
    assert_eq!(planned, expected);
    assert!(plan
        .kept
        .iter()
        .any(|k| k.path == chain[2].path() && k.reason.contains("differs")));
    put(store, &chain[2].path(), chain[2].to_json()).await;

    let record = run_gc(store, &plan, "test-1").await.unwrap();
    let stored: GcRecord = serde_json::from_slice(
        &store
            .store
            .get(&store.path(&layout::gc_path(&table, "test-1")))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored, record);
    assert_eq!(stored.removed, plan.remove);
    for path in &expected {
        assert!(store.store.head(&store.path(path)).await.is_err(), "{path}");
    }
    // Readers see the same chain; the segments only the manifest names
    // are no orphans; the partition is still listed; latest still reads.
    assert_eq!(read_chain(store, &table, 0).await.unwrap(), before);
    assert!(orphans(store, &table).await.unwrap().is_empty());
    assert_eq!(partitions(store, &table).await.unwrap(), vec![0]);
    assert_eq!(
        latest(store, &table, 0).await.unwrap().as_ref(),
        chain.last()
    );
    assert_eq!(head(store, &table, 0).await.unwrap(), Some((70, true)));
    // Resumable: a second plan finds only what the first kept on purpose.
    let again = plan_gc(store, &table, Duration::ZERO).await.unwrap();
    assert_eq!(
        again.remove.iter().map(|i| &i.path).collect::<Vec<_>>(),
        vec![&chain[2].path()]
    );

    // The chain grows and is compacted again: the older manifest and the
    // old last checkpoint go; the new last stays.
    for i in 8..11i64 {
        let c = checkpoint(
            &table,
            0,
            i * 10,
            i * 10 + 9,
            Some(Hlc::new(100 + i, 0)),
            "w",
        );
        create(store, &c).await.unwrap();
        chain.push(c);
    }
    let m2 = plan_manifest(store, &table, 0).await.unwrap().unwrap();
    write_manifest(store, &m2).await.unwrap();
    let before = read_chain(store, &table, 0).await.unwrap();
    let plan = plan_gc(store, &table, Duration::ZERO).await.unwrap();
    let planned: Vec<&str> = plan.remove.iter().map(|i| i.path.as_str()).collect();
    let mut expected = vec![
        chain[2].path(),
        chain[7].path(),
        chain[8].path(),
        chain[9].path(),
        m.path(),
    ];
    expected.sort();
    assert_eq!(planned, expected);
    run_gc(store, &plan, "test-2").await.unwrap();
    assert_eq!(read_chain(store, &table, 0).await.unwrap(), before);
    assert_eq!(head(store, &table, 0).await.unwrap(), Some((100, true)));

    // The manifest lost after gc: the anchor and the last checkpoint are
    // not contiguous, so the chain is refused (never read as one that
    // starts late) and no segment it named counts as a covered orphan.
    store.store.delete(&store.path(&m2.path())).await.unwrap();
    assert!(matches!(
        read_chain(store, &table, 0).await,
        Err(CheckpointError::Broken { .. })
    ));
    let left = orphans(store, &table).await.unwrap();
    assert!(left.iter().all(|o| !o.covered), "{left:?}");
    assert!(clean_orphans(store, &table, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
}

fn manifest_path_of(table: &str, partition: i32, last: i64, tail_first: i64) -> String {
    layout::manifest_path(table, partition, last, tail_first)
}

#[tokio::test]
async fn local_file_system() {
    let (store, _dir) = cdc_tests::local_archive();
    chain_ops(&store).await;
    segments_and_orphans(&store).await;
    delete_files(&store).await;
    orphans_beyond_the_chain_end_are_kept(&store).await;
    long_chain_reads_in_order(&store).await;
    purge_records(&store).await;
    conditional_create_is_honoured(&store).await;
    manifests(&store).await;
    manifest_formats(&store).await;
    gc_after_compaction(&store).await;
}

#[tokio::test]
async fn s3_compatible_server() {
    let store = cdc_tests::s3_archive(&cdc_tests::unique("ckpt"));
    chain_ops(&store).await;
    segments_and_orphans(&store).await;
    delete_files(&store).await;
    orphans_beyond_the_chain_end_are_kept(&store).await;
    long_chain_reads_in_order(&store).await;
    purge_records(&store).await;
    conditional_create_is_honoured(&store).await;
    manifests(&store).await;
    manifest_formats(&store).await;
    gc_after_compaction(&store).await;
}
