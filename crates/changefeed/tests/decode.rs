//! Decoder behaviour beyond the fixtures: every error kind, the optional
//! fields, value kinds, and the JSON that `changefeed decode` prints.

use cdc_changefeed::{
    decode, decode_with, DecodeError, DecodeErrorKind, DecodeOptions, Envelope, Event, Hlc, Op,
    RawRecord, RecordPart, Row, RowEvent, Value,
};

const KEY: &[u8] = br#"["2025-06-10", 7]"#;

fn rec<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> RawRecord<'a> {
    RawRecord {
        topic: "payments",
        partition: 2,
        offset: 41,
        key,
        value,
    }
}

/// The decoder as for the fixtures' CDC query (`event_op() AS op`).
fn opts() -> DecodeOptions {
    DecodeOptions::with_op_column("op")
}

fn ok(key: Option<&[u8]>, value: &str) -> Event {
    decode_with(&rec(key, Some(value.as_bytes())), &opts())
        .unwrap_or_else(|e| panic!("{value}: {e}"))
}

fn row(key: Option<&[u8]>, value: &str) -> RowEvent {
    match ok(key, value) {
        Event::Row(r) => r,
        other => panic!("{value}: not a row: {other:?}"),
    }
}

fn err(key: Option<&[u8]>, value: Option<&[u8]>) -> DecodeError {
    match decode_with(&rec(key, value), &opts()) {
        Ok(ev) => panic!("decoded {ev:?}"),
        Err(e) => e,
    }
}

fn kind(key: Option<&[u8]>, value: &str) -> DecodeErrorKind {
    err(key, Some(value.as_bytes())).kind
}

#[test]
fn errors_carry_the_record() {
    let e = err(Some(b"[1"), Some(b"{\"after\": null}"));
    assert!(
        matches!(
            e.kind,
            DecodeErrorKind::NotJson {
                part: RecordPart::Key,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.topic, "payments");
    assert_eq!((e.partition, e.offset), (2, 41));
    assert_eq!(e.key.as_deref(), Some(&b"[1"[..]));
    assert_eq!(e.value.as_deref(), Some(&b"{\"after\": null}"[..]));
    let msg = e.to_string();
    assert!(msg.contains("\"payments\" partition 2 offset 41"), "{msg}");
    assert!(msg.contains("key is not JSON"), "{msg}");
    #[cfg(feature = "retryable")]
    assert!(!cdc_common::retry::Retryable::is_retryable(&e));
}

#[test]
fn error_kinds() {
    use DecodeErrorKind as K;
    assert_eq!(err(Some(KEY), None).kind, K::NullValue);
    assert_eq!(
        err(Some(KEY), Some(b"{\"after\": \"\xff\"}")).kind,
        K::NotUtf8(RecordPart::Value)
    );
    assert_eq!(
        err(Some(b"[\"\xfe\"]"), Some(b"{\"after\": null}")).kind,
        K::NotUtf8(RecordPart::Key)
    );
    assert!(matches!(
        kind(Some(KEY), "{\"after\": "),
        K::NotJson {
            part: RecordPart::Value,
            ..
        }
    ));
    assert!(matches!(
        kind(Some(KEY), "{\"after\": null} x"),
        K::NotJson { .. }
    ));
    assert!(matches!(kind(Some(KEY), ""), K::NotJson { .. }));
    for not_object in ["[1]", "\"x\"", "null", "12", " true"] {
        assert_eq!(kind(Some(KEY), not_object), K::NotAnObject, "{not_object}");
    }
    assert_eq!(kind(None, "{\"after\": null}"), K::NullKey);
    assert_eq!(kind(None, "{\"__crdb__\": {}, \"a\": 1}"), K::NullKey);
    assert_eq!(
        kind(Some(b"{\"a\": 1}"), "{\"after\": null}"),
        K::KeyNotArray
    );
    assert_eq!(kind(Some(b"null"), "{\"after\": null}"), K::KeyNotArray);
    assert_eq!(
        kind(Some(KEY), "{\"after\": null, \"key\": [\"2025-06-10\", 8]}"),
        K::KeyMismatch
    );
    assert_eq!(
        kind(Some(KEY), "{\"after\": null, \"key\": 3}"),
        K::KeyNotArray
    );
    match kind(
        Some(KEY),
        "{\"after\": null, \"updated\": \"1749715200.5\"}",
    ) {
        K::BadHlc { field, text, .. } => {
            assert_eq!((field, text.as_str()), ("updated", "\"1749715200.5\""))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        kind(None, "{\"resolved\": 17}"),
        K::BadHlc {
            field: "resolved",
            ..
        }
    ));
    assert!(matches!(
        kind(None, "{\"__crdb__\": {\"resolved\": \"x\"}}"),
        K::BadHlc {
            field: "resolved",
            ..
        }
    ));
    assert!(matches!(
        kind(
            Some(KEY),
            "{\"__crdb__\": {\"mvcc_timestamp\": \"1.1\"}, \"a\": 1}"
        ),
        K::BadHlc {
            field: "mvcc_timestamp",
            ..
        }
    ));
    assert_eq!(
        kind(
            Some(KEY),
            "{\"before\": null, \"updated\": \"1.0000000000\"}"
        ),
        K::MissingAfter
    );
    assert!(
        matches!(kind(Some(KEY), "{\"after\": 5}"), K::BadField { ref field, .. } if field == "after")
    );
    assert!(
        matches!(kind(Some(KEY), "{\"after\": null, \"before\": []}"), K::BadField { ref field, .. } if field == "before")
    );
    assert!(
        matches!(kind(Some(KEY), "{\"__crdb__\": 5, \"a\": 1}"), K::BadField { ref field, .. } if field == "__crdb__")
    );
    assert_eq!(
        kind(Some(KEY), "{\"after\": null, \"after\": {}}"),
        K::DuplicateField("after".into())
    );
    assert_eq!(
        kind(
            Some(KEY),
            "{\"__crdb__\": {}, \"a\": 1, \"op\": \"upsert\"}"
        ),
        K::BadOp {
            column: "op".into(),
            found: "\"upsert\"".into()
        }
    );
    assert_eq!(kind(Some(KEY), "{}"), K::UnknownShape("empty object"));
    assert!(
        matches!(kind(Some(KEY), "{\"after\": null, \"pg_xid\": \"-1\"}"), K::BadField { ref field, .. } if field == "pg_xid")
    );
    assert!(
        matches!(kind(Some(KEY), "{\"after\": null, \"pg_lsn\": 5}"), K::BadField { ref field, .. } if field == "pg_lsn")
    );
}

#[test]
fn wrapped_tolerates_unknown_fields_and_reads_pg_fields() {
    let r = row(
        Some(KEY),
        r#"{"after": {"a": 1}, "pg_lsn": "0/16B3748", "pg_xid": "4294967295", "some_future_option": {"x": 1}, "topic": "elsewhere"}"#,
    );
    assert_eq!(r.op, Op::Upsert);
    assert_eq!(r.meta.pg_xid, Some(4_294_967_295));
    assert_eq!(r.pg_lsn.as_deref(), Some("0/16B3748"));
    assert_eq!(
        r.after,
        Some(Row(vec![("a".into(), Value::Number("1".into()))]))
    );
    assert_eq!(
        r.key,
        vec![
            Value::String("2025-06-10".into()),
            Value::Number("7".into())
        ]
    );
    assert_eq!(r.meta.key_json, r#"["2025-06-10", 7]"#);
    assert_eq!(
        (r.meta.topic.as_str(), r.meta.partition, r.meta.offset),
        ("payments", 2, 41)
    );
}

#[test]
fn escaped_field_names_are_unescaped() {
    let r = row(
        Some(KEY),
        r#"{"\u0061fter": {"c\"1": "v"}, "before": null}"#,
    );
    assert_eq!(r.op, Op::Insert);
    assert_eq!(
        r.after.unwrap().get("c\"1"),
        Some(&Value::String("v".into()))
    );
}

#[test]
fn key_in_value_must_match_semantically_equal_text() {
    let r = row(Some(KEY), r#"{"after": null, "key": ["2025-06-10", 7]}"#);
    assert_eq!(r.op, Op::Delete);
    assert_eq!(r.after, None);
    // Numbers compare by text: 7.0 is a different key value than 7.
    assert_eq!(
        kind(Some(KEY), r#"{"after": null, "key": ["2025-06-10", 7.0]}"#),
        DecodeErrorKind::KeyMismatch
    );
}

#[test]
fn values_keep_their_exact_text() {
    let value = r#"{"after": {"big": 123456789012345678901234567, "bytes": "\\x00ff", "dec": 1250.00, "e": 1E+2, "esc": "tab\there \"q\" \u00e9 \ud83d\ude00", "j": {"a": [1, 2.50, null], "b": {"c": "d"}}, "arr": [1, 2, 3], "nan": "NaN", "neg": -0.000, "t": true, "utf8": "Zürich 東京", "z": null}}"#;
    let r = row(Some(KEY), value);
    let a = r.after.expect("after");
    let n = |s: &str| Value::Number(s.into());
    let s = |s: &str| Value::String(s.into());
    assert_eq!(a.get("big"), Some(&n("123456789012345678901234567")));
    assert_eq!(a.get("bytes"), Some(&s("\\x00ff")));
    assert_eq!(a.get("dec"), Some(&n("1250.00")));
    assert_eq!(a.get("e"), Some(&n("1E+2")));
    assert_eq!(a.get("esc"), Some(&s("tab\there \"q\" é 😀")));
    assert_eq!(
        a.get("j"),
        Some(&Value::Json(
            r#"{"a": [1, 2.50, null], "b": {"c": "d"}}"#.into()
        ))
    );
    assert_eq!(a.get("arr"), Some(&Value::Json("[1, 2, 3]".into())));
    assert_eq!(a.get("nan"), Some(&s("NaN")));
    assert_eq!(a.get("neg"), Some(&n("-0.000")));
    assert_eq!(a.get("t"), Some(&Value::Bool(true)));
    assert_eq!(a.get("utf8"), Some(&s("Zürich 東京")));
    assert_eq!(a.get("z"), Some(&Value::Null));
    assert_eq!(
        a.columns().collect::<Vec<_>>(),
        ["big", "bytes", "dec", "e", "esc", "j", "arr", "nan", "neg", "t", "utf8", "z"]
    );
}

#[test]
fn bare_rows() {
    // Without __crdb__ (a CDC query without `updated`): still a bare row.
    let r = row(Some(KEY), r#"{"a": 1.10, "op": "update"}"#);
    assert_eq!((r.op, r.envelope), (Op::Update, Envelope::Bare));
    assert_eq!(
        r.after,
        Some(Row(vec![("a".into(), Value::Number("1.10".into()))]))
    );
    assert_eq!((r.meta.updated, r.meta.mvcc_timestamp), (None, None));

    // Without an operation column: upsert.
    let r = row(
        Some(KEY),
        r#"{"__crdb__": {"updated": "5.0000000001", "mvcc_timestamp": "4.0000000000", "future": 1}, "a": 1}"#,
    );
    assert_eq!(r.op, Op::Upsert);
    assert_eq!(r.meta.updated, Some(Hlc::new(5, 1)));
    assert_eq!(r.meta.mvcc_timestamp, Some(Hlc::new(4, 0)));

    // The op column can be renamed or switched off.
    let v = br#"{"__crdb__": {}, "kind": "delete", "op": "x"}"#;
    let renamed = DecodeOptions {
        bare_op_column: Some("kind".into()),
    };
    let Event::Row(r) = decode_with(&rec(Some(KEY), Some(v)), &renamed).unwrap() else {
        panic!()
    };
    assert_eq!((r.op, r.after), (Op::Delete, None));
    let off = DecodeOptions {
        bare_op_column: None,
    };
    let Event::Row(r) = decode_with(&rec(Some(KEY), Some(v)), &off).unwrap() else {
        panic!()
    };
    assert_eq!(r.op, Op::Upsert);
    assert_eq!(
        r.after.unwrap().columns().collect::<Vec<_>>(),
        ["kind", "op"]
    );
}

#[test]
fn resolved_forms() {
    let want = Hlc::new(1_749_715_270_961_130_755, 0);
    for v in [
        r#"{"resolved":"1749715270961130755.0000000000"}"#,
        r#"{"__crdb__":{"resolved":"1749715270961130755.0000000000"}}"#,
    ] {
        for key in [None, Some(KEY)] {
            match ok(key, v) {
                Event::Resolved(r) => {
                    assert_eq!(r.resolved, want);
                    assert_eq!(
                        (r.topic.as_str(), r.partition, r.offset),
                        ("payments", 2, 41)
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn resolved_with_extra_fields_needs_a_null_key() {
    let v = r#"{"resolved": "3.0000000000", "topic": "payments"}"#;
    assert!(matches!(ok(None, v), Event::Resolved(r) if r.resolved == Hlc::new(3, 0)));
    // With a key it is a bare row that happens to have such columns.
    let r = row(Some(KEY), v);
    assert_eq!((r.op, r.envelope), (Op::Upsert, Envelope::Bare));
    assert_eq!(
        r.after.unwrap().get("resolved"),
        Some(&Value::String("3.0000000000".into()))
    );
}

#[test]
fn serialises_for_the_cli() {
    let ev = ok(
        Some(br#"["a"]"#),
        r#"{"after": {"amount": 1250.00, "j": {"x": [1, 2]}, "s": "q\""}, "before": null, "updated": "1.0000000002"}"#,
    );
    assert_eq!(
        serde_json::to_string(&ev).unwrap(),
        r#"{"type":"row","topic":"payments","partition":2,"offset":41,"key":["a"],"key_json":"[\"a\"]","op":"insert","after":{"amount":1250.00,"j":{"x": [1, 2]},"s":"q\""},"before":null,"updated":"1.0000000002","mvcc_timestamp":null,"pg_xid":null,"pg_lsn":null,"envelope":"wrapped"}"#
    );
    let ev = ok(None, r#"{"resolved":"7.0000000000"}"#);
    assert_eq!(
        serde_json::to_string(&ev).unwrap(),
        r#"{"type":"resolved","topic":"payments","partition":2,"offset":41,"resolved":"7.0000000000"}"#
    );
}

/// Without an operation column (the default), a table column named `op`
/// is a column like any other, whatever its value.
#[test]
fn by_default_a_column_named_op_is_a_column() {
    let v = br#"{"__crdb__": {"updated": "5.0000000001"}, "a": 1, "op": "delete"}"#;
    let Event::Row(r) = decode(&rec(Some(KEY), Some(v))).unwrap() else {
        panic!("not a row");
    };
    assert_eq!(r.op, Op::Upsert);
    let after = r.after.expect("a row, not a delete");
    assert_eq!(after.get("op"), Some(&Value::String("delete".into())));
}
