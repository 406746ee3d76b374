//! `retrieve_deletes` and `retrieve --deletes` against a real archive on
//! the local file system, its delete files written with the real encoder
//! and named by real checkpoints (see `common/payments.rs` for the deletes
//! it holds), and the wall between rows and deletes.

#[path = "common/archive.rs"]
mod archive;
#[path = "common/cli.rs"]
mod cli;
#[path = "common/payments.rs"]
mod payments;

use cdc_changefeed::Hlc;
use cdc_checkpoint::{Checkpoint, CheckpointError, Counts};
use cdc_retrieve::{DeleteStats, FoundDelete, Predicate, RetrieveError, Selector};
use payments::*;

async fn deletes(
    archive: &archive::Archive,
    selector: Selector,
) -> (Vec<FoundDelete>, DeleteStats) {
    cdc_retrieve::retrieve_deletes(&archive.store, &query(archive, selector, false))
        .await
        .unwrap()
}

async fn rows(archive: &archive::Archive, selector: Selector) -> Vec<cdc_retrieve::Found> {
    let q = query(archive, selector, true);
    cdc_retrieve::retrieve(&archive.store, &q).await.unwrap().0
}

/// `(key as archived, deleting transaction)` of each delete, in order.
fn listed(found: &[FoundDelete]) -> Vec<(String, u64)> {
    found
        .iter()
        .map(|f| {
            (
                f.delete.meta.key_json.clone(),
                f.delete.meta.pg_xid.unwrap(),
            )
        })
        .collect()
}

fn owned(key: &str, xids: &[u64]) -> Vec<(String, u64)> {
    xids.iter().map(|x| (key.to_owned(), *x)).collect()
}

fn where_(text: &str) -> Selector {
    Selector::Column(Predicate::parse(text).unwrap())
}

fn deletes_path(cp: &Checkpoint) -> &str {
    &cp.deletes.as_ref().unwrap().path
}

/// Every delete of the archive, oldest first per key (keys in canonical
/// order: the payment's date sorts first, then K's, then the unarchived).
fn every_delete() -> Vec<(String, u64)> {
    let mut all = owned(&key_of(DELETED_PAYMENT), &[90]);
    all.extend(owned(K, &[K_DELETE_XID]));
    all.extend(owned(NEVER_ARCHIVED, &[80, 81]));
    all
}

#[tokio::test]
async fn a_key_deleted_at_the_source_is_listed_once_with_its_before_and_version() {
    let (archive, cps) = build("payments").await;
    let (found, stats) = deletes(&archive, Selector::Key(key(K))).await;
    assert_eq!(listed(&found), owned(K, &[K_DELETE_XID]), "{stats:?}");
    let d = &found[0];
    assert_eq!(
        d.delete.meta.updated,
        Some(k_updated(33)),
        "its first delivery, not the copy re-sent in checkpoint 35"
    );
    assert_eq!(stats.duplicates_dropped, 1);
    assert_eq!(d.deletes_file, deletes_path(&cps[33]));
    assert_eq!(d.checkpoint_first_offset, cps[33].first_offset);
    assert_eq!(
        (d.delete.meta.partition, d.delete.meta.topic.as_str()),
        (1, "payments")
    );
    let version_60 = k_version(K, 60, k_updated(17));
    assert_eq!(
        d.delete.before.as_ref(),
        Some(&version_60.columns),
        "the deleted row, exact values (amount 2.00)"
    );

    // Any spelling of the key finds it.
    let (again, _) = deletes(&archive, Selector::Key(key(K_RESENT))).await;
    assert_eq!(listed(&again), owned(K, &[K_DELETE_XID]));

    // A key that was never archived: its deletes are recorded by key and
    // version only, each distinct delete listed, oldest first.
    let (found, _) = deletes(&archive, Selector::Key(key(NEVER_ARCHIVED))).await;
    assert_eq!(listed(&found), owned(NEVER_ARCHIVED, &[80, 81]));
    assert!(found.iter().all(|f| f.delete.before.is_none()));
    assert_eq!(
        found[1].delete.meta.updated,
        Some(never_archived_updated(81))
    );
    assert_eq!(found[0].deletes_file, deletes_path(&cps[SEGMENTS as usize]));
    assert!(cps[SEGMENTS as usize].segment.is_none());

    // A key that has rows only, or nothing: no delete.
    for absent in [key_of(1234), r#"["2031-01-01",1]"#.to_owned()] {
        let (found, _) = deletes(&archive, Selector::Key(key(&absent))).await;
        assert!(found.is_empty(), "{absent}");
    }
}

#[tokio::test]
async fn rows_and_deletes_never_mix() {
    let (archive, cps) = build("payments").await;
    // A delete listing holds the deletes, nothing else.
    let (all, stats) = deletes(&archive, Selector::KeyPrefix(vec![])).await;
    assert_eq!(listed(&all), every_delete(), "{stats:?}");
    assert_eq!(stats.deletes_scanned, 5, "4 deletes and one re-sent copy");

    // A row look-up never reads a delete file: with every one damaged, it
    // still answers, and with rows only. The deleted keys' archived
    // versions are still archived rows; the key never archived is nowhere.
    for &c in &DELETE_CHECKPOINTS {
        std::fs::write(archive.deletes_file_of(&cps[c]), b"damaged").unwrap();
    }
    let everything = rows(&archive, Selector::KeyPrefix(vec![])).await;
    assert_eq!(
        everything.len(),
        (SEGMENTS * ROWS_PER_SEGMENT) as usize + 2,
        "every payment and K's two versions"
    );
    assert!(everything.iter().all(|f| f.segment.contains("/segments/")));
    assert!(rows(&archive, Selector::Key(key(NEVER_ARCHIVED)))
        .await
        .is_empty());
    let k = rows(&archive, Selector::Key(key(K))).await;
    let xids: Vec<Option<u64>> = k.iter().map(|f| f.row.meta.pg_xid).collect();
    assert_eq!(xids, [Some(50), Some(60)], "archived versions, no delete");
    let paid = rows(&archive, Selector::Key(key(&key_of(DELETED_PAYMENT)))).await;
    assert_eq!(paid.len(), 1);
}

#[tokio::test]
async fn every_delete_file_and_nothing_else_is_read() {
    let (archive, cps) = build("payments").await;
    // A delete listing never reads a segment.
    std::fs::write(archive.file_of(&cps[33]), b"damaged").unwrap();
    let range = Selector::Updated {
        from: Some(seg_base(33)),
        to: Some(seg_base(34)),
    };
    let absent = Selector::Key(key(r#"["2031-01-01",1]"#));
    for selector in [Selector::Key(key(K)), absent, range, where_("amount=2.00")] {
        let (_, stats) = deletes(&archive, selector.clone()).await;
        assert_eq!(stats.checkpoints, SEGMENTS as usize + 1);
        assert_eq!(stats.delete_files_total, DELETE_CHECKPOINTS.len());
        // Checkpoints record no key filter or `updated` range over their
        // deletes: the checkpoints without a delete file are all that a
        // look-up can skip.
        assert_eq!(
            stats.delete_files_read,
            DELETE_CHECKPOINTS.len(),
            "{selector:?}: {stats:?}"
        );
        assert_eq!(
            (stats.checkpoints_unrecorded, stats.deletes_unrecorded),
            (0, 0)
        );
    }
}

#[tokio::test]
async fn an_updated_range_selects_deletes_by_their_first_delivery() {
    let (archive, _) = build("payments").await;
    let range = |from: Option<Hlc>, to: Option<Hlc>| Selector::Updated { from, to };
    let next = |h: Hlc| Hlc::new(h.wall + 1, 0);
    let (found, _) = deletes(
        &archive,
        range(Some(k_updated(33)), Some(next(k_updated(33)))),
    )
    .await;
    assert_eq!(listed(&found), owned(K, &[K_DELETE_XID]));
    // After the first delivery: the copy re-sent in range is not a delete
    // of that range.
    let (found, _) = deletes(&archive, range(Some(seg_base(34)), None)).await;
    assert_eq!(listed(&found), owned(NEVER_ARCHIVED, &[80, 81]));
    // `to` is exclusive.
    let (found, _) = deletes(&archive, range(None, Some(k_updated(33)))).await;
    assert_eq!(listed(&found), owned(&key_of(DELETED_PAYMENT), &[90]));
    let (found, _) = deletes(&archive, range(None, Some(next(k_updated(33))))).await;
    assert_eq!(listed(&found), every_delete()[..2].to_vec());
    // Combined with a key.
    let both = Selector::All(vec![
        Selector::Key(key(NEVER_ARCHIVED)),
        range(Some(never_archived_updated(81)), None),
    ]);
    let (found, _) = deletes(&archive, both).await;
    assert_eq!(listed(&found), owned(NEVER_ARCHIVED, &[81]));
}

#[tokio::test]
async fn a_column_predicate_is_checked_on_the_deleted_row() {
    let (archive, _) = build("payments").await;
    let (found, stats) = deletes(&archive, where_("amount=2")).await;
    assert_eq!(
        listed(&found),
        owned(K, &[K_DELETE_XID]),
        "2 = 2.00, exactly"
    );
    assert_eq!(stats.without_before, 2, "the deletes of the unarchived key");
    let (found, _) = deletes(&archive, where_("amount>0")).await;
    assert_eq!(listed(&found), every_delete()[..2].to_vec());
    let (found, _) = deletes(&archive, where_("id=1500")).await;
    assert_eq!(listed(&found), owned(&key_of(DELETED_PAYMENT), &[90]));
    // Nothing to check it on: nothing listed, and counted.
    let never = Selector::All(vec![
        Selector::Key(key(NEVER_ARCHIVED)),
        where_("archived=true"),
    ]);
    let (found, stats) = deletes(&archive, never).await;
    assert!(found.is_empty());
    assert_eq!(stats.without_before, 2);
}

#[tokio::test]
async fn a_damaged_or_missing_delete_file_is_an_error_not_an_empty_answer() {
    let (archive, cps) = build("payments").await;
    let attempt = |selector| {
        let q = query(&archive, selector, false);
        let store = archive.store.clone();
        async move {
            cdc_retrieve::retrieve_deletes(&store, &q)
                .await
                .unwrap_err()
        }
    };
    std::fs::write(archive.deletes_file_of(&cps[33]), b"not the recorded bytes").unwrap();
    let err = attempt(Selector::Key(key(K))).await;
    assert!(
        matches!(&err, RetrieveError::Checkpoint(CheckpointError::SegmentCorrupt { path, .. }) if path == deletes_path(&cps[33])),
        "{err}"
    );
    // Every delete file is read, so any damage fails every listing.
    let err = attempt(Selector::Key(key(NEVER_ARCHIVED))).await;
    assert!(err.to_string().contains("corrupt"), "{err}");
    std::fs::remove_file(archive.deletes_file_of(&cps[35])).unwrap();
    std::fs::remove_file(archive.deletes_file_of(&cps[33])).unwrap();
    let err = attempt(Selector::KeyPrefix(vec![])).await;
    assert!(
        matches!(
            &err,
            RetrieveError::Checkpoint(CheckpointError::SegmentMissing { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_delete_file_must_be_its_checkpoints() {
    let (archive, cps) = build("payments").await;
    // A checkpoint that names another range's delete file (size and
    // checksum right): refused, not read as this range's deletes.
    let end = &cps[SEGMENTS as usize - 1];
    assert_eq!(end.partition, cps[33].partition);
    let forged = Checkpoint {
        first_offset: end.last_offset + 1,
        last_offset: end.last_offset + 1,
        segment: None,
        key_filter: None,
        deletes: cps[33].deletes.clone(),
        counts: Counts {
            events: 1,
            deletes: 1,
            ..Counts::default()
        },
        ..end.clone()
    };
    cdc_checkpoint::create(&archive.store, &forged)
        .await
        .unwrap();
    let q = query(&archive, Selector::Key(key(K)), false);
    let err = cdc_retrieve::retrieve_deletes(&archive.store, &q)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RetrieveError::DeleteFile { reason, .. } if reason.contains("not this checkpoint's")),
        "{err}"
    );
}

#[tokio::test]
async fn deletes_only_counted_by_older_checkpoints_are_reported() {
    let (mut archive, _) = build("payments").await;
    archive.flush_unrecorded_deletes(1, 3, None).await;
    let (found, stats) = deletes(&archive, Selector::KeyPrefix(vec![])).await;
    assert_eq!(listed(&found), every_delete());
    assert_eq!(
        (stats.checkpoints_unrecorded, stats.deletes_unrecorded),
        (1, 3)
    );
}

#[tokio::test]
async fn the_binary_prints_deletes_only_with_deletes_and_keeps_its_exit_codes() {
    let (archive, cps) = build("payments").await;
    let retrieve = |args: &[&str]| cli::retrieve(&archive, args);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let hit = retrieve(&["--deletes", "--key", K]);
    assert_eq!(hit.status.code(), Some(0), "{hit:?}");
    let stdout = text(&hit.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(r#""amount":2.00"#),
        "exact values: {stdout}"
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["_op"], "delete");
    assert_eq!(line["_key"], serde_json::json!(["2024-02-29", 7]));
    assert_eq!(line["_pg_xid"], K_DELETE_XID);
    assert_eq!(line["_updated"], k_updated(33).to_string());
    assert_eq!(line["_before"]["id"], 7);
    assert!(line.get("_archive").is_none());
    let stderr = text(&hit.stderr);
    let files = DELETE_CHECKPOINTS.len();
    assert!(
        stderr.contains(&format!("read {files} of {files} delete file(s)")),
        "{stderr}"
    );

    let meta = retrieve(&["--deletes", "--key", NEVER_ARCHIVED, "--with-meta"]);
    assert_eq!(meta.status.code(), Some(0), "{meta:?}");
    let lines: Vec<serde_json::Value> = text(&meta.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let archived = &lines[0]["_archive"];
    assert_eq!(
        archived["deletes_file"],
        deletes_path(&cps[SEGMENTS as usize])
    );
    assert_eq!(archived["partition"], 0);
    assert_eq!(archived["offset"], cps[SEGMENTS as usize].first_offset);
    assert_eq!(archived["pg_xid"], 80);
    assert_eq!(archived["updated"], never_archived_updated(80).to_string());
    assert_eq!(lines[0]["_before"], serde_json::Value::Null);

    let csv_out = retrieve(&[
        "--deletes",
        "--key-prefix",
        "[]",
        "--format",
        "csv",
        "--with-meta",
    ]);
    assert_eq!(csv_out.status.code(), Some(0), "{csv_out:?}");
    let mut reader = csv::Reader::from_reader(csv_out.stdout.as_slice());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let mut want: Vec<String> = cdc_retrieve::CSV_DELETE_COLUMNS.map(String::from).to_vec();
    want.extend(
        k_version(K, 60, k_updated(17))
            .columns
            .into_iter()
            .map(|(c, _)| c),
    );
    want.extend(cdc_retrieve::CSV_DELETE_META_COLUMNS.map(String::from));
    assert_eq!(header, want);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), every_delete().len());
    assert!(records.iter().all(|r| &r[0] == "delete"));
    let k = &records[1];
    assert_eq!((&k[1], &k[4], &k[5], &k[8]), (K, "70", "true", "2.00"));
    let never = &records[2];
    assert_eq!(
        (&never[1], &never[5], &never[8]),
        (NEVER_ARCHIVED, "false", "")
    );

    // Nothing matches: 4, whichever kind was asked for.
    let not_a_row = retrieve(&["--key", NEVER_ARCHIVED]);
    assert_eq!(not_a_row.status.code(), Some(4), "{not_a_row:?}");
    assert!(not_a_row.stdout.is_empty());
    assert!(text(&not_a_row.stderr).contains("--deletes"));
    let not_deleted = retrieve(&["--deletes", "--key", &key_of(1234)]);
    assert_eq!(not_deleted.status.code(), Some(4), "{not_deleted:?}");
    assert!(not_deleted.stdout.is_empty());

    let predicate = retrieve(&["--deletes", "--where", "amount>0"]);
    assert_eq!(predicate.status.code(), Some(0), "{predicate:?}");
    assert_eq!(text(&predicate.stdout).lines().count(), 2);
    assert!(text(&predicate.stderr).contains("2 more delete(s)"));

    // A damaged delete file fails a delete listing (1), not a row look-up.
    std::fs::write(archive.deletes_file_of(&cps[33]), b"damaged").unwrap();
    let damaged = retrieve(&["--deletes", "--key", K]);
    assert_eq!(damaged.status.code(), Some(1), "{damaged:?}");
    assert!(text(&damaged.stderr).contains("corrupt"));
    assert!(damaged.stdout.is_empty());
    let row = retrieve(&["--key", K]);
    assert_eq!(row.status.code(), Some(0), "{row:?}");
    let line: serde_json::Value = serde_json::from_str(text(&row.stdout).trim()).unwrap();
    assert_eq!(line["amount"], serde_json::json!(2.00), "the archived row");
    assert!(line.get("_op").is_none());
}
