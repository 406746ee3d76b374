//! The on-call engineer's view of an archive (`cdc-archiver checkpoints`):
//! what each partition's chain holds ([`list`]), one checkpoint with the
//! actual state of the files it names ([`show`]), and a full re-read of a
//! table's archive ([`verify`]), and one run's deletes reconciled with the
//! archive ([`audit`]). Read-only, except that an audit stores its own
//! report ([`record_audit`]).
//!
//! Guarantee: a damaged archive is reported, never papered over. Every
//! checkpoint is read on its own (a gap or an overlap does not hide the
//! rest of the chain), and each gap, overlap, unreadable checkpoint,
//! missing or altered segment or delete file, orphan, unpurged old
//! checkpoint and partition the watermark does not cover is one
//! [`Finding`]. `verify` reads one segment at a time, so its memory is
//! bounded by the largest segment, not by the archive.

mod audit;
mod list;
mod verify;

use cdc_checkpoint::{layout, Checkpoint, CheckpointError};
use cdc_common::storage::ArchiveStore;
use futures::StreamExt;
use object_store::ObjectStore;
use serde::Serialize;

pub use audit::{audit, record_audit, AuditReport, AuditedCheckpoint, AUDIT_FORMAT_VERSION};
pub use list::{list, show, ListOptions, PartitionReport, ShowReport, TableReport};
pub use verify::{verify, VerifyReport};

/// One thing wrong with (or worth a look in) an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The partition, when the finding belongs to one.
    pub partition: Option<i32>,
    /// What kind: `gap`, `overlap`, `unreadable_checkpoint`,
    /// `segment_missing`, `segment_corrupt`, `segment_mismatch`,
    /// `unusable_manifest`, `manifest_mismatch`, `manifest_hash_mismatch`,
    /// `hash_mismatch`, `orphan`, `unpurged`, `not_covered`.
    pub kind: &'static str,
    /// What exactly, with paths and offsets.
    pub detail: String,
}

/// A partition's chain as readers see it (the newest manifest's entries,
/// then the checkpoint objects after it; every object when there is no
/// usable manifest), in offset order, and the findings of reading it:
/// every checkpoint object read on its own (unreadable ones), each object
/// the manifest holds checked against its entry, an unusable manifest, and
/// each gap or overlap between neighbours (all of them, not only the
/// first).
pub(crate) async fn checkpoints_of(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<(Vec<Checkpoint>, Vec<Finding>), CheckpointError> {
    let (objects, mut findings) = checkpoint_objects(store, table, partition).await?;
    let manifest = match cdc_checkpoint::newest_manifest(store, table, partition).await {
        Ok(m) => m,
        Err(e @ (CheckpointError::Broken { .. } | CheckpointError::Malformed { .. })) => {
            findings.push(Finding {
                partition: Some(partition),
                kind: "unusable_manifest",
                detail: format!(
                    "{e} (readers refuse this partition's chain: if `checkpoints gc` never ran on it, remove this manifest and the chain is read from its checkpoints again; after a gc the manifest holds checkpoints that exist nowhere else: restore its earlier version from the bucket's versioning, never just remove it)"
                ),
            });
            None
        }
        Err(e) => return Err(e),
    };
    if let Some((previous, sha)) = manifest.as_ref().and_then(|m| {
        m.previous_manifest
            .clone()
            .zip(m.previous_manifest_sha256.clone())
    }) {
        if let Some(bytes) = cdc_checkpoint::get_object(store, &previous).await? {
            let actual = cdc_checkpoint::sha256_hex(&bytes);
            if actual != sha {
                findings.push(Finding {
                    partition: Some(partition),
                    kind: "manifest_hash_mismatch",
                    detail: format!(
                        "{previous} has SHA-256 {actual}, the manifest that superseded it recorded {sha}: it was changed after"
                    ),
                });
            }
        }
    }
    let chain = match manifest {
        None => objects,
        Some(m) => {
            findings.extend(
                objects
                    .iter()
                    .filter(|c| m.represents(c) == Some(false))
                    .map(|c| Finding {
                        partition: Some(partition),
                        kind: "manifest_mismatch",
                        detail: format!("{} differs from its entry in {}", c.path(), m.path()),
                    }),
            );
            let end = m.last_offset;
            m.checkpoints
                .into_iter()
                .chain(objects.into_iter().filter(|c| c.first_offset > end))
                .collect()
        }
    };
    findings.extend(continuity(partition, &chain));
    findings.extend(links(partition, &chain));
    Ok((chain, findings))
}

/// Every checkpoint object of a partition, each read on its own, in
/// offset order, and the unreadable ones as findings.
async fn checkpoint_objects(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<(Vec<Checkpoint>, Vec<Finding>), CheckpointError> {
    let firsts = cdc_checkpoint::list_checkpoints(store, table, partition).await?;
    let read: Vec<(i64, Result<Option<Checkpoint>, CheckpointError>)> =
        futures::stream::iter(firsts)
            .map(|first| async move {
                (
                    first,
                    cdc_checkpoint::read(store, table, partition, first).await,
                )
            })
            .buffered(cdc_checkpoint::READ_CONCURRENCY)
            .collect()
            .await;
    let mut findings = Vec::new();
    let mut checkpoints = Vec::new();
    for (first, r) in read {
        let path = layout::checkpoint_path(table, partition, first);
        match r {
            Ok(Some(c)) if c.first_offset == first && c.partition == partition => {
                checkpoints.push(c)
            }
            Ok(Some(c)) => findings.push(Finding {
                partition: Some(partition),
                kind: "unreadable_checkpoint",
                detail: format!(
                    "{path}: says partition {} first offset {}",
                    c.partition, c.first_offset
                ),
            }),
            Ok(None) => {}
            Err(e @ CheckpointError::Malformed { .. }) => findings.push(Finding {
                partition: Some(partition),
                kind: "unreadable_checkpoint",
                detail: format!("{path}: {e}"),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok((checkpoints, findings))
}

/// Each gap or overlap between neighbouring checkpoints (sorted by first
/// offset). Pure.
pub fn continuity(partition: i32, checkpoints: &[Checkpoint]) -> Vec<Finding> {
    checkpoints
        .windows(2)
        .filter_map(|w| {
            let (prev, next) = (&w[0], &w[1]);
            let expected = prev.last_offset + 1;
            let kind = match next.first_offset.cmp(&expected) {
                std::cmp::Ordering::Equal => return None,
                std::cmp::Ordering::Greater => "gap",
                std::cmp::Ordering::Less => "overlap",
            };
            Some(Finding {
                partition: Some(partition),
                kind,
                detail: format!(
                    "{} ends at offset {}, {} starts at {}",
                    prev.path(),
                    prev.last_offset,
                    next.path(),
                    next.first_offset
                ),
            })
        })
        .collect()
}

/// Each checkpoint whose recorded predecessor digest
/// (`previous_sha256`) is not its predecessor's digest: one of the two was
/// altered after the later one was written. Links from checkpoints written
/// before digests existed, and the link after a manifest's merged run, are
/// not checked. Pure.
pub fn links(partition: i32, checkpoints: &[Checkpoint]) -> Vec<Finding> {
    checkpoints
        .windows(2)
        .filter_map(|w| {
            let (prev, next) = (&w[0], &w[1]);
            let recorded = next.previous_sha256.as_deref()?;
            if prev.merged.is_some() || next.first_offset != prev.last_offset + 1 {
                return None;
            }
            let actual = prev.digest();
            (recorded != actual).then(|| Finding {
                partition: Some(partition),
                kind: "hash_mismatch",
                detail: format!(
                    "{} records {recorded} as its predecessor's SHA-256, {} hashes to {actual}: one of them was altered after it was written",
                    next.path(),
                    prev.path()
                ),
            })
        })
        .collect()
}

/// Tables in the archive: the top-level folders that hold checkpoints.
pub async fn tables(store: &ArchiveStore) -> Result<Vec<String>, CheckpointError> {
    let listing = store
        .store
        .list_with_delimiter(None)
        .await
        .map_err(|source| CheckpointError::Storage {
            op: "list",
            path: store.url.clone(),
            source,
        })?;
    let mut out = Vec::new();
    for p in listing.common_prefixes {
        let Some(name) = p.filename().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('_') {
            continue;
        }
        if !cdc_checkpoint::partitions(store, &name).await?.is_empty() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(first: i64, last: i64) -> Checkpoint {
        cdc_checkpoint::fixtures::checkpoint("t", 0, first, last)
    }

    #[test]
    fn an_altered_predecessor_breaks_its_link() {
        let mut chain = vec![cp(0, 9), cp(10, 19), cp(20, 29)];
        chain[1].previous_sha256 = Some(chain[0].digest());
        chain[2].previous_sha256 = Some(chain[1].digest());
        assert!(links(0, &chain).is_empty());
        chain[1].counts.rows_archived = 1;
        let f = links(0, &chain);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, "hash_mismatch");
        assert!(f[0].detail.contains(&chain[1].path()));
        // The first link still holds: the change is after it.
        chain[0].writer_id = "other".into();
        assert_eq!(links(0, &chain).len(), 2);
    }

    #[test]
    fn every_gap_and_overlap_is_a_finding() {
        let chain = [cp(0, 9), cp(10, 19), cp(25, 30), cp(28, 40), cp(41, 50)];
        let f = continuity(0, &chain);
        let kinds: Vec<&str> = f.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, ["gap", "overlap"]);
        assert!(f[0].detail.contains("ends at offset 19") && f[0].detail.contains("starts at 25"));
        assert!(continuity(0, &chain[..2]).is_empty());
        assert!(continuity(0, &[]).is_empty());
    }
}
