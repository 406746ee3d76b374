//! A partition's chain: its newest manifest, then its checkpoints listed
//! by name after it, read, and verified contiguous. A chain read by [`read_chain`] is contiguous, each
//! checkpoint starting exactly at the previous one's `last_offset + 1` and
//! matching its name, or the read fails with [`CheckpointError::Broken`].

use cdc_common::storage::ArchiveStore;
use cdc_types::Hlc;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;

use crate::error::storage;
use crate::store::{get_bytes, list, parse};
use crate::{layout, read, Checkpoint, CheckpointError, FORMAT_VERSION};

/// First offsets of the checkpoints of one partition, sorted.
pub async fn list_checkpoints(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Vec<i64>, CheckpointError> {
    let mut firsts: Vec<i64> = list(store, &layout::checkpoints_dir(table, partition))
        .await?
        .iter()
        .filter_map(|m| layout::parse_checkpoint_name(m.location.as_ref()))
        .collect();
    firsts.sort_unstable();
    Ok(firsts)
}

/// A partition's checkpoints, sorted and verified contiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Archive table.
    pub table: String,
    /// Partition.
    pub partition: i32,
    /// The checkpoints in offset order.
    pub checkpoints: Vec<Checkpoint>,
    /// From the newest manifest: every checkpoint that names a segment and
    /// ends at or before this offset was purged (its purge record exists;
    /// see [`crate::Manifest::purged_through`]).
    pub purged_through: Option<i64>,
}

impl Chain {
    /// The last archived offset, `None` for an empty chain.
    pub fn end(&self) -> Option<i64> {
        self.checkpoints.last().map(|c| c.last_offset)
    }

    /// The first offset of the chain.
    pub fn start(&self) -> Option<i64> {
        self.checkpoints.first().map(|c| c.first_offset)
    }

    /// The last checkpoint.
    pub fn last(&self) -> Option<&Checkpoint> {
        self.checkpoints.last()
    }

    /// Whether the newest manifest records `c` (a checkpoint of this chain)
    /// as purged, so that its purge record need not be read.
    pub fn folded(&self, c: &Checkpoint) -> bool {
        self.purged_through.is_some_and(|t| c.last_offset <= t)
    }

    /// The latest resolved timestamp recorded in the chain.
    pub fn resolved(&self) -> Option<Hlc> {
        self.checkpoints.iter().rev().find_map(|c| c.resolved)
    }
}

/// Checks that `checkpoints` (sorted by first offset, read from `table`/p`partition`)
/// form a chain. Pure; [`read_chain`] calls it.
pub fn verify_chain(
    table: &str,
    partition: i32,
    checkpoints: &[Checkpoint],
) -> Result<(), CheckpointError> {
    let broken = |prev: &Checkpoint, next: &Checkpoint, reason: String| CheckpointError::Broken {
        table: table.to_owned(),
        partition,
        previous: prev.path(),
        next: next.path(),
        reason,
    };
    for c in checkpoints {
        if c.table != table || c.partition != partition || c.last_offset < c.first_offset {
            return Err(broken(
                c,
                c,
                format!(
                    "checkpoint says table {:?} partition {} offsets {}..={}",
                    c.table, c.partition, c.first_offset, c.last_offset
                ),
            ));
        }
        if c.format_version != FORMAT_VERSION {
            return Err(broken(
                c,
                c,
                format!("unsupported format_version {}", c.format_version),
            ));
        }
    }
    for pair in checkpoints.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        if next.first_offset != prev.last_offset + 1 {
            let what = if next.first_offset > prev.last_offset + 1 {
                "gap"
            } else {
                "overlap"
            };
            return Err(broken(
                prev,
                next,
                format!(
                    "{what}: previous ends at {}, next starts at {}",
                    prev.last_offset, next.first_offset
                ),
            ));
        }
    }
    Ok(())
}

/// How many checkpoint objects [`read_chain`] fetches at once.
pub const READ_CONCURRENCY: usize = 16;

/// Reads the checkpoint named `first` (listed, so it must exist) and checks
/// it matches its name.
async fn read_listed(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    first: i64,
) -> Result<Checkpoint, CheckpointError> {
    let path = store.path(&layout::checkpoint_path(table, partition, first));
    let bytes = get_bytes(store, &path)
        .await?
        .ok_or_else(|| CheckpointError::Storage {
            op: "get",
            path: path.to_string(),
            source: object_store::Error::NotFound {
                path: path.to_string(),
                source: "listed but gone".into(),
            },
        })?;
    let c: Checkpoint = parse(&path, &bytes)?;
    if c.merged.is_some() {
        return Err(CheckpointError::Broken {
            table: table.to_owned(),
            partition,
            previous: path.to_string(),
            next: path.to_string(),
            reason: "a checkpoint object says it merges checkpoints (only manifests do)".into(),
        });
    }
    if c.first_offset != first {
        return Err(CheckpointError::Broken {
            table: table.to_owned(),
            partition,
            previous: path.to_string(),
            next: path.to_string(),
            reason: format!("named {first} but first_offset is {}", c.first_offset),
        });
    }
    Ok(c)
}

/// First offsets of the checkpoints of one partition named after the one
/// that starts at `after`, sorted: a listing that starts after that name
/// (`list_with_offset`, S3 `start-after`), not a full one.
pub async fn list_checkpoints_after(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    after: i64,
) -> Result<Vec<i64>, CheckpointError> {
    let prefix = store.path(&layout::checkpoints_dir(table, partition));
    let offset = store.path(&layout::checkpoint_path(table, partition, after));
    let listed: Vec<object_store::ObjectMeta> = store
        .store
        .list_with_offset(Some(&prefix), &offset)
        .try_collect()
        .await
        .map_err(storage("list", &prefix))?;
    let mut firsts: Vec<i64> = listed
        .iter()
        .filter_map(|m| layout::parse_checkpoint_name(m.location.as_ref()))
        .filter(|f| *f > after)
        .collect();
    firsts.sort_unstable();
    Ok(firsts)
}

/// The partition's newest manifest's checkpoints and purge status, and the
/// first offsets of the checkpoints named after them (all of them without
/// a manifest).
async fn manifest_and_tail(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<(Vec<Checkpoint>, Option<i64>, Vec<i64>), CheckpointError> {
    match crate::newest_manifest(store, table, partition).await? {
        Some(m) => {
            let tail = list_checkpoints_after(store, table, partition, m.last_offset).await?;
            Ok((m.checkpoints, m.purged_through, tail))
        }
        None => Ok((
            Vec::new(),
            None,
            list_checkpoints(store, table, partition).await?,
        )),
    }
}

/// Reads and verifies a partition's chain (empty if it has no checkpoint):
/// the newest manifest's checkpoints, then the checkpoints after it (all of
/// them when there is no manifest), fetched [`READ_CONCURRENCY`] at a time.
/// The result keeps chain (offset) order and any gap or overlap fails the
/// read.
pub async fn read_chain(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Chain, CheckpointError> {
    let (mut checkpoints, purged_through, tail) =
        manifest_and_tail(store, table, partition).await?;
    let tail: Vec<Checkpoint> = futures::stream::iter(tail)
        .map(|first| read_listed(store, table, partition, first))
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    checkpoints.extend(tail);
    verify_chain(table, partition, &checkpoints)?;
    Ok(Chain {
        table: table.to_owned(),
        partition,
        checkpoints,
        purged_through,
    })
}

/// Partitions that have at least one checkpoint, sorted.
pub async fn partitions(store: &ArchiveStore, table: &str) -> Result<Vec<i32>, CheckpointError> {
    let prefix = store.path(&layout::checkpoints_root(table));
    let listing = store
        .store
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(storage("list", &prefix))?;
    let mut parts: Vec<i32> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().and_then(layout::parse_partition_dir))
        .collect();
    parts.sort_unstable();
    Ok(parts)
}

/// Where a partition's chain ends, from object names alone (no read): the
/// first offset of its last checkpoint, and whether that checkpoint is the
/// newest manifest's last (`true`) or one named after it (`false`).
/// `None`: the partition has no checkpoint.
pub async fn head(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Option<(i64, bool)>, CheckpointError> {
    let named = crate::manifest::newest_manifest_end(store, table, partition).await?;
    let tail = match named {
        Some((end, _)) => list_checkpoints_after(store, table, partition, end).await?,
        None => list_checkpoints(store, table, partition).await?,
    };
    Ok(match (tail.last(), named) {
        (Some(&first), _) => Some((first, false)),
        (None, Some((_, tail_first))) => Some((tail_first, true)),
        (None, None) => None,
    })
}

/// The latest checkpoint of a partition (by name; not chain-verified):
/// the last one named after the newest manifest, or else the manifest's
/// last (both found from the manifest's name, without reading it; the
/// manifest's copy only if that checkpoint object is gone).
pub async fn latest(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Option<Checkpoint>, CheckpointError> {
    match head(store, table, partition).await? {
        Some((first, false)) => read(store, table, partition, first).await,
        Some((first, true)) => match read(store, table, partition, first).await? {
            Some(c) => Ok(Some(c)),
            None => Ok(crate::newest_manifest(store, table, partition)
                .await?
                .and_then(|mut m| m.checkpoints.pop())),
        },
        None => Ok(None),
    }
}
