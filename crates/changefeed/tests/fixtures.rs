//! Every line of every fixture in `tests/fixtures/cockroachdb-changefeed`
//! decodes to exactly the structure its README describes.

use std::path::PathBuf;

use cdc_changefeed::line::parse_line;
use cdc_changefeed::{
    decode_with, DecodeOptions, Envelope, Event, Hlc, Op, Resolved, Row, RowEvent, Value,
};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cockroachdb-changefeed")
}

/// Decodes a fixture file; offsets are 1-based line numbers.
fn load(name: &str) -> Vec<Event> {
    let text = std::fs::read_to_string(fixture_dir().join(name)).expect("fixture file");
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let rec = parse_line(l, i as u64 + 1).expect("fixture line");
            assert_eq!(rec.offset, i as i64 + 1);
            // The fixtures' CDC query selects `event_op() AS op`.
            decode_with(&rec.as_raw(), &DecodeOptions::with_op_column("op"))
                .unwrap_or_else(|e| panic!("{name} line {}: {e}", i + 1))
        })
        .collect()
}

const T0: &str = "1749715200412345678.0000000000";
const T1: &str = "1749715231873209112.0000000002";
const T2: &str = "1749715262104518993.0000000000";
const R2: &str = "1749715270961130755.0000000000";
const T3: &str = "1749715298530184270.0000000000";
const R3: &str = "1749715301004417093.0000000000";
const C1: &str = "1749625214871043512.0000000000";
const C2: &str = "1749625238190366021.0000000000";

/// The three `payments` rows of the README's scenario.
#[derive(Clone, Copy, Debug)]
enum P {
    P1,
    P2,
    P3,
}

struct Payment {
    date: &'static str,
    id: &'static str,
    partition: i32,
    amount: &'static str,
    currency: &'static str,
    reference: Option<&'static str>,
}

impl P {
    fn data(self) -> Payment {
        match self {
            P::P1 => Payment {
                date: "2025-06-10",
                id: "8a1f5c3e-2b7d-4e41-9c0a-5d6e7f809a1b",
                partition: 2,
                amount: "1250.00",
                currency: "EUR",
                reference: Some("INV-2025-00042"),
            },
            P::P2 => Payment {
                date: "2025-06-10",
                id: "3c9e2a71-0f4b-4d88-b1e2-7a6c5d4e3f21",
                partition: 0,
                amount: "99.95",
                currency: "USD",
                reference: None,
            },
            P::P3 => Payment {
                date: "2025-06-11",
                id: "f0e1d2c3-b4a5-4968-8776-655443322110",
                partition: 1,
                amount: "-15.50",
                currency: "EUR",
                reference: Some("Refund for INV-2025-00042"),
            },
        }
    }

    /// The full row as a wrapped envelope carries it (alphabetical columns);
    /// a CDC query projects no `reference`.
    fn row(self, archived: bool, envelope: Envelope) -> Row {
        let d = self.data();
        let s = |v: &str| Value::String(v.to_owned());
        let mut cols = vec![
            ("amount".to_owned(), Value::Number(d.amount.to_owned())),
            ("archived".to_owned(), Value::Bool(archived)),
            ("booking_date".to_owned(), s(d.date)),
            ("currency".to_owned(), s(d.currency)),
            ("id".to_owned(), s(d.id)),
        ];
        if envelope == Envelope::Wrapped {
            cols.push(("reference".to_owned(), d.reference.map_or(Value::Null, s)));
        }
        Row(cols)
    }
}

/// What one fixture line must decode to.
enum Want {
    Row {
        p: P,
        op: Op,
        /// `archived` in `after` / `before`, when present.
        after: Option<bool>,
        before: Option<bool>,
        updated: Option<&'static str>,
        mvcc: Option<&'static str>,
        envelope: Envelope,
    },
    Resolved {
        partition: i32,
        at: &'static str,
    },
}

fn wrapped(p: P, op: Op, after: Option<bool>, before: Option<bool>, updated: &'static str) -> Want {
    Want::Row {
        p,
        op,
        after,
        before,
        updated: Some(updated),
        mvcc: None,
        envelope: Envelope::Wrapped,
    }
}

fn resolved3(at: &'static str) -> [Want; 3] {
    [0, 1, 2].map(|partition| Want::Resolved { partition, at })
}

fn hlc(s: &str) -> Hlc {
    s.parse().unwrap()
}

fn check(name: &str, wants: Vec<Want>) -> Vec<Event> {
    let events = load(name);
    assert_eq!(events.len(), wants.len(), "{name}: line count");
    for (i, (ev, want)) in events.iter().zip(wants).enumerate() {
        let at = format!("{name} line {}", i + 1);
        let offset = i as i64 + 1;
        match (ev, want) {
            (
                Event::Row(r),
                Want::Row {
                    p,
                    op,
                    after,
                    before,
                    updated,
                    mvcc,
                    envelope,
                },
            ) => {
                let d = p.data();
                assert_eq!(r.meta.topic, "payments", "{at}");
                assert_eq!(r.meta.partition, d.partition, "{at}: partition of {p:?}");
                assert_eq!(r.meta.offset, offset, "{at}");
                assert_eq!(
                    r.key,
                    vec![Value::String(d.date.into()), Value::String(d.id.into())],
                    "{at}: key"
                );
                assert_eq!(
                    r.meta.key_json,
                    format!("[\"{}\", \"{}\"]", d.date, d.id),
                    "{at}"
                );
                assert_eq!(r.op, op, "{at}: op");
                assert_eq!(r.envelope, envelope, "{at}");
                assert_eq!(r.after, after.map(|a| p.row(a, envelope)), "{at}: after");
                assert_eq!(r.before, before.map(|b| p.row(b, envelope)), "{at}: before");
                assert_eq!(r.meta.updated, updated.map(hlc), "{at}: updated");
                assert_eq!(r.meta.mvcc_timestamp, mvcc.map(hlc), "{at}: mvcc_timestamp");
                assert_eq!((r.meta.pg_xid, r.pg_lsn.as_deref()), (None, None), "{at}");
            }
            (Event::Resolved(r), Want::Resolved { partition, at: ts }) => {
                assert_eq!(
                    r,
                    &Resolved {
                        topic: "payments".into(),
                        partition,
                        offset,
                        resolved: hlc(ts),
                    },
                    "{at}"
                );
            }
            (ev, _) => panic!("{at}: unexpected event kind {ev:?}"),
        }
    }
    events
}

fn row_event(ev: &Event) -> &RowEvent {
    match ev {
        Event::Row(r) => r,
        Event::Resolved(r) => panic!("expected a row event, got {r:?}"),
    }
}

#[test]
fn wrapped_updated_diff() {
    use Op::*;
    use P::*;
    let mut wants = vec![
        wrapped(P1, Insert, Some(false), None, T0),
        wrapped(P2, Insert, Some(false), None, T0),
    ];
    wants.extend(resolved3(T0));
    wants.push(wrapped(P3, Insert, Some(false), None, T1));
    wants.push(wrapped(P1, Update, Some(true), Some(false), T2));
    wants.push(wrapped(P2, Update, Some(true), Some(false), T2));
    wants.extend(resolved3(R2));
    wants.push(wrapped(P1, Delete, None, Some(true), T3));
    wants.push(wrapped(P2, Delete, None, Some(true), T3));
    wants.extend(resolved3(R3));
    let events = check("01-wrapped-updated-diff.ndjson", wants);

    // The exact decimal text, spelled out once more.
    let p1 = row_event(&events[0]).after.as_ref().unwrap();
    assert_eq!(
        p1.get("amount").and_then(Value::as_number_text),
        Some("1250.00")
    );
    let p3 = row_event(&events[5]);
    assert_eq!(
        p3.after.as_ref().unwrap().get("amount"),
        Some(&Value::Number("-15.50".into()))
    );
    assert_eq!(
        p3.meta.updated,
        Some(Hlc::new(1_749_715_231_873_209_112, 2))
    );
}

#[test]
fn wrapped_default_delete() {
    use P::*;
    let row = |p, op, after| Want::Row {
        p,
        op,
        after,
        before: None,
        updated: None,
        mvcc: None,
        envelope: Envelope::Wrapped,
    };
    check(
        "02-wrapped-default-delete.ndjson",
        vec![
            row(P3, Op::Upsert, Some(false)),
            row(P1, Op::Upsert, Some(true)),
            row(P1, Op::Delete, None),
            row(P3, Op::Delete, None),
        ],
    );
}

#[test]
fn resolved_only() {
    let mut wants = Vec::new();
    wants.extend(resolved3(R2));
    wants.extend(resolved3(R3));
    check("03-resolved.ndjson", wants);
}

#[test]
fn key_in_value_mvcc_timestamp() {
    use P::*;
    let row = |p, op, after, updated, mvcc| Want::Row {
        p,
        op,
        after,
        before: None,
        updated: Some(updated),
        mvcc: Some(mvcc),
        envelope: Envelope::Wrapped,
    };
    check(
        "04-key-in-value-mvcc-timestamp.ndjson",
        vec![
            row(P1, Op::Upsert, Some(false), T0, C1),
            row(P2, Op::Upsert, Some(false), T0, C2),
            row(P1, Op::Upsert, Some(true), T2, T2),
            row(P1, Op::Delete, None, T3, T3),
        ],
    );
}

#[test]
fn cdc_query_bare() {
    use P::*;
    let row = |p, op, after, updated| Want::Row {
        p,
        op,
        after,
        before: None,
        updated: Some(updated),
        mvcc: None,
        envelope: Envelope::Bare,
    };
    let mut wants = vec![
        row(P3, Op::Insert, Some(false), T1),
        row(P1, Op::Update, Some(true), T2),
        row(P2, Op::Update, Some(true), T2),
    ];
    wants.extend(resolved3(R2));
    wants.push(row(P1, Op::Delete, None, T3));
    wants.extend(resolved3(R3));
    let events = check("05-cdc-query-bare.ndjson", wants);
    // The operation column is consumed, not left in the row.
    let first = row_event(&events[0]).after.as_ref().unwrap();
    assert_eq!(first.get("op"), None);
    assert_eq!(first.get("amount"), Some(&Value::Number("-15.50".into())));
}

#[test]
fn duplicate_redelivery() {
    use Op::*;
    use P::*;
    let mut wants = vec![
        wrapped(P1, Update, Some(true), Some(false), T2),
        wrapped(P2, Update, Some(true), Some(false), T2),
    ];
    wants.extend(resolved3(R2));
    wants.push(wrapped(P1, Delete, None, Some(true), T3));
    wants.push(wrapped(P2, Delete, None, Some(true), T3));
    wants.push(wrapped(P2, Delete, None, Some(true), T3));
    wants.push(wrapped(P1, Delete, None, Some(true), T3));
    wants.extend(resolved3(R3));
    let events = check("06-duplicate-redelivery.ndjson", wants);
    // A redelivery decodes to the same event, only the offset differs.
    let same = |a: &Event, b: &Event| {
        let (mut a, b) = (row_event(a).clone(), row_event(b));
        a.meta.offset = b.meta.offset;
        assert_eq!(&a, b);
    };
    same(&events[5], &events[8]);
    same(&events[6], &events[7]);
}

#[test]
fn every_fixture_file_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".ndjson"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "01-wrapped-updated-diff.ndjson",
            "02-wrapped-default-delete.ndjson",
            "03-resolved.ndjson",
            "04-key-in-value-mvcc-timestamp.ndjson",
            "05-cdc-query-bare.ndjson",
            "06-duplicate-redelivery.ndjson",
        ],
        "a new fixture file needs its own test here"
    );
}
