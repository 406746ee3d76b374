//! Manifests (`<table>/manifests/p<partition>/<last:020>-<tail_first:020>.json`): a
//! partition's chain from its start up to `last_offset`, the checkpoints
//! copied verbatim into one object, so that a reader fetches one manifest
//! and then only the checkpoints after it, instead of every checkpoint of
//! the chain's history.
//!
//! Guarantee: a manifest is written only from a chain read and verified
//! contiguous ([`crate::read_chain`]), with a conditional create that never
//! overwrites (checkpoints never change, so two compactions of the same
//! prefix write the same bytes). Readers use the newest manifest only after
//! checking it is this partition's, of a known format, contiguous and
//! named by its last offset; the checkpoints after it are listed with
//! `list_with_offset` (S3 `start-after`) and the whole chain is verified
//! contiguous again. Writing a manifest is an explicit command
//! (`cdc-archiver checkpoints compact --yes`), never a side effect of a
//! read; the checkpoint objects it copies stay where they are.

use cdc_common::storage::ArchiveStore;
use serde::{Deserialize, Serialize};

use crate::store::{create_object, get_bytes, list, parse};
use crate::{layout, verify_chain, Checkpoint, CheckpointError, Created, FORMAT_VERSION};

/// A partition's chain up to `last_offset`, in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Archive table.
    pub table: String,
    /// Partition.
    pub partition: i32,
    /// First offset of the chain.
    pub first_offset: i64,
    /// Last offset covered (names the object).
    pub last_offset: i64,
    /// The chain's checkpoints, in offset order, as stored. (Nothing else:
    /// a manifest is a function of the chain prefix it copies, so two
    /// compactions of one prefix write the same bytes.)
    pub checkpoints: Vec<Checkpoint>,
}

impl Manifest {
    /// A manifest of `checkpoints` (a verified chain, not empty).
    pub fn of(table: &str, partition: i32, checkpoints: Vec<Checkpoint>) -> Self {
        Manifest {
            format_version: FORMAT_VERSION,
            table: table.to_owned(),
            partition,
            first_offset: checkpoints.first().map_or(0, |c| c.first_offset),
            last_offset: checkpoints.last().map_or(-1, |c| c.last_offset),
            checkpoints,
        }
    }

    /// Its path relative to the archive root.
    pub fn path(&self) -> String {
        layout::manifest_path(
            &self.table,
            self.partition,
            self.last_offset,
            self.tail_first(),
        )
    }

    /// The first offset of its last checkpoint.
    pub fn tail_first(&self) -> i64 {
        self.checkpoints.last().map_or(-1, |c| c.first_offset)
    }

    /// Checks that the manifest read at `path` is usable for
    /// `table`/`partition`: known format, not empty, its own first and last
    /// offsets, named by its last offset, and contiguous.
    fn check(
        &self,
        table: &str,
        partition: i32,
        (named_last, named_first): (i64, i64),
    ) -> Result<(), CheckpointError> {
        let path = layout::manifest_path(table, partition, named_last, named_first);
        let broken = |reason: String| CheckpointError::Broken {
            table: table.to_owned(),
            partition,
            previous: path.clone(),
            next: path.clone(),
            reason,
        };
        if self.format_version != FORMAT_VERSION {
            return Err(broken(format!(
                "manifest format_version {} is not {FORMAT_VERSION}",
                self.format_version
            )));
        }
        let (Some(first), Some(last)) = (self.checkpoints.first(), self.checkpoints.last()) else {
            return Err(broken("an empty manifest".into()));
        };
        if self.table != table
            || self.partition != partition
            || first.first_offset != self.first_offset
            || last.last_offset != self.last_offset
            || self.last_offset != named_last
            || last.first_offset != named_first
        {
            return Err(broken(format!(
                "manifest says table {:?} partition {} offsets {}..={}, its checkpoints {}..={}",
                self.table,
                self.partition,
                self.first_offset,
                self.last_offset,
                first.first_offset,
                last.last_offset
            )));
        }
        verify_chain(table, partition, &self.checkpoints)
    }
}

/// Writes `manifest`, never overwriting: an identical existing one is
/// success ([`Created::AlreadyThere`]), a different one a
/// [`CheckpointError::Conflict`].
pub async fn write_manifest(
    store: &ArchiveStore,
    manifest: &Manifest,
) -> Result<Created, CheckpointError> {
    let body = serde_json::to_vec(manifest).expect("a manifest always serialises");
    match create_object(store, &manifest.path(), body).await? {
        Ok(created) => Ok(created),
        Err(_) => Err(CheckpointError::Conflict {
            path: manifest.path(),
            existing_writer: None,
        }),
    }
}

/// From the newest manifest's name alone: the last offset it covers and
/// the first offset of its last checkpoint; `None` if it has none.
/// Checkpoints named after the last offset are the chain's tail.
pub async fn newest_manifest_end(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Option<(i64, i64)>, CheckpointError> {
    Ok(list(store, &layout::manifests_dir(table, partition))
        .await?
        .iter()
        .filter_map(|m| layout::parse_manifest_name(m.location.as_ref()))
        .max())
}

/// The newest manifest of a partition, checked (see [`Manifest`]), or
/// `None` if it has none.
pub async fn newest_manifest(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Option<Manifest>, CheckpointError> {
    let Some(named) = newest_manifest_end(store, table, partition).await? else {
        return Ok(None);
    };
    let path = store.path(&layout::manifest_path(table, partition, named.0, named.1));
    let Some(bytes) = get_bytes(store, &path).await? else {
        return Ok(None);
    };
    let manifest: Manifest = parse(&path, &bytes)?;
    manifest.check(table, partition, named)?;
    Ok(Some(manifest))
}

/// The manifest that would cover a partition's whole chain now, if the
/// chain has checkpoints its newest manifest does not cover (`None`
/// otherwise): what `checkpoints compact` writes. Reads the chain the way
/// every reader does (newest manifest, then the tail) and verifies it.
pub async fn plan_manifest(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Option<Manifest>, CheckpointError> {
    let covered = newest_manifest(store, table, partition)
        .await?
        .map(|m| m.last_offset);
    let chain = crate::read_chain(store, table, partition).await?;
    match chain.end() {
        Some(end) if covered.is_none_or(|c| end > c) => {
            Ok(Some(Manifest::of(table, partition, chain.checkpoints)))
        }
        _ => Ok(None),
    }
}
