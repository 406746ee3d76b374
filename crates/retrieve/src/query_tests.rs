//! Unit tests of the look-up: predicates parse and compare exactly, and
//! the de-duplication, latest-version and ordering rules hold.

use super::*;

fn num(t: &str) -> Value {
    Value::Number(t.into())
}

#[test]
fn predicates_parse_and_compare_exactly() {
    let p = Predicate::parse("amount>=100").unwrap();
    assert_eq!(
        (p.column.as_str(), p.op.as_str(), p.value.as_str()),
        ("amount", ">=", "100")
    );
    assert!(p.matches(&num("1250.00")));
    assert!(p.matches(&num("100")));
    assert!(!p.matches(&num("99.95")));
    let eq = Predicate::parse("currency = EUR").unwrap();
    assert!(eq.matches(&Value::String("EUR".into())));
    assert!(!eq.matches(&Value::String("USD".into())));
    assert!(!eq.matches(&Value::Null));
    let num_eq = Predicate::parse("amount=1250").unwrap();
    assert!(num_eq.matches(&num("1250.00")), "numbers compare by value");
    assert!(Predicate::parse("=5").is_none());
    assert!(Predicate::parse("amount").is_none());
}

#[test]
fn the_leftmost_operator_wins_and_two_characters_beat_one() {
    let parse = |t: &str| {
        let p = Predicate::parse(t).unwrap();
        (p.column, p.op, p.value)
    };
    let owned = |c: &str, o: &str, v: &str| (c.to_owned(), o.to_owned(), v.to_owned());
    assert_eq!(parse("note=a>=b"), owned("note", "=", "a>=b"));
    assert_eq!(parse("note!=x=y"), owned("note", "!=", "x=y"));
    assert_eq!(parse("amount>5"), owned("amount", ">", "5"));
    assert_eq!(parse("amount >= 5"), owned("amount", ">=", "5"));
    assert_eq!(parse("amount<=5"), owned("amount", "<=", "5"));
    assert_eq!(parse("amount<>5"), owned("amount", "!=", "5"));
    assert_eq!(parse("note<a=b"), owned("note", "<", "a=b"));
}

#[test]
fn thirty_digit_decimals_are_not_neighbours() {
    let a = "123456789012345678901234.567890";
    let b = "123456789012345678901234.567891";
    let eq = Predicate::parse(&format!("amount={a}")).unwrap();
    assert!(eq.matches(&num(a)));
    assert!(eq.matches(&num("123456789012345678901234.56789000")));
    assert!(!eq.matches(&num(b)), "f64 would call these equal");
    let lt = Predicate::parse(&format!("amount<{b}")).unwrap();
    assert!(lt.matches(&num(a)));
    assert!(!lt.matches(&num(b)));
    let tiny = Predicate::parse("amount<0").unwrap();
    assert!(tiny.matches(&num("-0.000000000000000000000000000001")));
    assert!(!tiny.matches(&num("0.000000000000000000000000000001")));
    assert!(!tiny.matches(&num("-0.000")), "-0 is zero");
}

#[test]
fn decimals_compare_by_value_in_any_spelling() {
    let d = |t: &str| Decimal::parse(t).unwrap_or_else(|| panic!("{t}"));
    assert_eq!(d("1E+2"), d("100"));
    assert_eq!(d("1e2"), d("100.000"));
    assert_eq!(d("0.5e-3"), d("0.0005"));
    assert_eq!(d("-0"), d("0.00"));
    assert_eq!(d("007.10"), d("7.1"));
    assert_eq!(d(".5"), d("0.5"));
    assert!(d("1E+2") < d("100.0000000000000000000000000001"));
    assert!(d("-2") < d("-1.99999999999999999999999999999"));
    assert!(d("-1") < d("0"));
    assert!(d("0") < d("1E-400"));
    assert!(d("99") < d("100"));
    assert!(d("0.12") < d("0.123"));
    for bad in [
        "", "-", "1e", "e5", "1.2.3", "NaN", "Infinity", "0x10", "1 2", "1e+-2",
    ] {
        assert!(Decimal::parse(bad).is_none(), "{bad:?}");
    }
    assert!(Decimal::parse("1e99999999999999999999").is_none());
}

#[test]
fn non_numbers_compare_as_text() {
    let p = Predicate::parse("archived=true").unwrap();
    assert!(p.matches(&Value::Bool(true)));
    assert!(!p.matches(&Value::Bool(false)));
    let nan = Predicate::parse("amount=NaN").unwrap();
    assert!(nan.matches(&Value::String("NaN".into())));
    assert!(!nan.matches(&num("1")));
    let ne = Predicate::parse("amount!=1").unwrap();
    assert!(!ne.matches(&Value::Null), "NULL matches nothing");
}

fn row(key: &str, offset: i64, updated: i64, mvcc: Option<i64>, xid: Option<u64>) -> Found {
    Found {
        row: ArchivedRow {
            op: cdc_changefeed::Op::Update,
            meta: RecordMeta {
                key_json: key.into(),
                updated: Some(Hlc::new(updated, 0)),
                mvcc_timestamp: mvcc.map(|m| Hlc::new(m, 0)),
                pg_xid: xid,
                topic: "t".into(),
                partition: 0,
                offset,
            },
            columns: vec![("v".into(), num(&offset.to_string()))],
        },
        segment: format!("s{offset}"),
        checkpoint_first_offset: offset,
    }
}

#[test]
fn copies_re_sent_with_a_new_updated_are_one_version() {
    // PostgreSQL: xid 7 first at offset 1, re-sent after a restart at
    // offset 5 with a later `updated` (as changefeeds before 0.2 did);
    // spacing of the key differs. The last delivery's copy is kept, with
    // the first delivery's `updated`.
    let (mut v, dropped) = dedupe([
        row("[1, \"a\"]", 5, 500, None, Some(7)),
        row("[1,\"a\"]", 1, 100, None, Some(7)),
        row("[1,\"a\"]", 3, 300, None, Some(9)),
    ]);
    sort_by_key_and_version(&mut v);
    assert_eq!(dropped, 1);
    let kept: Vec<(i64, i64)> = v
        .iter()
        .map(|f| (f.row.meta.offset, f.row.meta.updated.unwrap().wall))
        .collect();
    assert_eq!(kept, [(5, 100), (3, 300)]);
    let (latest, older) = latest_per_key(v);
    assert_eq!((latest[0].row.meta.offset, older), (3, 1));
}

#[test]
fn a_transaction_that_wrote_a_row_twice_is_its_last_change_whatever_the_deliveries() {
    // Xid 7 writes `first`, then `final`. Its first delivery was cut
    // short (only `first`, offset 2); it was sent again whole (offsets
    // 10 and 11), with the same `updated`.
    let mut first = row("[1]", 2, 100, None, Some(7));
    first.row.columns = vec![("v".into(), Value::String("first".into()))];
    let mut again = row("[1]", 10, 100, None, Some(7));
    again.row.columns = vec![("v".into(), Value::String("first".into()))];
    let mut last = row("[1]", 11, 100, None, Some(7));
    last.row.columns = vec![("v".into(), Value::String("final".into()))];
    for order in [
        vec![first.clone(), again.clone(), last.clone()],
        vec![last.clone(), first.clone(), again.clone()],
    ] {
        let (v, dropped) = dedupe(order);
        assert_eq!((v.len(), dropped), (1, 2));
        assert_eq!(v[0].row.columns[0].1, Value::String("final".into()));
    }
}

#[test]
fn mvcc_names_the_version_and_orders_versions() {
    // CockroachDB: same MVCC timestamp = same version whatever `updated`.
    let (v, dropped) = dedupe([
        row("[2]", 4, 40, Some(20), None),
        row("[2]", 2, 20, Some(20), None),
        row("[2]", 9, 90, Some(10), None),
    ]);
    assert_eq!((v.len(), dropped), (2, 1));
    let (latest, _) = latest_per_key(v);
    assert_eq!(
        latest[0].row.meta.offset, 2,
        "mvcc 20 is newer than mvcc 10"
    );
    // Without a version, `updated` is the identity.
    let (v, dropped) = dedupe([row("[3]", 1, 10, None, None), row("[3]", 2, 10, None, None)]);
    assert_eq!((v.len(), dropped, v[0].row.meta.offset), (1, 1, 1));
}

#[test]
fn key_args_must_be_arrays() {
    assert!(parse_key_arg("[\"a\", 1]").is_ok());
    let e = parse_key_arg("a,1").unwrap_err().to_string();
    assert!(e.contains("JSON array"), "{e}");
}
