//! Reads only what the purger needs from a segment: each record's key,
//! `updated`, version (`_mvcc_timestamp`, `_pg_xid`) and offset. The column
//! values are skipped, not decoded (no value is built, no JSON parsed), which
//! makes reading a segment several times cheaper than the full
//! [`cdc_segment::decode_segment`], whose work is for readers of the data.
//!
//! It reads the Avro object container format directly (header, metadata,
//! blocks, sync markers) and only accepts the exact layout cdc-archiver
//! writes (format version 1: the eight meta fields in order with their
//! types, then one `["null","boolean"]` or `["null","string"]` field per
//! column, codec `null`, `deflate` or `zstandard`). Anything else, such as
//! a segment written by a later format, is [`Fast::Unsupported`] and the
//! caller falls back to the full decode, so this reader never has to guess.
//! A segment that claims the layout but does not follow it is an error,
//! never a partial result.

use apache_avro::{Codec, DeflateSettings, ZstandardSettings};
use cdc_changefeed::Hlc;
use serde_json::Value as Json;

use crate::versions::ArchivedVersion;

/// The outcome of [`versions`].
#[derive(Debug)]
pub enum Fast {
    /// Every record's key and version, in file order.
    Versions(Vec<ArchivedVersion>),
    /// Not the layout this reader knows: use the full decode.
    Unsupported(String),
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

    fn skip_str(&mut self) -> Result<(), DecodeError> {
        let n = self.len()?;
        self.take(n).map(|_| ())
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

/// The column layout, if the schema is exactly cdc-archiver's.
fn layout(schema: &str) -> Result<Vec<Field>, String> {
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
        .map(|f| match f.get("type") {
            Some(t) if *t == boolean => Ok(Field::Boolean),
            Some(t) if *t == string => Ok(Field::String),
            _ => Err(format!("column field {f}")),
        })
        .collect()
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

/// Reads every record's key, `updated`, versions and offset.
pub fn versions(bytes: &[u8]) -> Result<Fast, DecodeError> {
    let mut c = Cursor::new(bytes);
    if c.take(4).ok() != Some(&MAGIC[..]) {
        return Err(bad("not an Avro object container file"));
    }
    let (mut schema, mut codec_name, mut format_version) = (None, None, None);
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
        }
    }
    let sync: &[u8] = c.take(16)?;
    if format_version != Some(cdc_segment::FORMAT_VERSION.as_bytes()) {
        return Ok(Fast::Unsupported(format!(
            "cdc.format_version {:?}",
            format_version.map(String::from_utf8_lossy)
        )));
    }
    let schema = std::str::from_utf8(schema.ok_or_else(|| bad("no avro.schema"))?)
        .map_err(|_| bad("avro.schema is not UTF-8"))?;
    let columns = match layout(schema) {
        Ok(c) => c,
        Err(why) => return Ok(Fast::Unsupported(why)),
    };
    let codec_name = codec_name.map_or(Ok("null"), std::str::from_utf8);
    let Some(codec) = codec_name.ok().and_then(codec) else {
        return Ok(Fast::Unsupported(format!("codec {codec_name:?}")));
    };

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
            r.skip_str()?; // _op
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
            r.skip_str()?; // _topic
            r.long()?; // _partition
            let offset = r.long()?;
            for f in &columns {
                if r.present()? {
                    match f {
                        Field::Boolean => {
                            r.take(1)?;
                        }
                        Field::String => r.skip_str()?,
                    }
                }
            }
            out.push(ArchivedVersion {
                key_json,
                updated,
                mvcc_timestamp,
                pg_xid,
                offset,
            });
        }
        if !r.at_end() {
            return Err(bad("block has bytes after its records"));
        }
    }
    Ok(Fast::Versions(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_changefeed::{Op, Value};
    use cdc_segment::{ArchivedRow, SegmentMeta};

    fn row(i: i64) -> ArchivedRow {
        ArchivedRow {
            op: if i % 3 == 0 { Op::Insert } else { Op::Update },
            key_json: format!("[{i}, \"k\\\"{i}\"]"),
            updated: (i % 5 != 0).then(|| Hlc::new(1_700_000_000_000_000_000 + i, (i % 4) as u32)),
            mvcc_timestamp: (i % 2 == 0).then(|| Hlc::new(1_600_000_000_000_000_000 + i, 7)),
            pg_xid: (i % 7 != 0).then_some((3u64 << 32) | i as u64),
            topic: "topic".into(),
            partition: 2,
            offset: 1000 + i,
            columns: vec![
                ("id".into(), Value::Number(i.to_string())),
                (
                    "note".into(),
                    if i % 4 == 0 {
                        Value::Null
                    } else {
                        Value::String("x".repeat(i as usize % 50))
                    },
                ),
                ("flag".into(), Value::Bool(i % 2 == 0)),
                ("doc".into(), Value::Json(format!("{{\"a\": [{i}, null]}}"))),
            ],
        }
    }

    fn meta() -> SegmentMeta {
        SegmentMeta {
            table: "t".into(),
            topic: "topic".into(),
            partition: 2,
            first_offset: 1000,
            last_offset: 5000,
        }
    }

    #[test]
    fn matches_the_full_decode_across_blocks() {
        // Enough rows for several 256 KiB blocks.
        let rows: Vec<ArchivedRow> = (0..6000).map(row).collect();
        let bytes = cdc_segment::encode_segment(&meta(), &rows).unwrap();
        let Fast::Versions(fast) = versions(&bytes).unwrap() else {
            panic!("the segment layout is the one the reader knows");
        };
        let full: Vec<ArchivedVersion> = cdc_segment::decode_segment(&bytes)
            .unwrap()
            .rows
            .iter()
            .map(ArchivedVersion::from)
            .collect();
        assert_eq!(fast.len(), rows.len());
        assert_eq!(fast, full);
    }

    #[test]
    fn truncated_or_altered_bytes_are_errors_never_partial_results() {
        let rows: Vec<ArchivedRow> = (0..50).map(row).collect();
        let bytes = cdc_segment::encode_segment(&meta(), &rows).unwrap();
        for cut in [bytes.len() - 1, bytes.len() - 17, bytes.len() / 2, 10] {
            assert!(versions(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut sync = bytes.clone();
        let n = sync.len();
        sync[n - 3] ^= 0xff;
        assert!(versions(&sync).is_err());
        assert!(versions(b"not avro").is_err());
    }

    #[test]
    fn another_layout_is_left_to_the_full_decode() {
        let schema = apache_avro::Schema::parse_str(
            r#"{"type": "record", "name": "r", "fields": [{"name": "a", "type": "long"}]}"#,
        )
        .unwrap();
        let mut w = apache_avro::Writer::new(&schema, Vec::new());
        w.add_user_metadata("cdc.format_version".into(), "1")
            .unwrap();
        w.append(apache_avro::types::Value::Record(vec![(
            "a".into(),
            apache_avro::types::Value::Long(1),
        )]))
        .unwrap();
        let bytes = w.into_inner().unwrap();
        assert!(matches!(versions(&bytes).unwrap(), Fast::Unsupported(_)));
        let mut w = apache_avro::Writer::new(&schema, Vec::new());
        w.add_user_metadata("cdc.format_version".into(), "2")
            .unwrap();
        assert!(matches!(
            versions(&w.into_inner().unwrap()).unwrap(),
            Fast::Unsupported(_)
        ));
    }
}
