//! A column added to the table mid-stream (and a changefeed that still
//! sends a few old-shape rows after it): each column set gets its own
//! segment, starting exactly at the first event of the new shape; nothing
//! is lost, values are exact, and every segment is readable by a plain
//! Avro reader. Real broker, S3-compatible server.

mod common;

use cdc_changefeed::line::OwnedRecord;
use cdc_changefeed::Value;
use common::*;

const BASE: i64 = 1_750_000_000_000_000_000;

fn rec(topic: &str, offset: i64, key: Option<String>, value: String) -> OwnedRecord {
    OwnedRecord {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        key: key.map(String::into_bytes),
        value: Some(value.into_bytes()),
    }
}

/// A wrapped CockroachDB row; `note: Some(..)` is the new column (JSON
/// text), which sorts between `id` and the end, as CockroachDB orders keys.
fn row(topic: &str, offset: i64, amount: &str, archived: bool, note: Option<&str>) -> OwnedRecord {
    let note = note.map_or(String::new(), |n| format!(", \"note\": {n}"));
    rec(
        topic,
        offset,
        Some(format!("[{offset}]")),
        format!(
            r#"{{"after": {{"amount": {amount}, "archived": {archived}, "id": {offset}{note}}}, "mvcc_timestamp": "{t}.0000000000", "updated": "{t}.0000000000"}}"#,
            t = BASE + offset
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_mid_stream_starts_a_new_segment_and_loses_nothing() {
    let topic = cdc_tests::unique("addcol");
    cdc_tests::create_topic(&topic, 1).await;
    let t = topic.as_str();
    let records = vec![
        // Old shape: (amount, archived, id).
        row(t, 0, "1250.00", true, None),
        row(t, 1, "-0.10", true, None),
        row(t, 2, "7", false, None),
        // ALTER TABLE ADD COLUMN note: the backfill re-emits rows with it.
        row(t, 3, "123456789012345678901234567.5", true, Some("null")),
        rec(
            t,
            4,
            None,
            format!(r#"{{"resolved": "{}.0000000000"}}"#, BASE + 4),
        ),
        row(t, 5, "1E+2", true, Some(r#""hé \"quoted\"""#)),
        rec(
            t,
            6,
            Some("[0]".into()),
            format!(
                r#"{{"after": null, "mvcc_timestamp": "{t}.0000000000", "updated": "{t}.0000000000"}}"#,
                t = BASE + 6
            ),
        ),
        row(t, 7, "0.000", true, Some(r#""second""#)),
        // A straggler still in the old shape (emitted before the schema
        // change took effect on its range): a third segment.
        row(t, 8, "99.95", true, None),
        row(t, 9, "42.00", true, Some("null")),
    ];
    produce(&records).await;
    let prefix = cdc_tests::unique("sinkcol");
    let (storage, store) = s3_storage(&prefix);
    let cfg = cdc_sink::SinkConfig {
        // Only the column changes (and shutdown) may cut.
        flush_rows: 1_000_000,
        ..config(&topic, storage)
    };
    let summary = run_until_archived(&cfg, &store, &topic, 1).await;
    assert!(summary.stopped.is_empty(), "{:?}", summary.stopped);

    let archive = read_archive(&store, &topic, 1).await;
    let (chain, rows) = &archive[0];
    assert_eq!((chain.start(), chain.end()), (Some(0), Some(9)));
    // Nothing lost, nothing altered: every archivable version, field by field.
    assert_eq!(rows, &expected_rows(&records, 0));
    assert_eq!(
        rows.iter().map(|r| r.meta.offset).collect::<Vec<_>>(),
        vec![0, 1, 3, 5, 7, 8, 9]
    );
    let amount = |o: i64| {
        rows.iter()
            .find(|r| r.meta.offset == o)
            .map(|r| r.columns[0].1.clone())
    };
    assert_eq!(amount(0), Some(Value::Number("1250.00".into())));
    assert_eq!(amount(1), Some(Value::Number("-0.10".into())));
    assert_eq!(
        amount(3),
        Some(Value::Number("123456789012345678901234567.5".into()))
    );
    assert_eq!(amount(5), Some(Value::Number("1E+2".into())));
    let note = |o: i64| {
        rows.iter()
            .find(|r| r.meta.offset == o)
            .and_then(|r| r.columns.iter().find(|(c, _)| c == "note"))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(note(3), Some(Value::Null));
    assert_eq!(note(5), Some(Value::String("hé \"quoted\"".into())));
    assert_eq!(note(8), None, "the straggler has no note column");

    // One column set per segment, a new segment at each change, each
    // starting exactly at the first event of its shape.
    let old = vec!["amount", "archived", "id"];
    let new = vec!["amount", "archived", "id", "note"];
    let mut shapes: Vec<(i64, Vec<String>)> = Vec::new();
    for c in &chain.checkpoints {
        let Some(seg) = &c.segment else { continue };
        let bytes = cdc_checkpoint::verify_segment(&store, seg).await.unwrap();
        let decoded = cdc_segment::decode_segment(&bytes).unwrap();
        for r in &decoded.rows {
            let cols: Vec<&str> = r.columns.iter().map(|(c, _)| c.as_str()).collect();
            assert_eq!(cols, seg.columns, "{}", seg.path);
        }
        if shapes.last().map(|s| &s.1) != Some(&seg.columns) {
            shapes.push((decoded.rows[0].meta.offset, seg.columns.clone()));
        }
        // Any Avro reader: the writer schema names the columns, and every
        // record reads back with its exact text.
        let reader = apache_avro::Reader::new(&bytes[..]).unwrap();
        let schema = serde_json::to_value(reader.writer_schema()).unwrap();
        let fields: Vec<String> = schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .skip(cdc_segment::META_FIELDS.len())
            .map(|f| f["sql_name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(fields, seg.columns);
        let mut n = 0;
        for record in reader {
            let apache_avro::types::Value::Record(f) = record.unwrap() else {
                panic!("not a record")
            };
            let offset = match &f[7].1 {
                apache_avro::types::Value::Long(o) => *o,
                other => panic!("{other:?}"),
            };
            let text = match &f[8].1 {
                apache_avro::types::Value::Union(_, v) => match v.as_ref() {
                    apache_avro::types::Value::String(s) => s.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            };
            assert_eq!(Some(Value::Number(text)), amount(offset));
            n += 1;
        }
        assert_eq!(n, seg.rows);
    }
    let shapes: Vec<(i64, Vec<&str>)> = shapes
        .iter()
        .map(|(o, c)| (*o, c.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        shapes,
        vec![(0, old.clone()), (3, new.clone()), (8, old), (9, new)]
    );
    // The cuts fall right before each change: offsets 2 (unmarked) and 4,
    // 6 (resolved, delete) stay with the segment before the next change.
    let firsts: Vec<i64> = chain.checkpoints.iter().map(|c| c.first_offset).collect();
    for change in [3, 8, 9] {
        assert!(firsts.contains(&change), "{firsts:?}");
    }
    // The delete in the new-shape range is recorded, not lost either.
    let deletes = read_deletes(&store, chain).await;
    assert_eq!(
        deletes.iter().map(|d| d.meta.offset).collect::<Vec<_>>(),
        vec![6]
    );
}
