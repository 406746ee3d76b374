//! Property tests: HLC text and order, and exact value round trips.

use cdc_changefeed::{decode, Event, Hlc, RawRecord, Value};
use proptest::prelude::*;

proptest! {
    #[test]
    fn hlc_prints_and_parses_back(wall in any::<i64>(), logical in any::<u32>()) {
        let h = Hlc::new(wall, logical);
        let text = h.to_string();
        let (w, l) = text.split_once('.').unwrap();
        prop_assert_eq!(w, wall.to_string());
        prop_assert_eq!(l.len(), 10);
        let back: Hlc = text.parse().unwrap();
        prop_assert_eq!(back, h);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn hlc_text_round_trips(wall in "0|-?[1-9][0-9]{0,17}", logical in "[0-3][0-9]{9}") {
        let text = format!("{wall}.{logical}");
        let h: Hlc = text.parse().unwrap();
        prop_assert_eq!(h.to_string(), text);
    }

    #[test]
    fn hlc_order_is_wall_then_logical(a in any::<(i64, u32)>(), b in any::<(i64, u32)>()) {
        let (ha, hb) = (Hlc::new(a.0, a.1), Hlc::new(b.0, b.1));
        prop_assert_eq!(ha.cmp(&hb), a.cmp(&b));
        prop_assert_eq!(ha == hb, a == b);
    }

    #[test]
    fn arbitrary_text_never_panics_hlc_parse(s in "\\PC{0,30}") {
        if let Ok(h) = s.parse::<Hlc>() {
            // Whatever parses is canonical.
            prop_assert_eq!(h.to_string(), s);
        }
    }

    #[test]
    fn values_survive_decode_and_re_encode(
        cols in prop::collection::vec(json_value(), 1..8),
        key in prop::collection::vec(json_value(), 1..3),
    ) {
        let key_text = format!("[{}]", key.join(", "));
        let after = cols
            .iter()
            .enumerate()
            .map(|(i, v)| format!("\"c{i}\": {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let value = format!("{{\"after\": {{{after}}}, \"before\": null}}");
        let rec = RawRecord {
            topic: "t",
            partition: 0,
            offset: 0,
            key: Some(key_text.as_bytes()),
            value: Some(value.as_bytes()),
        };
        let Ok(Event::Row(ev)) = decode(&rec) else {
            return Err(TestCaseError::fail(format!("no row from {value}")));
        };
        prop_assert_eq!(&ev.meta.key_json, &key_text);
        let got_key: Vec<String> = ev.key.iter().map(Value::to_json_text).collect();
        prop_assert_eq!(got_key, key);
        let row = ev.after.unwrap();
        prop_assert_eq!(row.len(), cols.len());
        for (i, want) in cols.iter().enumerate() {
            let v = row.get(&format!("c{i}")).unwrap();
            prop_assert_eq!(&v.to_json_text(), want);
            prop_assert_eq!(&serde_json::to_string(v).unwrap(), want);
        }
    }
}

/// JSON values as CockroachDB-like text: arbitrary-precision numbers,
/// strings escaped the way serde_json does (so the re-encoding is
/// byte-exact), nested arrays and objects with `", "` / `": "`.
fn json_value() -> impl Strategy<Value = String> {
    let number = "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?";
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        number.prop_map(|s| s),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("\"NaN\"".to_owned()),
        "\\\\x[0-9a-f]{0,16}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((any::<String>(), inner), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}: {v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    })
}
