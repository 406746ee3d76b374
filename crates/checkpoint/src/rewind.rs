//! `rewind`: making a partition's chain end at an earlier checkpoint, so
//! that the sink (stopped meanwhile) resumes after it and archives the
//! offsets after it again from Kafka, for example after segments were lost
//! and restored, or a chain was damaged past some point.
//!
//! What changes, and only with a record: the checkpoint objects after the
//! target, the manifests that cover past it and the purge records of the
//! superseded checkpoints are *moved* (copied, then removed) to
//! `<table>/rewinds/<id>/<their path under the table>`; when a moved
//! manifest held checkpoints the chain still needs (after a `gc`), a new
//! manifest ending at the target is written first. Nothing is rewritten in
//! place and nothing is lost: [`run_rewind`] first creates
//! `<table>/rewinds/<id>.json` listing every move and every segment and
//! delete file the superseded checkpoints name; those files stay where
//! they are, and `gc` and `sink orphans --clean` never remove a file a
//! rewind record names (a copy of an archived row version that a purge may
//! have relied on).
//!
//! Guarantee: at every step a reader sees a contiguous chain that ends at
//! or after the target: the superseded checkpoints' purge records move
//! first (a crash never leaves one for a re-archived checkpoint at the
//! same offset to take for its own), the target's object is restored if
//! gc removed it, objects are moved newest first, manifests after the
//! objects, and a manifest ending at the target is written before any
//! manifest moves. So an interrupted rewind leaves a valid, partly rewound
//! chain; planning again finishes it. At the end the chain is read again
//! and must end exactly with the target, or the rewind fails loudly. The purger never deletes on the strength of a
//! superseded checkpoint once it is moved, and re-purges the re-archived
//! checkpoints through the same guard (already deleted rows count as
//! already gone). The target must be a checkpoint the chain verifies
//! contiguous up to: the prefix that stays is never changed.
//!
//! Not checked here (no Kafka in this crate): that no sink runs and that
//! Kafka still holds the offsets after the target; `cdc_sink::rewind`
//! checks both before it calls [`run_rewind`].

use std::collections::{BTreeSet, HashSet};

use cdc_common::storage::ArchiveStore;
use serde::{Deserialize, Serialize};

use crate::error::storage;
use crate::store::{create_new, get_bytes, list, parse, read_json};
use crate::{
    layout, list_checkpoints_after, newest_manifest, read, verify_chain, write_manifest,
    Checkpoint, CheckpointError, Manifest,
};

/// The rewind record format this crate writes.
pub const REWIND_FORMAT_VERSION: u32 = 1;

/// One object a rewind moves aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewindMove {
    /// `checkpoint`, `manifest` or `purge record`.
    pub kind: String,
    /// Where it is (relative to the archive root).
    pub from: String,
    /// Where its copy goes (`<table>/rewinds/<id>/…`).
    pub to: String,
}

/// What a rewind of one partition would do (read-only until
/// [`run_rewind`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewindPlan {
    /// Archive table.
    pub table: String,
    /// Partition.
    pub partition: i32,
    /// The chain's topic (the target checkpoint's).
    pub topic: String,
    /// The checkpoint the chain will end with.
    pub target: Checkpoint,
    /// The chain's last offset now (as far as it reads).
    pub chain_end: Option<i64>,
    /// Checkpoints superseded (merged idle runs counted in full).
    pub superseded_checkpoints: u64,
    /// The manifest written first (a moved manifest held checkpoints the
    /// chain still needs), if any.
    pub manifest: Option<Manifest>,
    /// The moves, in the order they are made.
    pub moves: Vec<RewindMove>,
    /// Segments and delete files the superseded checkpoints name (kept;
    /// never removed by gc).
    pub files: Vec<String>,
}

impl RewindPlan {
    /// Nothing to move: the chain already ends at the target.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// Superseded checkpoints that were purged (their purge records move).
    pub fn purged_superseded(&self) -> usize {
        self.moves
            .iter()
            .filter(|m| m.kind == "purge record")
            .count()
    }

    /// Where the sink resumes after the rewind.
    pub fn resume_offset(&self) -> i64 {
        self.target.last_offset + 1
    }
}

/// The record of one rewind (`<table>/rewinds/<id>.json`), written before
/// anything moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewindRecord {
    /// Always [`REWIND_FORMAT_VERSION`].
    pub format_version: u32,
    /// Archive table.
    pub table: String,
    /// Partition.
    pub partition: i32,
    /// Its id (names the record and the folder of the copies).
    pub rewind_id: String,
    /// RFC 3339, when the moves started.
    pub started_at: String,
    /// Why (free text from the operator), if given.
    pub reason: Option<String>,
    /// The path of the checkpoint the chain ends with afterwards.
    pub target: String,
    /// The target's last offset: the sink resumes at the next one.
    pub target_last_offset: i64,
    /// The chain's last offset before the rewind.
    pub previous_end: Option<i64>,
    /// The manifest written first, if any.
    pub manifest_written: Option<String>,
    /// Every move, in order.
    pub moved: Vec<RewindMove>,
    /// Segments and delete files the superseded checkpoints name.
    pub files: Vec<String>,
}

/// The segment and delete file a checkpoint names.
fn files_of(c: &Checkpoint) -> impl Iterator<Item = String> + '_ {
    c.segment
        .as_ref()
        .map(|s| s.path.clone())
        .into_iter()
        .chain(c.deletes.as_ref().map(|d| d.path.clone()))
}

/// `<table>/rewinds/<id>/<path under the table>`.
fn moved_to(table: &str, rewind_id: &str, from: &str) -> String {
    let under = from
        .strip_prefix(table)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(from);
    format!("{table}/rewinds/{rewind_id}/{under}")
}

fn refuse(table: &str, partition: i32, reason: String) -> CheckpointError {
    CheckpointError::Refused {
        what: format!("rewind of {table}/p{partition}"),
        reason,
    }
}

fn no_checkpoint(table: &str, partition: i32, first: i64) -> CheckpointError {
    refuse(
        table,
        partition,
        format!(
            "no checkpoint of the chain starts at offset {first} ({} does not exist; `checkpoints list` shows the chain)",
            layout::checkpoint_path(table, partition, first)
        ),
    )
}

/// The stable prefix that ends with the checkpoint starting at
/// `target_first`: from the newest manifest that covers it (which must
/// hold it verbatim), or the newest manifest before it and the checkpoint
/// objects after that. Verified contiguous.
async fn prefix(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    target_first: i64,
    manifest: Option<&Manifest>,
) -> Result<Vec<Checkpoint>, CheckpointError> {
    let mut chain: Vec<Checkpoint> = match manifest {
        Some(m) if m.last_offset >= target_first => {
            // The entry that holds `target_first`: it must start there and
            // be a checkpoint as written, not a merged run.
            let i = m
                .checkpoints
                .partition_point(|c| c.first_offset <= target_first)
                .checked_sub(1)
                .ok_or_else(|| no_checkpoint(table, partition, target_first))?;
            let entry = &m.checkpoints[i];
            if entry.merged.is_none() && entry.first_offset != target_first {
                return Err(no_checkpoint(table, partition, target_first));
            }
            if entry.merged.is_some() {
                let before = i
                    .checked_sub(1)
                    .map(|b| &m.checkpoints[b])
                    .filter(|c| c.merged.is_none());
                let after = m.checkpoints[i..].iter().find(|c| c.merged.is_none());
                let paths: Vec<String> = before
                    .into_iter()
                    .chain(after)
                    .map(Checkpoint::path)
                    .collect();
                return Err(refuse(
                    table,
                    partition,
                    format!(
                        "offset {target_first} lies inside a run of idle checkpoints that {} holds merged (their objects may be gone after a gc); rewind to one of: {}",
                        m.path(),
                        paths.join(", ")
                    ),
                ));
            }
            m.checkpoints[..=i].to_vec()
        }
        _ => {
            let after = manifest.map_or(-1, |m| m.last_offset);
            let mut chain = manifest.map(|m| m.checkpoints.clone()).unwrap_or_default();
            let firsts = list_checkpoints_after(store, table, partition, after).await?;
            for first in firsts.into_iter().filter(|f| *f <= target_first) {
                let c = read(store, table, partition, first).await?.ok_or_else(|| {
                    refuse(
                        table,
                        partition,
                        format!(
                            "{} was listed but is gone",
                            layout::checkpoint_path(table, partition, first)
                        ),
                    )
                })?;
                chain.push(c);
            }
            chain
        }
    };
    if chain.last().map(|c| c.first_offset) != Some(target_first) {
        return Err(no_checkpoint(table, partition, target_first));
    }
    verify_chain(table, partition, &chain).map_err(|e| {
        refuse(
            table,
            partition,
            format!("the chain up to offset {target_first} does not verify, so it cannot end there: {e}"),
        )
    })?;
    // The target as its object says, when there is one (it is what
    // `latest` reads); the manifest's verbatim copy otherwise.
    if let Some(object) = read(store, table, partition, target_first).await? {
        if manifest.and_then(|m| m.represents(&object)) == Some(false) {
            return Err(refuse(
                table,
                partition,
                format!(
                    "{} differs from its entry in the newest manifest (`checkpoints verify` reports it); the prefix that stays must be what readers read",
                    object.path()
                ),
            ));
        }
        if let Some(last) = chain.last_mut() {
            *last = object;
        }
        verify_chain(table, partition, &chain)?;
    }
    Ok(chain)
}

/// Plans a rewind of `table`/`partition` so that its chain ends with the
/// checkpoint that starts at `target_first` (read-only).
pub async fn plan_rewind(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    target_first: i64,
    rewind_id: &str,
) -> Result<RewindPlan, CheckpointError> {
    let newest = newest_manifest(store, table, partition).await?;
    let chain = prefix(store, table, partition, target_first, newest.as_ref()).await?;
    let target = chain.last().cloned().expect("prefix is never empty");
    let keep = target.last_offset;
    let mut files = BTreeSet::new();
    let mut superseded = 0u64;
    let mut chain_end = Some(keep);
    let mut moves = Vec::new();
    let mut seen = HashSet::new();

    // Checkpoint objects after the target, newest first.
    let objects = list_checkpoints_after(store, table, partition, target_first).await?;
    for &first in objects.iter().rev() {
        let from = layout::checkpoint_path(table, partition, first);
        match read(store, table, partition, first).await {
            Ok(Some(c)) => {
                files.extend(files_of(&c));
                chain_end = chain_end.max(Some(c.last_offset));
            }
            Ok(None) => continue,
            // Moved as it is: its bytes are kept in the copy.
            Err(CheckpointError::Malformed { .. }) => {}
            Err(e) => return Err(e),
        }
        superseded += 1;
        seen.insert(first);
        moves.push(RewindMove {
            kind: "checkpoint".into(),
            to: moved_to(table, rewind_id, &from),
            from,
        });
    }

    // Manifests that cover past the target, newest first; what they hold
    // past it is superseded too (their objects may be gone after a gc).
    let mut listed: Vec<(i64, i64)> = list(store, &layout::manifests_dir(table, partition))
        .await?
        .iter()
        .filter_map(|m| layout::parse_manifest_name(m.location.as_ref()))
        .filter(|(last, _)| *last > keep)
        .collect();
    listed.sort_unstable();
    for &(last, tail_first) in listed.iter().rev() {
        let from = layout::manifest_path(table, partition, last, tail_first);
        if let Some(bytes) = get_bytes(store, &store.path(&from)).await? {
            if let Ok(m) = parse::<Manifest>(&store.path(&from), &bytes) {
                for c in m.checkpoints.iter().filter(|c| c.first_offset > keep) {
                    files.extend(files_of(c));
                    chain_end = chain_end.max(Some(c.last_offset));
                    if seen.insert(c.first_offset) {
                        superseded += c.checkpoint_count();
                    }
                }
            }
        }
        moves.push(RewindMove {
            kind: "manifest".into(),
            to: moved_to(table, rewind_id, &from),
            from,
        });
    }

    // A manifest ending at the target, whenever a manifest moves (one that
    // already ends there is kept, and is identical or as good: a gc may
    // remove it while the newer one still stands, so it is written again
    // if it is gone). Without it, a chain whose objects gc removed would
    // start late or show a gap.
    // Its purge status: the old one's, up to the target (the records of
    // checkpoints up to the target stay where they are).
    let manifest = (!listed.is_empty()).then(|| Manifest {
        purged_through: newest
            .as_ref()
            .and_then(|m| m.purged_through)
            .map(|t| t.min(keep)),
        ..Manifest::of(table, partition, chain)
    });

    // Purge records of the superseded checkpoints (a re-archived
    // checkpoint may start at the same offset and must be purged anew).
    let firsts = crate::purged_firsts(store, table, partition, Some(target_first)).await?;
    let firsts = firsts.into_iter().filter(|f| *f > keep);
    // First of all moves: a crash after the checkpoints moved must never
    // leave a superseded checkpoint's record where a re-archived checkpoint
    // at the same offset would take it for its own.
    let records: Vec<RewindMove> = firsts
        .map(|first| {
            let from = layout::purged_path(table, partition, first);
            RewindMove {
                kind: "purge record".into(),
                to: moved_to(table, rewind_id, &from),
                from,
            }
        })
        .collect();
    moves.splice(0..0, records);

    Ok(RewindPlan {
        table: table.to_owned(),
        partition,
        topic: target.topic.clone(),
        target,
        chain_end,
        superseded_checkpoints: superseded,
        manifest,
        moves,
        files: files.into_iter().collect(),
    })
}

/// Records `plan` as `<table>/rewinds/<rewind_id>.json`, writes its
/// manifest, then moves what it lists in order (a move whose source is
/// gone and whose copy exists is done). The caller has made sure no sink
/// runs for the partition.
pub async fn run_rewind(
    store: &ArchiveStore,
    plan: &RewindPlan,
    rewind_id: &str,
    reason: Option<String>,
) -> Result<RewindRecord, CheckpointError> {
    let record = RewindRecord {
        format_version: REWIND_FORMAT_VERSION,
        table: plan.table.clone(),
        partition: plan.partition,
        rewind_id: rewind_id.to_owned(),
        started_at: crate::now_rfc3339(),
        reason,
        target: plan.target.path(),
        target_last_offset: plan.target.last_offset,
        previous_end: plan.chain_end,
        manifest_written: plan.manifest.as_ref().map(Manifest::path),
        moved: plan.moves.clone(),
        files: plan.files.clone(),
    };
    let body = serde_json::to_vec_pretty(&record).expect("a rewind record always serialises");
    create_new(store, &layout::rewind_path(&plan.table, rewind_id), body).await?;
    // The target's object, which gc may have removed: the chain's last
    // checkpoint always has one (`latest` reads it; a reader without the
    // manifest then sees a gap, never a chain that ends early).
    crate::create(store, &plan.target).await?;
    for m in &plan.moves {
        if m.kind == "manifest" {
            write_target_manifest(store, plan).await?;
        }
        move_object(store, m).await?;
    }
    // What readers see now must be the prefix, ending at the target: a gc
    // or a compaction that ran meanwhile (they take the table's lease,
    // which a rewind holds, but an older binary does not) is an error to
    // look at, never a silent half-rewind.
    let chain = crate::read_chain(store, &plan.table, plan.partition).await?;
    if chain.last() != Some(&plan.target) {
        return Err(refuse(
            &plan.table,
            plan.partition,
            format!(
                "after the moves the chain ends at {:?}, not at the target {} (a gc or a compaction ran during the rewind?); `checkpoints list` shows it, the moved objects are under {}",
                chain.end(),
                plan.target.path(),
                layout::rewinds_dir(&plan.table)
            ),
        ));
    }
    Ok(record)
}

/// Writes the plan's manifest unless one with its name already exists
/// (an identical one, or an older compaction that ended at the target).
async fn write_target_manifest(
    store: &ArchiveStore,
    plan: &RewindPlan,
) -> Result<(), CheckpointError> {
    let Some(m) = &plan.manifest else {
        return Ok(());
    };
    match write_manifest(store, m).await {
        Ok(_) | Err(CheckpointError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies `m.from` to `m.to` (conditional create), then removes `m.from`.
/// A source already gone is done: moved by an interrupted run of this
/// rewind, or removed by a gc that ran meanwhile (gc removes only what a
/// manifest holds, and the end check reads the chain again).
async fn move_object(store: &ArchiveStore, m: &RewindMove) -> Result<(), CheckpointError> {
    let from = store.path(&m.from);
    let Some(bytes) = get_bytes(store, &from).await? else {
        return Ok(());
    };
    create_new(store, &m.to, bytes.to_vec()).await?;
    match object_store::ObjectStoreExt::delete(&store.store, &from).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(storage("delete", &from)(e)),
    }
}

/// The rewind records of `table` (`<table>/rewinds/<id>.json`), oldest
/// first; a record that does not parse is an error (its files would
/// otherwise lose their protection from gc).
pub async fn rewind_records(
    store: &ArchiveStore,
    table: &str,
) -> Result<Vec<RewindRecord>, CheckpointError> {
    let prefix = store.path(&layout::rewinds_dir(table));
    let listing = store
        .store
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(storage("list", &prefix))?;
    let mut paths: Vec<_> = listing
        .objects
        .into_iter()
        .map(|m| m.location)
        .filter(|p| p.as_ref().ends_with(".json"))
        .collect();
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        if let Some(bytes) = get_bytes(store, &path).await? {
            out.push(parse(&path, &bytes)?);
        }
    }
    Ok(out)
}

/// A checkpoint a rewind superseded, as it was when the rewind moved it,
/// and its purge record if it had one (what `checkpoints audit` checks a
/// run against when a later rewind moved what the run purged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    /// The rewind that moved it.
    pub rewind_id: String,
    /// The checkpoint (from its moved object, or from a moved manifest
    /// after a gc removed its object); `None` if neither holds it.
    pub checkpoint: Option<Checkpoint>,
    /// Its purge record, moved by the same rewind.
    pub record: Option<crate::PurgeRecord>,
}

/// What `rewind` moved of the checkpoint of `partition` that starts at
/// `first`, `None` if it moved neither that checkpoint nor its record.
pub async fn superseded(
    store: &ArchiveStore,
    rewind: &RewindRecord,
    partition: i32,
    first: i64,
) -> Result<Option<Superseded>, CheckpointError> {
    if rewind.partition != partition {
        return Ok(None);
    }
    let table = &rewind.table;
    let copy_of = |from: String| {
        rewind
            .moved
            .iter()
            .find(move |m| m.from == from)
            .map(|m| m.to.clone())
    };
    let record = match copy_of(layout::purged_path(table, partition, first)) {
        Some(to) => read_json(store, &to).await?,
        None => None,
    };
    let mut checkpoint: Option<Checkpoint> =
        match copy_of(layout::checkpoint_path(table, partition, first)) {
            Some(to) => read_json(store, &to).await?,
            None => None,
        };
    for m in rewind.moved.iter().filter(|m| m.kind == "manifest") {
        if checkpoint.is_some() {
            break;
        }
        if let Some(manifest) = read_json::<Manifest>(store, &m.to).await? {
            checkpoint = manifest
                .checkpoints
                .into_iter()
                .find(|c| c.first_offset == first && c.merged.is_none());
        }
    }
    Ok(
        (record.is_some() || checkpoint.is_some()).then(|| Superseded {
            rewind_id: rewind.rewind_id.clone(),
            checkpoint,
            record,
        }),
    )
}
