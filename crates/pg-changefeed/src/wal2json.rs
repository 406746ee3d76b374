//! The wal2json format-version 2 messages this changefeed reads: one JSON
//! object per change, `"action"` B (begin), I/U/D (row changes), M (logical
//! message), C (commit), T (truncate).
//!
//! Values are kept as raw JSON text ([`RawValue`]) so that numeric digits
//! are never rounded through f64.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Options passed to wal2json on every peek (add-tables is appended).
///
/// `numeric-data-types-as-string` (wal2json 2.6+) writes numbers as JSON
/// strings, which is the only way NaN and ±Infinity survive: without it
/// wal2json writes them as `null`. [`encode`](crate::encode) turns the
/// strings back into CockroachDB's forms (exact digits as JSON numbers,
/// NaN/Infinity as strings). An older wal2json refuses the option; the feed
/// then leaves it out (see [`NUMERIC_AS_STRING`]).
pub const OPTIONS: &[(&str, &str)] = &[
    ("format-version", "2"),
    ("include-xids", "1"),
    ("include-timestamp", "1"),
    ("include-lsn", "1"),
    ("include-type-oids", "1"),
    ("include-types", "0"),
    ("include-pk", "0"),
    (NUMERIC_AS_STRING, "1"),
];

/// The one option of [`OPTIONS`] that an older wal2json (before 2.6) does
/// not know and refuses (`option "..." is unknown`). Without it, a `null`
/// in a float or numeric column may be a NaN or an infinity that wal2json
/// dropped, so such row versions are sent without `pg_xid` (the purger
/// keeps them).
pub const NUMERIC_AS_STRING: &str = "numeric-data-types-as-string";

/// The options to send: all of [`OPTIONS`], or all but
/// [`NUMERIC_AS_STRING`] for a wal2json that does not support it.
pub fn options(numeric_as_string: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    OPTIONS
        .iter()
        .copied()
        .filter(move |(k, _)| numeric_as_string || *k != NUMERIC_AS_STRING)
}

/// wal2json's option that leaves out every transaction committed under
/// one of the listed replication origins (the purger's, see
/// `cdc_common::db::PURGER_REPLICATION_ORIGIN`). Its value is a
/// comma-separated list of origin **ids** (`pg_replication_origin.roident`),
/// not names: wal2json reads each item as a number, and a name reads as 0
/// (no origin), silently filtering nothing. The feed therefore resolves the
/// configured names to ids before every peek. wal2json 2.5 (Debian 12's)
/// has it; the feed checks at start-up, and a plugin that refuses it as
/// unknown (like [`NUMERIC_AS_STRING`]) gets a warning and every
/// transaction.
pub const FILTER_ORIGINS: &str = "filter-origins";

/// The [`FILTER_ORIGINS`] value for `ids`: `0` (no origin: filters nothing,
/// since wal2json never filters local changes) when there is none yet, so
/// that one prepared peek serves both cases.
pub fn filter_origins_value(ids: &[u32]) -> String {
    if ids.is_empty() {
        "0".to_owned()
    } else {
        ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

/// Whether a PostgreSQL error says that wal2json does not know `option`.
pub fn is_unknown_option(e: &tokio_postgres::Error, option: &str) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE
            && d.message().contains(option)
    })
}

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

/// Action, schema and table of a message that [`parse`] refused, as far as
/// they can be read, for an error message that must not quote row data.
#[derive(Debug, Default, Deserialize)]
pub struct Head {
    /// B, C, I, U, D, M or T.
    #[serde(default)]
    pub action: Option<String>,
    /// Schema of a row change.
    #[serde(default)]
    pub schema: Option<String>,
    /// Table of a row change.
    #[serde(default)]
    pub table: Option<String>,
}

/// Describes why `data` is not a message without quoting any of its
/// values (they are row data: personal data must not reach the logs):
/// the action and table when they can be read, and where the JSON broke.
pub fn describe_parse_error(data: &str, e: &serde_json::Error) -> String {
    let head: Head = serde_json::from_str(data).unwrap_or_default();
    let name = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
    let category = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected field type or value",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!(
        "action {} on table {}.{}: {category} at line {} column {} ({} bytes; content not logged)",
        name(head.action),
        name(head.schema),
        name(head.table),
        e.line(),
        e.column(),
        data.len()
    )
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
    fn parse_errors_do_not_quote_row_data() {
        let data = r#"{"action":"U","schema":"public","table":"payments","columns":[{"name":"iban","typeoid":"DE89 3704 0044 0532 0130 00","value":"secret"}]}"#;
        let e = parse(data).unwrap_err();
        // serde's own message quotes the offending value...
        assert!(e.to_string().contains("DE89"), "{e}");
        // ...the description does not.
        let d = describe_parse_error(data, &e);
        assert!(!d.contains("DE89") && !d.contains("secret"), "{d}");
        assert!(d.contains("action U on table public.payments"), "{d}");
        let d = describe_parse_error(
            "{\"action\":\"I\",\"columns\":[{\"secret",
            &parse("{\"action\":\"I\",\"columns\":[{\"secret").unwrap_err(),
        );
        assert!(!d.contains("secret") && d.contains("truncated"), "{d}");
    }

    #[test]
    fn options_with_and_without_numeric_strings() {
        assert!(options(true).any(|(k, v)| k == NUMERIC_AS_STRING && v == "1"));
        assert!(!options(false).any(|(k, _)| k == NUMERIC_AS_STRING));
        assert_eq!(options(false).count() + 1, OPTIONS.len());
    }

    #[test]
    fn filter_origins_lists_ids() {
        assert_eq!(filter_origins_value(&[]), "0");
        assert_eq!(filter_origins_value(&[3]), "3");
        assert_eq!(filter_origins_value(&[1, 2, 65535]), "1,2,65535");
    }

    #[test]
    fn escapes_add_tables() {
        assert_eq!(escape_add_table("we.ird, x*\\"), "we\\.ird\\,\\ x\\*\\\\");
        assert_eq!(escape_add_table("plain"), "plain");
    }
}
