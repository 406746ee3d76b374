//! PostgreSQL values in the changefeed's JSON, both ways.
//!
//! [`map_value`] is how cdc-archiver's PostgreSQL changefeed writes a
//! column value it read from wal2json (PostgreSQL's output text of the
//! value, rendered under the changefeed's pinned session settings) as
//! CockroachDB writes that type; [`output_text`] is its inverse: from an
//! archived value back to the exact output text PostgreSQL prints for the
//! value under the same settings. The purger compares that text with
//! `format('%s', column)` of the current row, so a row is deleted only when
//! its current value prints exactly as the archived one did.
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
//! writes NaN/Infinity as `null`: such a value's output text cannot be
//! recovered, and [`output_text`] gives SQL NULL, which no NaN equals.)
//!
//! Guarantee: for every value `v` of a type and every output text `s` that
//! PostgreSQL prints, `output_text(t, decode(map_value(t, s))) == s`
//! (tested for every type this module names, and by property tests), and
//! [`output_text`] never returns the text of another value: when it cannot
//! tell, it says so ([`Unrepresentable`]).

use serde_json::value::RawValue;

use crate::Value;

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

/// An archived value whose PostgreSQL output text cannot be recovered (a
/// value of a shape the changefeed never writes for its type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("archived value {value} of a column of type oid {typeoid} has no known PostgreSQL text")]
pub struct Unrepresentable {
    /// The column's type oid.
    pub typeoid: u32,
    /// The archived value's JSON text.
    pub value: String,
}

/// The inverse of [`map_value`]: the output text PostgreSQL prints for the
/// archived value `v` of a column of type `typeoid` (`Ok(None)`: SQL NULL).
pub fn output_text(typeoid: u32, v: &Value) -> Result<Option<String>, Unrepresentable> {
    let bad = || Unrepresentable {
        typeoid,
        value: v.to_json_text(),
    };
    let text = match (typeoid, v) {
        (_, Value::Null) => return Ok(None),
        (oid::BOOL, Value::Bool(b)) => if *b { "t" } else { "f" }.to_owned(),
        (
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::NUMERIC | oid::FLOAT4 | oid::FLOAT8,
            Value::Number(n),
        ) => n.clone(),
        (oid::JSON | oid::JSONB, Value::Json(j) | Value::Number(j)) => j.clone(),
        (oid::JSON | oid::JSONB, Value::Bool(b)) => b.to_string(),
        // A JSON string scalar (json/jsonb output is always valid JSON, so
        // the changefeed embedded it as is); PostgreSQL escapes as serde.
        (oid::JSON | oid::JSONB, Value::String(s)) => {
            serde_json::to_string(s).map_err(|_| bad())?
        }
        (oid::TIMESTAMPTZ, Value::String(s)) => timestamptz_text(s),
        (oid::TIMESTAMP, Value::String(s)) => timestamp_text(s),
        (other, Value::Json(j)) => match array_element(other) {
            Some(elem) => array_text(elem, j).ok_or_else(bad)?,
            None => return Err(bad()),
        },
        // A JSON string where JSON is expected: the text did not parse as
        // JSON when it was archived, and was kept as a string.
        (_, Value::String(s)) => s.clone(),
        _ => return Err(bad()),
    };
    Ok(Some(text))
}

/// `2025-06-10T10:00:00.123456Z` back to `2025-06-10 10:00:00.123456+00`
/// (the changefeed's session runs in UTC); any other text is PostgreSQL's
/// own, kept as it was.
fn timestamptz_text(s: &str) -> String {
    match s.strip_suffix('Z').and_then(|t| t.split_once('T')) {
        Some((date, time)) => format!("{date} {time}+00"),
        None => s.to_owned(),
    }
}

/// `2025-06-10T10:00:00.5` back to `2025-06-10 10:00:00.5`.
fn timestamp_text(s: &str) -> String {
    match s.as_bytes().get(10) {
        Some(b'T') if s.len() >= 19 => format!("{} {}", &s[..10], &s[11..]),
        _ => s.to_owned(),
    }
}

/// A JSON array of elements of type `elem` back to PostgreSQL's array text
/// (`array_out`: elements quoted when empty, `NULL`, or holding a
/// delimiter, brace, quote, backslash or white space; `"` and `\` escaped).
fn array_text(elem: u32, json: &str) -> Option<String> {
    let items: Vec<&RawValue> = serde_json::from_str(json).ok()?;
    let mut out = String::from("{");
    for (i, raw) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = Value::from_raw(raw).ok()?;
        match output_text(elem, &v).ok()? {
            None => out.push_str("NULL"),
            Some(t) => {
                let quote = t.is_empty()
                    || t.eq_ignore_ascii_case("NULL")
                    || t.chars().any(|c| {
                        matches!(
                            c,
                            '{' | '}'
                                | ','
                                | '"'
                                | '\\'
                                | ' '
                                | '\t'
                                | '\n'
                                | '\r'
                                | '\u{b}'
                                | '\u{c}'
                        )
                    });
                if quote {
                    out.push('"');
                    for c in t.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                } else {
                    out.push_str(&t);
                }
            }
        }
    }
    out.push('}');
    Some(out)
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

    /// `output_text` undoes `map_value`: PostgreSQL's output text of a value,
    /// mapped the way the changefeed archives it, decoded the way the
    /// segment reader gives it back, prints again as the same text.
    fn round_trip(oid: u32, pg_text: Option<&str>) -> Option<String> {
        let raw = pg_text.map(|t| raw(&serde_json::to_string(t).unwrap()));
        let json = map_value(Some(oid), raw.as_deref());
        let v = Value::from_raw(&raw_owned(&json)).unwrap();
        output_text(oid, &v).unwrap()
    }

    fn raw_owned(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn output_text_inverts_the_mapping() {
        let cases: &[(u32, &str)] = &[
            (oid::NUMERIC, "1250.00"),
            (oid::NUMERIC, "1.0"),
            (oid::NUMERIC, "NaN"),
            (oid::NUMERIC, "-0.000000000000000000000000000001"),
            (oid::FLOAT8, "1.5e+300"),
            (oid::FLOAT8, "-Infinity"),
            (oid::FLOAT4, "-0"),
            (oid::INT8, "9007199254740993"),
            (oid::BOOL, "t"),
            (oid::BOOL, "f"),
            (25, "x\"y"),
            (25, ""),
            (25, "NULL"),
            (1082, "2025-06-10"),
            (oid::TIMESTAMPTZ, "2025-06-10 10:00:00.123456+00"),
            (oid::TIMESTAMPTZ, "2025-06-10 10:00:00+00"),
            (oid::TIMESTAMPTZ, "infinity"),
            (oid::TIMESTAMP, "2025-06-10 10:00:00.5"),
            (oid::TIMESTAMP, "-infinity"),
            (oid::BYTEA, "\\xdeadbeef"),
            (oid::JSONB, "{\"k\": [1, 2.50]}"),
            (oid::JSONB, "\"a string\""),
            (oid::JSONB, "12.50"),
            (oid::JSONB, "true"),
            (oid::JSON, "[1,  2]"),
            (1007, "{1,2,NULL}"),
            (1007, "{}"),
            (1009, "{a,\"b c\",\"q\\\"\",\"\",\"NULL\",\"x,y\",\"{z}\"}"),
            (1000, "{t,f}"),
            (1231, "{1.50,NaN}"),
            (1185, "{\"2025-06-10 10:00:00+00\",NULL}"),
            (1007, "{{1,2},{3,4}}"),
            (600, "(1,2)"),
            (2950, "f0e1d2c3-b4a5-4968-8776-655443322110"),
        ];
        for (oid, text) in cases {
            assert_eq!(
                round_trip(*oid, Some(text)).as_deref(),
                Some(*text),
                "type {oid}, text {text:?}"
            );
        }
        assert_eq!(round_trip(oid::NUMERIC, None), None);
        assert_eq!(round_trip(25, None), None);
    }

    /// A value of a shape the changefeed never writes for the type is
    /// refused, never printed as some other value's text.
    #[test]
    fn unknown_shapes_are_refused() {
        assert!(output_text(oid::BOOL, &Value::Number("1".into())).is_err());
        assert!(output_text(oid::INT4, &Value::Bool(true)).is_err());
        assert!(output_text(25, &Value::Json("[1]".into())).is_err());
        assert!(output_text(1007, &Value::Json("{\"a\": 1}".into())).is_err());
    }

    proptest::proptest! {
        /// Any text (what a text, varchar, citext or unknown type prints)
        /// and any text[] element survive the round trip.
        #[test]
        fn any_text_round_trips(s in "\\PC*", t in "[ -~]{0,12}") {
            proptest::prop_assert_eq!(round_trip(25, Some(&s)), Some(s.clone()));
            let quoted = |x: &str| format!("\"{}\"", x.replace('\\', "\\\\").replace('"', "\\\""));
            // array_out's own rendering of {t, s}: quoted when needed.
            let lit = format!("{{{},{}}}", quoted(&t), quoted(&s));
            let back = round_trip(1009, Some(&lit)).unwrap();
            let reparsed = map_value(Some(1009), Some(&raw(&serde_json::to_string(&back).unwrap())));
            proptest::prop_assert_eq!(reparsed, map_value(Some(1009), Some(&raw(&serde_json::to_string(&lit).unwrap()))));
        }

        /// Numbers keep their exact digits.
        #[test]
        fn numbers_round_trip(i in proptest::num::i64::ANY, f in "-?[0-9]{1,20}\\.[0-9]{1,20}") {
            proptest::prop_assert_eq!(round_trip(oid::INT8, Some(&i.to_string())), Some(i.to_string()));
            proptest::prop_assert_eq!(round_trip(oid::NUMERIC, Some(&f)), Some(f.clone()));
        }
    }
}
