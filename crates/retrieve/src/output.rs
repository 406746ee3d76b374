//! Output formats of `retrieve`: JSON lines and CSV, for row versions
//! ([`Found`]) and, in their own shape, for deletes ([`FoundDelete`]).

use std::io::Write;

use cdc_changefeed::Value;
use cdc_checkpoint::key_filter::{canonical_key, parse_key};

use crate::{Found, FoundDelete};

/// Appends `"column":value,…` (exact values, no braces).
fn push_columns(out: &mut String, columns: &[(String, Value)]) {
    for (i, (name, v)) in columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).unwrap_or_default());
        out.push(':');
        out.push_str(&v.to_json_text());
    }
}

/// The row as one JSON object: `{"column": value, …}` with exact values,
/// plus `_archive` metadata when `with_meta`.
pub fn to_json_line(found: &Found, with_meta: bool) -> String {
    let mut out = String::from("{");
    push_columns(&mut out, &found.row.columns);
    if with_meta {
        let meta = serde_json::json!({
            "segment": found.segment,
            "topic": found.row.meta.topic,
            "partition": found.row.meta.partition,
            "offset": found.row.meta.offset,
            "key": found.row.meta.key_json,
            "updated": found.row.meta.updated.map(|h| h.to_string()),
            "mvcc_timestamp": found.row.meta.mvcc_timestamp.map(|h| h.to_string()),
            "pg_xid": found.row.meta.pg_xid,
        });
        if !found.row.columns.is_empty() {
            out.push(',');
        }
        out.push_str("\"_archive\":");
        out.push_str(&meta.to_string());
    }
    out.push('}');
    out
}

/// The metadata columns `write_csv` appends with `with_meta`.
pub const CSV_META_COLUMNS: [&str; 7] = [
    "_segment",
    "_partition",
    "_offset",
    "_updated",
    "_key",
    "_mvcc_timestamp",
    "_pg_xid",
];

/// Writes `found` as CSV with a header line. The columns are the union of
/// the rows' columns in order of first appearance (rows archived before a
/// schema change lack the newer columns: their cells are empty). Strings
/// are written unescaped, numbers and nested JSON with their exact text,
/// NULL as an empty cell. Nothing is written for no rows.
pub fn write_csv(out: impl Write, found: &[Found], with_meta: bool) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    if found.is_empty() {
        return Ok(());
    }
    let columns = union_of_columns(found.iter().map(|f| f.row.columns.as_slice()));
    let mut header: Vec<&str> = columns.clone();
    if with_meta {
        header.extend(CSV_META_COLUMNS);
    }
    w.write_record(&header)?;
    for f in found {
        let mut rec = cells(&columns, &f.row.columns);
        if with_meta {
            rec.push(f.segment.clone());
            rec.push(f.row.meta.partition.to_string());
            rec.push(f.row.meta.offset.to_string());
            rec.push(
                f.row
                    .meta
                    .updated
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
            );
            rec.push(f.row.meta.key_json.clone());
            rec.push(
                f.row
                    .meta
                    .mvcc_timestamp
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
            );
            rec.push(f.row.meta.pg_xid.map(|x| x.to_string()).unwrap_or_default());
        }
        w.write_record(&rec)?;
    }
    w.flush()?;
    Ok(())
}

/// Column names in order of first appearance.
fn union_of_columns<'a>(rows: impl Iterator<Item = &'a [(String, Value)]>) -> Vec<&'a str> {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        for (name, _) in row {
            if !columns.contains(&name.as_str()) {
                columns.push(name);
            }
        }
    }
    columns
}

/// The CSV cells of `row` under `columns`: strings unescaped, other values
/// their exact JSON text, NULL and absent columns empty.
fn cells(columns: &[&str], row: &[(String, Value)]) -> Vec<String> {
    columns
        .iter()
        .map(|c| match row.iter().find(|(n, _)| n == c) {
            None | Some((_, Value::Null)) => String::new(),
            Some((_, Value::String(s))) => s.clone(),
            Some((_, other)) => other.to_json_text(),
        })
        .collect()
}

/// The key of a delete as JSON: the array with exact values, or the
/// archived text as a JSON string if it is not a JSON array.
fn key_as_json(key_json: &str) -> String {
    parse_key(key_json).map_or_else(
        || serde_json::to_string(key_json).unwrap_or_default(),
        |k| canonical_key(&k),
    )
}

/// A delete as one JSON object, in the delete file's own field names:
/// `{"_op":"delete","_key":[…],"_updated":…,"_mvcc_timestamp":…,
/// "_pg_xid":…,"_before":{…}|null}` (`_before` with exact values, null
/// when the archive did not keep the deleted row), plus `_archive` with
/// the same keys as a row's, `deletes_file` in place of `segment`, when
/// `with_meta`. `_op` is always `"delete"`: no reader can take the line
/// for a row.
pub fn delete_to_json_line(found: &FoundDelete, with_meta: bool) -> String {
    let d = &found.delete;
    let hlc = |h: Option<cdc_changefeed::Hlc>| h.map(|h| h.to_string());
    let mut out = String::from("{\"_op\":\"delete\",\"_key\":");
    out.push_str(&key_as_json(&d.meta.key_json));
    for (name, value) in [
        ("_updated", serde_json::json!(hlc(d.meta.updated))),
        (
            "_mvcc_timestamp",
            serde_json::json!(hlc(d.meta.mvcc_timestamp)),
        ),
        ("_pg_xid", serde_json::json!(d.meta.pg_xid)),
    ] {
        out.push_str(&format!(",\"{name}\":{value}"));
    }
    out.push_str(",\"_before\":");
    match &d.before {
        Some(columns) => {
            out.push('{');
            push_columns(&mut out, columns);
            out.push('}');
        }
        None => out.push_str("null"),
    }
    if with_meta {
        let meta = serde_json::json!({
            "deletes_file": found.deletes_file,
            "topic": d.meta.topic,
            "partition": d.meta.partition,
            "offset": d.meta.offset,
            "key": d.meta.key_json,
            "updated": hlc(d.meta.updated),
            "mvcc_timestamp": hlc(d.meta.mvcc_timestamp),
            "pg_xid": d.meta.pg_xid,
        });
        out.push_str(",\"_archive\":");
        out.push_str(&meta.to_string());
    }
    out.push('}');
    out
}

/// The first columns `write_deletes_csv` writes, before the deleted row's.
pub const CSV_DELETE_COLUMNS: [&str; 6] = [
    "_op",
    "_key",
    "_updated",
    "_mvcc_timestamp",
    "_pg_xid",
    "_before_recorded",
];

/// The metadata columns `write_deletes_csv` appends with `with_meta`.
pub const CSV_DELETE_META_COLUMNS: [&str; 3] = ["_deletes_file", "_partition", "_offset"];

/// Writes deletes as CSV with a header line: [`CSV_DELETE_COLUMNS`]
/// (`_op` always `delete`, `_key` as archived, `_before_recorded`
/// `true`/`false`), then the columns of the deleted rows (`before`) as
/// [`write_csv`] writes a row's (empty for a delete whose row was not
/// kept: `_before_recorded` tells that from NULLs), then
/// [`CSV_DELETE_META_COLUMNS`] with `with_meta`. Nothing is written for
/// no deletes.
pub fn write_deletes_csv(
    out: impl Write,
    found: &[FoundDelete],
    with_meta: bool,
) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    if found.is_empty() {
        return Ok(());
    }
    let columns = union_of_columns(found.iter().filter_map(|f| f.delete.before.as_deref()));
    let mut header: Vec<&str> = CSV_DELETE_COLUMNS.to_vec();
    header.extend(&columns);
    if with_meta {
        header.extend(CSV_DELETE_META_COLUMNS);
    }
    w.write_record(&header)?;
    for f in found {
        let d = &f.delete;
        let mut rec = vec![
            "delete".to_owned(),
            d.meta.key_json.clone(),
            d.meta.updated.map(|h| h.to_string()).unwrap_or_default(),
            d.meta
                .mvcc_timestamp
                .map(|h| h.to_string())
                .unwrap_or_default(),
            d.meta.pg_xid.map(|x| x.to_string()).unwrap_or_default(),
            d.before.is_some().to_string(),
        ];
        rec.extend(cells(&columns, d.before.as_deref().unwrap_or_default()));
        if with_meta {
            rec.extend([
                f.deletes_file.clone(),
                d.meta.partition.to_string(),
                d.meta.offset.to_string(),
            ]);
        }
        w.write_record(&rec)?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_segment::{DeletedRow, RecordMeta};

    fn delete(key_json: &str, before: Option<Vec<(String, Value)>>) -> FoundDelete {
        FoundDelete {
            delete: DeletedRow {
                meta: RecordMeta {
                    key_json: key_json.into(),
                    updated: Some(cdc_changefeed::Hlc::new(5, 1)),
                    mvcc_timestamp: None,
                    pg_xid: Some(9),
                    topic: "t".into(),
                    partition: 2,
                    offset: 40,
                },
                before,
            },
            deletes_file: "t/deletes/p2/x.avro".into(),
            checkpoint_first_offset: 40,
        }
    }

    #[test]
    fn a_delete_line_is_json_with_exact_values_whatever_its_key() {
        let before = vec![("amount".to_owned(), Value::Number("1E+2".into()))];
        let line = delete_to_json_line(&delete("[\"a\", 1]", Some(before)), false);
        assert_eq!(
            line,
            r#"{"_op":"delete","_key":["a",1],"_updated":"5.0000000001","_mvcc_timestamp":null,"_pg_xid":9,"_before":{"amount":1E+2}}"#
        );
        // A key that is not a JSON array stays a (valid) JSON string.
        let line = delete_to_json_line(&delete("not \"json\"\n", None), true);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_key"], "not \"json\"\n");
        assert_eq!(v["_before"], serde_json::Value::Null);
        assert_eq!(v["_archive"]["offset"], 40);
        assert!(!line.contains('\n'));
    }
}
