//! The decoder: one Kafka record in, one typed event out.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Serialize;

pub use cdc_types::Op;
use serde_json::value::RawValue;

use crate::error::{DecodeError, DecodeErrorKind, RecordPart};
use cdc_types::{Hlc, ParseHlcError};
use cdc_types::{RecordMeta, Row, Value};

/// One Kafka record as the consumer received it, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// Kafka topic.
    pub topic: &'a str,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Key bytes; `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Value bytes; `None` for a null value (tombstone).
    pub value: Option<&'a [u8]>,
}

/// Which message layout the record used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// `{"after": …, "before": …, "updated": …}` (the default).
    Wrapped,
    /// Columns at the top level, metadata under `__crdb__` (CDC queries).
    Bare,
}

/// A row change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowEvent {
    /// Key text, timestamps, transaction and Kafka position, in the shape
    /// the archive stores them.
    pub meta: RecordMeta,
    /// Primary-key values in key-column order.
    pub key: Vec<Value>,
    /// What happened.
    pub op: Op,
    /// The row after the change; `None` for a delete.
    pub after: Option<Row>,
    /// The row before the change (wrapped envelope with `diff`).
    pub before: Option<Row>,
    /// PostgreSQL changefeed only: the commit LSN (top-level `"pg_lsn"`).
    pub pg_lsn: Option<String>,
    /// The message layout.
    pub envelope: Envelope,
}

/// The printed form (`cdc-archiver changefeed decode`): the metadata's
/// fields inline, in the order this output has always had.
impl Serialize for RowEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let m = &self.meta;
        let mut st = s.serialize_struct("RowEvent", 13)?;
        st.serialize_field("topic", &m.topic)?;
        st.serialize_field("partition", &m.partition)?;
        st.serialize_field("offset", &m.offset)?;
        st.serialize_field("key", &self.key)?;
        st.serialize_field("key_json", &m.key_json)?;
        st.serialize_field("op", &self.op)?;
        st.serialize_field("after", &self.after)?;
        st.serialize_field("before", &self.before)?;
        st.serialize_field("updated", &m.updated)?;
        st.serialize_field("mvcc_timestamp", &m.mvcc_timestamp)?;
        st.serialize_field("pg_xid", &m.pg_xid)?;
        st.serialize_field("pg_lsn", &self.pg_lsn)?;
        st.serialize_field("envelope", &self.envelope)?;
        st.end()
    }
}

/// A resolved message: every row change up to `resolved` has been emitted
/// on this partition (CockroachDB sends one copy per partition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// The resolved timestamp.
    pub resolved: Hlc,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A row change.
    Row(RowEvent),
    /// A resolved timestamp.
    Resolved(Resolved),
}

/// Decoder settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Bare envelope (CDC query) column that holds `event_op()`: the name
    /// given in the query (`SELECT …, event_op() AS <name> FROM t`). It is
    /// removed from the row and sets [`RowEvent::op`]. `None`: every
    /// top-level field is a table column (a real column named `op` stays a
    /// column) and every bare row is an [`Op::Upsert`]. Default: `None`:
    /// the decoder cannot know whether a field is the query's `event_op()`
    /// or a table column, so only the operator's configuration can say.
    pub bare_op_column: Option<String>,
}

impl DecodeOptions {
    /// Options for a CDC query that selects `event_op() AS <column>`.
    pub fn with_op_column(column: impl Into<String>) -> Self {
        Self {
            bare_op_column: Some(column.into()),
        }
    }
}

/// Decodes one record with [`DecodeOptions::default`]: no operation
/// column, so a bare (CDC query) row's top-level fields are all table
/// columns. A consumer of a CDC query that selects `event_op() AS <name>`
/// uses [`decode_with`] and [`DecodeOptions::with_op_column`] (the sink
/// does, with its per-topic `op_column`); for wrapped envelopes the two are
/// the same.
// `Event` is larger than the error, so boxing the error would not make
// the `Result` smaller; the error fields are part of the public contract.
#[allow(clippy::result_large_err)]
pub fn decode(record: &RawRecord<'_>) -> Result<Event, DecodeError> {
    decode_inner(record, None).map_err(|k| DecodeError::new(k, record))
}

/// Decodes one record.
///
/// Shapes, checked in this order:
/// 1. a top-level `__crdb__` object: with `resolved` inside, a resolved
///    message; otherwise a bare row whose other top-level fields are the
///    columns, `updated`/`mvcc_timestamp` taken from `__crdb__`;
/// 2. an `after` field: a wrapped row (`before`, `updated`,
///    `mvcc_timestamp`, `key` (checked against the Kafka key), `pg_xid`,
///    `pg_lsn` read; other fields such as `topic` tolerated);
/// 3. `{"resolved": …}` alone, or with other fields and a null key: a
///    resolved message;
/// 4. `before` without `after`: [`DecodeErrorKind::MissingAfter`];
/// 5. any other non-empty object: a bare row without metadata (a CDC query
///    without the `updated` option). A table with a column named `after`
///    is therefore only decodable as a bare row when `__crdb__` is present.
///
/// A row record needs a key that is a JSON array.
// `Event` is larger than the error, so boxing the error would not make
// the `Result` smaller; the error fields are part of the public contract.
#[allow(clippy::result_large_err)]
pub fn decode_with(record: &RawRecord<'_>, opts: &DecodeOptions) -> Result<Event, DecodeError> {
    decode_inner(record, opts.bare_op_column.as_deref()).map_err(|k| DecodeError::new(k, record))
}

type Kind = DecodeErrorKind;

fn decode_inner(record: &RawRecord<'_>, op_column: Option<&str>) -> Result<Event, Kind> {
    let value = record.value.ok_or(Kind::NullValue)?;
    let value = std::str::from_utf8(value).map_err(|_| Kind::NotUtf8(RecordPart::Value))?;
    let fields = parse_object(value)?;
    let top = Top::index(&fields)?;

    if let Some(crdb) = top.crdb {
        let meta_fields = parse_object(crdb.get()).map_err(|_| Kind::BadField {
            field: "__crdb__".to_owned(),
            expected: "an object",
        })?;
        let meta = Top::index(&meta_fields)?;
        if let Some(resolved) = meta.resolved {
            return resolved_event(record, resolved);
        }
        let key = record_key(record)?;
        let mut row = Row(Vec::with_capacity(fields.len().saturating_sub(1)));
        for (name, raw) in &fields {
            if name != "__crdb__" {
                row.0.push((name.clone().into_owned(), value_of(raw)?));
            }
        }
        return bare_event(record, key, row, &meta, op_column);
    }
    if let Some(after) = top.after {
        let key = record_key(record)?;
        let after = optional_row("after", after)?;
        let before = top.before.map(|b| optional_row("before", b)).transpose()?;
        // `before` is only present with `diff`; without it an insert and an
        // update look the same.
        let op = match (&after, &before) {
            (None, _) => Op::Delete,
            (Some(_), None) => Op::Upsert,
            (Some(_), Some(None)) => Op::Insert,
            (Some(_), Some(Some(_))) => Op::Update,
        };
        if let Some(k) = top.key {
            let in_value = key_values(k.get())?;
            if in_value != key.0 {
                return Err(Kind::KeyMismatch);
            }
        }
        return Ok(Event::Row(RowEvent {
            meta: top.record_meta(record, key.1)?,
            key: key.0,
            op,
            after,
            before: before.flatten(),
            pg_lsn: top.pg_lsn()?,
            envelope: Envelope::Wrapped,
        }));
    }
    // A resolved message is `{"resolved": …}`; should a future option add
    // fields to it, the null key still tells it from a bare row.
    if let Some(resolved) = top.resolved {
        if fields.len() == 1 || record.key.is_none() {
            return resolved_event(record, resolved);
        }
    }
    if top.before.is_some() {
        return Err(Kind::MissingAfter);
    }
    if fields.is_empty() {
        return Err(Kind::UnknownShape("empty object"));
    }
    let key = record_key(record)?;
    let mut row = Row(Vec::with_capacity(fields.len()));
    for (name, raw) in &fields {
        row.0.push((name.clone().into_owned(), value_of(raw)?));
    }
    bare_event(record, key, row, &Top::default(), op_column)
}

fn resolved_event(record: &RawRecord<'_>, raw: &RawValue) -> Result<Event, Kind> {
    Ok(Event::Resolved(Resolved {
        topic: record.topic.to_owned(),
        partition: record.partition,
        offset: record.offset,
        resolved: parse_hlc("resolved", raw)?,
    }))
}

fn bare_event(
    record: &RawRecord<'_>,
    key: (Vec<Value>, String),
    mut row: Row,
    meta: &Top<'_>,
    op_column: Option<&str>,
) -> Result<Event, Kind> {
    let op = match op_column.and_then(|c| row.remove(c).map(|v| (c, v))) {
        None => Op::Upsert,
        Some((column, found)) => match found.as_str() {
            Some("insert") => Op::Insert,
            Some("update") => Op::Update,
            Some("delete") => Op::Delete,
            _ => {
                return Err(Kind::BadOp {
                    column: column.to_owned(),
                    found: found.to_json_text(),
                })
            }
        },
    };
    Ok(Event::Row(RowEvent {
        meta: meta.record_meta(record, key.1)?,
        key: key.0,
        op,
        // A CDC-query delete carries the key columns and NULL elsewhere:
        // not a row state worth keeping.
        after: (op != Op::Delete).then_some(row),
        before: None,
        pg_lsn: meta.pg_lsn()?,
        envelope: Envelope::Bare,
    }))
}

/// The top-level fields the decoder knows, found in one pass.
#[derive(Default)]
struct Top<'a> {
    after: Option<&'a RawValue>,
    before: Option<&'a RawValue>,
    updated: Option<&'a RawValue>,
    mvcc: Option<&'a RawValue>,
    key: Option<&'a RawValue>,
    resolved: Option<&'a RawValue>,
    crdb: Option<&'a RawValue>,
    pg_xid: Option<&'a RawValue>,
    pg_lsn: Option<&'a RawValue>,
}

impl<'a> Top<'a> {
    /// The event's [`RecordMeta`]: the record's position, its key text and
    /// the top-level timestamps and transaction id.
    fn record_meta(&self, record: &RawRecord<'_>, key_json: String) -> Result<RecordMeta, Kind> {
        Ok(RecordMeta {
            key_json,
            updated: self.hlc("updated", self.updated)?,
            mvcc_timestamp: self.hlc("mvcc_timestamp", self.mvcc)?,
            pg_xid: self.pg_xid()?,
            topic: record.topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
        })
    }

    fn index(fields: &[(Cow<'a, str>, &'a RawValue)]) -> Result<Self, Kind> {
        let mut top = Top::default();
        for (name, raw) in fields {
            let slot = match name.as_ref() {
                "after" => &mut top.after,
                "before" => &mut top.before,
                "updated" => &mut top.updated,
                "mvcc_timestamp" => &mut top.mvcc,
                "key" => &mut top.key,
                "resolved" => &mut top.resolved,
                "__crdb__" => &mut top.crdb,
                "pg_xid" => &mut top.pg_xid,
                "pg_lsn" => &mut top.pg_lsn,
                _ => continue,
            };
            if slot.replace(raw).is_some() {
                return Err(Kind::DuplicateField(name.clone().into_owned()));
            }
        }
        Ok(top)
    }

    fn hlc(&self, field: &'static str, raw: Option<&RawValue>) -> Result<Option<Hlc>, Kind> {
        raw.map(|r| parse_hlc(field, r)).transpose()
    }

    fn pg_xid(&self) -> Result<Option<u64>, Kind> {
        let Some(raw) = self.pg_xid else {
            return Ok(None);
        };
        let bad = || Kind::BadField {
            field: "pg_xid".to_owned(),
            expected: "a decimal transaction id (string or number)",
        };
        let text = match json_str(raw) {
            Some(s) => s,
            None => Cow::Borrowed(raw.get()),
        };
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        text.parse().map(Some).map_err(|_| bad())
    }

    fn pg_lsn(&self) -> Result<Option<String>, Kind> {
        let Some(raw) = self.pg_lsn else {
            return Ok(None);
        };
        json_str(raw)
            .map(|s| Some(s.into_owned()))
            .ok_or_else(|| Kind::BadField {
                field: "pg_lsn".to_owned(),
                expected: "a string",
            })
    }
}

fn parse_hlc(field: &'static str, raw: &RawValue) -> Result<Hlc, Kind> {
    let bad = |source| Kind::BadHlc {
        field,
        text: raw.get().to_owned(),
        source,
    };
    match json_str(raw) {
        Some(s) => s.parse().map_err(bad),
        None => Err(bad(ParseHlcError::NOT_A_STRING)),
    }
}

/// The string a raw JSON value holds, borrowed when it has no escapes.
fn json_str<'a>(raw: &'a RawValue) -> Option<Cow<'a, str>> {
    serde_json::from_str::<Name<'a>>(raw.get())
        .ok()
        .map(|n| n.0)
}

fn value_of(raw: &RawValue) -> Result<Value, Kind> {
    Value::from_raw(raw).map_err(not_json(RecordPart::Value))
}

fn optional_row(field: &'static str, raw: &RawValue) -> Result<Option<Row>, Kind> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with('{') {
        return Err(Kind::BadField {
            field: field.to_owned(),
            expected: "an object or null",
        });
    }
    let fields = parse_object(text)?;
    let mut row = Row(Vec::with_capacity(fields.len()));
    for (name, raw) in fields {
        row.0.push((name.into_owned(), value_of(raw)?));
    }
    Ok(Some(row))
}

/// The record key: its values and its exact text.
fn record_key(record: &RawRecord<'_>) -> Result<(Vec<Value>, String), Kind> {
    let key = record.key.ok_or(Kind::NullKey)?;
    let key = std::str::from_utf8(key).map_err(|_| Kind::NotUtf8(RecordPart::Key))?;
    let values = key_values(key)?;
    Ok((values, key.to_owned()))
}

fn key_values(text: &str) -> Result<Vec<Value>, Kind> {
    expect_container(text, '[', RecordPart::Key, Kind::KeyNotArray)?;
    let raws: Vec<&RawValue> = serde_json::from_str(text).map_err(not_json(RecordPart::Key))?;
    raws.into_iter()
        .map(|r| Value::from_raw(r).map_err(not_json(RecordPart::Key)))
        .collect()
}

/// Parses a JSON object into its fields in order, values left as raw text.
fn parse_object(text: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, Kind> {
    expect_container(text, '{', RecordPart::Value, Kind::NotAnObject)?;
    serde_json::from_str::<Fields<'_>>(text)
        .map(|f| f.0)
        .map_err(not_json(RecordPart::Value))
}

/// Checks the first byte before the real parse, so that valid JSON of the
/// wrong kind gets `wrong` rather than a parser message about types.
fn expect_container(text: &str, open: char, part: RecordPart, wrong: Kind) -> Result<(), Kind> {
    if text
        .trim_start_matches(|c: char| c.is_ascii_whitespace())
        .starts_with(open)
    {
        return Ok(());
    }
    Err(match serde_json::from_str::<IgnoredAny>(text) {
        Ok(_) => wrong,
        Err(e) => not_json(part)(e),
    })
}

fn not_json(part: RecordPart) -> impl Fn(serde_json::Error) -> Kind {
    move |e| Kind::NotJson {
        part,
        reason: e.to_string(),
    }
}

/// A JSON string, borrowed from the input unless it contains escapes.
#[derive(serde::Deserialize)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

/// A JSON object's fields in message order.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
                    let raw: &'de RawValue = map.next_value()?;
                    fields.push((name, raw));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No op column by default: a table column named `op` is archived as
    /// a column, and the row is an upsert.
    #[test]
    fn default_options_keep_an_op_column() {
        let rec = RawRecord {
            topic: "t",
            partition: 0,
            offset: 0,
            key: Some(b"[1]"),
            value: Some(br#"{"__crdb__": {"updated": "1.0000000000"}, "id": 1, "op": "delete"}"#),
        };
        let Ok(Event::Row(r)) = decode_with(&rec, &DecodeOptions::default()) else {
            panic!("not a row")
        };
        assert_eq!(r.op, Op::Upsert);
        let after = r.after.expect("a row state");
        assert_eq!(after.get("op"), Some(&Value::String("delete".into())));
        let Ok(Event::Row(r)) = decode_with(&rec, &DecodeOptions::with_op_column("op")) else {
            panic!("not a row")
        };
        assert_eq!((r.op, r.after), (Op::Delete, None));
    }

    /// The hot path borrows field names and values from the input; only
    /// escaped names are copied.
    #[test]
    fn field_names_are_borrowed_unless_escaped() {
        let fields = parse_object(r#"{"after": 1, "b\u0065fore": 2}"#).unwrap();
        assert!(matches!(&fields[0].0, Cow::Borrowed("after")));
        assert!(matches!(&fields[1].0, Cow::Owned(s) if s == "before"));
        assert_eq!(fields[1].1.get(), "2");
    }
}
