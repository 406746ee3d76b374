//! The wal2json format-version 2 messages this changefeed reads: one JSON
//! object per change, `"action"` B (begin), I/U/D (row changes), M (logical
//! message), C (commit), T (truncate).
//!
//! Values are kept as raw JSON text ([`RawValue`]) so that numeric digits
//! are never rounded through f64.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Options passed to wal2json on every peek (add-tables is appended).
pub const OPTIONS: &[(&str, &str)] = &[
    ("format-version", "2"),
    ("include-xids", "1"),
    ("include-timestamp", "1"),
    ("include-lsn", "1"),
    ("include-type-oids", "1"),
    ("include-types", "0"),
    ("include-pk", "0"),
];

/// One wal2json v2 message.
#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    /// B, C, I, U, D, M or T.
    pub action: &'a str,
    /// Top-level transaction id.
    #[serde(default)]
    pub xid: Option<u64>,
    /// Commit timestamp, PostgreSQL text (`2026-01-02 03:04:05.123456+00`).
    #[serde(default, borrow)]
    pub timestamp: Option<std::borrow::Cow<'a, str>>,
    /// On B and C: the commit record's LSN.
    #[serde(default, borrow)]
    pub lsn: Option<std::borrow::Cow<'a, str>>,
    /// On B and C: the end of the commit record, where decoding resumes.
    #[serde(default, borrow)]
    pub nextlsn: Option<std::borrow::Cow<'a, str>>,
    /// Schema of a row change.
    #[serde(default)]
    pub schema: Option<String>,
    /// Table of a row change.
    #[serde(default)]
    pub table: Option<String>,
    /// New row (I, U).
    #[serde(default, borrow)]
    pub columns: Option<Vec<Column<'a>>>,
    /// Old row or old key (U, D), as the replica identity allows.
    #[serde(default, borrow)]
    pub identity: Option<Vec<Column<'a>>>,
}

/// One column value.
#[derive(Debug, Deserialize)]
pub struct Column<'a> {
    /// Column name.
    pub name: String,
    /// Type OID (`include-type-oids`).
    #[serde(default)]
    pub typeoid: Option<u32>,
    /// The value as wal2json wrote it: a JSON number for numeric types, a
    /// bool for boolean, a string otherwise; absent or null for SQL NULL.
    #[serde(default, borrow)]
    pub value: Option<&'a RawValue>,
}

/// Parses one message.
pub fn parse(data: &str) -> Result<Message<'_>, serde_json::Error> {
    serde_json::from_str(data)
}

/// Escapes a schema or table name for wal2json's `add-tables` list, where
/// `.`, `,`, `*`, white space and `\` are special.
pub fn escape_add_table(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        if matches!(c, '.' | ',' | '*' | '\\') || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Commit timestamp text to nanoseconds since the Unix epoch.
pub fn parse_commit_timestamp(text: &str) -> Option<i64> {
    let dt = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").ok()?;
    dt.timestamp_nanos_opt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_change_keeping_digits() {
        let m = parse(r#"{"action":"I","xid":737,"timestamp":"2026-11-22 02:16:26.781197+00","lsn":"0/15411E0","schema":"public","table":"t1","columns":[{"name":"n","typeoid":1700,"value":1250.00},{"name":"b","typeoid":25,"value":"x\"y"},{"name":"z","typeoid":25,"value":null}]}"#).unwrap();
        assert_eq!(m.action, "I");
        assert_eq!(m.xid, Some(737));
        let cols = m.columns.unwrap();
        assert_eq!(cols[0].value.unwrap().get(), "1250.00");
        assert_eq!(cols[1].value.unwrap().get(), r#""x\"y""#);
        assert!(cols[2].value.is_none());
    }

    #[test]
    fn commit_timestamps() {
        assert_eq!(
            parse_commit_timestamp("2026-11-22 02:16:21.53224+00"),
            Some(1_795_313_781_532_240_000)
        );
        assert_eq!(
            parse_commit_timestamp("2026-11-22 04:16:21+02"),
            Some(1_795_313_781_000_000_000)
        );
        assert_eq!(
            parse_commit_timestamp("2026-11-22 07:46:21+05:30"),
            Some(1_795_313_781_000_000_000)
        );
        assert_eq!(parse_commit_timestamp("garbage"), None);
    }

    #[test]
    fn escapes_add_tables() {
        assert_eq!(escape_add_table("we.ird, x*\\"), "we\\.ird\\,\\ x\\*\\\\");
        assert_eq!(escape_add_table("plain"), "plain");
    }
}
