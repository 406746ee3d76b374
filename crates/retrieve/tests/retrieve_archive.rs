//! `retrieve` against a real archive on the local file system, written
//! with the real segment encoder and checkpoint writer (see
//! `common/payments.rs` for what it holds).

#[path = "common/archive.rs"]
mod archive;
#[path = "common/cli.rs"]
mod cli;
#[path = "common/payments.rs"]
mod payments;

use cdc_changefeed::{Hlc, Value};
use cdc_checkpoint::{Checkpoint, CheckpointError, SegmentRef};
use cdc_retrieve::{Found, Predicate, RetrieveError, RetrieveStats, Selector};
use cdc_segment::reader::OpenError;
use payments::*;

async fn get(
    archive: &archive::Archive,
    selector: Selector,
    all_versions: bool,
) -> (Vec<Found>, RetrieveStats) {
    cdc_retrieve::retrieve(&archive.store, &query(archive, selector, all_versions))
        .await
        .unwrap()
}

fn col<'a>(f: &'a Found, name: &str) -> &'a Value {
    &f.row.columns.iter().find(|(c, _)| c == name).unwrap().1
}

fn ids(found: &[Found]) -> Vec<i64> {
    found
        .iter()
        .map(|f| col(f, "id").to_json_text().parse().unwrap())
        .collect()
}

const TOTAL_KEYS: usize = (SEGMENTS * ROWS_PER_SEGMENT) as usize + 1;

#[tokio::test]
async fn a_key_reads_only_the_segments_its_filter_allows_and_returns_the_latest_version() {
    let (archive, _) = build("payments").await;
    let (found, stats) = get(&archive, Selector::Key(key(K)), false).await;
    assert_eq!(stats.segments_total, SEGMENTS as usize);
    assert!(
        (K_SEGMENTS.len()..=K_SEGMENTS.len() + 3).contains(&stats.segments_read),
        "the three segments holding the key, plus at most a few Bloom false positives: {stats:?}"
    );
    assert_eq!(found.len(), 1, "{stats:?}");
    assert_eq!(found[0].row.meta.pg_xid, Some(60), "the latest version");
    assert_eq!(col(&found[0], "amount"), &Value::Number("2.00".into()));
    assert_eq!(
        (stats.duplicates_dropped, stats.older_versions_omitted),
        (2, 1),
        "the re-sent copies are duplicates, version 50 is older"
    );

    // Any spelling of the key finds it.
    let (again, _) = get(&archive, Selector::Key(key(K_RESENT)), false).await;
    assert_eq!(again.len(), 1);

    // An ordinary key: one segment (plus false positives), one row.
    let (found, stats) = get(&archive, Selector::Key(key(&key_of(1234))), false).await;
    assert_eq!(ids(&found), [1234]);
    assert!(stats.segments_read <= 4, "{stats:?}");
    assert_eq!(col(&found[0], "amount"), &Value::Number("1234.25".into()));

    // Absent key: an empty answer, not an error, and almost nothing read.
    let (found, stats) = get(&archive, Selector::Key(key(r#"["2031-01-01",1]"#)), false).await;
    assert!(found.is_empty());
    assert!(stats.segments_read <= 3, "{stats:?}");
}

#[tokio::test]
async fn all_versions_lists_each_distinct_version_once_oldest_first() {
    let (archive, cps) = build("payments").await;
    let (found, stats) = get(&archive, Selector::Key(key(K)), true).await;
    let xids: Vec<Option<u64>> = found.iter().map(|f| f.row.meta.pg_xid).collect();
    assert_eq!(xids, [Some(50), Some(60)], "{stats:?}");
    assert_eq!(stats.duplicates_dropped, 2);
    // The copy kept of version 50 is its first delivery, not the re-sent one.
    assert_eq!(found[0].row.meta.updated, Some(k_updated(3)));
    assert_eq!(found[0].checkpoint_first_offset, cps[3].first_offset);
    assert_eq!(found[0].segment, cps[3].segment.as_ref().unwrap().path);
    assert_eq!(col(&found[0], "amount"), &Value::Number("1.00".into()));
    assert_eq!(col(&found[1], "amount"), &Value::Number("2.00".into()));
}

#[tokio::test]
async fn a_key_and_an_updated_range_combine() {
    let (archive, _) = build("payments").await;
    let range = |from: Option<Hlc>, to: Option<Hlc>| {
        Selector::All(vec![Selector::Key(key(K)), Selector::Updated { from, to }])
    };
    // Before version 60 was archived: version 50 is the latest there.
    let (found, stats) = get(&archive, range(None, Some(k_updated(17))), false).await;
    assert_eq!(found.len(), 1, "{stats:?}");
    assert_eq!(found[0].row.meta.pg_xid, Some(50));
    assert!(
        stats.segments_read <= 3,
        "the key filter and the time range both prune: {stats:?}"
    );
    // From version 60 on: only version 60, even with every version asked
    // for. The copy of version 50 re-sent in that range is not a version
    // of that range: its first delivery was earlier.
    for all in [false, true] {
        let (found, stats) = get(&archive, range(Some(k_updated(17)), None), all).await;
        let xids: Vec<Option<u64>> = found.iter().map(|f| f.row.meta.pg_xid).collect();
        assert_eq!(xids, [Some(60)], "{stats:?}");
        assert_eq!(found[0].row.meta.updated, Some(k_updated(17)));
    }
    // Only the re-sent copies lie in this range: no version does.
    let (found, stats) = get(&archive, range(Some(k_updated(30)), None), true).await;
    assert!(found.is_empty(), "{stats:?}");
    // A range that holds no copy of the key.
    let (found, stats) = get(&archive, range(Some(seg_base(35)), None), false).await;
    assert!(found.is_empty());
    assert!(stats.segments_read <= 2, "{stats:?}");
}

#[tokio::test]
async fn a_prefix_returns_every_key_under_it_once() {
    let (archive, _) = build("payments").await;
    let (found, stats) = get(
        &archive,
        Selector::KeyPrefix(key(r#"["2024-01-05"]"#)),
        false,
    )
    .await;
    let want: Vec<i64> = (0..SEGMENTS * ROWS_PER_SEGMENT)
        .filter(|n| date_of(*n) == "2024-01-05")
        .collect();
    let mut got = ids(&found);
    got.sort_unstable();
    assert_eq!(got, want);
    // Checkpoints record no key range: a prefix reads every segment.
    assert_eq!(stats.segments_read, SEGMENTS as usize);

    let (found, stats) = get(&archive, Selector::KeyPrefix(vec![]), false).await;
    assert_eq!(found.len(), TOTAL_KEYS, "every key once: {stats:?}");
    let (found, _) = get(&archive, Selector::KeyPrefix(vec![]), true).await;
    assert_eq!(found.len(), TOTAL_KEYS + 1, "plus the older version of K");
}

#[tokio::test]
async fn an_updated_range_reads_only_the_segments_it_overlaps() {
    let (archive, _) = build("payments").await;
    let (found, stats) = get(
        &archive,
        Selector::Updated {
            from: Some(seg_base(10)),
            to: Some(seg_base(12)),
        },
        false,
    )
    .await;
    let mut got = ids(&found);
    got.sort_unstable();
    let want: Vec<i64> = (10 * ROWS_PER_SEGMENT..12 * ROWS_PER_SEGMENT).collect();
    assert_eq!(got, want, "[from, to): the bound `to` is exclusive");
    // The 2 segments in range, and of the 10 before it only those whose key
    // filter may hold one of the 100 keys found (earlier deliveries of the
    // same versions would take them out of the range); none after it.
    assert!((2..=12).contains(&stats.segments_read), "{stats:?}");
}

#[tokio::test]
async fn predicates_compare_30_digit_decimals_exactly() {
    let (archive, _) = build("payments").await;
    let by = |text: &str| Selector::Column(Predicate::parse(text).unwrap());
    let (found, _) = get(&archive, by(&format!("amount={BIG}")), false).await;
    assert_eq!(
        ids(&found),
        [100],
        "the neighbour differs in the 30th digit"
    );
    let (found, _) = get(&archive, by(&format!("amount = {BIG}000")), false).await;
    assert_eq!(ids(&found), [100], "trailing zeros do not matter");
    let (found, _) = get(&archive, by(&format!("amount>{BIG}")), false).await;
    assert_eq!(ids(&found), [101]);
    let (found, _) = get(&archive, by(&format!("amount>={BIG_NEIGHBOUR}")), false).await;
    assert_eq!(ids(&found), [101]);
    let (found, _) = get(&archive, by("amount=1E+2"), false).await;
    assert_eq!(ids(&found), [102], "exponent form equals 100.00");
    // The latest *matching* version of each key: 0.25, 1.25 and K's
    // version 50 (1.00; its version 60, 2.00, does not match).
    let (found, _) = get(&archive, by("amount<1.5"), false).await;
    assert_eq!(ids(&found), [0, 1, 7]);
    assert_eq!(found[2].row.meta.pg_xid, Some(50));
    let (found, _) = get(&archive, by("currency=CHF"), false).await;
    assert_eq!(
        found.len(),
        (0..SEGMENTS * ROWS_PER_SEGMENT)
            .filter(|n| n % 3 == 0)
            .count()
    );
}

#[tokio::test]
async fn csv_keeps_exact_values_and_quotes() {
    let (archive, _) = build("payments").await;
    let (mut found, _) = get(
        &archive,
        Selector::Column(Predicate::parse("amount>=100000").unwrap()),
        false,
    )
    .await;
    let (seven, _) = get(&archive, Selector::Key(key(&key_of(7))), false).await;
    found.extend(seven);
    let mut out = Vec::new();
    cdc_retrieve::write_csv(&mut out, &found, true).unwrap();
    let mut reader = csv::Reader::from_reader(out.as_slice());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let mut want: Vec<String> = [
        "booking_date",
        "id",
        "amount",
        "currency",
        "note",
        "archived",
    ]
    .map(String::from)
    .to_vec();
    want.extend(cdc_retrieve::CSV_META_COLUMNS.map(String::from));
    assert_eq!(header, want);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(&records[0][2], BIG);
    assert_eq!(&records[1][2], BIG_NEIGHBOUR);
    assert_eq!(
        &records[2][4],
        note_of(7),
        "quotes, comma and non-ASCII survive"
    );
    assert_eq!(&records[2][5], "true");
    assert_eq!(&records[2][10], key_of(7), "_key");
    assert_eq!(&records[2][12], "1007", "_pg_xid");
    // No rows, no output (not even a header).
    let mut empty = Vec::new();
    cdc_retrieve::write_csv(&mut empty, &[], true).unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn a_damaged_segment_is_an_error_not_an_empty_answer() {
    let (archive, cps) = build("payments").await;
    std::fs::write(archive.file_of(&cps[17]), b"not the archived bytes").unwrap();
    let err = cdc_retrieve::retrieve(
        &archive.store,
        &query(&archive, Selector::Key(key(K)), false),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            RetrieveError::Checkpoint(CheckpointError::SegmentCorrupt { .. })
        ),
        "{err}"
    );
    // A key elsewhere is still found: its filter skips the damaged segment.
    let (found, _) = get(&archive, Selector::Key(key(&key_of(5))), false).await;
    assert_eq!(ids(&found), [5]);
}

#[tokio::test]
async fn a_segment_rewritten_after_archiving_is_refused_naming_its_checkpoint() {
    let (archive, cps) = build("payments").await;
    // After archiving, checkpoint 17's segment is rewritten with other
    // content (checkpoint 3's segment: same partition, same key K) and the
    // new size and sha256 are recorded in its checkpoint anyway: the bytes
    // pass their checksum, but they are another range's.
    let (cp, other) = (&cps[17], &cps[3]);
    assert_eq!(cp.partition, other.partition);
    let bytes = std::fs::read(archive.file_of(other)).unwrap();
    std::fs::write(archive.file_of(cp), &bytes).unwrap();
    let seg = cp.segment.as_ref().unwrap();
    let rewritten = Checkpoint {
        segment: Some(SegmentRef::describe(
            seg.path.clone(),
            &bytes,
            seg.rows,
            seg.columns.clone(),
        )),
        ..cp.clone()
    };
    std::fs::write(archive.dir.path().join(cp.path()), rewritten.to_json()).unwrap();

    let err = cdc_retrieve::retrieve(
        &archive.store,
        &query(&archive, Selector::Key(key(K)), false),
    )
    .await
    .unwrap_err();
    let RetrieveError::NotTheCheckpoints(OpenError::NotTheCheckpoints {
        checkpoint,
        path,
        differences,
    }) = &err
    else {
        panic!("not refused as another range's segment: {err}");
    };
    assert_eq!((checkpoint, path), (&cp.path(), &seg.path));
    assert_eq!(
        differences[..2],
        [
            format!(
                "cdc.first_offset {} (checkpoint: {})",
                other.first_offset, cp.first_offset
            ),
            format!(
                "cdc.last_offset {} (checkpoint: {})",
                other.last_offset, cp.last_offset
            ),
        ]
    );
    assert!(
        differences
            .last()
            .unwrap()
            .contains("outside the checkpoint's range"),
        "{differences:?}"
    );
    let text = err.to_string();
    for part in [
        &cp.path(),
        &seg.path,
        "not the one the checkpoint describes",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    // A key elsewhere is still found: its filter skips that segment.
    let (found, _) = get(&archive, Selector::Key(key(&key_of(5))), false).await;
    assert_eq!(ids(&found), [5]);

    // `retrieve` and `restore` (which reads through the same look-up, before
    // it connects to any database) fail on it with that error.
    let retrieve = cli::retrieve(&archive, &["--key", K]);
    assert_eq!(retrieve.status.code(), Some(1), "{retrieve:?}");
    let restore = std::process::Command::new(cli::binary())
        .args(["--log-level", "warn", "restore", "--table", &archive.table])
        .arg("--archive-url")
        .arg(format!("file://{}", archive.dir.path().display()))
        .args(["--key", K, "--database-url", "postgres://127.0.0.1:1/none"])
        .output()
        .unwrap();
    assert_eq!(restore.status.code(), Some(1), "{restore:?}");
    for out in [retrieve, restore] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&cp.path()) && stderr.contains("cdc.first_offset"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn the_binary_exits_0_on_a_match_4_on_none_and_1_on_damage() {
    let (archive, cps) = build("payments").await;
    let retrieve = |args: &[&str]| cli::retrieve(&archive, args);
    let hit = retrieve(&["--key", K, "--with-meta"]);
    let stdout = String::from_utf8_lossy(&hit.stdout);
    assert_eq!(hit.status.code(), Some(0), "{hit:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["_archive"]["pg_xid"], 60);
    assert!(String::from_utf8_lossy(&hit.stderr).contains(&format!("of {SEGMENTS} segment(s)")));

    let range = retrieve(&[
        "--key",
        K,
        "--updated-to",
        &k_updated(17).to_string(),
        "--all-versions",
    ]);
    assert_eq!(range.status.code(), Some(0), "{range:?}");
    assert_eq!(
        String::from_utf8_lossy(&range.stdout).lines().count(),
        1,
        "--key with --updated-to"
    );

    let none = retrieve(&["--key", r#"["2031-01-01",1]"#]);
    assert_eq!(none.status.code(), Some(4), "{none:?}");
    assert!(none.stdout.is_empty());

    std::fs::write(archive.file_of(&cps[3]), b"damaged").unwrap();
    let damaged = retrieve(&["--key", K]);
    assert_eq!(damaged.status.code(), Some(1), "{damaged:?}");
    assert!(String::from_utf8_lossy(&damaged.stderr).contains("corrupt"));
}

/// A partition whose chain does not read (here a gap) does not hide the
/// others: the answer holds what the readable partitions hold, names the
/// skipped partition, and the binary exits 8 (incomplete), not 1 with
/// nothing (found by the red-team review of rewind: one broken partition
/// used to fail every look-up of the table).
#[tokio::test]
async fn a_partition_whose_chain_does_not_read_is_skipped_and_named() {
    let (archive, _) = build("payments").await;
    for first in [0, 20] {
        let c = cdc_checkpoint::fixtures::checkpoint(&archive.table, 7, first, first + 9);
        cdc_checkpoint::create(&archive.store, &c).await.unwrap();
    }
    let (found, stats) = get(&archive, Selector::Key(key(K)), false).await;
    assert_eq!(found.len(), 1, "{stats:?}");
    assert_eq!(stats.unreadable_partitions.len(), 1, "{stats:?}");
    assert!(
        stats.unreadable_partitions[0].starts_with("p7: "),
        "{stats:?}"
    );

    let out = cli::retrieve(&archive, &["--key", K]);
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped partition p7") && stderr.contains("may be incomplete"),
        "{stderr}"
    );
}
