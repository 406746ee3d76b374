//! Output formats of `retrieve`: JSON lines and CSV.

use std::io::Write;

use cdc_changefeed::Value;

use crate::Found;

/// The row as one JSON object: `{"column": value, …}` with exact values,
/// plus `_archive` metadata when `with_meta`.
pub fn to_json_line(found: &Found, with_meta: bool) -> String {
    let mut out = String::from("{");
    for (i, (name, v)) in found.row.columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).unwrap_or_default());
        out.push(':');
        out.push_str(&v.to_json_text());
    }
    if with_meta {
        let meta = serde_json::json!({
            "segment": found.segment,
            "topic": found.row.topic,
            "partition": found.row.partition,
            "offset": found.row.offset,
            "key": found.row.key_json,
            "updated": found.row.updated.map(|h| h.to_string()),
            "mvcc_timestamp": found.row.mvcc_timestamp.map(|h| h.to_string()),
            "pg_xid": found.row.pg_xid,
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
    let mut columns: Vec<&str> = Vec::new();
    for f in found {
        for (name, _) in &f.row.columns {
            if !columns.contains(&name.as_str()) {
                columns.push(name);
            }
        }
    }
    let mut header: Vec<&str> = columns.clone();
    if with_meta {
        header.extend(CSV_META_COLUMNS);
    }
    w.write_record(&header)?;
    for f in found {
        let mut rec: Vec<String> = columns
            .iter()
            .map(|c| match f.row.columns.iter().find(|(n, _)| n == c) {
                None | Some((_, Value::Null)) => String::new(),
                Some((_, Value::String(s))) => s.clone(),
                Some((_, other)) => other.to_json_text(),
            })
            .collect();
        if with_meta {
            rec.push(f.segment.clone());
            rec.push(f.row.partition.to_string());
            rec.push(f.row.offset.to_string());
            rec.push(f.row.updated.map(|h| h.to_string()).unwrap_or_default());
            rec.push(f.row.key_json.clone());
            rec.push(
                f.row
                    .mvcc_timestamp
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
            );
            rec.push(f.row.pg_xid.map(|x| x.to_string()).unwrap_or_default());
        }
        w.write_record(&rec)?;
    }
    w.flush()?;
    Ok(())
}
