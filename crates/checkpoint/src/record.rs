//! The checkpoint record: one link of a partition's chain, saying that
//! its offsets are archived (or accounted for) and naming the segment and
//! the delete file it vouches for by size and sha256. The JSON form is the
//! archive format ([`FORMAT_VERSION`](crate::FORMAT_VERSION)): unknown fields
//! are refused.

use cdc_types::Hlc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout;

/// What one checkpoint's offset range contained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Kafka messages in the range (all kinds, duplicates included).
    pub events: u64,
    /// Rows written to the segment.
    pub rows_archived: u64,
    /// Delete events (not archived as rows).
    pub deletes: u64,
    /// Row events whose row is not marked archived (not archived as rows).
    pub not_archived: u64,
    /// Resolved-timestamp messages.
    pub resolved: u64,
    /// Undecodable messages written to the quarantine.
    pub quarantined: u64,
}

/// The segment a checkpoint vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRef {
    /// Path relative to the archive root.
    pub path: String,
    /// Object size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the object.
    pub sha256: String,
    /// Records in the segment.
    pub rows: u64,
    /// SQL column names of the rows, in segment order.
    pub columns: Vec<String>,
}

impl SegmentRef {
    /// Describes `bytes` uploaded at `path`.
    pub fn describe(path: String, bytes: &[u8], rows: u64, columns: Vec<String>) -> Self {
        Self {
            path,
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            rows,
            columns,
        }
    }
}

/// The delete file a checkpoint vouches for: the delete events of its
/// offset range (see `cdc_segment::encode_deletes`), kept apart from the
/// segment so that no reader of row versions can take one for a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletesRef {
    /// Path relative to the archive root (`<table>/deletes/p<partition>/…`).
    pub path: String,
    /// Object size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the object.
    pub sha256: String,
    /// Delete records in the file; equals the checkpoint's `counts.deletes`.
    pub records: u64,
}

impl DeletesRef {
    /// Describes `bytes` uploaded at `path`.
    pub fn describe(path: String, bytes: &[u8], records: u64) -> Self {
        Self {
            path,
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            records,
        }
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One link of a partition's chain: offsets `first_offset..=last_offset`
/// are archived (or accounted for) and need never be read from Kafka again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always [`FORMAT_VERSION`](crate::FORMAT_VERSION).
    pub format_version: u32,
    /// Archive table name.
    pub table: String,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// The topic's partition count when this was written, so the watermark
    /// can be computed from storage alone.
    pub partitions: i32,
    /// First offset covered (inclusive).
    pub first_offset: i64,
    /// Last offset covered (inclusive). Every offset in between is
    /// accounted for in `counts`.
    pub last_offset: i64,
    /// The segment, `None` when the range held no archivable row.
    pub segment: Option<SegmentRef>,
    /// The range's delete events (`None` when it held none, and in
    /// checkpoints written before delete files existed, which only count
    /// them). Never row versions: the purger does not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes: Option<DeletesRef>,
    /// What the range contained.
    pub counts: Counts,
    /// Smallest `updated` of the archived rows.
    pub min_updated: Option<Hlc>,
    /// Largest `updated` of the archived rows.
    pub max_updated: Option<Hlc>,
    /// Latest resolved timestamp seen in this partition at or before
    /// `last_offset` (carried forward from the previous checkpoint).
    pub resolved: Option<Hlc>,
    /// The sink instance that wrote it.
    pub writer_id: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// A Bloom filter over the segment's keys (see
    /// [`key_filter`](crate::key_filter)), so a look-up by key reads only
    /// the segments that may hold it.
    pub key_filter: Option<String>,
    /// PostgreSQL changefeed only: set when this checkpoint had to end
    /// inside the events of one source transaction (that transaction's
    /// events did not fit the sink's memory budget). Versions written by
    /// that transaction share one `xmin`, so a later version of a row may
    /// follow in the next checkpoint: the purger never deletes this
    /// checkpoint's rows of that transaction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_tail_xid: Option<u64>,
    /// The fingerprint of the Kafka message at `last_offset`
    /// ([`message_fingerprint`], hex): a sink resuming the chain checks that
    /// Kafka still holds that message there, so a topic deleted and
    /// recreated (offsets from 0 again) is refused instead of skipped.
    /// Absent from checkpoints written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<String>,
    /// The SHA-256 (hex) of the chain's previous checkpoint in its
    /// canonical form ([`Checkpoint::digest`]), so that altering a
    /// checkpoint after its successor was written is detected
    /// (`checkpoints verify`: `hash_mismatch`). `None` for a chain's first
    /// checkpoint and in checkpoints written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_sha256: Option<String>,
    /// Manifests only: this entry stands for that many consecutive
    /// checkpoints that named no file (see [`Checkpoint::names_no_file`]),
    /// merged by compaction (offsets, counts summed; resolved, writer, time
    /// and last message of the last one). Never in a checkpoint object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<u64>,
}

impl Checkpoint {
    /// Path of this checkpoint relative to the archive root.
    pub fn path(&self) -> String {
        layout::checkpoint_path(&self.table, self.partition, self.first_offset)
    }

    /// Whether it names no file: no segment, no delete file, no key filter,
    /// no archived row and no transaction left open. Runs of such
    /// checkpoints (idle time: resolved timestamps only) are what a
    /// manifest merges into one entry.
    pub fn names_no_file(&self) -> bool {
        self.segment.is_none()
            && self.deletes.is_none()
            && self.key_filter.is_none()
            && self.open_tail_xid.is_none()
            && self.counts.rows_archived == 0
            && self.min_updated.is_none()
            && self.max_updated.is_none()
    }

    /// SHA-256 (hex) of its canonical form: the compact JSON of every field
    /// as this version serialises it (fields added later are left out
    /// while unset, so the digest of a checkpoint does not change with the
    /// reader's version). What its successor records as
    /// [`Checkpoint::previous_sha256`].
    pub fn digest(&self) -> String {
        sha256_hex(&serde_json::to_vec(self).expect("a checkpoint always serialises"))
    }

    /// How many checkpoints it stands for (1 unless [`Checkpoint::merged`]).
    pub fn checkpoint_count(&self) -> u64 {
        self.merged.unwrap_or(1)
    }

    /// Pretty JSON, as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a checkpoint always serialises")
    }
}

/// The current time as RFC 3339 (UTC, milliseconds).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The fingerprint of a Kafka message: FNV-1a (64 bits) over the key's and
/// the value's lengths and bytes, as 16 hex digits. Not a checksum against
/// tampering: it tells one topic's message at an offset from another's.
pub fn message_fingerprint(key: Option<&[u8]>, value: Option<&[u8]>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    };
    for part in [key, value] {
        match part {
            None => eat(&[0xff; 8]),
            Some(b) => {
                eat(&(b.len() as u64).to_be_bytes());
                eat(b);
            }
        }
    }
    format!("{h:016x}")
}
