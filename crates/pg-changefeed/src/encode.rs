//! PostgreSQL values and changes to CockroachDB changefeed bytes.
//!
//! CockroachDB writes JSON with `", "` and `": "` separators and object keys
//! in alphabetical order (see the fixture README), so messages are written
//! here by hand rather than with serde_json's compact writer.
//!
//! Column values are mapped by [`cdc_changefeed::pgvalue`] (its inverse is
//! what the purger compares current rows with).

use std::collections::BTreeMap;

pub use cdc_changefeed::pgvalue::{
    has_special_values, is_number_type, map_value, oid, push_json_string,
};

use crate::hlc::Hlc;

/// The timestamp of a resolved message's value (`{"resolved":"…"}`), if
/// that is what `value` is.
pub fn parse_resolved(value: &[u8]) -> Option<Hlc> {
    #[derive(serde::Deserialize)]
    struct Resolved {
        resolved: String,
    }
    serde_json::from_slice::<Resolved>(value)
        .ok()?
        .resolved
        .parse::<Hlc>()
        .ok()
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
