//! PostgreSQL values and changes to CockroachDB changefeed bytes.
//!
//! CockroachDB writes JSON with `", "` and `": "` separators and object keys
//! in alphabetical order (see the fixture README), so messages are written
//! here by hand rather than with serde_json's compact writer.
//!
//! Type mapping (CockroachDB's `tree.AsJSON` forms):
//! bool is a JSON bool; integers, numeric and floats are JSON numbers with
//! PostgreSQL's exact digits (wal2json sends them as strings with
//! `numeric-data-types-as-string`, or as bare numbers without it), except
//! `NaN`, `Infinity` and `-Infinity`, which are JSON strings as CockroachDB
//! writes non-finite DECIMAL and FLOAT values; text-like types, uuid and
//! date are strings; `timestamptz` is RFC 3339 in UTC with `Z` and trailing
//! fractional zeros trimmed; `timestamp` is `YYYY-MM-DDTHH:MM:SS[.f]`;
//! bytea is `"\\x<hex>"`; json/jsonb are embedded as JSON; one-dimensional
//! arrays become JSON arrays (elements mapped as above). Anything else, and
//! any value that does not parse as expected (`infinity` timestamps,
//! multi-dimensional arrays, ...), is sent as its PostgreSQL text: never
//! dropped. (A wal2json older than 2.6 cannot send numbers as strings and
//! writes NaN/Infinity as `null`; see [`crate::wal2json::NUMERIC_AS_STRING`].)

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::hlc::Hlc;

/// Type OIDs this module treats specially.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// The element type of a one-dimensional array type, for the array types
/// whose elements need more than "a string".
fn array_element(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => oid::BOOL,
        1001 => oid::BYTEA,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1028 => oid::OID,
        199 => oid::JSON,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        1231 => oid::NUMERIC,
        3807 => oid::JSONB,
        // text[], varchar[], bpchar[], name[], uuid[], date[], ...: strings.
        1009 | 1015 | 1014 | 1003 | 2951 | 1182 | 1041 | 1040 => 0,
        _ => return None,
    })
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    // serde_json's escaping of a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
}

fn json_string(s: &str) -> String {
    let mut out = String::new();
    push_json_string(&mut out, s);
    out
}

/// Maps one wal2json value of type `typeoid` to CockroachDB's JSON text.
pub fn map_value(typeoid: Option<u32>, raw: Option<&RawValue>) -> String {
    let Some(raw) = raw else {
        return "null".to_owned();
    };
    let text = raw.get();
    if !text.starts_with('"') {
        // null, a bool or a number: wal2json already wrote the exact text.
        return text.to_owned();
    }
    match serde_json::from_str::<String>(text) {
        Ok(s) => map_text(typeoid.unwrap_or(0), &s),
        Err(_) => text.to_owned(),
    }
}

/// Maps PostgreSQL's text form of a value of type `typeoid`.
fn map_text(typeoid: u32, s: &str) -> String {
    match typeoid {
        oid::TIMESTAMPTZ => timestamptz(s).unwrap_or_else(|| json_string(s)),
        oid::TIMESTAMP => json_string(&timestamp(s)),
        oid::BYTEA => {
            if s.starts_with("\\x") {
                json_string(s)
            } else {
                json_string(&format!("\\x{s}"))
            }
        }
        oid::JSON | oid::JSONB => match serde_json::from_str::<&RawValue>(s) {
            Ok(_) => s.trim().to_owned(),
            Err(_) => json_string(s),
        },
        oid::BOOL => match s {
            "t" | "true" => "true".to_owned(),
            "f" | "false" => "false".to_owned(),
            _ => json_string(s),
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::NUMERIC | oid::FLOAT4 | oid::FLOAT8 => {
            let is_number = s.starts_with(|c: char| c.is_ascii_digit() || c == '-')
                && serde_json::from_str::<&RawValue>(s).is_ok();
            if is_number {
                s.to_owned()
            } else {
                json_string(s)
            }
        }
        other => match array_element(other) {
            Some(elem) => array(elem, s).unwrap_or_else(|| json_string(s)),
            None => json_string(s),
        },
    }
}

/// `2025-06-10 10:00:00.123456+00` to `"2025-06-10T10:00:00.123456Z"`.
fn timestamptz(s: &str) -> Option<String> {
    let dt = chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z").ok()?;
    let utc = dt.with_timezone(&chrono::Utc);
    let base = utc.format("%Y-%m-%dT%H:%M:%S").to_string();
    let ns = utc.timestamp_subsec_nanos();
    Some(if ns == 0 {
        json_string(&format!("{base}Z"))
    } else {
        let frac = format!("{ns:09}");
        json_string(&format!("{base}.{}Z", frac.trim_end_matches('0')))
    })
}

fn timestamp(s: &str) -> String {
    match s.as_bytes().get(10) {
        Some(b' ') if s.len() >= 19 => format!("{}T{}", &s[..10], &s[11..]),
        _ => s.to_owned(),
    }
}

/// A one-dimensional PostgreSQL array literal as a JSON array, or `None`
/// for anything else (multi-dimensional, explicit bounds).
fn array(elem: u32, s: &str) -> Option<String> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    let mut items: Vec<String> = Vec::new();
    if !inner.is_empty() {
        let mut chars = inner.chars().peekable();
        loop {
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut v = String::new();
                loop {
                    match chars.next()? {
                        '\\' => v.push(chars.next()?),
                        '"' => break,
                        c => v.push(c),
                    }
                }
                items.push(map_text(elem, &v));
            } else {
                let mut v = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    if c == '{' || c == '"' {
                        return None;
                    }
                    v.push(c);
                    chars.next();
                }
                items.push(if v == "NULL" {
                    "null".to_owned()
                } else {
                    map_text(elem, &v)
                });
            }
            match chars.next() {
                None => break,
                Some(',') => continue,
                Some(_) => return None,
            }
        }
    }
    Some(format!("[{}]", items.join(", ")))
}

/// A row as CockroachDB writes it: keys sorted, `", "`/`": "` separators.
/// `cols` maps column name to already-encoded JSON text.
pub fn row_object(cols: &BTreeMap<String, String>) -> String {
    let mut out = String::from("{");
    for (i, (name, v)) in cols.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_json_string(&mut out, name);
        out.push_str(": ");
        out.push_str(v);
    }
    out.push('}');
    out
}

/// The Kafka key: the primary-key values in key order.
pub fn key_array(values: &[&str]) -> String {
    format!("[{}]", values.join(", "))
}

/// Whether wal2json treats a type as a number (a bare JSON number, or a
/// string with `numeric-data-types-as-string`).
pub fn is_number_type(typeoid: Option<u32>) -> bool {
    matches!(
        typeoid,
        Some(
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC
        )
    )
}

/// Whether a type may carry NaN or an infinity, which a wal2json without
/// `numeric-data-types-as-string` writes as `null`.
pub fn has_special_values(typeoid: Option<u32>) -> bool {
    matches!(typeoid, Some(oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC))
}

/// Where a row version came from: the envelope's metadata fields.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The transaction's `updated`.
    pub updated: Hlc,
    /// Top-level transaction id, 64-bit (`epoch << 32 | xid`, PostgreSQL's
    /// `xid8`): its low 32 bits are the row version's `xmin`.
    pub xid: u64,
    /// The transaction's commit LSN.
    pub commit_lsn: String,
}

/// The wrapped envelope. `before` is `None` when the table's replica
/// identity cannot give the old row (the field is then left out, as
/// CockroachDB does without `diff`), `Some(None)` for a JSON null.
/// `versioned = false` leaves `pg_xid` out: the row is not known to be
/// complete, so the purger must not find a version to delete it by.
pub fn envelope(
    after: Option<&str>,
    before: Option<Option<&str>>,
    origin: &Origin,
    versioned: bool,
) -> String {
    let mut out = String::from("{\"after\": ");
    out.push_str(after.unwrap_or("null"));
    if let Some(b) = before {
        out.push_str(", \"before\": ");
        out.push_str(b.unwrap_or("null"));
    }
    out.push_str(", \"pg_lsn\": ");
    push_json_string(&mut out, &origin.commit_lsn);
    if versioned {
        out.push_str(", \"pg_xid\": \"");
        out.push_str(&origin.xid.to_string());
        out.push('"');
    }
    out.push_str(", \"updated\": \"");
    out.push_str(&origin.updated.to_string());
    out.push_str("\"}");
    out
}

/// A resolved message, compact like CockroachDB's (Go `encoding/json`).
pub fn resolved(ts: Hlc) -> String {
    format!("{{\"resolved\":\"{ts}\"}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn map(oid: u32, s: &str) -> String {
        map_value(Some(oid), Some(&raw(s)))
    }

    #[test]
    fn maps_types_like_cockroachdb() {
        assert_eq!(map(oid::NUMERIC, "1250.00"), "1250.00");
        assert_eq!(
            map(oid::NUMERIC, "-0.000000000000000000000000000001"),
            "-0.000000000000000000000000000001"
        );
        assert_eq!(map(oid::BOOL, "true"), "true");
        assert_eq!(map_value(Some(25), None), "null");
        assert_eq!(map(25, r#""x\"y""#), r#""x\"y""#);
        assert_eq!(
            map(2950, r#""f0e1d2c3-b4a5-4968-8776-655443322110""#),
            r#""f0e1d2c3-b4a5-4968-8776-655443322110""#
        );
        assert_eq!(map(1082, r#""2025-06-10""#), r#""2025-06-10""#);
        assert_eq!(
            map(oid::TIMESTAMPTZ, r#""2025-06-10 10:00:00.123456+00""#),
            r#""2025-06-10T10:00:00.123456Z""#
        );
        assert_eq!(
            map(oid::TIMESTAMPTZ, r#""2025-06-10 12:00:00+02""#),
            r#""2025-06-10T10:00:00Z""#
        );
        assert_eq!(map(oid::TIMESTAMPTZ, r#""infinity""#), r#""infinity""#);
        assert_eq!(
            map(oid::TIMESTAMP, r#""2025-06-10 10:00:00.5""#),
            r#""2025-06-10T10:00:00.5""#
        );
        assert_eq!(map(oid::BYTEA, r#""deadbeef""#), r#""\\xdeadbeef""#);
        assert_eq!(
            map(oid::JSONB, r#""{\"k\": [1, 2.50]}""#),
            r#"{"k": [1, 2.50]}"#
        );
        assert_eq!(map(oid::JSON, r#""not json""#), r#""not json""#);
        assert_eq!(map(1007, r#""{1,2,NULL}""#), "[1, 2, null]");
        assert_eq!(
            map(1009, r#""{a,\"b c\",\"q\\\"\"}""#),
            r#"["a", "b c", "q\""]"#
        );
        assert_eq!(map(1000, r#""{t,f}""#), "[true, false]");
        assert_eq!(map(1231, r#""{1.50,NaN}""#), r#"[1.50, "NaN"]"#);
        assert_eq!(map(1007, r#""{{1,2},{3,4}}""#), r#""{{1,2},{3,4}}""#);
        assert_eq!(map(1007, r#""{}""#), "[]");
        // Unknown types: PostgreSQL's text.
        assert_eq!(map(600, r#""(1,2)""#), r#""(1,2)""#);
    }

    /// wal2json's `numeric-data-types-as-string` form: every number is a
    /// JSON string, mapped back to CockroachDB's JSON.
    #[test]
    fn numbers_sent_as_strings() {
        assert_eq!(map(oid::NUMERIC, r#""1250.00""#), "1250.00");
        assert_eq!(
            map(
                oid::NUMERIC,
                r#""-1234567890987654321.1234567890987654321""#
            ),
            "-1234567890987654321.1234567890987654321"
        );
        assert_eq!(map(oid::INT8, r#""9007199254740993""#), "9007199254740993");
        assert_eq!(map(oid::INT2, r#""-7""#), "-7");
        assert_eq!(map(oid::OID, r#""4294967295""#), "4294967295");
        assert_eq!(map(oid::FLOAT8, r#""1.5e+300""#), "1.5e+300");
        assert_eq!(
            map(oid::FLOAT8, r#""0.30000000000000004""#),
            "0.30000000000000004"
        );
        assert_eq!(map(oid::FLOAT4, r#""-0""#), "-0");
        // Non-finite values: strings, as CockroachDB writes them.
        for t in [oid::NUMERIC, oid::FLOAT8, oid::FLOAT4] {
            assert_eq!(map(t, r#""NaN""#), r#""NaN""#);
            assert_eq!(map(t, r#""Infinity""#), r#""Infinity""#);
            assert_eq!(map(t, r#""-Infinity""#), r#""-Infinity""#);
        }
        assert!(has_special_values(Some(oid::NUMERIC)));
        assert!(has_special_values(Some(oid::FLOAT4)));
        assert!(!has_special_values(Some(oid::INT8)));
        assert!(!has_special_values(None));
    }

    #[test]
    fn envelope_matches_fixture_layout() {
        let mut row = BTreeMap::new();
        row.insert("reference".to_owned(), "\"INV-2025-00042\"".to_owned());
        row.insert("amount".to_owned(), "1250.00".to_owned());
        row.insert("archived".to_owned(), "false".to_owned());
        let after = row_object(&row);
        assert_eq!(
            after,
            r#"{"amount": 1250.00, "archived": false, "reference": "INV-2025-00042"}"#
        );
        let o = Origin {
            updated: Hlc {
                wall: 1749715231873209112,
                logical: 2,
            },
            xid: 726,
            commit_lsn: "0/1540D10".into(),
        };
        assert_eq!(
            envelope(Some(&after), Some(None), &o, true),
            format!(
                r#"{{"after": {after}, "before": null, "pg_lsn": "0/1540D10", "pg_xid": "726", "updated": "1749715231873209112.0000000002"}}"#
            )
        );
        assert_eq!(
            envelope(None, None, &o, true),
            r#"{"after": null, "pg_lsn": "0/1540D10", "pg_xid": "726", "updated": "1749715231873209112.0000000002"}"#
        );
        assert_eq!(
            envelope(Some("{}"), None, &o, false),
            r#"{"after": {}, "pg_lsn": "0/1540D10", "updated": "1749715231873209112.0000000002"}"#,
            "an unversioned row has no pg_xid"
        );
        assert_eq!(
            key_array(&["\"2025-06-10\"", "\"8a1f\""]),
            r#"["2025-06-10", "8a1f"]"#
        );
        assert_eq!(
            resolved(Hlc {
                wall: 1749715270961130755,
                logical: 0
            }),
            r#"{"resolved":"1749715270961130755.0000000000"}"#
        );
    }
}
