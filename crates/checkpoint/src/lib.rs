//! The checkpoint chain: the archive's record of which Kafka offsets are
//! safely archived, and in which segment.
//!
//! Per `(table, partition)` the sink writes one checkpoint per flushed
//! offset range, each starting exactly at the previous one's
//! `last_offset + 1`. Checkpoints are created with a conditional put that
//! never overwrites, so only one writer can extend a chain at a given
//! offset: a zombie sink that lost its partition fails with
//! [`CheckpointError::Conflict`] and must abandon its work. The guarantee
//! kept here is what the purger relies on before it deletes a row: a chain
//! read by [`read_chain`] is contiguous (or the read fails with
//! [`CheckpointError::Broken`]), and a segment is trusted only if a
//! checkpoint names it and its size and sha256 match
//! ([`verify_segment`]). Anyone can compute a table's archive watermark
//! from object storage alone ([`watermark`]).
//!
//! Layout:
//! - `layout`: the archive's path builders and their inverses.
//! - `key_filter`: the per-segment key filters (part of the format).
//! - `error`: [`CheckpointError`], and which failures are retried.
//! - `record`: the [`Checkpoint`] record and the objects it vouches for.
//! - `store`: conditional creates and reads of the JSON objects.
//! - `chain`: listing, reading and verifying a partition's [`Chain`].
//! - `watermark`: each partition's [`Progress`] and the table's [`watermark`].
//! - `segments`: verified segment reads, and the [`orphans`] no checkpoint names.
//! - `purge_record`: the purger's per-checkpoint [`PurgeRecord`].
//! - `idle`: a partition's [`IdleProgress`] through resolved-only offsets.
//! - `manifest`: a chain prefix in one object ([`Manifest`]), read first.
//! - `fixtures` (feature `test-fixtures`): checkpoints for tests.
//! - `gc`: removing what a manifest superseded, with a record ([`plan_gc`]).
//! - `lease`: one maintenance operation per table at a time ([`take_lease`]).
//! - `rewind`: ending a chain at an earlier checkpoint, with a record ([`plan_rewind`]).

mod chain;
mod error;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
mod gc;
mod idle;
pub mod key_filter;
pub mod layout;
mod lease;
mod manifest;
mod purge_record;
mod record;
mod rewind;
mod segments;
mod store;
mod watermark;

pub use chain::{
    head, latest, list_checkpoints, list_checkpoints_after, partitions, read_chain, verify_chain,
    Chain, READ_CONCURRENCY,
};
pub use error::CheckpointError;
pub use gc::{plan_gc, run_gc, GcItem, GcKept, GcPlan, GcRecord, GC_FORMAT_VERSION};
pub use idle::{raise, read_idle_progress, write_idle_progress, IdleProgress};
pub use lease::{take_lease, Lease, LeaseInfo, MAINTENANCE_LEASE_TTL};
pub use manifest::{
    newest_manifest, newest_manifest_end, plan_manifest, write_manifest, Manifest,
    MANIFEST_FORMAT_VERSION,
};
pub use purge_record::{
    purged_firsts, read_purge_record, write_purge_record, write_replay_record, PurgeRecord,
    PurgeWrite,
};
pub use record::{
    message_fingerprint, now_rfc3339, sha256_hex, Checkpoint, Counts, DeletesRef, SegmentRef,
};
pub use rewind::{
    plan_rewind, rewind_records, run_rewind, superseded, RewindMove, RewindPlan, RewindRecord,
    Superseded, REWIND_FORMAT_VERSION,
};
pub use segments::{clean_orphans, orphans, verify_deletes, verify_segment, Orphan};
pub use store::{conditional_create_holds, create, create_new, get_object, read, Created};
pub use watermark::{progress, watermark, Progress};

/// The only checkpoint format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
