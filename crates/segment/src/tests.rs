use super::*;
use proptest::prelude::*;

fn meta() -> SegmentMeta {
    SegmentMeta {
        table: "payments".into(),
        topic: "t.payments".into(),
        partition: 2,
        first_offset: 10,
        last_offset: 20,
    }
}

fn row(offset: i64, columns: Vec<(&str, Value)>) -> ArchivedRow {
    ArchivedRow {
        op: Op::Update,
        meta: RecordMeta {
            key_json: format!("[{offset}, \"k\\\"é\"]"),
            updated: Some(Hlc::new(1_749_715_231_873_209_112, 2)),
            mvcc_timestamp: None,
            pg_xid: Some(4_000_000_000),
            topic: "t.payments".into(),
            partition: 2,
            offset,
        },
        columns: columns
            .into_iter()
            .map(|(c, v)| (c.to_owned(), v))
            .collect(),
    }
}

fn num(s: &str) -> Value {
    Value::Number(s.into())
}

#[test]
fn round_trips_exact_text_and_types() {
    let rows = vec![
        row(
            10,
            vec![
                ("amount", num("1250.00")),
                ("archived", Value::Bool(true)),
                ("big", num("123456789012345678901234567")),
                ("doc", Value::Json(r#"{"a": [1, 2.50], "b": null}"#.into())),
                ("mixed", Value::String("NaN".into())),
                ("note", Value::String("hé \"quoted\"\n".into())),
            ],
        ),
        row(
            11,
            vec![
                ("amount", num("-15.50")),
                ("archived", Value::Null),
                ("big", num("1E+2")),
                ("doc", Value::Json("[]".into())),
                ("mixed", num("0.1")),
                ("note", Value::Null),
            ],
        ),
    ];
    let bytes = encode_segment(&meta(), &rows).unwrap();
    let seg = decode_segment(&bytes).unwrap();
    assert_eq!(seg.meta, meta());
    assert_eq!(seg.rows, rows);
    let enc: Vec<(&str, Encoding)> = seg
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.encoding))
        .collect();
    assert_eq!(
        enc,
        vec![
            ("amount", Encoding::Json),
            ("archived", Encoding::Boolean),
            ("big", Encoding::Json),
            ("doc", Encoding::Json),
            ("mixed", Encoding::Json),
            ("note", Encoding::String),
        ]
    );
    assert_eq!(seg.rows[0].columns[0].1, num("1250.00"));
    assert_eq!(seg.rows[1].columns[0].1, num("-15.50"));
}

#[test]
fn any_avro_reader_sees_plain_fields_and_sql_names() {
    let rows = vec![row(
        10,
        vec![
            ("amount", num("1250.00")),
            ("weird name", Value::String("x".into())),
        ],
    )];
    let bytes = encode_segment(&meta(), &rows).unwrap();
    let reader = Reader::new(&bytes[..]).unwrap();
    let schema = serde_json::to_value(reader.writer_schema()).unwrap();
    let fields = schema["fields"].as_array().unwrap();
    assert_eq!(fields[8]["name"], "amount");
    assert_eq!(fields[9]["name"], "weird_name");
    assert_eq!(fields[9]["sql_name"], "weird name");
    let records: Vec<Avro> = reader.map(Result::unwrap).collect();
    let Avro::Record(f) = &records[0] else {
        panic!("not a record")
    };
    assert_eq!(
        f[8],
        (
            "amount".to_owned(),
            Avro::Union(1, Box::new(Avro::String("1250.00".into())))
        )
    );
    assert_eq!(f[0], ("_op".to_owned(), Avro::String("update".into())));
    assert_eq!(f[7], ("_offset".to_owned(), Avro::Long(10)));
}

#[test]
fn sanitizes_and_deduplicates_field_names() {
    let got = field_names(["a-b", "a_b", "1st", "_op", "ok", "", "ünï"]);
    assert_eq!(
        got,
        vec!["a_b", "a_b_2", "c_1st", "c__op", "ok", "c_", "c__n_"]
    );
}

#[test]
fn refuses_mixed_column_sets_and_empty_input() {
    let rows = vec![
        row(1, vec![("a", num("1"))]),
        row(2, vec![("a", num("1")), ("b", num("2"))]),
    ];
    match encode_segment(&meta(), &rows) {
        Err(SegmentError::ColumnSetChanged { offset, found, .. }) => {
            assert_eq!(offset, 2);
            assert_eq!(found, vec!["a", "b"]);
        }
        other => panic!("expected ColumnSetChanged, got {other:?}"),
    }
    assert!(matches!(
        encode_segment(&meta(), &[]),
        Err(SegmentError::Empty)
    ));
    assert!(matches!(
        decode_segment(b"not avro"),
        Err(SegmentError::Avro(_))
    ));
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        "-?(0|[1-9][0-9]{0,29})(\\.[0-9]{1,10})?([eE][+-]?[0-9]{1,3})?".prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
        Just(Value::Json(r#"{"k": [1.10, "x"]}"#.into())),
    ]
}

proptest! {
    #[test]
    fn any_values_round_trip(cols in proptest::collection::vec(proptest::collection::vec(value(), 3), 1..20)) {
        let rows: Vec<ArchivedRow> = cols
            .into_iter()
            .enumerate()
            .map(|(i, vs)| row(i as i64, vec![("a", vs[0].clone()), ("b", vs[1].clone()), ("c c", vs[2].clone())]))
            .collect();
        let seg = decode_segment(&encode_segment(&meta(), &rows).unwrap()).unwrap();
        prop_assert_eq!(seg.rows, rows);
    }
}

fn deleted(offset: i64, before: Option<Vec<(&str, Value)>>) -> DeletedRow {
    DeletedRow {
        meta: RecordMeta {
            key_json: format!("[{offset}, \"k\\\"é\"]"),
            updated: Some(Hlc::new(1_749_715_298_530_184_270, 0)),
            mvcc_timestamp: (offset % 2 == 0).then(|| Hlc::new(1_749_715_298_530_184_270, 1)),
            pg_xid: (offset % 3 == 0).then_some((2u64 << 32) | 7),
            topic: "t.payments".into(),
            partition: 2,
            offset,
        },
        before: before.map(|cols| cols.into_iter().map(|(c, v)| (c.to_owned(), v)).collect()),
    }
}

#[test]
fn deletes_round_trip_with_exact_before_values() {
    let deletes = vec![
        deleted(
            12,
            Some(vec![
                ("amount", num("1250.00")),
                ("archived", Value::Bool(true)),
                ("big", num("123456789012345678901234567")),
                ("doc", Value::Json(r#"{"a": [1, 2.50]}"#.into())),
                ("note", Value::String("hé \"q\"\n".into())),
                ("weird name", Value::Null),
                // Message order, not alphabetical, survives.
                ("a_last", num("-0.0")),
            ]),
        ),
        deleted(13, None),
        deleted(15, Some(vec![("id", num("15"))])),
    ];
    let bytes = encode_deletes(&meta(), &deletes).unwrap();
    let back = decode_deletes(&bytes).unwrap();
    assert_eq!(back.meta, meta());
    assert_eq!(back.deletes, deletes);
    assert!(matches!(
        encode_deletes(&meta(), &[]),
        Err(SegmentError::Empty)
    ));
}

/// Any Avro reader sees `_op = "delete"`, the meta fields under their
/// segment names and `_before` as exact JSON text.
#[test]
fn any_avro_reader_sees_delete_records() {
    let deletes = vec![deleted(12, Some(vec![("amount", num("99.95"))]))];
    let bytes = encode_deletes(&meta(), &deletes).unwrap();
    let reader = Reader::new(&bytes[..]).unwrap();
    let schema = serde_json::to_value(reader.writer_schema()).unwrap();
    let names: Vec<&str> = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, DELETE_FIELDS);
    assert_eq!(&names[..8], META_FIELDS);
    let records: Vec<Avro> = reader.map(Result::unwrap).collect();
    let Avro::Record(f) = &records[0] else {
        panic!("not a record")
    };
    assert_eq!(f[0], ("_op".to_owned(), Avro::String("delete".into())));
    assert_eq!(f[7], ("_offset".to_owned(), Avro::Long(12)));
    assert_eq!(
        f[8],
        (
            "_before".to_owned(),
            Avro::Union(1, Box::new(Avro::String(r#"{"amount": 99.95}"#.into())))
        )
    );
}

/// A delete file is never read as a segment (its records would look like
/// row versions to a reader of keys and versions), nor a segment as one.
#[test]
fn delete_files_and_segments_refuse_each_other() {
    let d = encode_deletes(&meta(), &[deleted(12, None)]).unwrap();
    match decode_segment(&d) {
        Err(SegmentError::Format(m)) => assert!(m.contains("delete file"), "{m}"),
        other => panic!("a delete file decoded as a segment: {other:?}"),
    }
    let s = encode_segment(&meta(), &[row(10, vec![("a", num("1"))])]).unwrap();
    assert!(matches!(decode_deletes(&s), Err(SegmentError::Format(_))));
}
