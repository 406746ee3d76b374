//! `checkpoints list` and `checkpoints show`: what each partition's chain
//! holds, where it stands, and what looks wrong; one checkpoint with the
//! actual state of the files it names. Reads checkpoints, purge records,
//! idle progress and listings only (no segment is downloaded by `list`).

use std::time::Duration;

use cdc_changefeed::Hlc;
use cdc_checkpoint::{layout, Checkpoint, CheckpointError, PurgeRecord};
use cdc_common::storage::ArchiveStore;
use serde::Serialize;

use super::{checkpoints_of, Finding};

/// What `list` reports as worth a look.
#[derive(Debug, Clone, Copy)]
pub struct ListOptions {
    /// A checkpoint with rows and no purge record older than this is a
    /// finding (`unpurged`).
    pub unpurged_older_than: Duration,
}

/// A partition's idle progress, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdleView {
    /// The chain offset it follows.
    pub base_last_offset: i64,
    /// Its last offset.
    pub last_offset: i64,
    /// Its resolved timestamp.
    pub resolved: Hlc,
    /// Whether it extends the chain (and so counts for the watermark).
    pub counted: bool,
}

/// One partition's chain, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    /// Partition.
    pub partition: i32,
    /// Checkpoints in the chain (a manifest's merged run counts as the
    /// checkpoints it stands for).
    pub checkpoints: u64,
    /// First offset of the chain.
    pub first_offset: Option<i64>,
    /// Last offset of the chain.
    pub last_offset: Option<i64>,
    /// Segments named.
    pub segments: usize,
    /// Row versions archived.
    pub rows: u64,
    /// Delete events recorded.
    pub deletes: u64,
    /// Smallest `updated` of the archived rows.
    pub min_updated: Option<Hlc>,
    /// Largest `updated` of the archived rows.
    pub max_updated: Option<Hlc>,
    /// The chain's latest resolved timestamp.
    pub resolved: Option<Hlc>,
    /// The partition's idle progress, if any.
    pub idle_progress: Option<IdleView>,
    /// Checkpoints with a purge record.
    pub purged: usize,
    /// Checkpoints with rows and no purge record.
    pub unpurged_with_rows: usize,
}

/// One table's archive, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableReport {
    /// Archive table.
    pub table: String,
    /// The topic's partition count, as the checkpoints recorded it.
    pub partition_count: i32,
    /// The table's watermark (`None`: some partition has none yet).
    pub watermark: Option<Hlc>,
    /// Each partition that has a chain.
    pub partitions: Vec<PartitionReport>,
    /// What looks wrong.
    pub findings: Vec<Finding>,
}

/// Summarises `table`'s archive: every partition's chain, the watermark,
/// and the findings (gaps, overlaps, unreadable checkpoints, orphans,
/// unpurged checkpoints older than the threshold, partitions the
/// watermark does not cover).
pub async fn list(
    store: &ArchiveStore,
    table: &str,
    opts: ListOptions,
) -> Result<TableReport, CheckpointError> {
    let progress = cdc_checkpoint::progress(store, table).await?;
    let mut partitions = Vec::new();
    let mut findings = Vec::new();
    let now = chrono::Utc::now();
    for p in cdc_checkpoint::partitions(store, table).await? {
        let (checkpoints, found) = checkpoints_of(store, table, p).await?;
        findings.extend(found);
        let purged = cdc_checkpoint::purged_firsts(store, table, p, None).await?;
        let idle = cdc_checkpoint::read_idle_progress(store, table, p).await?;
        let unpurged: Vec<&Checkpoint> = checkpoints
            .iter()
            .filter(|c| c.counts.rows_archived > 0 && !purged.contains(&c.first_offset))
            .collect();
        let old: Vec<&&Checkpoint> = unpurged
            .iter()
            .filter(|c| {
                chrono::DateTime::parse_from_rfc3339(&c.created_at).is_ok_and(|t| {
                    (now - t.with_timezone(&chrono::Utc))
                        .to_std()
                        .is_ok_and(|age| age >= opts.unpurged_older_than)
                })
            })
            .collect();
        if let Some(oldest) = old.first() {
            findings.push(Finding {
                partition: Some(p),
                kind: "unpurged",
                detail: format!(
                    "{} checkpoint(s) with rows older than {} have no purge record, the oldest {} (written {})",
                    old.len(),
                    humantime::format_duration(opts.unpurged_older_than),
                    oldest.path(),
                    oldest.created_at
                ),
            });
        }
        partitions.push(PartitionReport {
            partition: p,
            checkpoints: checkpoints.iter().map(|c| c.checkpoint_count()).sum(),
            first_offset: checkpoints.first().map(|c| c.first_offset),
            last_offset: checkpoints.last().map(|c| c.last_offset),
            segments: checkpoints.iter().filter(|c| c.segment.is_some()).count(),
            rows: checkpoints.iter().map(|c| c.counts.rows_archived).sum(),
            deletes: checkpoints.iter().map(|c| c.counts.deletes).sum(),
            min_updated: checkpoints.iter().filter_map(|c| c.min_updated).min(),
            max_updated: checkpoints.iter().filter_map(|c| c.max_updated).max(),
            resolved: checkpoints.iter().rev().find_map(|c| c.resolved),
            idle_progress: idle.map(|i| IdleView {
                counted: checkpoints.last().is_some_and(|c| i.extends(c)),
                base_last_offset: i.base_last_offset,
                last_offset: i.last_offset,
                resolved: i.resolved,
            }),
            purged: checkpoints
                .iter()
                .filter(|c| purged.contains(&c.first_offset))
                .count(),
            unpurged_with_rows: unpurged.len(),
        });
    }
    for (p, resolved) in (0..progress.partitions).map(|p| (p, progress.resolved.get(&p))) {
        let detail = match resolved {
            None => "no checkpoint: the watermark waits for this partition".to_owned(),
            Some(None) => "no resolved timestamp yet: the watermark waits for it".to_owned(),
            Some(Some(_)) => continue,
        };
        findings.push(Finding {
            partition: Some(p),
            kind: "not_covered",
            detail,
        });
    }
    for o in cdc_checkpoint::orphans(store, table).await? {
        findings.push(Finding {
            partition: layout::parse_partition_dir(
                o.path.split('/').nth(2).unwrap_or_default(),
            ),
            kind: "orphan",
            detail: format!(
                "{} ({} bytes, {}): named by no checkpoint, never trusted; {}",
                o.path,
                o.size,
                o.last_modified.to_rfc3339(),
                if o.covered {
                    "its offsets are in the chain under another file (`sink orphans --clean` removes it past orphan_grace)"
                } else {
                    "beyond the chain's end (a sink may be about to checkpoint it)"
                }
            ),
        });
    }
    Ok(TableReport {
        table: table.to_owned(),
        partition_count: progress.partitions,
        watermark: progress.watermark(),
        partitions,
        findings,
    })
}

/// A file a checkpoint names, as it actually is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileState {
    /// Path relative to the archive root.
    pub path: String,
    /// Size now (`None`: missing).
    pub size: Option<u64>,
    /// SHA-256 now (`None`: missing).
    pub sha256: Option<String>,
    /// Whether size and SHA-256 are the checkpoint's.
    pub matches: bool,
}

/// One checkpoint, everything it records, and the state of its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShowReport {
    /// The checkpoint as stored (or the newest manifest's entry that holds
    /// its offsets, when gc removed the object).
    pub checkpoint: Checkpoint,
    /// The manifest it was read from, when its object is gone.
    pub from_manifest: Option<String>,
    /// Its segment, as it is now.
    pub segment: Option<FileState>,
    /// Its delete file, as it is now.
    pub deletes: Option<FileState>,
    /// The purger's record for it, if it was purged.
    pub purge_record: Option<PurgeRecord>,
}

/// `path`: a checkpoint's path relative to the archive root
/// (`<table>/checkpoints/p<N>/<first:020>.json`).
pub async fn show(store: &ArchiveStore, path: &str) -> Result<Option<ShowReport>, CheckpointError> {
    let Some((table, partition, first)) = layout::parse_checkpoint_path(path) else {
        return Err(CheckpointError::Refused {
            what: path.to_owned(),
            reason: "not a checkpoint path: expected <table>/checkpoints/p<N>/<first offset, 20 digits>.json".into(),
        });
    };
    let (checkpoint, from_manifest) = match cdc_checkpoint::read(store, table, partition, first)
        .await?
    {
        Some(c) => (c, None),
        None => {
            let Some(m) = cdc_checkpoint::newest_manifest(store, table, partition).await? else {
                return Ok(None);
            };
            let entry = m.checkpoints.iter().find(|c| {
                c.first_offset == first
                    || (c.merged.is_some() && (c.first_offset..=c.last_offset).contains(&first))
            });
            match entry {
                Some(c) => (c.clone(), Some(m.path())),
                None => return Ok(None),
            }
        }
    };
    let state = |path: String, size: u64, sha: String| async move {
        let bytes = cdc_checkpoint::get_object(store, &path).await?;
        let actual_sha = bytes.as_ref().map(|b| cdc_checkpoint::sha256_hex(b));
        Ok::<_, CheckpointError>(FileState {
            matches: bytes.as_ref().map(|b| b.len() as u64) == Some(size)
                && actual_sha.as_deref() == Some(sha.as_str()),
            size: bytes.as_ref().map(|b| b.len() as u64),
            sha256: actual_sha,
            path,
        })
    };
    let segment = match &checkpoint.segment {
        Some(s) => Some(state(s.path.clone(), s.size, s.sha256.clone()).await?),
        None => None,
    };
    let deletes = match &checkpoint.deletes {
        Some(d) => Some(state(d.path.clone(), d.size, d.sha256.clone()).await?),
        None => None,
    };
    let purge_record = cdc_checkpoint::read_purge_record(store, table, partition, first).await?;
    Ok(Some(ShowReport {
        checkpoint,
        from_manifest,
        segment,
        deletes,
        purge_record,
    }))
}
