//! Delete files: the delete events of one checkpoint's offset range, as an
//! Avro object container file (zstandard) next to, never inside, the
//! segment of row versions.
//!
//! Guarantee: a delete file is never mistaken for a segment. Its records
//! say `_op = "delete"`, and its metadata has `cdc.deletes_format_version`
//! and no `cdc.format_version`, so [`crate::decode_segment`] (and the
//! purger's key/version reader, which checks `cdc.format_version` first)
//! refuse it instead of reading deletes as row versions. A delete file
//! round-trips exactly: [`decode_deletes`] gives back the
//! [`DeletedRow`]s that [`encode_deletes`] was given, `before` values
//! with their exact JSON text.
//!
//! Record layout (`cdc_archiver.DeleteEvent`): `_op` (`"delete"`), `_key`,
//! `_updated`, `_mvcc_timestamp`, `_pg_xid`, `_topic`, `_partition`,
//! `_offset` (the same names and types as a segment's meta fields), then
//! `_before`: `["null","string"]`, the changefeed's `before` row as a JSON
//! object (columns in message order, every value its exact JSON text), or
//! null. The sink fills `_before` only when that row was itself marked
//! archived (see the sink's README).

use std::fmt;

use apache_avro::types::Value as Avro;
use apache_avro::{Reader, Schema, Writer};
use cdc_types::Value;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::{
    codec, format, opt_str, put_opt_str, put_str, write_records, MetaCodec, RecordMeta,
    SegmentError, SegmentMeta,
};

/// Value of the `cdc.deletes_format_version` metadata entry.
pub const DELETES_FORMAT_VERSION: &str = "1";

/// Record fields of a delete file, in order: a segment record's metadata
/// fields ([`crate::META_FIELDS`]), then `_before`.
pub const DELETE_FIELDS: [&str; 9] = {
    let mut fields = [""; 9];
    let mut i = 0;
    while i < crate::META_FIELDS.len() {
        fields[i] = crate::META_FIELDS[i];
        i += 1;
    }
    fields[8] = "_before";
    fields
};

/// One delete event, as kept for the purger and auditors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedRow {
    /// The delete's key, timestamps, transaction id (PostgreSQL
    /// changefeed: the deleting transaction's) and Kafka position.
    pub meta: RecordMeta,
    /// The deleted row as the changefeed's `before` gave it, in message
    /// order (`None`: not kept, or the message had none).
    pub before: Option<Vec<(String, Value)>>,
}

/// A decoded delete file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletes {
    /// File metadata (the checkpoint's range).
    pub meta: SegmentMeta,
    /// The deletes in file (offset) order.
    pub deletes: Vec<DeletedRow>,
}

fn schema_json() -> String {
    let nullable_string = serde_json::json!(["null", "string"]);
    let fields = serde_json::json!([
        {"name": "_op", "type": "string"},
        {"name": "_key", "type": "string"},
        {"name": "_updated", "type": nullable_string, "default": null},
        {"name": "_mvcc_timestamp", "type": nullable_string, "default": null},
        {"name": "_pg_xid", "type": ["null", "long"], "default": null},
        {"name": "_topic", "type": "string"},
        {"name": "_partition", "type": "int"},
        {"name": "_offset", "type": "long"},
        {"name": "_before", "type": nullable_string, "default": null},
    ]);
    serde_json::json!({"type": "record", "name": "DeleteEvent", "namespace": "cdc_archiver", "fields": fields})
        .to_string()
}

/// The JSON object text of a row: columns in order, values exact.
pub fn row_json(columns: &[(String, Value)]) -> String {
    let mut out = String::from("{");
    for (i, (name, v)) in columns.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&serde_json::to_string(name).expect("a str serialises"));
        out.push_str(": ");
        out.push_str(&v.to_json_text());
    }
    out.push('}');
    out
}

/// A JSON object's fields in order, values classified exactly.
struct OrderedRow(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedRow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedRow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let raw: &'de RawValue = map.next_value()?;
                    out.push((
                        name,
                        Value::from_raw(raw).map_err(serde::de::Error::custom)?,
                    ));
                }
                Ok(OrderedRow(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn encode_delete(d: &DeletedRow, out: &mut Vec<u8>) {
    put_str(out, "delete");
    d.meta.encode(out);
    put_opt_str(out, d.before.as_deref().map(row_json).as_deref());
}

/// Encodes delete events as one Avro container file.
pub fn encode_deletes(meta: &SegmentMeta, deletes: &[DeletedRow]) -> Result<Vec<u8>, SegmentError> {
    if deletes.is_empty() {
        return Err(SegmentError::Empty);
    }
    let schema = Schema::parse_str(&schema_json())?;
    let mut writer = Writer::with_codec(&schema, Vec::new(), codec());
    let metadata = [
        (
            "cdc.deletes_format_version",
            DELETES_FORMAT_VERSION.to_owned(),
        ),
        ("cdc.table", meta.table.clone()),
        ("cdc.topic", meta.topic.clone()),
        ("cdc.partition", meta.partition.to_string()),
        ("cdc.first_offset", meta.first_offset.to_string()),
        ("cdc.last_offset", meta.last_offset.to_string()),
    ];
    for (k, v) in metadata {
        writer.add_user_metadata(k.to_owned(), v)?;
    }
    // As for segments: the header by apache-avro, the records encoded here
    // field for field (the round-trip tests read them with its reader).
    write_records(writer.into_inner()?, deletes, encode_delete)
}

/// Reads a delete file back; anything else (a segment included) is an error.
pub fn decode_deletes(bytes: &[u8]) -> Result<Deletes, SegmentError> {
    let reader = Reader::new(bytes)?;
    let md = crate::Metadata::of(&reader);
    if !md.has("cdc.deletes_format_version") {
        return Err(format(
            "not a delete file: missing metadata cdc.deletes_format_version",
        ));
    }
    md.expect_version("cdc.deletes_format_version", DELETES_FORMAT_VERSION)?;
    let meta = crate::read_meta(&md)?;
    let mut deletes = Vec::new();
    for record in reader {
        let Avro::Record(fields) = record? else {
            return Err(format("a record is not an Avro record"));
        };
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        if names != DELETE_FIELDS {
            return Err(format(format!("delete record fields {names:?}")));
        }
        let mut it = fields.into_iter().map(|(_, v)| v);
        let mut next = || it.next().expect("length checked");
        match next() {
            Avro::String(s) if s == "delete" => {}
            other => return Err(format(format!("_op of a delete record: {other:?}"))),
        }
        let record = RecordMeta::decode(&mut next)?;
        let before = opt_str(next(), "_before")?
            .map(|text| {
                serde_json::from_str::<OrderedRow>(&text)
                    .map(|r| r.0)
                    .map_err(|e| format(format!("_before: {e}")))
            })
            .transpose()?;
        deletes.push(DeletedRow {
            meta: record,
            before,
        });
    }
    Ok(Deletes { meta, deletes })
}
