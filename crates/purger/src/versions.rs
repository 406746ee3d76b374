//! From a segment's rows to the list of row versions to delete: one per
//! key (the latest archived version of that key in the checkpoint), each
//! key split into the text of its primary-key values, sorted in key order
//! so that consecutive batches touch neighbouring ranges. On PostgreSQL
//! each target carries the archived row itself, as the output text of
//! every column ([`Plan::resolve_content`]): what the content guard
//! compares the current row with.

use std::cmp::Ordering;
use std::collections::HashMap;

use cdc_changefeed::Value;
use cdc_common::db::Dialect;
use serde_json::value::RawValue;

use crate::sql::ContentColumn;

/// One archived row event, as the purger needs it: the segment reader's
/// record key and version (one definition, in `cdc-segment`).
pub use cdc_segment::versions::RowVersion as ArchivedVersion;

/// A row version the purger may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Primary-key values as text, cast by the server to each column's type.
    pub key: Vec<String>,
    /// CockroachDB: the archived version as text (HLC `wall.logical`),
    /// which the guard compares. PostgreSQL: the recording transaction's
    /// 32-bit xid, for logs only (empty when the changefeed sent none).
    pub version: String,
    /// PostgreSQL: the archived row's columns, until
    /// [`Plan::resolve_content`] turns them into `content`.
    pub columns: Vec<(String, Value)>,
    /// PostgreSQL: the output text of every content column of the table
    /// (`None`: NULL), in the table's column order: the guard's operands.
    pub content: Vec<Option<String>>,
}

/// What a checkpoint's rows become.
#[derive(Debug, Default)]
pub struct Plan {
    /// Versions to delete, in key order, one per key.
    pub targets: Vec<Target>,
    /// Rows in the segment (every event, duplicates included).
    pub rows: u64,
    /// Keys whose latest archived event cannot be matched: on CockroachDB
    /// it has no MVCC timestamp (the changefeed ran without
    /// `mvcc_timestamp`); on PostgreSQL the archived row lacks a column of
    /// the table (a large value the changefeed could not read, a column
    /// added since) or holds a value whose text cannot be recovered. Never
    /// deleted.
    pub no_version: u64,
    /// Segment rows that are not the chosen (latest) version of their key:
    /// older versions and redelivered duplicates. Not deleted by this
    /// checkpoint (there is nothing left of them to delete: a row has one
    /// current version). `rows = targets + no_version + superseded`.
    pub superseded: u64,
    /// How many values every archived key has, and the first such key.
    pub key_shape: Option<(usize, String)>,
}

/// The low 32 bits of a 64-bit xid (`epoch << 32 | xid`): what `xmin` holds.
pub const XID32_MASK: u64 = 0xFFFF_FFFF;

impl Plan {
    /// PostgreSQL: turns every target's archived row into the output text
    /// of each of the table's `columns` ([`cdc_changefeed::pgvalue::output_text`]).
    /// A target whose row lacks one of them, or holds a value with no
    /// known text, cannot be compared: it is removed and counted in
    /// `no_version`. Returns one example reason per kind, for the log.
    pub fn resolve_content(&mut self, columns: &[ContentColumn]) -> Vec<String> {
        let mut reasons: Vec<String> = Vec::new();
        let before = self.targets.len();
        self.targets.retain_mut(|t| {
            let archived = std::mem::take(&mut t.columns);
            let mut content = Vec::with_capacity(columns.len());
            for c in columns {
                let Some((_, v)) = archived.iter().find(|(n, _)| *n == c.name) else {
                    let why = format!("column {:?} is not in the archived row", c.name);
                    if !reasons.contains(&why) {
                        reasons.push(why);
                    }
                    return false;
                };
                match cdc_changefeed::pgvalue::output_text(c.typeoid, v) {
                    Ok(text) => content.push(text),
                    Err(e) => {
                        let why = format!("column {:?}: {e}", c.name);
                        if reasons.len() < 8 {
                            reasons.push(why);
                        }
                        return false;
                    }
                }
            }
            t.content = content;
            true
        });
        self.no_version += (before - self.targets.len()) as u64;
        reasons
    }
}

/// A key that does not fit the table's primary key.
#[derive(Debug, thiserror::Error)]
#[error("archived key {key_json} does not match the primary key ({expected} column(s)): {reason}")]
pub struct KeyMismatch {
    /// The key as archived.
    pub key_json: String,
    /// Primary-key column count.
    pub expected: usize,
    /// What is wrong.
    pub reason: String,
}

/// The version text the dialect's guard compares with.
pub fn version_text(dialect: Dialect, v: &ArchivedVersion) -> Option<String> {
    match dialect {
        Dialect::Cockroach => v.mvcc_timestamp.map(|h| h.to_string()),
        // For the logs: the content guard compares no version. `xmin` is
        // the 32-bit transaction id; a changefeed that records the 64-bit
        // form (epoch << 32 | xid) carries it in the low bits.
        Dialect::Postgres => Some(
            v.pg_xid
                .map(|x| (x & XID32_MASK).to_string())
                .unwrap_or_default(),
        ),
    }
}

/// Splits a key JSON array into one text per value: strings unescaped,
/// numbers and other JSON kept verbatim (a DECIMAL's digits never pass
/// through a float).
pub fn key_texts(key_json: &str, expected: usize) -> Result<Vec<String>, KeyMismatch> {
    let values = key_values(key_json).map_err(|reason| KeyMismatch {
        key_json: key_json.to_owned(),
        expected,
        reason,
    })?;
    if values.len() != expected {
        return Err(KeyMismatch {
            key_json: key_json.to_owned(),
            expected,
            reason: format!("it has {} value(s)", values.len()),
        });
    }
    Ok(values)
}

/// [`key_texts`] without the column count: the values, or why the key is
/// not a JSON array of non-null values.
pub fn key_values(key_json: &str) -> Result<Vec<String>, String> {
    if let Some(v) = simple_key_values(key_json) {
        return Ok(v);
    }
    let values: Vec<&RawValue> =
        serde_json::from_str(key_json).map_err(|e| format!("not a JSON array: {e}"))?;
    values
        .iter()
        .map(|v| {
            let text = v.get().trim();
            match text.as_bytes().first() {
                Some(b'"') => serde_json::from_str::<String>(text).map_err(|e| e.to_string()),
                Some(b'n') => Err("a primary-key value is null".into()),
                _ => Ok(text.to_owned()),
            }
        })
        .collect()
}

/// The common keys without a JSON parser: an array of JSON numbers and of
/// strings without escapes, e.g. `[42]`, `["eu", 1250.00]`. Exactly what
/// the full parse would give for these; `None` (use the full parse) for
/// anything else, valid or not.
fn simple_key_values(json: &str) -> Option<Vec<String>> {
    let b = json.as_bytes();
    let ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
            *i += 1;
        }
    };
    let mut i = 0;
    ws(&mut i);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i += 1;
    let mut out = Vec::with_capacity(2);
    loop {
        ws(&mut i);
        let start = i;
        match *b.get(i)? {
            b'"' => {
                i += 1;
                while *b.get(i)? != b'"' {
                    // Escapes and control characters: the full parser's job.
                    if b[i] == b'\\' || b[i] < 0x20 {
                        return None;
                    }
                    i += 1;
                }
                out.push(json[start + 1..i].to_owned());
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                i = json_number_end(b, i)?;
                out.push(json[start..i].to_owned());
            }
            _ => return None,
        }
        ws(&mut i);
        match *b.get(i)? {
            b',' => i += 1,
            b']' => {
                i += 1;
                ws(&mut i);
                return (i == b.len()).then_some(out);
            }
            _ => return None,
        }
    }
}

/// The end of the JSON number starting at `i` (RFC 8259 grammar:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`), if it is one.
fn json_number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: &mut usize| {
        let s = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > s
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => {
            digits(&mut i);
        }
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    Some(i)
}

/// Builds the plan: the latest archived version per key (by `updated`, then
/// offset), versions as the dialect's guard text, sorted by key. Every other
/// row of a key (an older version, a redelivered duplicate) counts as
/// superseded. Every key must have `key_columns` values.
pub fn plan(
    rows: &[ArchivedVersion],
    dialect: Dialect,
    key_columns: usize,
) -> Result<Plan, KeyMismatch> {
    let p = plan_keys(rows, dialect)?;
    p.check_key_columns(key_columns)?;
    Ok(p)
}

/// [`plan`] before the table's primary key is known: every key must have
/// the same number of values (see [`Plan::check_key_columns`]).
pub fn plan_keys(rows: &[ArchivedVersion], dialect: Dialect) -> Result<Plan, KeyMismatch> {
    // The latest version per key, in the order keys first appear (the
    // segment's order, usually already key order: cheap to sort).
    let mut slot: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    let mut chosen: Vec<&ArchivedVersion> = Vec::with_capacity(rows.len());
    for r in rows {
        match slot.get(r.key_json.as_str()) {
            Some(&i) => {
                let prev = chosen[i];
                if (prev.updated, prev.offset) < (r.updated, r.offset) {
                    chosen[i] = r;
                }
            }
            None => {
                slot.insert(&r.key_json, chosen.len());
                chosen.push(r);
            }
        }
    }
    let mut out = Plan {
        rows: rows.len() as u64,
        superseded: (rows.len() - chosen.len()) as u64,
        ..Plan::default()
    };
    let mut keyed = Vec::with_capacity(chosen.len());
    for r in chosen {
        let key = key_values(&r.key_json).map_err(|reason| KeyMismatch {
            key_json: r.key_json.clone(),
            expected: out.key_shape.as_ref().map_or(0, |s| s.0),
            reason,
        })?;
        match &out.key_shape {
            None => out.key_shape = Some((key.len(), r.key_json.clone())),
            Some((n, first)) if *n != key.len() => {
                return Err(KeyMismatch {
                    key_json: r.key_json.clone(),
                    expected: *n,
                    reason: format!(
                        "it has {} value(s), and key {first} of the same segment {n}",
                        key.len()
                    ),
                })
            }
            Some(_) => {}
        }
        match version_text(dialect, r) {
            Some(version) => keyed.push((
                sort_key(&key),
                Target {
                    key,
                    version,
                    columns: r.columns.clone(),
                    content: Vec::new(),
                },
            )),
            None => out.no_version += 1,
        }
    }
    // Sort keys computed once per key, not per comparison; a stable sort
    // of input that is mostly in order already is close to linear.
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    out.targets = keyed.into_iter().map(|(_, t)| t).collect();
    Ok(out)
}

impl Plan {
    /// Checks that the archived keys have `expected` values (the table's
    /// primary-key columns).
    pub fn check_key_columns(&self, expected: usize) -> Result<(), KeyMismatch> {
        match &self.key_shape {
            Some((n, example)) if *n != expected => Err(KeyMismatch {
                key_json: example.clone(),
                expected,
                reason: format!("it has {n} value(s)"),
            }),
            _ => Ok(()),
        }
    }
}

/// One key column's sort position: integers numerically, before any text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SortPart {
    Int(i128),
    Text(String),
}

fn sort_key(key: &[String]) -> Vec<SortPart> {
    key.iter()
        .map(|v| match v.parse::<i128>() {
            Ok(i) => SortPart::Int(i),
            Err(_) => SortPart::Text(v.clone()),
        })
        .collect()
}

/// Key order: integers numerically, everything else as text. Only locality
/// depends on it (batches of neighbouring keys), never correctness.
pub fn compare_keys(a: &[String], b: &[String]) -> Ordering {
    sort_key(a).cmp(&sort_key(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_changefeed::Hlc;

    fn v(key: &str, updated: i64, offset: i64, xid: Option<u64>) -> ArchivedVersion {
        ArchivedVersion {
            key_json: key.into(),
            updated: Some(Hlc::new(updated, 0)),
            mvcc_timestamp: Some(Hlc::new(updated, 3)),
            pg_xid: xid,
            offset,
            columns: vec![(
                "id".into(),
                Value::Number(key.trim_matches(['[', ']']).into()),
            )],
        }
    }

    #[test]
    fn key_values_keep_their_text() {
        assert_eq!(
            key_texts(r#"["a\"b", 12, 1250.00, true]"#, 4).unwrap(),
            ["a\"b", "12", "1250.00", "true"]
        );
        assert!(key_texts("[1, 2]", 1)
            .unwrap_err()
            .to_string()
            .contains("2 value(s)"));
        assert!(key_texts("[null]", 1).is_err());
        assert!(key_texts("{}", 1).is_err());
    }

    #[test]
    fn latest_version_per_key_in_key_order() {
        let rows = vec![
            v("[10]", 5, 1, Some(100)),
            v("[2]", 5, 2, Some(101)),
            v("[10]", 9, 3, Some(205)),
            v("[2]", 5, 2, Some(101)), // redelivery of the same version
            v("[10]", 7, 4, Some(150)),
            v("[3]", 5, 5, None),
        ];
        let p = plan(&rows, Dialect::Postgres, 1).unwrap();
        assert_eq!(
            p.targets,
            vec![
                Target {
                    key: vec!["2".into()],
                    version: "101".into(),
                    columns: vec![("id".into(), Value::Number("2".into()))],
                    content: vec![],
                },
                Target {
                    key: vec!["3".into()],
                    version: String::new(),
                    columns: vec![("id".into(), Value::Number("3".into()))],
                    content: vec![],
                },
                Target {
                    key: vec!["10".into()],
                    version: "205".into(),
                    columns: vec![("id".into(), Value::Number("10".into()))],
                    content: vec![],
                },
            ]
        );
        // PostgreSQL compares content: a row the changefeed sent without
        // its xid is a target too.
        assert_eq!(p.no_version, 0);
        // Two older versions of [10], one redelivery of [2].
        assert_eq!(p.superseded, 3);
        assert_eq!(p.rows, p.targets.len() as u64 + p.no_version + p.superseded);
        let p = plan(&rows, Dialect::Cockroach, 1).unwrap();
        assert_eq!(p.targets.len(), 3, "key 3 has an MVCC timestamp");
        assert_eq!(p.targets[2].version, "9.0000000003");
        assert_eq!(p.no_version, 0);
    }

    #[test]
    fn content_is_every_columns_output_text_or_the_target_is_not_comparable() {
        use cdc_changefeed::pgvalue::oid;
        let row = |id: &str, cols: Vec<(&str, Value)>| ArchivedVersion {
            columns: cols.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
            ..v(id, 1, 1, Some(7))
        };
        let rows = vec![
            row(
                "[1]",
                vec![
                    ("id", Value::Number("1".into())),
                    ("note", Value::Null),
                    ("at", Value::String("2025-06-10T10:00:00Z".into())),
                ],
            ),
            row(
                "[2]",
                vec![
                    ("id", Value::Number("2".into())),
                    ("note", Value::String("x".into())),
                ],
            ),
            row(
                "[3]",
                vec![
                    ("id", Value::Number("3".into())),
                    ("note", Value::Bool(true)),
                    ("at", Value::Null),
                ],
            ),
        ];
        let columns = [
            ContentColumn {
                name: "id".into(),
                typeoid: oid::INT8,
            },
            ContentColumn {
                name: "note".into(),
                typeoid: 25,
            },
            ContentColumn {
                name: "at".into(),
                typeoid: oid::TIMESTAMPTZ,
            },
        ];
        let mut p = plan(&rows, Dialect::Postgres, 1).unwrap();
        let reasons = p.resolve_content(&columns);
        assert_eq!(p.targets.len(), 1);
        assert_eq!(
            p.targets[0].content,
            vec![
                Some("1".into()),
                None,
                Some("2025-06-10 10:00:00+00".into())
            ]
        );
        assert!(
            p.targets[0].columns.is_empty(),
            "the row is dropped once compared"
        );
        // [2] lacks `at`; [3] has a bool in a text column.
        assert_eq!(p.no_version, 2);
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("\"at\" is not in the archived row")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("\"note\"")),
            "{reasons:?}"
        );
    }

    #[test]
    fn integer_keys_sort_numerically_and_before_text() {
        let k = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(compare_keys(&k(&["9"]), &k(&["10"])), Ordering::Less);
        assert_eq!(
            compare_keys(&k(&["a", "2"]), &k(&["a", "10"])),
            Ordering::Less
        );
        assert_eq!(compare_keys(&k(&["b"]), &k(&["a"])), Ordering::Greater);
        assert_eq!(compare_keys(&k(&["1"]), &k(&["1"])), Ordering::Equal);
    }

    #[test]
    fn simple_keys_parse_exactly_like_the_full_parser() {
        use rand::{Rng, SeedableRng};
        let full = |json: &str| -> Result<Vec<String>, String> {
            let values: Vec<&RawValue> = serde_json::from_str(json).map_err(|e| e.to_string())?;
            values
                .iter()
                .map(|v| {
                    let text = v.get().trim();
                    match text.as_bytes().first() {
                        Some(b'"') => {
                            serde_json::from_str::<String>(text).map_err(|e| e.to_string())
                        }
                        Some(b'n') => Err("null".into()),
                        _ => Ok(text.to_owned()),
                    }
                })
                .collect()
        };
        let fixed = [
            "[1]",
            "[-0]",
            "[01]",
            "[1.]",
            "[1.5e+3]",
            "[1E5]",
            "[-]",
            "[1 2]",
            "[1,]",
            "[,1]",
            "[]",
            "[\"a\"]",
            "[\"a\\\"b\"]",
            "[\"\\u00e9\"]",
            "[\"é\", 2]",
            " [ 3 , \"x\" ] ",
            "[3] x",
            "[true]",
            "[null]",
            "[[1]]",
            "[\"a\tb\"]",
            "[1250.00, \"eu\"]",
            "{}",
            "",
            "[\"unterminated]",
            "[12345678901234567890123]",
            "[-1.0e-7]",
            "[+1]",
            "[.5]",
            "[0x1]",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "[]\",-+.eE0123456789 a\\\tnul".chars().collect();
        let random: Vec<String> = (0..20_000)
            .map(|_| {
                let n = rng.random_range(0..12);
                (0..n)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            })
            .collect();
        for json in fixed.iter().map(|s| (*s).to_owned()).chain(random) {
            if let Some(fast) = simple_key_values(&json) {
                assert_eq!(Ok(fast), full(&json), "{json:?}");
            }
            // And the public entry point agrees with the full parser on
            // acceptance, whichever path it takes.
            assert_eq!(key_values(&json).is_ok(), full(&json).is_ok(), "{json:?}");
        }
        assert_eq!(simple_key_values("[42]"), Some(vec!["42".to_owned()]));
        assert_eq!(
            simple_key_values(" [\"eu\", 1250.00] "),
            Some(vec!["eu".to_owned(), "1250.00".to_owned()])
        );
    }

    #[test]
    fn keys_of_one_segment_must_agree_with_the_primary_key() {
        let rows = vec![v("[1, 2]", 1, 1, Some(5)), v("[3]", 1, 2, Some(5))];
        let err = plan_keys(&rows, Dialect::Postgres).unwrap_err();
        assert!(err.to_string().contains("[3]"), "{err}");
        let rows = vec![v("[1, 2]", 1, 1, Some(5)), v("[3, 4]", 1, 2, Some(5))];
        let p = plan_keys(&rows, Dialect::Postgres).unwrap();
        assert!(p.check_key_columns(2).is_ok());
        let err = p.check_key_columns(1).unwrap_err().to_string();
        assert!(
            err.contains("[1, 2]") && err.contains("2 value(s)"),
            "{err}"
        );
    }

    #[test]
    fn xid8_is_reduced_to_xmin() {
        let r = v("[1]", 1, 1, Some((3u64 << 32) | 777));
        assert_eq!(version_text(Dialect::Postgres, &r).unwrap(), "777");
    }
}
