//! Decodes CockroachDB changefeed records, as read from Kafka, into typed
//! events: the wrapped envelope (with any of `updated`, `diff`,
//! `mvcc_timestamp`, `key_in_value`, `topic_in_value`), the bare envelope of
//! CDC queries, deletes, and resolved messages in both forms. Also decodes
//! the same format produced by cdc-archiver's own PostgreSQL changefeed
//! (`pg_xid`, `pg_lsn`).
//!
//! Guarantee: decoding is exact and pure. Every column value keeps its
//! JSON text (a DECIMAL `1250.00` is never rounded through `f64`), HLC
//! timestamps print back byte for byte, and a record that does not decode
//! yields a typed [`DecodeError`] carrying its exact bytes and position so
//! the sink can quarantine it. No I/O, no panics on any input (fuzzed).
//!
//! ```
//! use cdc_changefeed::{decode, Event, Hlc, Op, RawRecord, Value};
//!
//! let record = RawRecord {
//!     topic: "payments",
//!     partition: 1,
//!     offset: 42,
//!     key: Some(br#"["2025-06-11", "f0e1d2c3-b4a5-4968-8776-655443322110"]"#),
//!     value: Some(br#"{"after": {"amount": -15.50, "id": "f0e1d2c3-b4a5-4968-8776-655443322110"}, "before": null, "updated": "1749715231873209112.0000000002"}"#),
//! };
//! let Ok(Event::Row(row)) = decode(&record) else { panic!("not a row") };
//! assert_eq!(row.op, Op::Insert);
//! assert_eq!(row.meta.updated, Some(Hlc::new(1_749_715_231_873_209_112, 2)));
//! let after = row.after.unwrap();
//! assert_eq!(after.get("amount"), Some(&Value::Number("-15.50".into())));
//! ```

mod decode;
mod error;
pub mod line;
pub mod pgvalue;

pub use cdc_types::{Hlc, ParseHlcError};
pub use cdc_types::{Row, Value};
pub use decode::{
    decode, decode_with, DecodeOptions, Envelope, Event, Op, RawRecord, Resolved, RowEvent,
};
pub use error::{DecodeError, DecodeErrorKind, RecordPart};
