//! The purger's record of what it did for one checkpoint
//! (`<table>/purged/p<partition>/<first:020>.json`), stored with a
//! conditional create: an existing record means the checkpoint was already
//! purged, which is idempotent, not an error.

use std::collections::BTreeSet;

use cdc_common::storage::ArchiveStore;
use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};

use crate::error::storage;

use crate::store::{create_new, create_object, parse, read_json};
use crate::{layout, CheckpointError};

/// What the purger did for one checkpoint (`<table>/purged/p<partition>/<first:020>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRecord {
    /// Always [`FORMAT_VERSION`](crate::FORMAT_VERSION).
    pub format_version: u32,
    /// Archive table.
    pub table: String,
    /// Partition.
    pub partition: i32,
    /// First offset of the purged checkpoint (names the record).
    pub first_offset: i64,
    /// Last offset of the purged checkpoint.
    pub last_offset: i64,
    /// The checkpoint's segment path (`None` for a segment-less checkpoint).
    pub segment: Option<String>,
    /// Rows deleted from the source table.
    pub deleted: u64,
    /// Rows already gone from the source.
    pub already_gone: u64,
    /// Rows that changed since they were archived (kept).
    pub skipped_changed: u64,
    /// Rows no longer marked archived (kept).
    pub skipped_unmarked: u64,
    /// Rows a child table still referenced (`NO ACTION`/`RESTRICT` foreign
    /// key): kept, and re-touched for a later run. Absent from records
    /// written before this field existed (such rows failed the purge then).
    #[serde(default)]
    pub skipped_referenced: u64,
    /// Keys whose latest archived event carries no version (kept). Records
    /// written before this field existed counted them in `skipped_changed`.
    #[serde(default)]
    pub skipped_no_version: u64,
    /// Keys kept because their archived version was written by the source
    /// transaction the checkpoint ends inside (`open_tail_xid`): a later
    /// version from that transaction may be in the next checkpoint.
    #[serde(default)]
    pub skipped_open_transaction: u64,
    /// Keys kept because their archived 64-bit PostgreSQL xid is too far
    /// (2^31 or more) from the server's current xid for the 32-bit `xmin`
    /// comparison to be trusted, or is ahead of it.
    #[serde(default)]
    pub skipped_xid_too_old: u64,
    /// Segment rows that are older versions or redelivered duplicates of a
    /// key whose latest version in the same segment was the one purged.
    /// With these, `deleted + already_gone + skipped_* + superseded` equals
    /// the segment's rows.
    #[serde(default)]
    pub superseded: u64,
    /// Always false for a stored record (dry runs store nothing).
    pub dry_run: bool,
    /// The purger instance.
    pub purger_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
}

impl PurgeRecord {
    /// Path relative to the archive root.
    pub fn path(&self) -> String {
        layout::purged_path(&self.table, self.partition, self.first_offset)
    }

    /// Whether this is the record of `cp`: same partition, offsets and
    /// segment. A record at `cp`'s first offset that is not (a checkpoint
    /// a rewind superseded, purged by a purge that ran during the rewind)
    /// says nothing about `cp`.
    pub fn describes(&self, cp: &crate::Checkpoint) -> bool {
        self.table == cp.table
            && self.partition == cp.partition
            && self.first_offset == cp.first_offset
            && self.last_offset == cp.last_offset
            && self.segment.as_deref() == cp.segment.as_ref().map(|s| s.path.as_str())
    }

    /// Every segment row this record accounts for: deleted, already gone,
    /// skipped (any reason) or superseded. Equals the segment's `rows` for a
    /// record that has the per-reason fields (older records did not count
    /// superseded rows).
    pub fn accounted_rows(&self) -> u64 {
        self.deleted
            + self.already_gone
            + self.skipped_changed
            + self.skipped_unmarked
            + self.skipped_referenced
            + self.skipped_no_version
            + self.skipped_open_transaction
            + self.skipped_xid_too_old
            + self.superseded
    }
}

/// Outcome of [`write_purge_record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeWrite {
    /// This record is now stored (or an identical one was).
    Written,
    /// A different record already exists: the checkpoint was already purged.
    AlreadyPurged(Box<PurgeRecord>),
}

/// Stores a purge record with a conditional create. An existing record
/// means the checkpoint was already purged: idempotent, not an error.
pub async fn write_purge_record(
    store: &ArchiveStore,
    record: &PurgeRecord,
) -> Result<PurgeWrite, CheckpointError> {
    let relative = record.path();
    let body = serde_json::to_vec_pretty(record).expect("a purge record always serialises");
    match create_object(store, &relative, body).await? {
        Ok(_) => Ok(PurgeWrite::Written),
        Err(existing) => Ok(PurgeWrite::AlreadyPurged(Box::new(parse(
            &store.path(&relative),
            &existing,
        )?))),
    }
}

/// Stores what replay `replay_id` did for a checkpoint as
/// `<table>/replays/<replay-id>/p<partition>/<first>.json`, with a
/// conditional create (an identical existing object is success; another
/// one a [`CheckpointError::Conflict`]). The checkpoint's own purge record
/// is left as it is.
pub async fn write_replay_record(
    store: &ArchiveStore,
    replay_id: &str,
    record: &PurgeRecord,
) -> Result<String, CheckpointError> {
    let relative = layout::replay_record_path(
        &record.table,
        replay_id,
        record.partition,
        record.first_offset,
    );
    let body = serde_json::to_vec_pretty(record).expect("a purge record always serialises");
    create_new(store, &relative, body).await?;
    Ok(relative)
}

/// Reads the purge record of the checkpoint starting at `first_offset`.
pub async fn read_purge_record(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    first_offset: i64,
) -> Result<Option<PurgeRecord>, CheckpointError> {
    read_json(store, &layout::purged_path(table, partition, first_offset)).await
}

/// First offsets of the checkpoints of `partition` that have a purge
/// record; with `after`, only those named after it (one listing that starts
/// after its name, S3 `start-after`, instead of all of them).
pub async fn purged_firsts(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    after: Option<i64>,
) -> Result<BTreeSet<i64>, CheckpointError> {
    let prefix = store.path(&layout::purged_dir(table, partition));
    let listed: Result<Vec<ObjectMeta>, _> = match after {
        Some(a) => {
            let offset = store.path(&layout::purged_path(table, partition, a));
            store
                .store
                .list_with_offset(Some(&prefix), &offset)
                .try_collect()
                .await
        }
        None => store.store.list(Some(&prefix)).try_collect().await,
    };
    let listed = match listed {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(storage("list", &prefix)(e)),
    };
    Ok(listed
        .iter()
        .filter_map(|m| layout::parse_checkpoint_name(m.location.as_ref()))
        .filter(|f| after.is_none_or(|a| *f > a))
        .collect())
}
