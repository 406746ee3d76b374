//! Manifests (`<table>/manifests/p<partition>/<last:020>-<tail_first:020>.json`): a
//! partition's chain from its start up to `last_offset` in one object, so
//! that a reader fetches one manifest and then only the checkpoints after
//! it, instead of every checkpoint of the chain's history. Checkpoints that
//! name a file are copied verbatim; a run of consecutive checkpoints that
//! name none (idle time) is merged into one entry
//! ([`Checkpoint::merged`]), so a manifest's size follows the archive's
//! files, not its age. The last checkpoint is always copied verbatim (its
//! object is the one `latest` reads, and `gc` keeps it).
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

use crate::store::{create_new, get_bytes, list, parse};
use crate::{layout, verify_chain, Checkpoint, CheckpointError, Counts, Created};

/// The manifest format this crate writes: 3, format 2 (merged runs of
/// checkpoints that name no file) with the purge status of its prefix
/// ([`Manifest::purged_through`]). Formats 1 (every checkpoint verbatim)
/// and 2, written by earlier versions, are read too.
pub const MANIFEST_FORMAT_VERSION: u32 = 3;

/// A partition's chain up to `last_offset`, in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`] (1 in manifests written before merged
    /// runs existed).
    pub format_version: u32,
    /// Archive table.
    pub table: String,
    /// Partition.
    pub partition: i32,
    /// First offset of the chain.
    pub first_offset: i64,
    /// Last offset covered (names the object).
    pub last_offset: i64,
    /// The chain's checkpoints, in offset order: as stored, or merged runs
    /// of checkpoints that name no file.
    pub checkpoints: Vec<Checkpoint>,
    /// Format 3: every checkpoint of this manifest that names a segment and
    /// ends at or before this offset had a purge record when the manifest
    /// was written (purge records are never removed, only moved aside by
    /// a rewind, which moves this manifest too): the purger does not list
    /// or read those records again. `None`: no such prefix (or format 1
    /// and 2, which do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_through: Option<i64>,
    /// Format 3: the manifest this one superseded (the partition's newest
    /// when it was written), relative to the archive root; `None` for a
    /// partition's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_manifest: Option<String>,
    /// Format 3: the SHA-256 of [`Manifest::previous_manifest`]'s bytes: a
    /// later change to it, while it exists (gc removes superseded
    /// manifests), is a `manifest_hash_mismatch` for `checkpoints verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_manifest_sha256: Option<String>,
}

/// Whether `next` may join the merged run that `prev` ends: both name no
/// file and they agree on topic and partition count.
fn mergeable(prev: &Checkpoint, next: &Checkpoint) -> bool {
    prev.names_no_file()
        && next.names_no_file()
        && prev.topic == next.topic
        && prev.partitions == next.partitions
}

/// `prev` and `next` (contiguous, [`mergeable`]) as one entry.
fn merge(prev: Checkpoint, next: Checkpoint) -> Checkpoint {
    let (a, b) = (prev.counts, next.counts);
    Checkpoint {
        first_offset: prev.first_offset,
        counts: Counts {
            events: a.events + b.events,
            rows_archived: 0,
            deletes: a.deletes + b.deletes,
            not_archived: a.not_archived + b.not_archived,
            resolved: a.resolved + b.resolved,
            quarantined: a.quarantined + b.quarantined,
        },
        resolved: next.resolved.or(prev.resolved),
        merged: Some(prev.checkpoint_count() + next.checkpoint_count()),
        // The run's link to what precedes it (the digests inside the run
        // are not kept: the link after a merged run is not checked).
        previous_sha256: prev.previous_sha256,
        ..next
    }
}

/// Merges each run of consecutive checkpoints that name no file into one
/// entry, except the last checkpoint, which stays as stored.
fn merge_runs(checkpoints: Vec<Checkpoint>) -> Vec<Checkpoint> {
    let last = checkpoints.len().saturating_sub(1);
    let mut out: Vec<Checkpoint> = Vec::with_capacity(checkpoints.len());
    for (i, c) in checkpoints.into_iter().enumerate() {
        match out.pop() {
            Some(prev) if i < last && mergeable(&prev, &c) => out.push(merge(prev, c)),
            Some(prev) => out.extend([prev, c]),
            None => out.push(c),
        }
    }
    out
}

impl Manifest {
    /// A manifest of `checkpoints` (a verified chain, not empty), runs of
    /// checkpoints that name no file merged.
    pub fn of(table: &str, partition: i32, checkpoints: Vec<Checkpoint>) -> Self {
        let checkpoints = merge_runs(checkpoints);
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            table: table.to_owned(),
            partition,
            first_offset: checkpoints.first().map_or(0, |c| c.first_offset),
            last_offset: checkpoints.last().map_or(-1, |c| c.last_offset),
            checkpoints,
            purged_through: None,
            previous_manifest: None,
            previous_manifest_sha256: None,
        }
    }

    /// Folds the purge status into the manifest: `purged_through` becomes
    /// the end of the longest prefix whose checkpoints that name a segment
    /// are all `purged` (have their own purge record).
    pub fn with_purged(mut self, purged: impl Fn(&Checkpoint) -> bool) -> Self {
        self.purged_through = self
            .checkpoints
            .iter()
            .take_while(|c| c.segment.is_none() || purged(c))
            .last()
            .map(|c| c.last_offset);
        self
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
        if !(1..=MANIFEST_FORMAT_VERSION).contains(&self.format_version) {
            return Err(broken(format!(
                "manifest format_version {} is not one this version reads (1 to {MANIFEST_FORMAT_VERSION})",
                self.format_version
            )));
        }
        let last_index = self.checkpoints.len().saturating_sub(1);
        if let Some((i, c)) = self.checkpoints.iter().enumerate().find(|(i, c)| {
            c.merged.is_some()
                && (self.format_version < 2
                    || c.merged < Some(2)
                    || !c.names_no_file()
                    || *i == last_index)
        }) {
            return Err(broken(format!(
                "entry {i} ({}) merges {:?} checkpoints: only format 2 merges, only runs of two or more that name no file, never the last",
                c.path(),
                c.merged
            )));
        }
        if self.format_version < 3
            && (self.previous_manifest.is_some() || self.previous_manifest_sha256.is_some())
        {
            return Err(broken(format!(
                "a link to a previous manifest in a format {} manifest (only format 3 has one)",
                self.format_version
            )));
        }
        if let Some(t) = self.purged_through {
            if self.format_version < 3 || t > self.last_offset || t < self.first_offset {
                return Err(broken(format!(
                    "purged_through {t} in a format {} manifest of offsets {}..={} (only format 3 says it, inside its offsets)",
                    self.format_version, self.first_offset, self.last_offset
                )));
            }
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

    /// Whether `object` (a checkpoint object of this partition) is what
    /// this manifest holds for its offsets: `None` when it lies after the
    /// manifest; otherwise whether it is a verbatim entry, or lies inside a
    /// merged entry and, like it, names no file.
    pub fn represents(&self, object: &Checkpoint) -> Option<bool> {
        if object.first_offset > self.last_offset {
            return None;
        }
        let i = self
            .checkpoints
            .partition_point(|e| e.first_offset <= object.first_offset);
        let Some(entry) = i.checked_sub(1).map(|i| &self.checkpoints[i]) else {
            return Some(false);
        };
        Some(match entry.merged {
            None => entry == object,
            Some(_) => {
                object.merged.is_none()
                    && object.last_offset <= entry.last_offset
                    && mergeable(entry, object)
                    // The run's last object: what the entry keeps of it.
                    && (object.last_offset < entry.last_offset
                        || (object.resolved == entry.resolved
                            && object.last_message == entry.last_message
                            && object.writer_id == entry.writer_id
                            && object.created_at == entry.created_at))
            }
        })
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
    create_new(store, &manifest.path(), body).await
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
    // Listed but gone: removed while being read (a gc racing this read),
    // or by hand. Never "no manifest": after a gc its checkpoints may exist
    // nowhere else, and a chain read without it would start late.
    let Some(bytes) = get_bytes(store, &path).await? else {
        return Err(CheckpointError::Storage {
            op: "get",
            path: path.to_string(),
            source: object_store::Error::NotFound {
                path: path.to_string(),
                source: "the newest manifest was listed but is gone; retry".into(),
            },
        });
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
            // Records of checkpoints the newest manifest already folds are
            // not listed again; the others are read, in chain order until
            // the first checkpoint without its own record.
            let after = chain.purged_through;
            let records = crate::purged_firsts(store, table, partition, after).await?;
            let mut own = std::collections::HashSet::new();
            for c in chain.checkpoints.iter().filter(|c| !chain.folded(c)) {
                if c.segment.is_none() {
                    continue;
                }
                let record = match records.contains(&c.first_offset) {
                    true => {
                        crate::read_purge_record(store, table, partition, c.first_offset).await?
                    }
                    false => None,
                };
                if !record.is_some_and(|r| r.describes(c)) {
                    break;
                }
                own.insert(c.first_offset);
            }
            let folded = |c: &Checkpoint| chain.folded(c) || own.contains(&c.first_offset);
            let mut manifest =
                Manifest::of(table, partition, chain.checkpoints.clone()).with_purged(folded);
            // The link to the manifest it supersedes, as stored now.
            if let Some((last, tail_first)) = newest_manifest_end(store, table, partition).await? {
                let previous = layout::manifest_path(table, partition, last, tail_first);
                if let Some(bytes) = crate::get_object(store, &previous).await? {
                    manifest.previous_manifest_sha256 = Some(crate::sha256_hex(&bytes));
                    manifest.previous_manifest = Some(previous);
                }
            }
            Ok(Some(manifest))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SegmentRef;
    use cdc_types::Hlc;

    fn idle(first: i64, resolved: i64) -> Checkpoint {
        Checkpoint {
            counts: Counts {
                events: 10,
                resolved: 1,
                ..Counts::default()
            },
            resolved: Some(Hlc::new(resolved, 0)),
            created_at: format!("2026-01-01T00:00:{:02}Z", first / 10),
            last_message: Some(format!("m{first}")),
            ..crate::fixtures::checkpoint("t", 1, first, first + 9)
        }
    }

    fn with_segment(first: i64) -> Checkpoint {
        Checkpoint {
            segment: Some(SegmentRef::describe(format!("s{first}"), b"x", 1, vec![])),
            counts: Counts {
                events: 10,
                rows_archived: 1,
                ..Counts::default()
            },
            ..crate::fixtures::checkpoint("t", 1, first, first + 9)
        }
    }

    fn shape(m: &Manifest) -> Vec<(i64, i64, Option<u64>)> {
        m.checkpoints
            .iter()
            .map(|c| (c.first_offset, c.last_offset, c.merged))
            .collect()
    }

    #[test]
    fn runs_that_name_no_file_merge_except_the_last() {
        // The topic grew to 3 partitions at offset 60: a run ends there.
        let mut grown = idle(60, 6);
        grown.partitions = 3;
        let mut grown_too = idle(70, 7);
        grown_too.partitions = 3;
        let chain = vec![
            idle(0, 0),
            idle(10, 1),
            with_segment(20),
            idle(30, 3),
            idle(40, 4),
            idle(50, 5),
            grown,
            grown_too,
            idle(80, 8),
        ];
        let m = Manifest::of("t", 1, chain.clone());
        assert_eq!(
            shape(&m),
            [
                (0, 19, Some(2)),
                (20, 29, None),
                (30, 59, Some(3)),
                (60, 79, Some(2)),
                (80, 89, None),
            ]
        );
        let run = &m.checkpoints[2];
        assert_eq!(run.counts.events, 30);
        assert_eq!(run.counts.resolved, 3);
        assert_eq!(run.resolved, Some(Hlc::new(5, 0)));
        assert_eq!(run.last_message.as_deref(), Some("m50"));
        assert_eq!(run.created_at, chain[5].created_at);
        assert_eq!(m.checkpoints[1], chain[2]);
        assert_eq!(m.checkpoints[4], chain[8]);
        assert_eq!(m.tail_first(), 80);
        m.check("t", 1, (89, 80)).unwrap();
        // Compacting the compacted chain again merges nothing new.
        assert_eq!(Manifest::of("t", 1, m.checkpoints.clone()), m);
        // A single checkpoint that names no file is not "merged".
        let one = Manifest::of("t", 1, vec![idle(0, 0), with_segment(10), idle(20, 2)]);
        assert_eq!(shape(&one), [(0, 9, None), (10, 19, None), (20, 29, None)]);
    }

    #[test]
    fn represents_tells_held_objects_from_others() {
        let chain = vec![idle(0, 0), idle(10, 1), with_segment(20), idle(30, 3)];
        let m = Manifest::of("t", 1, chain.clone());
        for c in &chain {
            assert_eq!(m.represents(c), Some(true), "{c:?}");
        }
        assert_eq!(m.represents(&idle(40, 4)), None);
        let mut altered = chain[2].clone();
        altered.counts.rows_archived = 2;
        assert_eq!(m.represents(&altered), Some(false));
        // Inside a merged run, an object that names a file is not held.
        assert_eq!(m.represents(&with_segment(10)), Some(false));
        let mut merged_object = chain[1].clone();
        merged_object.merged = Some(2);
        assert_eq!(m.represents(&merged_object), Some(false));
        // The run's last object is compared on what the entry keeps of it.
        let mut moved = chain[1].clone();
        moved.resolved = Some(Hlc::new(99, 0));
        assert_eq!(m.represents(&moved), Some(false));
        let mut rewritten = chain[1].clone();
        rewritten.last_message = Some("other".into());
        assert_eq!(m.represents(&rewritten), Some(false));
    }

    #[test]
    fn purge_status_folds_the_purged_prefix_only() {
        let chain = vec![
            with_segment(0),
            idle(10, 1),
            with_segment(20),
            with_segment(30),
            idle(40, 4),
        ];
        let m = |purged: &[i64]| {
            Manifest::of("t", 1, chain.clone()).with_purged(|c| purged.contains(&c.first_offset))
        };
        assert_eq!(m(&[]).purged_through, None);
        // Idle checkpoints need no record; the first unpurged segment ends it.
        assert_eq!(m(&[0]).purged_through, Some(19));
        assert_eq!(m(&[0, 30]).purged_through, Some(19));
        assert_eq!(m(&[0, 20, 30]).purged_through, Some(49));
        let folded = m(&[0, 20]);
        assert_eq!(folded.purged_through, Some(29));
        folded.check("t", 1, (49, 40)).unwrap();
        // Only format 3 says it, and only inside its offsets.
        let mut v2 = folded.clone();
        v2.format_version = 2;
        assert!(v2.check("t", 1, (49, 40)).is_err());
        let mut beyond = folded;
        beyond.purged_through = Some(50);
        assert!(beyond.check("t", 1, (49, 40)).is_err());
    }

    #[test]
    fn check_refuses_merges_it_cannot_trust() {
        let chain = vec![idle(0, 0), idle(10, 1), idle(20, 2)];
        let good = Manifest::of("t", 1, chain);
        good.check("t", 1, (29, 20)).unwrap();
        let mut v1 = good.clone();
        v1.format_version = 1;
        assert!(v1.check("t", 1, (29, 20)).is_err());
        let mut one = good.clone();
        one.checkpoints[0].merged = Some(1);
        assert!(one.check("t", 1, (29, 20)).is_err());
        let mut last = good.clone();
        last.checkpoints[1].merged = Some(1);
        assert!(last.check("t", 1, (29, 20)).is_err());
        let mut future = good;
        future.format_version = MANIFEST_FORMAT_VERSION + 1;
        assert!(future.check("t", 1, (29, 20)).is_err());
    }
}
