//! `gc`: removing what the chain no longer needs, with a record.
//!
//! What may go, and only once older than a safety age (by the store's
//! modification time): checkpoint objects that the partition's newest
//! manifest holds (verbatim, or inside a merged run of checkpoints that
//! name no file), except the manifest's last checkpoint (kept: `latest`
//! reads it and the partition stays listed) and the chain's first (kept: a
//! reader without the manifest sees a gap, never a chain that starts
//! late); manifests superseded by a
//! newer one; and orphans whose offsets the chain already covers (see
//! [`crate::orphans`]). Only when the newest manifest reads, verifies and
//! is itself older than the safety age; a checkpoint object that differs
//! from the manifest is kept and reported.
//!
//! Guarantee: nothing is removed without a record. [`run_gc`] first
//! creates `<table>/gc/<id>.json` (never overwritten) listing every object
//! it will remove, with its size and reason, then removes them. An
//! interrupted gc is resumed by planning again: what is already gone is
//! not planned twice. Nothing a reader of the chain (newest manifest, then
//! the checkpoints after it) or a segment named by it is ever planned.

use std::time::Duration;

use cdc_common::storage::ArchiveStore;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::error::storage;
use crate::store::{create_new, list};
use crate::{layout, partitions, read, CheckpointError, READ_CONCURRENCY};

/// The gc record format this crate writes.
pub const GC_FORMAT_VERSION: u32 = 1;

/// One object gc removes (or would).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcItem {
    /// Path relative to the archive root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// When the store last modified it (RFC 3339).
    pub last_modified: String,
    /// Why it may go.
    pub reason: String,
}

/// Something gc leaves although it looks superseded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcKept {
    /// Path relative to the archive root (or the partition's folder).
    pub path: String,
    /// Why it stays.
    pub reason: String,
}

/// What gc would remove from one table, and what it keeps on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcPlan {
    /// Archive table.
    pub table: String,
    /// Nothing younger than this is planned.
    pub safety_age_secs: u64,
    /// Objects to remove, in path order.
    pub remove: Vec<GcItem>,
    /// Objects kept on purpose (not all kept objects: only those that
    /// looked superseded).
    pub kept: Vec<GcKept>,
}

/// The record of one gc (`<table>/gc/<id>.json`), written before anything
/// is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRecord {
    /// Always [`GC_FORMAT_VERSION`].
    pub format_version: u32,
    /// Archive table.
    pub table: String,
    /// Its id (names the record).
    pub gc_id: String,
    /// RFC 3339, when the removal started.
    pub started_at: String,
    /// The safety age it planned with.
    pub safety_age_secs: u64,
    /// Everything it removes.
    pub removed: Vec<GcItem>,
}

fn item(m: &ObjectMeta, store: &ArchiveStore, reason: String) -> GcItem {
    GcItem {
        path: store.relative(&m.location),
        size: m.size,
        last_modified: m.last_modified.to_rfc3339(),
        reason,
    }
}

/// Plans a gc of `table` (read-only): see the module notes.
pub async fn plan_gc(
    store: &ArchiveStore,
    table: &str,
    safety_age: Duration,
) -> Result<GcPlan, CheckpointError> {
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(safety_age).unwrap_or(chrono::Duration::MAX);
    let mut plan = GcPlan {
        table: table.to_owned(),
        safety_age_secs: safety_age.as_secs(),
        remove: Vec::new(),
        kept: Vec::new(),
    };
    for p in partitions(store, table).await? {
        plan_partition(store, table, p, cutoff, &mut plan).await?;
    }
    for o in crate::orphans(store, table).await? {
        if o.covered && o.last_modified <= cutoff {
            plan.remove.push(GcItem {
                path: o.path,
                size: o.size,
                last_modified: o.last_modified.to_rfc3339(),
                reason: "orphan: named by no checkpoint, its offsets covered by the chain".into(),
            });
        }
    }
    plan.remove.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(plan)
}

async fn plan_partition(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    cutoff: chrono::DateTime<chrono::Utc>,
    plan: &mut GcPlan,
) -> Result<(), CheckpointError> {
    let folder = layout::manifests_dir(table, partition);
    let manifests = list(store, &folder).await?;
    let manifest = match crate::newest_manifest(store, table, partition).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e @ (CheckpointError::Broken { .. } | CheckpointError::Malformed { .. })) => {
            plan.kept.push(GcKept {
                path: folder,
                reason: format!(
                    "the newest manifest is unusable, nothing of this partition is removed: {e}"
                ),
            });
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let newest = manifest.path();
    let Some(newest_meta) = manifests
        .iter()
        .find(|m| store.relative(&m.location) == newest)
    else {
        return Ok(());
    };
    if newest_meta.last_modified > cutoff {
        plan.kept.push(GcKept {
            path: newest,
            reason: "younger than the safety age: nothing it supersedes is removed yet".into(),
        });
        return Ok(());
    }
    for m in &manifests {
        let path = store.relative(&m.location);
        if path != newest
            && layout::parse_manifest_name(&path).is_some()
            && m.last_modified <= cutoff
        {
            plan.remove
                .push(item(m, store, format!("superseded by {newest}")));
        }
    }
    // Kept: the manifest's last checkpoint (`latest` reads it) and the
    // chain's first (an anchor: a reader that goes without the manifest,
    // an older binary or one after the manifest was lost, then sees a gap
    // and refuses the chain instead of reading one that starts late).
    let keep = [manifest.first_offset, manifest.tail_first()];
    let objects = list(store, &layout::checkpoints_dir(table, partition)).await?;
    let candidates: Vec<(&ObjectMeta, i64)> = objects
        .iter()
        .filter_map(|m| Some((m, layout::parse_checkpoint_name(m.location.as_ref())?)))
        .filter(|(m, first)| {
            *first <= manifest.last_offset && !keep.contains(first) && m.last_modified <= cutoff
        })
        .collect();
    let read: Vec<_> = futures::stream::iter(candidates)
        .map(|(m, first)| async move { (m, read(store, table, partition, first).await) })
        .buffered(READ_CONCURRENCY)
        .collect()
        .await;
    for (m, c) in read {
        let path = store.relative(&m.location);
        match c {
            Ok(Some(c)) if manifest.represents(&c) == Some(true) => {
                plan.remove
                    .push(item(m, store, format!("held by {newest}")));
            }
            Ok(Some(_)) => plan.kept.push(GcKept {
                path,
                reason: format!("differs from its entry in {newest} (see `checkpoints verify`)"),
            }),
            Ok(None) => {}
            Err(e @ CheckpointError::Malformed { .. }) => plan.kept.push(GcKept {
                path,
                reason: format!("unreadable: {e}"),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Records `plan` as `<table>/gc/<gc_id>.json`, then removes what it lists
/// (an object already gone counts as removed). Returns the record.
pub async fn run_gc(
    store: &ArchiveStore,
    plan: &GcPlan,
    gc_id: &str,
) -> Result<GcRecord, CheckpointError> {
    let record = GcRecord {
        format_version: GC_FORMAT_VERSION,
        table: plan.table.clone(),
        gc_id: gc_id.to_owned(),
        started_at: crate::now_rfc3339(),
        safety_age_secs: plan.safety_age_secs,
        removed: plan.remove.clone(),
    };
    let path = layout::gc_path(&plan.table, gc_id);
    let body = serde_json::to_vec_pretty(&record).expect("a gc record always serialises");
    create_new(store, &path, body).await?;
    futures::stream::iter(&record.removed)
        .map(|i| async move {
            let path = store.path(&i.path);
            match store.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(storage("delete", &path)(e)),
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(record)
}
