//! Archive segments: one Avro object container file (zstandard codec,
//! readable by any Avro reader) per flushed run of row events of one
//! Kafka partition.
//!
//! Guarantee: a segment round-trips exactly. Every column value keeps its
//! exact JSON text (a DECIMAL `1250.00` stays `1250.00`, a 27-digit number
//! keeps every digit, never passing through a float), SQL column names
//! that are not valid Avro names are kept next to their sanitized field
//! name, and [`decode_segment`] gives back the same [`ArchivedRow`]s that
//! [`encode_segment`] was given. See `/work/notes/archive-format.md` (the
//! archive format contract) for the record layout.
//!
//! A segment holds row versions only. Delete events go to a separate
//! delete file ([`encode_deletes`], see the `deletes` module), which
//! [`decode_segment`] refuses, so no reader of segments can take a delete
//! for a row version.
//!
//! Readers of the archive open a segment through [`reader`], which checks
//! it against the checkpoint that names it (size, SHA-256, metadata,
//! record count, columns, every record's offset) before any row is used;
//! [`versions`] reads only keys and versions, for the purger.

use std::collections::{BTreeMap, HashSet};

use apache_avro::types::Value as Avro;
use apache_avro::{Codec, Reader, Schema, Writer, ZstandardSettings};
pub use cdc_types::RecordMeta;
use cdc_types::{Hlc, Op, Value};
use serde::{Deserialize, Serialize};

mod deletes;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
pub mod reader;
pub mod versions;
pub use deletes::{
    decode_deletes, encode_deletes, row_json, DeletedRow, Deletes, DELETES_FORMAT_VERSION,
    DELETE_FIELDS,
};

/// Value of the `cdc.format_version` metadata entry.
pub const FORMAT_VERSION: &str = "1";

/// Record fields that precede the row columns, in order.
pub const META_FIELDS: [&str; 8] = [
    "_op",
    "_key",
    "_updated",
    "_mvcc_timestamp",
    "_pg_xid",
    "_topic",
    "_partition",
    "_offset",
];

/// Errors encoding or decoding a segment. None is retryable: the same
/// bytes or rows give the same answer.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The Avro library refused the data.
    #[error("avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),
    /// A row's columns differ from the segment's (the caller must split runs).
    #[error("row at offset {offset} has columns {found:?}, the segment has {expected:?}")]
    ColumnSetChanged {
        /// Kafka offset of the row.
        offset: i64,
        /// Segment columns.
        expected: Vec<String>,
        /// Row columns.
        found: Vec<String>,
    },
    /// No rows: a segment always holds at least one.
    #[error("a segment needs at least one row")]
    Empty,
    /// The file is Avro but not a cdc-archiver segment we can read.
    #[error("not a cdc-archiver segment: {0}")]
    Format(String),
}

impl From<apache_avro::Error> for SegmentError {
    fn from(e: apache_avro::Error) -> Self {
        SegmentError::Avro(Box::new(e))
    }
}

/// How a column's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `["null","boolean"]`: every non-null value was a JSON boolean.
    Boolean,
    /// `["null","string"]`: every non-null value was a JSON string (stored unescaped).
    String,
    /// `["null","string"]` holding the exact JSON text of the value.
    Json,
}

/// One column of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Avro field name (sanitized).
    pub field: String,
    /// SQL column name, exactly.
    pub name: String,
    /// How values are stored.
    pub encoding: Encoding,
}

/// What the segment is (stored as `cdc.*` file metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Archive table name.
    pub table: String,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// First Kafka offset of the checkpoint range the segment belongs to.
    pub first_offset: i64,
    /// Last Kafka offset of that range (inclusive).
    pub last_offset: i64,
}

/// One archived row version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRow {
    /// Insert, update or upsert.
    pub op: Op,
    /// The event's key, timestamps, transaction id and Kafka position.
    pub meta: RecordMeta,
    /// `(SQL column name, value)` in row order.
    pub columns: Vec<(String, Value)>,
}

/// A decoded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// File metadata.
    pub meta: SegmentMeta,
    /// Columns in record order (after the meta fields).
    pub columns: Vec<Column>,
    /// The rows in file order.
    pub rows: Vec<ArchivedRow>,
}

/// `true` when two rows have the same columns in the same order: the
/// condition for sharing a segment.
pub fn same_columns(a: &[(String, Value)], b: &[(String, Value)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((x, _), (y, _))| x == y)
}

/// Avro field names for SQL column names: invalid characters become `_`,
/// a name starting with a digit or `_` gets a `c_` prefix (so it cannot
/// collide with the `_`-prefixed meta fields), duplicates get `_2`, `_3`….
pub fn field_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken: HashSet<String> = META_FIELDS.iter().map(|s| (*s).to_owned()).collect();
    let mut out = Vec::new();
    for name in names {
        let mut base: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit() || c == '_') {
            base = format!("c_{base}");
        }
        let mut field = base.clone();
        let mut n = 2;
        while taken.contains(&field) {
            field = format!("{base}_{n}");
            n += 1;
        }
        taken.insert(field.clone());
        out.push(field);
    }
    out
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Upsert => "upsert",
    }
}

fn parse_op(s: &str) -> Result<Op, SegmentError> {
    Ok(match s {
        "insert" => Op::Insert,
        "update" => Op::Update,
        "delete" => Op::Delete,
        "upsert" => Op::Upsert,
        other => return Err(SegmentError::Format(format!("unknown _op {other:?}"))),
    })
}

/// Decides each column's encoding from all the rows' values.
fn encodings(rows: &[ArchivedRow]) -> Vec<Encoding> {
    let n = rows[0].columns.len();
    (0..n)
        .map(|i| {
            let (mut bools, mut strings, mut others) = (0usize, 0usize, 0usize);
            for r in rows {
                match &r.columns[i].1 {
                    Value::Null => {}
                    Value::Bool(_) => bools += 1,
                    Value::String(_) => strings += 1,
                    Value::Number(_) | Value::Json(_) => others += 1,
                }
            }
            match (bools, strings, others) {
                (b, 0, 0) if b > 0 => Encoding::Boolean,
                (0, s, 0) if s > 0 => Encoding::String,
                // All null: string-typed nulls read back as nulls; "json"
                // keeps the door open for any later reader.
                _ => Encoding::Json,
            }
        })
        .collect()
}

fn schema_json(columns: &[Column]) -> String {
    let nullable_string = serde_json::json!(["null", "string"]);
    let mut fields = vec![
        serde_json::json!({"name": "_op", "type": "string"}),
        serde_json::json!({"name": "_key", "type": "string"}),
        serde_json::json!({"name": "_updated", "type": nullable_string, "default": null}),
        serde_json::json!({"name": "_mvcc_timestamp", "type": nullable_string, "default": null}),
        serde_json::json!({"name": "_pg_xid", "type": ["null", "long"], "default": null}),
        serde_json::json!({"name": "_topic", "type": "string"}),
        serde_json::json!({"name": "_partition", "type": "int"}),
        serde_json::json!({"name": "_offset", "type": "long"}),
    ];
    for c in columns {
        let ty = match c.encoding {
            Encoding::Boolean => serde_json::json!(["null", "boolean"]),
            Encoding::String | Encoding::Json => nullable_string.clone(),
        };
        fields.push(
            serde_json::json!({"name": c.field, "type": ty, "default": null, "sql_name": c.name}),
        );
    }
    serde_json::json!({"type": "record", "name": "ArchivedRow", "namespace": "cdc_archiver", "fields": fields})
        .to_string()
}

/// Encodes rows (all with the same columns) as one Avro container file.
pub fn encode_segment(meta: &SegmentMeta, rows: &[ArchivedRow]) -> Result<Vec<u8>, SegmentError> {
    let first = rows.first().ok_or(SegmentError::Empty)?;
    for r in rows {
        if !same_columns(&first.columns, &r.columns) {
            return Err(SegmentError::ColumnSetChanged {
                offset: r.meta.offset,
                expected: first.columns.iter().map(|(c, _)| c.clone()).collect(),
                found: r.columns.iter().map(|(c, _)| c.clone()).collect(),
            });
        }
    }
    let fields = field_names(first.columns.iter().map(|(c, _)| c.as_str()));
    let columns: Vec<Column> = fields
        .into_iter()
        .zip(&first.columns)
        .zip(encodings(rows))
        .map(|((field, (name, _)), encoding)| Column {
            field,
            name: name.clone(),
            encoding,
        })
        .collect();
    let schema = Schema::parse_str(&schema_json(&columns))?;
    let mut writer = Writer::with_codec(&schema, Vec::new(), codec());
    let metadata = [
        ("cdc.format_version", FORMAT_VERSION.to_owned()),
        ("cdc.table", meta.table.clone()),
        ("cdc.topic", meta.topic.clone()),
        ("cdc.partition", meta.partition.to_string()),
        ("cdc.first_offset", meta.first_offset.to_string()),
        ("cdc.last_offset", meta.last_offset.to_string()),
        (
            "cdc.columns",
            serde_json::to_string(&columns).expect("columns serialise"),
        ),
    ];
    for (k, v) in metadata {
        writer.add_user_metadata(k.to_owned(), v)?;
    }
    // apache-avro writes the header (schema, codec, metadata, sync
    // marker); the records are encoded here directly from the rows, which
    // is ~10x faster than building and validating an `avro::Value` per
    // record. The layout is the schema above, field for field; the
    // round-trip tests read it back with apache-avro's own reader.
    let encodings: Vec<Encoding> = columns.iter().map(|c| c.encoding).collect();
    write_records(writer.into_inner()?, rows, |r, block| {
        encode_row(r, &encodings, block)
    })
}

/// Appends `items` to a container file's `header` (which ends with its
/// sync marker) in blocks of about [`BLOCK_BYTES`], each item encoded by
/// `encode`.
pub(crate) fn write_records<T>(
    mut out: Vec<u8>,
    items: &[T],
    mut encode: impl FnMut(&T, &mut Vec<u8>),
) -> Result<Vec<u8>, SegmentError> {
    let marker: [u8; 16] = out[out.len() - 16..]
        .try_into()
        .expect("the header ends with the sync marker");
    let mut block = Vec::with_capacity(BLOCK_BYTES + 4096);
    let mut in_block = 0i64;
    for item in items {
        encode(item, &mut block);
        in_block += 1;
        if block.len() >= BLOCK_BYTES {
            write_block(&mut out, &mut block, in_block, &marker)?;
            in_block = 0;
        }
    }
    if in_block > 0 {
        write_block(&mut out, &mut block, in_block, &marker)?;
    }
    Ok(out)
}

/// Uncompressed bytes per container block.
pub(crate) const BLOCK_BYTES: usize = 256 * 1024;

pub(crate) fn codec() -> Codec {
    Codec::Zstandard(ZstandardSettings::new(3))
}

pub(crate) fn write_block(
    out: &mut Vec<u8>,
    block: &mut Vec<u8>,
    count: i64,
    marker: &[u8; 16],
) -> Result<(), SegmentError> {
    let mut data = std::mem::take(block);
    codec().compress(&mut data)?;
    put_long(out, count);
    put_long(out, data.len() as i64);
    out.extend_from_slice(&data);
    out.extend_from_slice(marker);
    block.clear();
    Ok(())
}

/// Avro `long`/`int`: zig-zag varint.
pub(crate) fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_long(out, 0),
        Some(s) => {
            put_long(out, 1);
            put_str(out, s);
        }
    }
}

fn encode_row(r: &ArchivedRow, encodings: &[Encoding], out: &mut Vec<u8>) {
    put_str(out, op_text(r.op));
    r.meta.encode(out);
    for ((_, v), enc) in r.columns.iter().zip(encodings) {
        match (v, enc) {
            (Value::Null, _) => put_long(out, 0),
            (Value::Bool(b), Encoding::Boolean) => {
                put_long(out, 1);
                out.push(u8::from(*b));
            }
            (Value::String(s), Encoding::String) => {
                put_long(out, 1);
                put_str(out, s);
            }
            (Value::Number(t) | Value::Json(t), _) => {
                put_long(out, 1);
                put_str(out, t);
            }
            (v, _) => {
                put_long(out, 1);
                put_str(out, &v.to_json_text());
            }
        }
    }
}

/// The metadata every archived record carries (a segment's row versions
/// and a delete file's deletes alike): the fields after `_op`, in
/// [`META_FIELDS`] order, encoded and decoded here.
pub(crate) trait MetaCodec: Sized {
    /// Appends the fields in record order (Avro binary encoding).
    fn encode(&self, out: &mut Vec<u8>);
    /// Takes the fields from `next`, checking each one's type.
    fn decode(next: &mut impl FnMut() -> Avro) -> Result<Self, SegmentError>;
}

impl MetaCodec for RecordMeta {
    fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.key_json);
        put_opt_str(out, self.updated.map(|h| h.to_string()).as_deref());
        put_opt_str(out, self.mvcc_timestamp.map(|h| h.to_string()).as_deref());
        match self.pg_xid {
            // xids are at most 2^63 in practice (32-bit, or 64-bit epoch-extended).
            Some(x) => {
                put_long(out, 1);
                put_long(out, x as i64);
            }
            None => put_long(out, 0),
        }
        put_str(out, &self.topic);
        put_long(out, i64::from(self.partition));
        put_long(out, self.offset);
    }

    fn decode(next: &mut impl FnMut() -> Avro) -> Result<Self, SegmentError> {
        let key_json = opt_str(next(), "_key")?.ok_or_else(|| format("_key is null"))?;
        let updated = opt_hlc(next(), "_updated")?;
        let mvcc_timestamp = opt_hlc(next(), "_mvcc_timestamp")?;
        let pg_xid = match unwrap_union(next()) {
            Avro::Null => None,
            Avro::Long(x) => Some(u64::try_from(x).map_err(|_| format("_pg_xid negative"))?),
            other => return Err(format(format!("_pg_xid: {other:?}"))),
        };
        let topic = opt_str(next(), "_topic")?.ok_or_else(|| format("_topic is null"))?;
        let partition = match next() {
            Avro::Int(p) => p,
            other => return Err(format(format!("_partition: {other:?}"))),
        };
        let offset = match next() {
            Avro::Long(o) => o,
            other => return Err(format(format!("_offset: {other:?}"))),
        };
        Ok(RecordMeta {
            key_json,
            updated,
            mvcc_timestamp,
            pg_xid,
            topic,
            partition,
            offset,
        })
    }
}

pub(crate) fn format(msg: impl Into<String>) -> SegmentError {
    SegmentError::Format(msg.into())
}

pub(crate) fn unwrap_union(v: Avro) -> Avro {
    match v {
        Avro::Union(_, inner) => *inner,
        other => other,
    }
}

pub(crate) fn opt_str(v: Avro, what: &str) -> Result<Option<String>, SegmentError> {
    match unwrap_union(v) {
        Avro::Null => Ok(None),
        Avro::String(s) => Ok(Some(s)),
        other => Err(format(format!(
            "{what}: expected string or null, found {other:?}"
        ))),
    }
}

pub(crate) fn opt_hlc(v: Avro, what: &str) -> Result<Option<Hlc>, SegmentError> {
    opt_str(v, what)?
        .map(|s| s.parse::<Hlc>().map_err(|e| format(format!("{what}: {e}"))))
        .transpose()
}

fn decode_value(v: Avro, encoding: Encoding, column: &str) -> Result<Value, SegmentError> {
    match (unwrap_union(v), encoding) {
        (Avro::Null, _) => Ok(Value::Null),
        (Avro::Boolean(b), Encoding::Boolean) => Ok(Value::Bool(b)),
        (Avro::String(s), Encoding::String) => Ok(Value::String(s)),
        (Avro::String(s), Encoding::Json) => {
            let raw: &serde_json::value::RawValue =
                serde_json::from_str(&s).map_err(|e| format(format!("column {column:?}: {e}")))?;
            Value::from_raw(raw).map_err(|e| format(format!("column {column:?}: {e}")))
        }
        (other, enc) => Err(format(format!(
            "column {column:?} ({enc:?}): unexpected {other:?}"
        ))),
    }
}

/// A segment's or delete file's Avro user metadata, as text.
pub(crate) struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// The metadata in the file's header.
    pub(crate) fn of<R: std::io::Read>(reader: &Reader<'_, R>) -> Self {
        Metadata(
            reader
                .user_metadata()
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        )
    }

    /// Whether `key` is present.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The value of `key`, or an error naming it.
    pub(crate) fn get(&self, key: &str) -> Result<&String, SegmentError> {
        self.0
            .get(key)
            .ok_or_else(|| format(format!("missing metadata {key}")))
    }

    /// Checks that the format-version `key` says `version`.
    pub(crate) fn expect_version(&self, key: &str, version: &str) -> Result<(), SegmentError> {
        match self.get(key)? {
            v if v == version => Ok(()),
            v => Err(format(format!("unsupported {key} {v}"))),
        }
    }
}

/// The `cdc.*` metadata shared by segments and delete files.
pub(crate) fn read_meta(md: &Metadata) -> Result<SegmentMeta, SegmentError> {
    let get = |k: &str| md.get(k);
    let num = |k: &str| -> Result<i64, SegmentError> {
        get(k)?
            .parse()
            .map_err(|_| format(format!("metadata {k} is not a number")))
    };
    Ok(SegmentMeta {
        table: get("cdc.table")?.clone(),
        topic: get("cdc.topic")?.clone(),
        partition: i32::try_from(num("cdc.partition")?)
            .map_err(|_| format("cdc.partition out of range"))?,
        first_offset: num("cdc.first_offset")?,
        last_offset: num("cdc.last_offset")?,
    })
}

/// Reads a segment back. Values come back as the [`Value`] variant they
/// were written from, with the same text.
pub fn decode_segment(bytes: &[u8]) -> Result<Segment, SegmentError> {
    let reader = Reader::new(bytes)?;
    let md = Metadata::of(&reader);
    if md.has("cdc.deletes_format_version") {
        return Err(format(
            "a delete file (cdc.deletes_format_version), not a segment of row versions",
        ));
    }
    md.expect_version("cdc.format_version", FORMAT_VERSION)?;
    let meta = read_meta(&md)?;
    let columns: Vec<Column> = serde_json::from_str(md.get("cdc.columns")?)
        .map_err(|e| format(format!("cdc.columns: {e}")))?;
    let mut rows = Vec::new();
    for record in reader {
        let Avro::Record(fields) = record? else {
            return Err(format("a record is not an Avro record"));
        };
        if fields.len() != META_FIELDS.len() + columns.len() {
            return Err(format(format!(
                "record has {} fields, expected {}",
                fields.len(),
                META_FIELDS.len() + columns.len()
            )));
        }
        let mut it = fields.into_iter().map(|(_, v)| v);
        let mut next = || it.next().expect("length checked");
        let op = match next() {
            Avro::String(s) => parse_op(&s)?,
            other => return Err(format(format!("_op: {other:?}"))),
        };
        let record = RecordMeta::decode(&mut next)?;
        let mut values = Vec::with_capacity(columns.len());
        for c in &columns {
            values.push((c.name.clone(), decode_value(next(), c.encoding, &c.name)?));
        }
        rows.push(ArchivedRow {
            op,
            meta: record,
            columns: values,
        });
    }
    Ok(Segment {
        meta,
        columns,
        rows,
    })
}

#[cfg(test)]
mod tests;
