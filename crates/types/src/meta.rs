//! Where a change came from: the metadata every event carries from the
//! decoder to the archive (a decoded row event, an archived row version, an
//! archived delete), declared once. Pure data.

use serde::Serialize;

use crate::Hlc;

/// The change's Kafka position, key text, timestamps and transaction. A
/// segment stores them after `_op` (key first, position last: the
/// segment's own field order, `META_FIELDS`, is fixed by its format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordMeta {
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// The Kafka key's JSON array text, exactly.
    pub key_json: String,
    /// The change's commit time (`updated` option; the scan time for
    /// initial-scan rows).
    pub updated: Option<Hlc>,
    /// The row version's own commit time (CockroachDB `mvcc_timestamp`
    /// option).
    pub mvcc_timestamp: Option<Hlc>,
    /// PostgreSQL changefeed only: the transaction id that wrote the row
    /// version (top-level `"pg_xid"`).
    pub pg_xid: Option<u64>,
}
