//! A partition's idle progress (`<table>/progress/p<partition>.json`): one
//! object per partition, replaced in place, that lets the resolved
//! timestamp advance through offsets holding nothing but resolved
//! messages without adding a checkpoint per `resolved_checkpoint_interval`
//! to the chain (8,640 objects per partition per idle day before).
//!
//! Guarantee: an [`IdleProgress`] states that offsets
//! `base_last_offset + 1 ..= last_offset` of its partition hold resolved
//! messages only (no row, delete, unmarked row or quarantined message),
//! the last of them `resolved`. Kafka's records are immutable, so the
//! statement stays true whoever wrote it and whenever; it vouches for the
//! watermark only while `base_last_offset` is inside the partition's chain
//! (every offset up to it archived), which [`raise`] checks. A stale
//! object (an older writer's, one the chain has since passed) can only
//! make the watermark lower than it could be, never claim an unarchived
//! change. The chain itself is unchanged: the next checkpoint still starts
//! at the chain's end + 1 and covers the idle range, and the sink writes a
//! real checkpoint once the range's resolved timestamp is
//! `idle_checkpoint_interval` past the chain's, so a restart
//! never has to resume from offsets Kafka's retention may have removed.
//!
//! Format: written since format 1 archives gained it (readers before it
//! ignore the object and see the watermark the chain alone gives).

use cdc_common::storage::ArchiveStore;
use cdc_types::Hlc;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::storage;
use crate::store::{get_bytes, parse};
use crate::{layout, Checkpoint, CheckpointError, FORMAT_VERSION};

/// A partition's progress through resolved-only offsets past its chain.
///
/// Unknown fields are ignored (a later version may add some), and an
/// object that does not parse is treated as absent by the watermark: it is
/// optional, and without it the chain alone gives a lower, still true,
/// watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleProgress {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Archive table.
    pub table: String,
    /// Kafka topic (the chain's: an object written for another topic's
    /// offsets is not counted).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The topic's partition count, as the broker stated it after
    /// `resolved` was read (the watermark waits for all of them).
    pub partitions: i32,
    /// The last offset of the chain's checkpoint this range follows.
    pub base_last_offset: i64,
    /// The last offset of the range (a resolved message).
    pub last_offset: i64,
    /// The latest resolved timestamp in the range.
    pub resolved: Hlc,
    /// Resolved messages in the range.
    pub resolved_messages: u64,
    /// The sink instance that wrote it.
    pub writer_id: String,
    /// When it was written (RFC 3339).
    pub written_at: String,
}

impl IdleProgress {
    /// Whether this progress may raise the resolved timestamp of a chain
    /// whose latest checkpoint is `latest`: same table, topic and
    /// partition, a known format, and a range that starts inside the chain.
    pub fn extends(&self, latest: &Checkpoint) -> bool {
        self.format_version == FORMAT_VERSION
            && self.table == latest.table
            && self.topic == latest.topic
            && self.partition == latest.partition
            && self.last_offset > self.base_last_offset
            && self.base_last_offset <= latest.last_offset
    }
}

/// The resolved timestamp a partition's chain vouches for, raised by its
/// idle progress when that [`IdleProgress::extends`] the chain. Pure.
pub fn raise(latest: &Checkpoint, idle: Option<&IdleProgress>) -> Option<Hlc> {
    match idle.filter(|i| i.extends(latest)) {
        Some(i) => Some(latest.resolved.map_or(i.resolved, |r| r.max(i.resolved))),
        None => latest.resolved,
    }
}

/// Replaces the partition's idle progress object (a plain put: the
/// statement it makes is true whoever writes it; see the module notes).
pub async fn write_idle_progress(
    store: &ArchiveStore,
    progress: &IdleProgress,
) -> Result<(), CheckpointError> {
    let path = store.path(&layout::progress_path(&progress.table, progress.partition));
    let body = serde_json::to_vec_pretty(progress).expect("progress always serialises");
    store
        .store
        .put(&path, PutPayload::from(body))
        .await
        .map_err(storage("put", &path))?;
    Ok(())
}

/// Reads the partition's idle progress, `None` if there is none
/// ([`CheckpointError::Malformed`] if it does not parse).
pub async fn read_idle_progress(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Option<IdleProgress>, CheckpointError> {
    let path = store.path(&layout::progress_path(table, partition));
    match get_bytes(store, &path).await? {
        Some(b) => Ok(Some(parse(&path, &b)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(last: i64, resolved: Option<Hlc>) -> Checkpoint {
        Checkpoint {
            resolved,
            ..crate::fixtures::checkpoint("t", 1, 0, last)
        }
    }

    fn idle(base: i64, last: i64, resolved: Hlc) -> IdleProgress {
        IdleProgress {
            format_version: FORMAT_VERSION,
            table: "t".into(),
            topic: "t".into(),
            partition: 1,
            partitions: 2,
            base_last_offset: base,
            last_offset: last,
            resolved,
            resolved_messages: 3,
            writer_id: "w".into(),
            written_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn raises_only_from_inside_the_chain() {
        let (r5, r9) = (Hlc::new(5, 0), Hlc::new(9, 0));
        let c = checkpoint(10, Some(r5));
        assert_eq!(raise(&c, None), Some(r5));
        // Follows the chain's end: raises.
        assert_eq!(raise(&c, Some(&idle(10, 20, r9))), Some(r9));
        // Follows an earlier checkpoint end (the chain has since grown):
        // still a true statement; never lowers what the chain says.
        assert_eq!(raise(&c, Some(&idle(4, 8, r9))), Some(r9));
        assert_eq!(
            raise(&checkpoint(10, Some(r9)), Some(&idle(4, 8, r5))),
            Some(r9)
        );
        assert_eq!(
            raise(&checkpoint(10, None), Some(&idle(10, 12, r5))),
            Some(r5)
        );
        // Starts past the chain's end: offsets in between are not archived.
        assert_eq!(raise(&c, Some(&idle(11, 20, r9))), Some(r5));
        // Another partition's, another table's, an empty range, an unknown format.
        let mut other = idle(10, 20, r9);
        other.partition = 0;
        assert_eq!(raise(&c, Some(&other)), Some(r5));
        let mut other = idle(10, 20, r9);
        other.table = "u".into();
        assert_eq!(raise(&c, Some(&other)), Some(r5));
        let mut other = idle(10, 20, r9);
        other.topic = "t_2".into();
        assert_eq!(raise(&c, Some(&other)), Some(r5));
        assert_eq!(raise(&c, Some(&idle(10, 10, r9))), Some(r5));
        let mut other = idle(10, 20, r9);
        other.format_version = FORMAT_VERSION + 1;
        assert_eq!(raise(&c, Some(&other)), Some(r5));
    }
}
