//! `retrieve_deletes`: the delete events the archive recorded, listed on
//! their own.

use cdc_changefeed::Value;
use cdc_checkpoint::Checkpoint;
use cdc_common::storage::ArchiveStore;
use cdc_segment::reader::Expected;
use cdc_segment::{DeletedRow, RecordMeta};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::query::{checkpoints, dedupe, sort_by_key_and_version, Event, Hit, Ignoring, Matcher};
use crate::{Query, RetrieveError};

/// Delete files fetched and decoded at once.
const PARALLEL_FILES: usize = 4;

/// One recorded delete event and where it lives. Not a row version: it
/// has its own type so that it cannot be handed to [`crate::restore`] or
/// the row outputs.
#[derive(Debug, Clone)]
pub struct FoundDelete {
    /// The delete: key, `updated`, the deleting version (`mvcc_timestamp`
    /// or `pg_xid`), Kafka position, and the deleted row (`before`) when
    /// the sink kept it.
    pub delete: DeletedRow,
    /// Delete file path, relative to the archive root.
    pub deletes_file: String,
    /// First offset of the checkpoint that names the delete file.
    pub checkpoint_first_offset: i64,
}

impl Event for DeletedRow {
    fn meta(&self) -> &RecordMeta {
        &self.meta
    }
    /// A column of the deleted row (`before`); none when it was not kept.
    fn column(&self, name: &str) -> Option<&Value> {
        self.before
            .as_deref()?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

impl Hit for FoundDelete {
    fn event(&self) -> &dyn Event {
        &self.delete
    }
    fn set_updated(&mut self, updated: Option<cdc_changefeed::Hlc>) {
        self.delete.meta.updated = updated;
    }
    fn last_change_wins(&self) -> bool {
        false
    }
}

/// What a delete look-up cost, and what it could not see.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DeleteStats {
    /// Partitions whose checkpoint chain does not read (`p<N>: why`):
    /// skipped, so the answer may be incomplete.
    pub unreadable_partitions: Vec<String>,
    /// Checkpoints read.
    pub checkpoints: usize,
    /// Delete files named by those checkpoints.
    pub delete_files_total: usize,
    /// Delete files actually fetched, verified and decoded.
    pub delete_files_read: usize,
    /// Delete records decoded from them.
    pub deletes_scanned: usize,
    /// Redelivered copies of a delete already found, dropped.
    pub duplicates_dropped: usize,
    /// Distinct deletes that match every selector but the column
    /// predicate, left out because they record no deleted row (`before`)
    /// to check it on.
    pub without_before: usize,
    /// Checkpoints written before delete files existed that count deletes
    /// (`counts.deletes`) without recording them.
    pub checkpoints_unrecorded: usize,
    /// The deletes those checkpoints count: not in the archive, so never
    /// listed, whatever they were.
    pub deletes_unrecorded: u64,
    /// Deletes returned.
    pub deletes_returned: usize,
}

/// Lists the delete events recorded in the archive's delete files that
/// match `query.selector`, never a row version.
///
/// The selectors mean what they mean for rows: [`crate::Selector::Key`]
/// and [`crate::Selector::KeyPrefix`] select by the delete's key,
/// [`crate::Selector::Updated`] by the delete's `updated` (that of its
/// first delivery: a copy the PostgreSQL changefeed re-sent later is the
/// same delete), and a [`crate::Selector::Column`] predicate is checked on
/// the deleted row (`before`). A delete without `before` (the row was not
/// marked archived, or the changefeed sent none) matches no column
/// predicate, like SQL NULL; [`DeleteStats::without_before`] counts those
/// that match the rest, so that the caller can say so.
///
/// Redelivered copies of one delete (same canonical key and version: MVCC
/// timestamp, else transaction id, else `updated`) are returned once, as
/// their first delivery. Every distinct delete is returned (a key deleted,
/// inserted again and deleted again has two), oldest first per key;
/// `query.all_versions` changes nothing, `query.limit` caps the answer.
///
/// Only delete files named by a checkpoint are read, each after its size
/// and SHA-256 match the checkpoint's (a missing or damaged one is an
/// error, never an empty answer), and after decoding it must be that
/// checkpoint's (table, partition, offset range, record count). A
/// checkpoint without a delete file is never read. Checkpoints record no
/// key filter or `updated` range over their deletes (`key_filter`,
/// `min_updated` and `max_updated` describe the segment's rows only), so
/// every delete file is read whatever the selector: they exist only for
/// ranges that held deletes, and are small.
pub async fn retrieve_deletes(
    store: &ArchiveStore,
    query: &Query,
) -> Result<(Vec<FoundDelete>, DeleteStats), RetrieveError> {
    let mut stats = DeleteStats::default();
    let matcher = Matcher::new(&query.selector);
    let mut candidates = Vec::new();
    let (checkpoints, unreadable) = checkpoints(store, &query.table).await?;
    stats.unreadable_partitions = unreadable;
    for cp in checkpoints {
        stats.checkpoints += 1;
        match &cp.deletes {
            Some(d) => {
                stats.delete_files_total += 1;
                if d.records > 0 {
                    candidates.push(cp);
                }
            }
            None if cp.counts.deletes > 0 => {
                stats.checkpoints_unrecorded += 1;
                stats.deletes_unrecorded += cp.counts.deletes;
            }
            None => {}
        }
    }

    // A copy inside the range may be a re-sent copy of a delete first
    // delivered before it: the lower bound (and the deleted row's columns)
    // are checked on the first delivery, after de-duplication.
    let early = Ignoring {
        from: true,
        columns: true,
    };
    let mut files = futures::stream::iter(
        candidates
            .iter()
            .map(|cp| read_matching(store, cp, &matcher, early)),
    )
    .buffer_unordered(PARALLEL_FILES);
    let mut hits = Vec::new();
    while let Some((scanned, h)) = files.try_next().await? {
        stats.delete_files_read += 1;
        stats.deletes_scanned += scanned;
        hits.extend(h);
    }

    let (distinct, dropped) = dedupe(hits);
    stats.duplicates_dropped = dropped;
    let in_range = Ignoring {
        from: false,
        columns: true,
    };
    let mut found: Vec<FoundDelete> = Vec::new();
    for f in distinct {
        if !matcher.eval(&f.delete, in_range) {
            continue;
        }
        if matcher.has_columns() && f.delete.before.is_none() {
            stats.without_before += 1;
        } else if matcher.eval(&f.delete, Ignoring::default()) {
            found.push(f);
        }
    }
    sort_by_key_and_version(&mut found);
    if let Some(limit) = query.limit {
        found.truncate(limit);
    }
    stats.deletes_returned = found.len();
    tracing::debug!(?stats, table = %query.table, "retrieve deletes finished");
    Ok((found, stats))
}

/// Fetches, verifies and decodes the delete file of `cp`. Returns how many
/// records it holds and those `matcher` matches (ignoring `ignoring`).
async fn read_matching(
    store: &ArchiveStore,
    cp: &Checkpoint,
    matcher: &Matcher,
    ignoring: Ignoring,
) -> Result<(usize, Vec<FoundDelete>), RetrieveError> {
    let d = cp.deletes.as_ref().expect("candidates have a delete file");
    let bytes = cdc_checkpoint::verify_deletes(store, d).await?;
    // A checksum proves the bytes are the ones uploaded, not that they are
    // this checkpoint's: the reader checks its metadata, record count and
    // every record's position too.
    let expected = Expected {
        records: Some(d.records),
        ..crate::read::expected(cp, &d.path, d.size, &d.sha256)
    };
    let decoded = cdc_segment::reader::open_deletes(&bytes, &expected).map_err(|e| {
        RetrieveError::DeleteFile {
            path: d.path.clone(),
            reason: e.to_string(),
        }
    })?;
    let scanned = decoded.deletes.len();
    let hits = decoded
        .deletes
        .into_iter()
        .filter(|del| matcher.eval(del, ignoring))
        .map(|delete| FoundDelete {
            delete,
            deletes_file: d.path.clone(),
            checkpoint_first_offset: cp.first_offset,
        })
        .collect();
    Ok((scanned, hits))
}
