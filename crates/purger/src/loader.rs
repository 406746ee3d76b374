//! The archive side of a run: reads every partition's checkpoint chain,
//! then, one checkpoint ahead of the deletes, each checkpoint's purge
//! record or its segment, verified, decoded and planned.
//!
//! What it guarantees: a segment is trusted only once its size and sha256
//! match its checkpoint (`cdc_checkpoint::verify_segment`) and it has been
//! read completely and agrees with the checkpoint
//! ([`decode::check_checkpoint`], i.e. `cdc_segment::reader`); a missing, corrupt or undecodable
//! segment makes its checkpoint [`Loaded::Refused`], and nothing later in
//! that partition is sent. A broken chain refuses its whole partition. It
//! only reads: nothing here writes to the archive or the database.
//! Memory is bounded: the channel holds one checkpoint of look-ahead.

use std::time::Instant;

use cdc_checkpoint::{Checkpoint, CheckpointError, PurgeRecord};
use cdc_common::db::Dialect;
use cdc_common::storage::ArchiveStore;

use crate::{decode, versions, PurgeError, Refusal};

/// A checkpoint read ahead of the deletes.
pub(crate) struct Prefetched {
    pub(crate) cp: Checkpoint,
    /// Its purge record, if it was already purged (then `loaded` is unused).
    pub(crate) record: Option<PurgeRecord>,
    pub(crate) loaded: Loaded,
}

/// What a checkpoint's segment became.
pub(crate) enum Loaded {
    /// Verified and decoded: the versions to delete (targets of an open
    /// tail transaction already held back).
    Plan { plan: versions::Plan },
    /// The checkpoint names no segment (nothing archivable in its range).
    NoSegment,
    /// The checkpoint cannot be trusted; why.
    Refused(String),
}

/// The archive task, stopped (aborted) when dropped: the purge returned
/// early.
pub(crate) struct Loader(pub(crate) Option<tokio::task::JoinHandle<()>>);

impl Drop for Loader {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// What the chains hold, reported before any checkpoint is loaded.
pub(crate) struct Chains {
    /// Segment rows over every readable chain (the progress bar's total).
    pub(crate) rows: u64,
    /// Checkpoints with a segment that the newest manifests record as
    /// purged: not loaded, their records not read.
    pub(crate) folded: u64,
    /// Partitions whose chain is broken: refused as a whole.
    pub(crate) broken: Vec<Refusal>,
}

/// Reads every partition's chain, reports them on `chains`, then loads
/// the checkpoints in order ([`load_ahead`]).
pub(crate) async fn read_and_load(
    store: ArchiveStore,
    archive_table: String,
    dialect: Dialect,
    replay: Option<crate::Replay>,
    chains_tx: tokio::sync::oneshot::Sender<Result<Chains, PurgeError>>,
    tx: tokio::sync::mpsc::Sender<Result<Prefetched, PurgeError>>,
) {
    let read = async {
        let mut chains = Vec::new();
        let mut broken = Vec::new();
        for p in cdc_checkpoint::partitions(&store, &archive_table).await? {
            match cdc_checkpoint::read_chain(&store, &archive_table, p).await {
                Ok(chain) => chains.push(chain),
                Err(e @ CheckpointError::Broken { .. }) => {
                    tracing::error!(partition = p, error = %e, "refusing partition: its checkpoint chain is broken");
                    broken.push(Refusal {
                        partition: p,
                        checkpoint: cdc_checkpoint::layout::checkpoints_dir(&archive_table, p),
                        segment: None,
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(PurgeError::from(e)),
            }
        }
        Ok((chains, broken))
    };
    let (chains, broken) = match read.await {
        Ok(c) => c,
        Err(e) => {
            let _ = chains_tx.send(Err(e));
            return;
        }
    };
    // Checkpoints the manifests record as purged are neither loaded nor
    // counted in the progress bar's total (a replay loads them).
    let (mut rows, mut folded) = (0, 0);
    for chain in &chains {
        for c in &chain.checkpoints {
            let Some(seg) = &c.segment else { continue };
            if replay.is_none() && chain.folded(c) {
                folded += 1;
            } else {
                rows += seg.rows;
            }
        }
    }
    tracing::debug!(partitions = chains.len(), "checkpoint chains read");
    if chains_tx
        .send(Ok(Chains {
            rows,
            folded,
            broken,
        }))
        .is_err()
    {
        return;
    }
    load_ahead(store, chains, dialect, replay, tx).await;
}

/// Sends every checkpoint of every chain, in order, with its purge record
/// or its verified plan. Stops a partition after a refusal, and stops
/// altogether when the receiver is gone or on an error (which it sends).
/// Reading, verifying and decoding the next checkpoint's segment runs
/// ahead of the deletes of the current one (one checkpoint of lookahead:
/// bounded memory), so the database never waits for the archive.
async fn load_ahead(
    store: ArchiveStore,
    chains: Vec<cdc_checkpoint::Chain>,
    dialect: Dialect,
    replay: Option<crate::Replay>,
    tx: tokio::sync::mpsc::Sender<Result<Prefetched, PurgeError>>,
) {
    for chain in chains {
        // One listing per partition instead of a GET per checkpoint, of the
        // records after those the newest manifest folds.
        let through = chain.purged_through;
        let purged =
            match cdc_checkpoint::purged_firsts(&store, &chain.table, chain.partition, through)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
        let mut previous: Option<String> = None;
        for cp in chain.checkpoints {
            let before = previous.replace(cp.path());
            // Purged, as the newest manifest records: its record is not
            // read (nor reported one by one: `Chains::folded` counts them).
            let folded = through.is_some_and(|t| cp.last_offset <= t);
            // A checkpoint without a segment (resolved timestamps, deletes
            // only: most of an idle partition's chain) has nothing to
            // purge: no record is read or written for it, so a purge run's
            // requests follow the archive's segments, not its age.
            if cp.segment.is_none() {
                continue;
            }
            // A replay takes only the checkpoints it names that are already
            // purged (a first purge is the plain purge's, in chain order,
            // with its record and its refusals), and ignores their records.
            let replayed = match &replay {
                Some(r)
                    if !r.covers(cp.partition, cp.first_offset)
                        || !(folded || purged.contains(&cp.first_offset)) =>
                {
                    continue
                }
                Some(_) => true,
                None if folded => continue,
                None => false,
            };
            let item = async {
                let record = if !replayed && purged.contains(&cp.first_offset) {
                    cdc_checkpoint::read_purge_record(
                        &store,
                        &cp.table,
                        cp.partition,
                        cp.first_offset,
                    )
                    .await?
                } else {
                    None
                };
                if let Some(r) = record.as_ref().filter(|r| !r.describes(&cp)) {
                    return Ok((
                        None,
                        Loaded::Refused(stale_record(r, &cp, before.as_deref())),
                    ));
                }
                let loaded = if record.is_some() {
                    Loaded::NoSegment
                } else {
                    load(&store, &cp, dialect).await?
                };
                Ok::<_, PurgeError>((record, loaded))
            }
            .await;
            let (stop_partition, stop_all) = match &item {
                Ok((_, Loaded::Refused(_))) => (true, false),
                Ok(_) => (false, false),
                Err(_) => (true, true),
            };
            let msg = item.map(|(record, loaded)| Prefetched { cp, record, loaded });
            if tx.send(msg).await.is_err() || stop_all {
                return;
            }
            if stop_partition {
                break;
            }
        }
    }
}

/// Why a checkpoint whose first offset holds another checkpoint's purge
/// record is refused, and what resolves it.
fn stale_record(r: &PurgeRecord, cp: &Checkpoint, previous: Option<&str>) -> String {
    let fix = match previous {
        Some(p) => format!(
            "stop the sinks and purges, then rewind the partition to the checkpoint before it, `cdc-archiver sink rewind {p} --yes`: the record is moved aside with the others and the sink archives the offsets after it again"
        ),
        None => "it is the chain's first checkpoint: move the record aside by hand (it is the evidence of what that purge deleted: keep it)".to_owned(),
    };
    format!(
        "{} is the purge record of another checkpoint (offsets {}..={}, segment {:?}), not of {} (offsets {}..={}, segment {:?}): a checkpoint a rewind superseded, purged by a purge that ran during the rewind. Nothing of this partition is purged past it; {fix}",
        r.path(),
        r.first_offset,
        r.last_offset,
        r.segment,
        cp.path(),
        cp.first_offset,
        cp.last_offset,
        cp.segment.as_ref().map(|s| &s.path)
    )
}

/// Fetches and verifies a checkpoint's segment (size and sha256), decodes
/// it and plans the deletes. Decoding runs on the blocking pool.
async fn load(
    store: &ArchiveStore,
    cp: &Checkpoint,
    dialect: Dialect,
) -> Result<Loaded, PurgeError> {
    let Some(seg) = &cp.segment else {
        return Ok(Loaded::NoSegment);
    };
    let bytes = match cdc_checkpoint::verify_segment(store, seg).await {
        Ok(b) => b,
        Err(
            e @ (CheckpointError::SegmentMissing { .. } | CheckpointError::SegmentCorrupt { .. }),
        ) => {
            return Ok(Loaded::Refused(format!(
                "checkpoint {} cannot be trusted: {e}",
                cp.path()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let (cp_path, seg_path) = (cp.path(), seg.path.clone());
    let checkpoint = cp.clone();
    let planned = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        // Keys and versions only; the full decode for a layout the fast
        // reader does not know (and, as a second opinion, when it fails).
        // Either way the segment has been read completely, as retrieve and
        // restore would read it, before any of its rows is deleted.
        let full = |why: &str| {
            tracing::debug!(segment = %seg_path, reason = why, "full segment decode");
            decode::full(&bytes)
        };
        // PostgreSQL's guard compares content: it needs the values, which
        // only the full decode builds.
        let fast = match dialect {
            Dialect::Postgres => Ok(decode::Fast::Unsupported(
                "PostgreSQL: the content guard needs every value".into(),
            )),
            Dialect::Cockroach => decode::versions(&bytes),
        };
        let decoded = match fast {
            Ok(decode::Fast::Versions(v)) => Ok(v),
            Ok(decode::Fast::Unsupported(why)) => full(&why),
            Err(e) => {
                let r = full(&e.to_string());
                if r.is_ok() {
                    tracing::warn!(segment = %seg_path, error = %e,
                        "the key/version reader failed where the full decode succeeded; using the full decode");
                }
                r
            }
        };
        let seg = match decoded {
            Ok(seg) => seg,
            Err(e) => {
                return Loaded::Refused(format!(
                    "checkpoint {cp_path}: segment {seg_path} does not decode: {e}"
                ))
            }
        };
        if let Err(e) = decode::check_checkpoint(&seg, &checkpoint) {
            // Names the checkpoint, the segment and what differs.
            return Loaded::Refused(e.to_string());
        }
        let rows: Vec<versions::ArchivedVersion> = seg.rows;
        let decoded_in = started.elapsed();
        match versions::plan_keys(&rows, dialect) {
            Ok(plan) => {
                tracing::debug!(checkpoint = %cp_path, rows = rows.len(),
                    decode_ms = decoded_in.as_secs_f64() * 1e3,
                    plan_ms = (started.elapsed() - decoded_in).as_secs_f64() * 1e3, "segment decoded and planned");
                Loaded::Plan { plan }
            }
            Err(e) => Loaded::Refused(format!("checkpoint {cp_path}: {e}")),
        }
    })
    .await;
    match planned {
        Ok(l) => Ok(l),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
