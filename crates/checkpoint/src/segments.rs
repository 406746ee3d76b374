//! Segments and delete files: trusted only if a checkpoint names them and
//! their size and sha256 match ([`verify_segment`], [`verify_deletes`]).
//! Objects no checkpoint names are orphans, never trusted; only those whose
//! offsets the verified chain already covers are ever cleaned, never one
//! beyond the chain end, whatever its age, and never one that a checkpoint
//! superseded by a rewind names (see [`crate::run_rewind`]).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use cdc_common::storage::ArchiveStore;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::error::storage;
use crate::store::{get_bytes, list};
use crate::{
    layout, list_checkpoints, partitions, read, sha256_hex, verify_chain, Checkpoint,
    CheckpointError, DeletesRef, SegmentRef, READ_CONCURRENCY,
};

/// Fetches a segment and checks it against its checkpoint's size and
/// sha256. Only bytes that pass are returned.
pub async fn verify_segment(
    store: &ArchiveStore,
    segment: &SegmentRef,
) -> Result<Bytes, CheckpointError> {
    verify_object(store, &segment.path, segment.size, &segment.sha256).await
}

/// Fetches a checkpoint's delete file and checks its size and sha256
/// (errors as for segments: [`CheckpointError::SegmentMissing`],
/// [`CheckpointError::SegmentCorrupt`]).
pub async fn verify_deletes(
    store: &ArchiveStore,
    deletes: &DeletesRef,
) -> Result<Bytes, CheckpointError> {
    verify_object(store, &deletes.path, deletes.size, &deletes.sha256).await
}

async fn verify_object(
    store: &ArchiveStore,
    relative: &str,
    size: u64,
    sha256: &str,
) -> Result<Bytes, CheckpointError> {
    let path = store.path(relative);
    let bytes = get_bytes(store, &path)
        .await?
        .ok_or_else(|| CheckpointError::SegmentMissing {
            path: relative.to_owned(),
        })?;
    let sha = sha256_hex(&bytes);
    if bytes.len() as u64 != size || sha != sha256 {
        return Err(CheckpointError::SegmentCorrupt {
            path: relative.to_owned(),
            expected: format!("size={size} sha256={sha256}"),
            actual: format!("size={} sha256={sha}", bytes.len()),
        });
    }
    Ok(bytes)
}

/// A segment (or delete file) object that no checkpoint names: never trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// Path relative to the archive root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// When the store last modified it.
    pub last_modified: chrono::DateTime<chrono::Utc>,
    /// Its offset range ends at or before the end of its partition's chain:
    /// other checkpoints already cover those offsets, so no checkpoint can
    /// ever name it (a writer that would is refused by the conditional
    /// create). Only such orphans are ever cleaned. `false`: it lies beyond
    /// the chain end, and may belong to a sink between its upload and its
    /// checkpoint, however old it is.
    pub covered: bool,
}

/// The partition of a segment path `<table>/segments/p<partition>/<name>`
/// (or delete file path `<table>/deletes/p<partition>/<name>`).
fn segment_partition(relative: &str) -> Option<i32> {
    let mut parts = relative.rsplit('/');
    parts.next()?;
    layout::parse_partition_dir(parts.next()?)
}

/// Per partition: the segments its checkpoints name (checkpoint objects,
/// and the copies in its newest manifest, which may be the only ones left;
/// and, for the whole table, the files of checkpoints a rewind superseded,
/// which a purge may have relied on),
/// and the chain's first and last offsets (`None` when the partition has
/// no checkpoint, or its chain does not verify: then nothing of it counts
/// as covered).
async fn named_segments(
    store: &ArchiveStore,
    table: &str,
) -> Result<(HashSet<String>, BTreeMap<i32, Option<(i64, i64)>>), CheckpointError> {
    let mut named: HashSet<String> = crate::rewind_records(store, table)
        .await?
        .into_iter()
        .flat_map(|r| r.files)
        .collect();
    let mut ends = BTreeMap::new();
    for p in partitions(store, table).await? {
        let firsts = list_checkpoints(store, table, p).await?;
        let checkpoints: Vec<Option<Checkpoint>> = futures::stream::iter(firsts)
            .map(|first| read(store, table, p, first))
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let objects: Vec<Checkpoint> = checkpoints.into_iter().flatten().collect();
        // A manifest that does not read names nothing and covers nothing
        // (the partition's end is then unknown: no orphan is "covered").
        let manifest = crate::newest_manifest(store, table, p).await;
        let copies = match &manifest {
            Ok(Some(m)) => m.checkpoints.as_slice(),
            _ => &[],
        };
        named.extend(objects.iter().chain(copies).flat_map(|c| {
            c.segment
                .as_ref()
                .map(|s| s.path.clone())
                .into_iter()
                .chain(c.deletes.as_ref().map(|d| d.path.clone()))
        }));
        // The chain as readers see it, from what was just read (no second
        // read): the manifest's copies, then the objects after it.
        let after = copies.last().map_or(i64::MIN, |c| c.last_offset);
        let chain: Vec<Checkpoint> = copies
            .iter()
            .cloned()
            .chain(objects.into_iter().filter(|c| c.first_offset > after))
            .collect();
        let end = match (&manifest, verify_chain(table, p, &chain)) {
            (Ok(_), Ok(())) => chain
                .first()
                .zip(chain.last())
                .map(|(a, b)| (a.first_offset, b.last_offset)),
            _ => None,
        };
        ends.insert(p, end);
    }
    Ok((named, ends))
}

/// Segments under `<table>/segments/` and delete files under
/// `<table>/deletes/` that no checkpoint names (left by a crash between
/// upload and checkpoint, or by a zombie writer), each with whether its
/// offsets are already covered by the chain ([`Orphan::covered`]).
pub async fn orphans(store: &ArchiveStore, table: &str) -> Result<Vec<Orphan>, CheckpointError> {
    let (named, ends) = named_segments(store, table).await?;
    let mut objects = list(store, &layout::segments_root(table)).await?;
    objects.extend(list(store, &layout::deletes_root(table)).await?);
    let mut out: Vec<Orphan> = objects
        .into_iter()
        .filter_map(|m| {
            let path = store.relative(&m.location);
            let (first, last) = layout::parse_segment_name(&path)?;
            if named.contains(&path) {
                return None;
            }
            let span = segment_partition(&path).and_then(|p| ends.get(&p).copied().flatten());
            Some(Orphan {
                // Inside the chain: a segment before its start is not
                // covered by it (a chain that starts late may have lost its
                // beginning), nor one past its end.
                covered: span.is_some_and(|(start, end)| first >= start && last <= end),
                path,
                size: m.size,
                last_modified: m.last_modified,
            })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Deletes the orphans that are [`Orphan::covered`] by their partition's
/// (verified) chain and older than `grace`. An orphan beyond the chain end
/// is never deleted, whatever its age: it may belong to a sink stalled
/// between its upload and its checkpoint, which would then write a
/// checkpoint naming a missing segment. Returns what was deleted.
pub async fn clean_orphans(
    store: &ArchiveStore,
    table: &str,
    grace: Duration,
) -> Result<Vec<Orphan>, CheckpointError> {
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut deleted = Vec::new();
    for o in orphans(store, table).await? {
        if o.covered && o.last_modified <= cutoff {
            let path = store.path(&o.path);
            match store.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted.push(o),
                Err(e) => return Err(storage("delete", &path)(e)),
            }
        }
    }
    Ok(deleted)
}
