//! Decode errors: what is wrong, and the whole record so the sink can
//! quarantine it byte for byte.

use std::fmt;

use crate::RawRecord;
use cdc_types::ParseHlcError;

/// Which half of a Kafka record an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordPart {
    /// The record key.
    Key,
    /// The record value.
    Value,
}

impl fmt::Display for RecordPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordPart::Key => "key",
            RecordPart::Value => "value",
        })
    }
}

/// What made a record undecodable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The key or value bytes are not UTF-8.
    #[error("record {0} is not UTF-8")]
    NotUtf8(RecordPart),
    /// The key or value is not valid JSON.
    #[error("record {part} is not JSON: {reason}")]
    NotJson {
        /// Key or value.
        part: RecordPart,
        /// The JSON parser's message.
        reason: String,
    },
    /// The value is JSON but not an object.
    #[error("record value is not a JSON object")]
    NotAnObject,
    /// The value is null or absent (a tombstone; `envelope=row`/`key_only`
    /// deletes look like this and are not supported).
    #[error("record value is null (tombstone)")]
    NullValue,
    /// A row record without a key.
    #[error("row record has a null key")]
    NullKey,
    /// The key (or the `key` field of `key_in_value`) is not a JSON array.
    #[error("record key is not a JSON array of primary-key values")]
    KeyNotArray,
    /// `key_in_value` gives a key that differs from the Kafka key.
    #[error("the value's \"key\" field differs from the record key")]
    KeyMismatch,
    /// A timestamp field is not an HLC string.
    #[error("field {field:?} is not an HLC timestamp ({text}): {source}")]
    BadHlc {
        /// `updated`, `mvcc_timestamp` or `resolved`.
        field: &'static str,
        /// The offending JSON text.
        text: String,
        /// Why it does not parse.
        source: ParseHlcError,
    },
    /// A wrapped envelope has `before` but no `after`.
    #[error("wrapped envelope without an \"after\" field")]
    MissingAfter,
    /// A field has the wrong JSON type (e.g. `after` is neither an object
    /// nor null, `__crdb__` is not an object).
    #[error("field {field:?} has the wrong type: expected {expected}")]
    BadField {
        /// The field name.
        field: String,
        /// What the decoder expected there.
        expected: &'static str,
    },
    /// The same top-level field appears twice.
    #[error("duplicate field {0:?}")]
    DuplicateField(String),
    /// The CDC-query operation column holds something other than
    /// `insert`, `update` or `delete`.
    #[error(
        "operation column {column:?} holds {found}, expected \"insert\", \"update\" or \"delete\""
    )]
    BadOp {
        /// The configured column name.
        column: String,
        /// Its JSON text.
        found: String,
    },
    /// An object that is no known changefeed message shape.
    #[error("unknown message shape: {0}")]
    UnknownShape(&'static str),
}

/// A record that cannot be decoded, with everything needed to quarantine
/// it: the reason, its position, and its exact key and value bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode changefeed record at topic {topic:?} partition {partition} offset {offset}: {kind}")]
pub struct DecodeError {
    /// What is wrong (also in the message, hence not a `source`).
    pub kind: DecodeErrorKind,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// The record key bytes, exactly.
    pub key: Option<Vec<u8>>,
    /// The record value bytes, exactly.
    pub value: Option<Vec<u8>>,
}

impl DecodeError {
    /// Wraps `kind` with a copy of the record (only on the error path, so
    /// the hot path stays allocation-free here).
    pub(crate) fn new(kind: DecodeErrorKind, record: &RawRecord<'_>) -> Self {
        Self {
            kind,
            topic: record.topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
        }
    }
}

/// A malformed message stays malformed: re-reading it gives the same bytes.
#[cfg(feature = "retryable")]
impl cdc_common::retry::Retryable for DecodeError {
    fn is_retryable(&self) -> bool {
        false
    }
}
