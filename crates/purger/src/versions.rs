//! From a segment's rows to the list of row versions to delete: one per
//! key (the latest archived version of that key in the checkpoint), each
//! key split into the text of its primary-key values, sorted in key order
//! so that consecutive batches touch neighbouring ranges.

use std::cmp::Ordering;
use std::collections::HashMap;

use cdc_changefeed::Hlc;
use cdc_common::db::Dialect;
use serde_json::value::RawValue;

/// One archived row event, as the purger needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedVersion {
    /// The Kafka key: a JSON array of the primary-key values, in key order.
    pub key_json: String,
    /// Changefeed `updated`.
    pub updated: Option<Hlc>,
    /// CockroachDB MVCC timestamp of the archived version.
    pub mvcc_timestamp: Option<Hlc>,
    /// PostgreSQL transaction id that wrote the archived version.
    pub pg_xid: Option<u64>,
    /// Kafka offset (a tie-breaker between versions of one key).
    pub offset: i64,
}

impl From<&cdc_segment::ArchivedRow> for ArchivedVersion {
    fn from(r: &cdc_segment::ArchivedRow) -> Self {
        Self {
            key_json: r.key_json.clone(),
            updated: r.updated,
            mvcc_timestamp: r.mvcc_timestamp,
            pg_xid: r.pg_xid,
            offset: r.offset,
        }
    }
}

/// A row version the purger may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Primary-key values as text, cast by the server to each column's type.
    pub key: Vec<String>,
    /// The archived version as text (HLC `wall.logical`, or a 32-bit xid).
    pub version: String,
}

/// What a checkpoint's rows become.
#[derive(Debug, Default)]
pub struct Plan {
    /// Versions to delete, in key order, one per key.
    pub targets: Vec<Target>,
    /// Keys whose latest archived event has no version for this dialect
    /// (the changefeed ran without `mvcc_timestamp`): never deleted.
    pub no_version: u64,
    /// Older archived versions superseded by a later one of the same key
    /// within the checkpoint (not deleted by this checkpoint).
    pub superseded: u64,
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
        // `xmin` is the 32-bit transaction id; a changefeed that records
        // the 64-bit form (epoch << 32 | xid) carries it in the low bits.
        Dialect::Postgres => v.pg_xid.map(|x| (x & 0xFFFF_FFFF).to_string()),
    }
}

/// Splits a key JSON array into one text per value: strings unescaped,
/// numbers and other JSON kept verbatim (a DECIMAL's digits never pass
/// through a float).
pub fn key_texts(key_json: &str, expected: usize) -> Result<Vec<String>, KeyMismatch> {
    let fail = |reason: String| KeyMismatch {
        key_json: key_json.to_owned(),
        expected,
        reason,
    };
    let values: Vec<&RawValue> =
        serde_json::from_str(key_json).map_err(|e| fail(format!("not a JSON array: {e}")))?;
    if values.len() != expected {
        return Err(fail(format!("it has {} value(s)", values.len())));
    }
    values
        .iter()
        .map(|v| {
            let text = v.get().trim();
            match text.as_bytes().first() {
                Some(b'"') => serde_json::from_str::<String>(text).map_err(|e| fail(e.to_string())),
                Some(b'n') => Err(fail("a primary-key value is null".into())),
                _ => Ok(text.to_owned()),
            }
        })
        .collect()
}

/// Builds the plan: the latest archived version per key (by `updated`, then
/// offset), versions as the dialect's guard text, sorted by key.
pub fn plan(
    rows: &[ArchivedVersion],
    dialect: Dialect,
    key_columns: usize,
) -> Result<Plan, KeyMismatch> {
    let mut latest: HashMap<&str, &ArchivedVersion> = HashMap::with_capacity(rows.len());
    let mut superseded = 0;
    for r in rows {
        match latest.get(r.key_json.as_str()) {
            Some(prev) if (prev.updated, prev.offset) >= (r.updated, r.offset) => {
                if version_text(dialect, prev) != version_text(dialect, r) {
                    superseded += 1;
                }
            }
            Some(prev) => {
                if version_text(dialect, prev) != version_text(dialect, r) {
                    superseded += 1;
                }
                latest.insert(&r.key_json, r);
            }
            None => {
                latest.insert(&r.key_json, r);
            }
        }
    }
    let mut out = Plan {
        superseded,
        ..Plan::default()
    };
    for r in latest.values() {
        let key = key_texts(&r.key_json, key_columns)?;
        match version_text(dialect, r) {
            Some(version) => out.targets.push(Target { key, version }),
            None => out.no_version += 1,
        }
    }
    out.targets.sort_by(|a, b| compare_keys(&a.key, &b.key));
    Ok(out)
}

/// Key order: integers numerically, everything else as text. Only locality
/// depends on it (batches of neighbouring keys), never correctness.
pub fn compare_keys(a: &[String], b: &[String]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x.parse::<i128>(), y.parse::<i128>()) {
            (Ok(i), Ok(j)) => i.cmp(&j),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: &str, updated: i64, offset: i64, xid: Option<u64>) -> ArchivedVersion {
        ArchivedVersion {
            key_json: key.into(),
            updated: Some(Hlc::new(updated, 0)),
            mvcc_timestamp: Some(Hlc::new(updated, 3)),
            pg_xid: xid,
            offset,
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
                    version: "101".into()
                },
                Target {
                    key: vec!["10".into()],
                    version: "205".into()
                },
            ]
        );
        assert_eq!(p.no_version, 1);
        assert_eq!(p.superseded, 2);
        let p = plan(&rows, Dialect::Cockroach, 1).unwrap();
        assert_eq!(p.targets.len(), 3, "key 3 has an MVCC timestamp");
        assert_eq!(p.targets[2].version, "9.0000000003");
        assert_eq!(p.no_version, 0);
    }

    #[test]
    fn xid8_is_reduced_to_xmin() {
        let r = v("[1]", 1, 1, Some((3u64 << 32) | 777));
        assert_eq!(version_text(Dialect::Postgres, &r).unwrap(), "777");
    }
}
