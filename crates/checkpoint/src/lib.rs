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

pub mod key_filter;
pub mod layout;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use cdc_changefeed::Hlc;
use cdc_common::retry::Retryable;
use cdc_common::storage::ArchiveStore;
use futures::{StreamExt, TryStreamExt};
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The only checkpoint format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Errors reading or writing the archive's bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The object store failed; retryable when the transport failed.
    #[error("object store {op} {path}: {source}")]
    Storage {
        /// What we were doing (`get`, `put`, `list`, `delete`).
        op: &'static str,
        /// The object or prefix.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Another writer already created this checkpoint: the caller lost the
    /// partition (or is a zombie) and must abandon its buffered work and
    /// reload the chain. Not retryable.
    #[error("checkpoint {path} already exists (written by {existing_writer:?}): another sink owns this partition")]
    Conflict {
        /// The checkpoint object.
        path: String,
        /// Who wrote the existing one, when readable.
        existing_writer: Option<String>,
    },
    /// Two consecutive checkpoints do not join up (gap or overlap), or a
    /// checkpoint does not match its name. Needs an operator.
    #[error(
        "checkpoint chain {table}/p{partition} is broken between {previous} and {next}: {reason}"
    )]
    Broken {
        /// Archive table.
        table: String,
        /// Partition.
        partition: i32,
        /// The earlier object (or the same object when it contradicts its name).
        previous: String,
        /// The later object.
        next: String,
        /// What does not match.
        reason: String,
    },
    /// An object is not the JSON we expect.
    #[error("{path} is not a valid checkpoint/purge record: {source}")]
    Malformed {
        /// The object.
        path: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint names a segment that is not in the store.
    #[error("segment {path} named by a checkpoint is missing")]
    SegmentMissing {
        /// The segment path (relative to the archive root).
        path: String,
    },
    /// A segment's size or sha256 differs from what its checkpoint says.
    #[error("segment {path} is corrupt: expected {expected}, found {actual}")]
    SegmentCorrupt {
        /// The segment path (relative to the archive root).
        path: String,
        /// `size=… sha256=…` from the checkpoint.
        expected: String,
        /// `size=… sha256=…` of the object.
        actual: String,
    },
}

impl Retryable for CheckpointError {
    fn is_retryable(&self) -> bool {
        match self {
            CheckpointError::Storage { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

fn storage<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(object_store::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Storage {
        op,
        path: path.to_string(),
        source,
    }
}

/// What one checkpoint's offset range contained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Kafka messages in the range (all kinds, duplicates included).
    pub events: u64,
    /// Rows written to the segment.
    pub rows_archived: u64,
    /// Delete events (not archived as rows).
    pub deletes: u64,
    /// Row events whose row is not marked archived (not archived as rows).
    pub not_archived: u64,
    /// Resolved-timestamp messages.
    pub resolved: u64,
    /// Undecodable messages written to the quarantine.
    pub quarantined: u64,
}

/// The segment a checkpoint vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRef {
    /// Path relative to the archive root.
    pub path: String,
    /// Object size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the object.
    pub sha256: String,
    /// Records in the segment.
    pub rows: u64,
    /// SQL column names of the rows, in segment order.
    pub columns: Vec<String>,
}

impl SegmentRef {
    /// Describes `bytes` uploaded at `path`.
    pub fn describe(path: String, bytes: &[u8], rows: u64, columns: Vec<String>) -> Self {
        Self {
            path,
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            rows,
            columns,
        }
    }
}

/// The delete file a checkpoint vouches for: the delete events of its
/// offset range (see `cdc_segment::encode_deletes`), kept apart from the
/// segment so that no reader of row versions can take one for a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletesRef {
    /// Path relative to the archive root (`<table>/deletes/p<partition>/…`).
    pub path: String,
    /// Object size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the object.
    pub sha256: String,
    /// Delete records in the file; equals the checkpoint's `counts.deletes`.
    pub records: u64,
}

impl DeletesRef {
    /// Describes `bytes` uploaded at `path`.
    pub fn describe(path: String, bytes: &[u8], records: u64) -> Self {
        Self {
            path,
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            records,
        }
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One link of a partition's chain: offsets `first_offset..=last_offset`
/// are archived (or accounted for) and need never be read from Kafka again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Archive table name.
    pub table: String,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// The topic's partition count when this was written, so the watermark
    /// can be computed from storage alone.
    pub partitions: i32,
    /// First offset covered (inclusive).
    pub first_offset: i64,
    /// Last offset covered (inclusive). Every offset in between is
    /// accounted for in `counts`.
    pub last_offset: i64,
    /// The segment, `None` when the range held no archivable row.
    pub segment: Option<SegmentRef>,
    /// The range's delete events (`None` when it held none, and in
    /// checkpoints written before delete files existed, which only count
    /// them). Never row versions: the purger does not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes: Option<DeletesRef>,
    /// What the range contained.
    pub counts: Counts,
    /// Smallest `updated` of the archived rows.
    pub min_updated: Option<Hlc>,
    /// Largest `updated` of the archived rows.
    pub max_updated: Option<Hlc>,
    /// Latest resolved timestamp seen in this partition at or before
    /// `last_offset` (carried forward from the previous checkpoint).
    pub resolved: Option<Hlc>,
    /// The sink instance that wrote it.
    pub writer_id: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// A Bloom filter over the segment's keys (see [`key_filter`]), so a
    /// look-up by key reads only the segments that may hold it.
    pub key_filter: Option<String>,
    /// PostgreSQL changefeed only: set when this checkpoint had to end
    /// inside the events of one source transaction (that transaction's
    /// events did not fit the sink's memory budget). Versions written by
    /// that transaction share one `xmin`, so a later version of a row may
    /// follow in the next checkpoint: the purger never deletes this
    /// checkpoint's rows of that transaction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_tail_xid: Option<u64>,
    /// The fingerprint of the Kafka message at `last_offset`
    /// ([`message_fingerprint`], hex): a sink resuming the chain checks that
    /// Kafka still holds that message there, so a topic deleted and
    /// recreated (offsets from 0 again) is refused instead of skipped.
    /// Absent from checkpoints written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<String>,
}

impl Checkpoint {
    /// Path of this checkpoint relative to the archive root.
    pub fn path(&self) -> String {
        layout::checkpoint_path(&self.table, self.partition, self.first_offset)
    }

    /// Pretty JSON, as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a checkpoint always serialises")
    }
}

/// The current time as RFC 3339 (UTC, milliseconds).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn get_bytes(store: &ArchiveStore, path: &Path) -> Result<Option<Bytes>, CheckpointError> {
    match store.store.get(path).await {
        Ok(r) => Ok(Some(r.bytes().await.map_err(storage("get", path))?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(storage("get", path)(e)),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T, CheckpointError> {
    serde_json::from_slice(bytes).map_err(|source| CheckpointError::Malformed {
        path: path.to_string(),
        source,
    })
}

/// Outcome of a conditional create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// We created the object.
    Created,
    /// An identical object was already there (our own earlier attempt whose
    /// response was lost, or an idempotent repeat).
    AlreadyThere,
}

/// Creates `relative` with `body` unless it exists. If it exists with the
/// same bytes, that is our own earlier attempt: success. Otherwise
/// returns the existing bytes.
async fn create_object(
    store: &ArchiveStore,
    relative: &str,
    body: Vec<u8>,
) -> Result<Result<Created, Bytes>, CheckpointError> {
    let path = store.path(relative);
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .store
        .put_opts(&path, PutPayload::from(body.clone()), opts)
        .await
    {
        Ok(_) => Ok(Ok(Created::Created)),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {
            let existing = get_bytes(store, &path).await?.unwrap_or_default();
            if existing.as_ref() == body.as_slice() {
                Ok(Ok(Created::AlreadyThere))
            } else {
                Ok(Err(existing))
            }
        }
        Err(e) => Err(storage("put", &path)(e)),
    }
}

/// Checks that the store refuses to create an object that exists (a
/// conditional create: `If-None-Match: *` on S3): the chain's single-writer
/// guarantee (a zombie sink's checkpoint is refused) rests on it, and some
/// S3-compatible stores ignore the condition and overwrite. Writes two
/// different bodies to one probe object under `_probe/`, expects the
/// second refused, and removes the probe. `Ok(false)`: the store
/// overwrote.
pub async fn conditional_create_holds(store: &ArchiveStore) -> Result<bool, CheckpointError> {
    let relative = format!(
        "_probe/conditional-create-{}",
        uuid::Uuid::new_v4().simple()
    );
    let first = create_object(store, &relative, b"first".to_vec()).await?;
    let second = create_object(store, &relative, b"second".to_vec()).await?;
    let path = store.path(&relative);
    let kept = get_bytes(store, &path).await?;
    let _ = store.store.delete(&path).await;
    Ok(matches!(first, Ok(Created::Created))
        && second.is_err()
        && kept.as_deref() == Some(b"first".as_slice()))
}

/// Creates the checkpoint, never overwriting. An existing different
/// checkpoint at the same first offset is a [`CheckpointError::Conflict`]:
/// another writer extended the chain first. Safe to retry: an identical
/// existing checkpoint (our own lost response) counts as success.
pub async fn create(
    store: &ArchiveStore,
    checkpoint: &Checkpoint,
) -> Result<Created, CheckpointError> {
    let relative = checkpoint.path();
    match create_object(store, &relative, checkpoint.to_json()).await? {
        Ok(created) => Ok(created),
        Err(existing) => Err(CheckpointError::Conflict {
            existing_writer: serde_json::from_slice::<Checkpoint>(&existing)
                .ok()
                .map(|c| c.writer_id),
            path: relative,
        }),
    }
}

/// Reads one checkpoint, `None` if absent.
pub async fn read(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    first_offset: i64,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let path = store.path(&layout::checkpoint_path(table, partition, first_offset));
    match get_bytes(store, &path).await? {
        Some(b) => Ok(Some(parse(&path, &b)?)),
        None => Ok(None),
    }
}

/// Lists the objects under a relative prefix (recursively).
async fn list(
    store: &ArchiveStore,
    prefix: &str,
) -> Result<Vec<object_store::ObjectMeta>, CheckpointError> {
    let path = store.path(prefix);
    store
        .store
        .list(Some(&path))
        .try_collect()
        .await
        .map_err(storage("list", &path))
}

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

/// Reads and verifies a partition's chain (empty if it has no checkpoint).
/// Checkpoints are fetched [`READ_CONCURRENCY`] at a time; the result keeps
/// chain (offset) order and any gap or overlap fails the read.
pub async fn read_chain(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Chain, CheckpointError> {
    let firsts = list_checkpoints(store, table, partition).await?;
    let checkpoints: Vec<Checkpoint> = futures::stream::iter(firsts)
        .map(|first| read_listed(store, table, partition, first))
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    verify_chain(table, partition, &checkpoints)?;
    Ok(Chain {
        table: table.to_owned(),
        partition,
        checkpoints,
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

/// The latest checkpoint of a partition (by name; not chain-verified).
pub async fn latest(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
) -> Result<Option<Checkpoint>, CheckpointError> {
    match list_checkpoints(store, table, partition).await?.last() {
        Some(&first) => read(store, table, partition, first).await,
        None => Ok(None),
    }
}

/// The fingerprint of a Kafka message: FNV-1a (64 bits) over the key's and
/// the value's lengths and bytes, as 16 hex digits. Not a checksum against
/// tampering: it tells one topic's message at an offset from another's.
pub fn message_fingerprint(key: Option<&[u8]>, value: Option<&[u8]>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    };
    for part in [key, value] {
        match part {
            None => eat(&[0xff; 8]),
            Some(b) => {
                eat(&(b.len() as u64).to_be_bytes());
                eat(b);
            }
        }
    }
    format!("{h:016x}")
}

/// Where each partition's chain stands: what the watermark is computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The topic's partition count: the largest that any partition's latest
    /// checkpoint recorded (0 when no partition has a checkpoint).
    pub partitions: i32,
    /// Latest resolved timestamp of each partition `0..partitions` that has
    /// a checkpoint (`None`: its chain has no resolved timestamp yet).
    /// A partition missing from the map has no checkpoint at all.
    pub resolved: BTreeMap<i32, Option<Hlc>>,
}

impl Progress {
    /// The minimum over ALL partitions `0..partitions` of each chain's
    /// latest resolved timestamp; `None` when any has none yet.
    pub fn watermark(&self) -> Option<Hlc> {
        if self.partitions == 0 {
            return None;
        }
        let mut min: Option<Hlc> = None;
        for p in 0..self.partitions {
            let r = self.resolved.get(&p).copied().flatten()?;
            min = Some(min.map_or(r, |m| m.min(r)));
        }
        min
    }

    /// Partitions `0..partitions` whose latest resolved timestamp is not
    /// past `target` (missing or no resolved timestamp included), with it.
    pub fn behind(&self, target: Hlc) -> Vec<(i32, Option<Hlc>)> {
        (0..self.partitions)
            .map(|p| (p, self.resolved.get(&p).copied().flatten()))
            .filter(|(_, r)| r.is_none_or(|r| r <= target))
            .collect()
    }
}

/// Reads every partition's latest checkpoint: see [`Progress`].
pub async fn progress(store: &ArchiveStore, table: &str) -> Result<Progress, CheckpointError> {
    let mut out = Progress::default();
    for p in partitions(store, table).await? {
        if let Some(c) = latest(store, table, p).await? {
            out.partitions = out.partitions.max(c.partitions).max(p + 1);
            out.resolved.insert(p, c.resolved);
        }
    }
    Ok(out)
}

/// The table's archive watermark: every change at or before it, in every
/// partition, is archived. The minimum over ALL partitions `0..partitions`
/// (the count recorded in the checkpoints) of each chain's latest resolved
/// timestamp; `None` when any partition has none yet.
pub async fn watermark(store: &ArchiveStore, table: &str) -> Result<Option<Hlc>, CheckpointError> {
    Ok(progress(store, table).await?.watermark())
}

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

/// Per partition: the segments its checkpoints name, and the chain's end
/// (`None` when the partition has no checkpoint, or its chain does not
/// verify: then nothing of it counts as covered).
async fn named_segments(
    store: &ArchiveStore,
    table: &str,
) -> Result<(HashSet<String>, BTreeMap<i32, Option<i64>>), CheckpointError> {
    let mut named = HashSet::new();
    let mut ends = BTreeMap::new();
    for p in partitions(store, table).await? {
        let firsts = list_checkpoints(store, table, p).await?;
        let checkpoints: Vec<Option<Checkpoint>> = futures::stream::iter(firsts)
            .map(|first| read(store, table, p, first))
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let checkpoints: Vec<Checkpoint> = checkpoints.into_iter().flatten().collect();
        named.extend(checkpoints.iter().flat_map(|c| {
            c.segment
                .as_ref()
                .map(|s| s.path.clone())
                .into_iter()
                .chain(c.deletes.as_ref().map(|d| d.path.clone()))
        }));
        let end = match verify_chain(table, p, &checkpoints) {
            Ok(()) => checkpoints.last().map(|c| c.last_offset),
            Err(_) => None,
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
            let (_, last) = layout::parse_segment_name(&path)?;
            if named.contains(&path) {
                return None;
            }
            let end = segment_partition(&path).and_then(|p| ends.get(&p).copied().flatten());
            Some(Orphan {
                covered: end.is_some_and(|end| last <= end),
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

/// What the purger did for one checkpoint (`<table>/purged/p<partition>/<first:020>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRecord {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Archive table.
    pub table: String,
    /// Partition.
    pub partition: i32,
    /// First offset of the purged checkpoint (names the record).
    pub first_offset: i64,
    /// Last offset of the purged checkpoint.
    pub last_offset: i64,
    /// The checkpoint's segment path (`None` for a segment-less checkpoint).
    pub segment: Option<String>,
    /// Rows deleted from the source table.
    pub deleted: u64,
    /// Rows already gone from the source.
    pub already_gone: u64,
    /// Rows that changed since they were archived (kept).
    pub skipped_changed: u64,
    /// Rows no longer marked archived (kept).
    pub skipped_unmarked: u64,
    /// Rows a child table still referenced (`NO ACTION`/`RESTRICT` foreign
    /// key): kept, and re-touched for a later run. Absent from records
    /// written before this field existed (such rows failed the purge then).
    #[serde(default)]
    pub skipped_referenced: u64,
    /// Keys whose latest archived event carries no version (kept). Records
    /// written before this field existed counted them in `skipped_changed`.
    #[serde(default)]
    pub skipped_no_version: u64,
    /// Keys kept because their archived version was written by the source
    /// transaction the checkpoint ends inside (`open_tail_xid`): a later
    /// version from that transaction may be in the next checkpoint.
    #[serde(default)]
    pub skipped_open_transaction: u64,
    /// Keys kept because their archived 64-bit PostgreSQL xid is too far
    /// (2^31 or more) from the server's current xid for the 32-bit `xmin`
    /// comparison to be trusted, or is ahead of it.
    #[serde(default)]
    pub skipped_xid_too_old: u64,
    /// Segment rows that are older versions or redelivered duplicates of a
    /// key whose latest version in the same segment was the one purged.
    /// With these, `deleted + already_gone + skipped_* + superseded` equals
    /// the segment's rows.
    #[serde(default)]
    pub superseded: u64,
    /// Always false for a stored record (dry runs store nothing).
    pub dry_run: bool,
    /// The purger instance.
    pub purger_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
}

impl PurgeRecord {
    /// Path relative to the archive root.
    pub fn path(&self) -> String {
        layout::purged_path(&self.table, self.partition, self.first_offset)
    }

    /// Every segment row this record accounts for: deleted, already gone,
    /// skipped (any reason) or superseded. Equals the segment's `rows` for a
    /// record that has the per-reason fields (older records did not count
    /// superseded rows).
    pub fn accounted_rows(&self) -> u64 {
        self.deleted
            + self.already_gone
            + self.skipped_changed
            + self.skipped_unmarked
            + self.skipped_referenced
            + self.skipped_no_version
            + self.skipped_open_transaction
            + self.skipped_xid_too_old
            + self.superseded
    }
}

/// Outcome of [`write_purge_record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeWrite {
    /// This record is now stored (or an identical one was).
    Written,
    /// A different record already exists: the checkpoint was already purged.
    AlreadyPurged(Box<PurgeRecord>),
}

/// Stores a purge record with a conditional create. An existing record
/// means the checkpoint was already purged: idempotent, not an error.
pub async fn write_purge_record(
    store: &ArchiveStore,
    record: &PurgeRecord,
) -> Result<PurgeWrite, CheckpointError> {
    let relative = record.path();
    let body = serde_json::to_vec_pretty(record).expect("a purge record always serialises");
    match create_object(store, &relative, body).await? {
        Ok(_) => Ok(PurgeWrite::Written),
        Err(existing) => Ok(PurgeWrite::AlreadyPurged(Box::new(parse(
            &store.path(&relative),
            &existing,
        )?))),
    }
}

/// Reads the purge record of the checkpoint starting at `first_offset`.
pub async fn read_purge_record(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    first_offset: i64,
) -> Result<Option<PurgeRecord>, CheckpointError> {
    let path = store.path(&layout::purged_path(table, partition, first_offset));
    match get_bytes(store, &path).await? {
        Some(b) => Ok(Some(parse(&path, &b)?)),
        None => Ok(None),
    }
}
