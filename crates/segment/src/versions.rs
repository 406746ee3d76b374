//! The key/version reader: each record's key, `updated`, version
//! (`_mvcc_timestamp`, `_pg_xid`) and offset, plus the segment's `cdc.*`
//! metadata, without building a value for any column. Reading a segment
//! several times this way is cheaper than the full [`crate::decode_segment`],
//! whose work is for readers of the data (the purger reads keys and
//! versions only, except where its guard compares content).
//!
//! It reads the Avro object container format directly (header, metadata,
//! blocks, sync markers) and only accepts the exact layout cdc-archiver
//! writes (format version 1: the eight meta fields in order with their
//! types, then one `["null","boolean"]` or `["null","string"]` field per
//! column, codec `null`, `deflate` or `zstandard`). Anything else, such as
//! a segment written by a later format, is [`Fast::Unsupported`] and the
//! caller falls back to [`full_versions`], so this reader never has to
//! guess. A segment that claims the layout but does not follow it is an
//! error, never a partial result.
//!
//! Guarantee: a segment this reader accepts is one the full decode (and so
//! `retrieve`/`restore`) reads too. It checks what the full decode checks,
//! without building values: the schema parses as Avro; the `cdc.table`,
//! `cdc.topic`, `cdc.partition`, `cdc.first_offset`, `cdc.last_offset`
//! and `cdc.columns` metadata are present and well-formed; `cdc.columns`
//! names exactly the schema's column fields with encodings their types
//! can hold; every `_op` is known, every string is UTF-8, every boolean is
//! 0 or 1, every JSON-encoded column value is valid JSON (parsed, not
//! built), `_partition` is the segment's partition. Whether the segment is
//! the one its checkpoint describes is [`crate::reader`]'s job, for either
//! reader.

use apache_avro::{Codec, DeflateSettings, ZstandardSettings};
use cdc_types::{Hlc, Value};
use serde_json::value::RawValue;
use serde_json::Value as Json;

use crate::{Column, Encoding, SegmentMeta};

/// One record's key and version, as the key/version reader gives it.
///
/// Deliberately not a [`crate::RecordMeta`]: it has no `_topic` or
/// `_partition`. Those are the segment's (in [`SegmentVersions::meta`];
/// the reader checks every record's `_partition` against it), the purger
/// never reads them per record, and carrying the topic in every record
/// would cost this reader an allocation per record, which it exists to
/// avoid (filling it from the segment's metadata instead would report a
/// value the reader did not read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowVersion {
    /// The Kafka key's JSON array text, exactly.
    pub key_json: String,
    /// Changefeed `updated`.
    pub updated: Option<Hlc>,
    /// CockroachDB MVCC timestamp of the archived version.
    pub mvcc_timestamp: Option<Hlc>,
    /// PostgreSQL transaction id that wrote the archived version.
    pub pg_xid: Option<u64>,
    /// Kafka offset.
    pub offset: i64,
    /// `(SQL column name, value)`: filled by [`full_versions`], empty
    /// where the key/version reader skipped values.
    pub columns: Vec<(String, Value)>,
}

impl From<crate::ArchivedRow> for RowVersion {
    fn from(r: crate::ArchivedRow) -> Self {
        Self {
            key_json: r.meta.key_json,
            updated: r.meta.updated,
            mvcc_timestamp: r.meta.mvcc_timestamp,
            pg_xid: r.meta.pg_xid,
            offset: r.meta.offset,
            columns: r.columns,
        }
    }
}

/// A segment's metadata, column names and every record's key and version,
/// by either reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentVersions {
    /// The segment's `cdc.*` metadata: table, topic, partition, offsets.
    pub meta: SegmentMeta,
    /// SQL column names (`cdc.columns`), in record order.
    pub columns: Vec<String>,
    /// Every record's key and version, in file order.
    pub rows: Vec<RowVersion>,
}

/// The outcome of [`versions`].
#[derive(Debug)]
pub enum Fast {
    /// The segment's metadata and every record's key and version.
    Versions(SegmentVersions),
    /// Not the layout this reader knows: use [`full_versions`].
    Unsupported(String),
}

/// The full decode ([`crate::decode_segment`]), values included, reduced
/// to [`SegmentVersions`]; also refuses a record of another partition than
/// the segment's, as the key/version reader does.
pub fn full_versions(bytes: &[u8]) -> Result<SegmentVersions, String> {
    let seg = crate::decode_segment(bytes).map_err(|e| e.to_string())?;
    check_partitions(&seg)?;
    Ok(SegmentVersions {
        columns: seg.columns.iter().map(|c| c.name.clone()).collect(),
        rows: seg.rows.into_iter().map(RowVersion::from).collect(),
        meta: seg.meta,
    })
}

/// Every record is of the segment's partition.
pub(crate) fn check_partitions(seg: &crate::Segment) -> Result<(), String> {
    match seg
        .rows
        .iter()
        .map(|r| &r.meta)
        .find(|r| r.partition != seg.meta.partition)
    {
        Some(r) => Err(format!(
            "record at offset {} is from partition {}, the segment is of partition {}",
            r.offset, r.partition, seg.meta.partition
        )),
        None => Ok(()),
    }
}

/// Why the bytes are not a readable segment.
#[derive(Debug, thiserror::Error)]
#[error("segment does not decode: {0}")]
pub struct DecodeError(pub String);

fn bad(msg: impl Into<String>) -> DecodeError {
    DecodeError(msg.into())
}

const MAGIC: &[u8; 4] = b"Obj\x01";

/// How a column's value is laid out after its union index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Boolean,
    String,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| bad("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Avro `long`/`int`: zig-zag varint.
    fn long(&mut self) -> Result<i64, DecodeError> {
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            if shift >= 64 {
                return Err(bad("varint too long"));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(self.long()?).map_err(|_| bad("negative length"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| bad("string is not UTF-8"))
    }

    /// A `["null", T]` union's branch: false for null.
    fn present(&mut self) -> Result<bool, DecodeError> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(bad(format!("union branch {other}"))),
        }
    }
}

/// The meta fields and their exact Avro types, in record order.
fn meta_types() -> [(&'static str, Json); 8] {
    let opt = |t: &str| serde_json::json!(["null", t]);
    [
        ("_op", Json::from("string")),
        ("_key", Json::from("string")),
        ("_updated", opt("string")),
        ("_mvcc_timestamp", opt("string")),
        ("_pg_xid", opt("long")),
        ("_topic", Json::from("string")),
        ("_partition", Json::from("int")),
        ("_offset", Json::from("long")),
    ]
}

/// The column layout, if the schema is exactly cdc-archiver's: each column
/// field's name and type.
fn layout(schema: &str) -> Result<Vec<(String, Field)>, String> {
    let schema: Json = serde_json::from_str(schema).map_err(|e| format!("schema: {e}"))?;
    if schema.get("type").and_then(Json::as_str) != Some("record") {
        return Err("schema is not a record".into());
    }
    let fields = schema
        .get("fields")
        .and_then(Json::as_array)
        .ok_or("schema has no fields")?;
    let meta = meta_types();
    if fields.len() < meta.len() {
        return Err(format!("{} fields", fields.len()));
    }
    for (f, (name, ty)) in fields.iter().zip(meta.iter()) {
        if f.get("name").and_then(Json::as_str) != Some(name) || f.get("type") != Some(ty) {
            return Err(format!("field {f} where {name}: {ty} was expected"));
        }
    }
    let boolean = serde_json::json!(["null", "boolean"]);
    let string = serde_json::json!(["null", "string"]);
    fields[meta.len()..]
        .iter()
        .map(|f| {
            let name = f
                .get("name")
                .and_then(Json::as_str)
                .ok_or_else(|| format!("column field {f}"))?
                .to_owned();
            match f.get("type") {
                Some(t) if *t == boolean => Ok((name, Field::Boolean)),
                Some(t) if *t == string => Ok((name, Field::String)),
                _ => Err(format!("column field {f}")),
            }
        })
        .collect()
}

/// The `cdc.*` metadata the full decode requires, from the header.
fn meta(md: &std::collections::HashMap<&str, &[u8]>) -> Result<SegmentMeta, DecodeError> {
    let get = |k: &str| -> Result<&str, DecodeError> {
        let v = md
            .get(k)
            .ok_or_else(|| bad(format!("missing metadata {k}")))?;
        std::str::from_utf8(v).map_err(|_| bad(format!("metadata {k} is not UTF-8")))
    };
    let num = |k: &str| -> Result<i64, DecodeError> {
        get(k)?
            .parse()
            .map_err(|_| bad(format!("metadata {k} is not a number")))
    };
    Ok(SegmentMeta {
        table: get("cdc.table")?.to_owned(),
        topic: get("cdc.topic")?.to_owned(),
        partition: i32::try_from(num("cdc.partition")?)
            .map_err(|_| bad("cdc.partition out of range"))?,
        first_offset: num("cdc.first_offset")?,
        last_offset: num("cdc.last_offset")?,
    })
}

/// `cdc.columns`, checked against the schema's column fields: the same
/// fields in the same order, each with an encoding its type holds.
fn columns(
    md: &std::collections::HashMap<&str, &[u8]>,
    fields: &[(String, Field)],
) -> Result<Vec<Column>, DecodeError> {
    let raw = md
        .get("cdc.columns")
        .ok_or_else(|| bad("missing metadata cdc.columns"))?;
    let columns: Vec<Column> =
        serde_json::from_slice(raw).map_err(|e| bad(format!("cdc.columns: {e}")))?;
    if columns.len() != fields.len() {
        return Err(bad(format!(
            "cdc.columns lists {} columns, the schema has {} column fields",
            columns.len(),
            fields.len()
        )));
    }
    for (c, (name, ty)) in columns.iter().zip(fields) {
        let fits = matches!(
            (c.encoding, ty),
            (Encoding::Boolean, Field::Boolean)
                | (Encoding::String | Encoding::Json, Field::String)
        );
        if c.field != *name || !fits {
            return Err(bad(format!(
                "cdc.columns entry {:?} ({:?}) does not match the schema's field {name:?} ({ty:?})",
                c.field, c.encoding
            )));
        }
    }
    Ok(columns)
}

/// A JSON-encoded column value as the full decode reads it: valid JSON
/// (parsed, not built), and a JSON string's escapes decodable.
fn check_json(text: &str, column: &str) -> Result<(), DecodeError> {
    let invalid = |e: serde_json::Error| bad(format!("column {column:?}: {e}"));
    let raw: &RawValue = serde_json::from_str(text).map_err(invalid)?;
    let v = raw.get().trim_matches(|c: char| c.is_ascii_whitespace());
    if v.starts_with('"') {
        serde_json::from_str::<std::borrow::Cow<'_, str>>(v).map_err(invalid)?;
    }
    Ok(())
}

fn op(s: &str) -> Result<(), DecodeError> {
    match s {
        "insert" | "update" | "delete" | "upsert" => Ok(()),
        other => Err(bad(format!("unknown _op {other:?}"))),
    }
}

fn codec(name: &str) -> Option<Codec> {
    match name {
        "null" => Some(Codec::Null),
        "deflate" => Some(Codec::Deflate(DeflateSettings::default())),
        "zstandard" => Some(Codec::Zstandard(ZstandardSettings::default())),
        _ => None,
    }
}

fn hlc(s: &str, what: &str) -> Result<Hlc, DecodeError> {
    s.parse::<Hlc>().map_err(|e| bad(format!("{what}: {e}")))
}

/// Reads the segment's metadata and every record's key, `updated`,
/// versions and offset, checking that the full decode would read it too.
pub fn versions(bytes: &[u8]) -> Result<Fast, DecodeError> {
    let mut c = Cursor::new(bytes);
    if c.take(4).ok() != Some(&MAGIC[..]) {
        return Err(bad("not an Avro object container file"));
    }
    let (mut schema, mut codec_name, mut format_version) = (None, None, None);
    let mut md = std::collections::HashMap::new();
    loop {
        let mut count = c.long()?;
        if count == 0 {
            break;
        }
        if count < 0 {
            count = -count;
            c.long()?; // block size in bytes
        }
        for _ in 0..count {
            let key = c.str()?;
            let value = c.bytes()?;
            match key {
                "avro.schema" => schema = Some(value),
                "avro.codec" => codec_name = Some(value),
                "cdc.format_version" => format_version = Some(value),
                _ => {}
            }
            md.insert(key, value);
        }
    }
    let sync: &[u8] = c.take(16)?;
    if format_version != Some(crate::FORMAT_VERSION.as_bytes()) {
        return Ok(Fast::Unsupported(format!(
            "cdc.format_version {:?}",
            format_version.map(String::from_utf8_lossy)
        )));
    }
    let schema = std::str::from_utf8(schema.ok_or_else(|| bad("no avro.schema"))?)
        .map_err(|_| bad("avro.schema is not UTF-8"))?;
    let fields = match layout(schema) {
        Ok(c) => c,
        Err(why) => return Ok(Fast::Unsupported(why)),
    };
    let codec_name = codec_name.map_or(Ok("null"), std::str::from_utf8);
    let Some(codec) = codec_name.ok().and_then(codec) else {
        return Ok(Fast::Unsupported(format!("codec {codec_name:?}")));
    };
    // What the full decode's Avro reader insists on (a record name, valid
    // field names, …), and the metadata it requires.
    apache_avro::Schema::parse_str(schema).map_err(|e| bad(format!("avro.schema: {e}")))?;
    let meta = meta(&md)?;
    let columns = columns(&md, &fields)?;

    let mut out = Vec::new();
    let mut block = Vec::new();
    while !c.at_end() {
        let count = usize::try_from(c.long()?).map_err(|_| bad("negative record count"))?;
        let data = c.bytes()?;
        if c.take(16)? != sync {
            return Err(bad("sync marker mismatch"));
        }
        block.clear();
        block.extend_from_slice(data);
        codec
            .decompress(&mut block)
            .map_err(|e| bad(format!("block: {e}")))?;
        let mut r = Cursor::new(&block);
        out.reserve(count);
        for _ in 0..count {
            op(r.str()?)?;
            let key_json = r.str()?.to_owned();
            let updated = if r.present()? {
                Some(hlc(r.str()?, "_updated")?)
            } else {
                None
            };
            let mvcc_timestamp = if r.present()? {
                Some(hlc(r.str()?, "_mvcc_timestamp")?)
            } else {
                None
            };
            let pg_xid = if r.present()? {
                Some(u64::try_from(r.long()?).map_err(|_| bad("_pg_xid negative"))?)
            } else {
                None
            };
            r.str()?; // _topic
            let partition = i32::try_from(r.long()?).map_err(|_| bad("_partition out of range"))?;
            if partition != meta.partition {
                return Err(bad(format!(
                    "a record of partition {partition} in a segment of partition {}",
                    meta.partition
                )));
            }
            let offset = r.long()?;
            for col in &columns {
                if r.present()? {
                    match col.encoding {
                        Encoding::Boolean => {
                            if r.take(1)?[0] > 1 {
                                return Err(bad(format!("column {:?}: not a boolean", col.name)));
                            }
                        }
                        Encoding::String => {
                            r.str()?;
                        }
                        Encoding::Json => check_json(r.str()?, &col.name)?,
                    }
                }
            }
            out.push(RowVersion {
                key_json,
                updated,
                mvcc_timestamp,
                pg_xid,
                offset,
                // Values are the full decode's job.
                columns: Vec::new(),
            });
        }
        if !r.at_end() {
            return Err(bad("block has bytes after its records"));
        }
    }
    Ok(Fast::Versions(SegmentVersions {
        meta,
        columns: columns.into_iter().map(|c| c.name).collect(),
        rows: out,
    }))
}

#[cfg(test)]
#[path = "versions_tests.rs"]
mod tests;
