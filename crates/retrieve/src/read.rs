//! Reading the segments a look-up selected, each through
//! `cdc_segment::reader` against the checkpoint that names it.
//!
//! Guarantee: a row is returned only from a segment whose size and SHA-256
//! are its checkpoint's (`cdc_checkpoint::verify_segment`) and that is
//! that checkpoint's: its table, partition and offset range, its row count
//! and columns, every record's offset within the range (the checks the
//! purger makes before it deletes). Anything else is an error naming the
//! checkpoint, the segment and what differs, never a silent skip, and no
//! row of a segment is returned unless all of it decoded.

use cdc_checkpoint::Checkpoint;
use cdc_common::storage::ArchiveStore;
use cdc_segment::reader::{Expected, OpenError};
use futures::{StreamExt, TryStreamExt};

use crate::query::Matcher;
use crate::{Found, RetrieveError, RetrieveStats};

/// Segments fetched and decoded at once. Bounds memory to a few segments.
const PARALLEL_SEGMENTS: usize = 4;

/// What `cp` records about one of its files (the segment at `path`, or its
/// delete file), for [`cdc_segment::reader`]; the count and columns are
/// the caller's to add.
pub(crate) fn expected(cp: &Checkpoint, path: &str, size: u64, sha256: &str) -> Expected {
    Expected {
        checkpoint: cp.path(),
        path: path.to_owned(),
        size,
        sha256: sha256.to_owned(),
        table: cp.table.clone(),
        partition: cp.partition,
        first_offset: cp.first_offset,
        last_offset: cp.last_offset,
        records: None,
        columns: None,
    }
}

/// Fetches, verifies and decodes the segments of `checkpoints`, a few at a
/// time. Returns the rows `matcher` matches, and the other rows that
/// `relaxed` matches (deliveries before an `updated` range).
pub(crate) async fn scan(
    store: &ArchiveStore,
    checkpoints: Vec<Checkpoint>,
    matcher: &Matcher,
    relaxed: Option<&Matcher>,
    stats: &mut RetrieveStats,
) -> Result<(Vec<Found>, Vec<Found>), RetrieveError> {
    let mut results = futures::stream::iter(checkpoints.into_iter().filter_map(|cp| {
        let seg = cp.segment.as_ref()?;
        let expected = expected(&cp, &seg.path, seg.size, &seg.sha256);
        let expected = Expected {
            records: Some(seg.rows),
            columns: Some(seg.columns.clone()),
            ..expected
        };
        let (seg, first) = (seg.clone(), cp.first_offset);
        Some(async move {
            // Size and sha256, then (the reader) that it decodes and is
            // this checkpoint's: its metadata, count, columns, offsets.
            let bytes = cdc_checkpoint::verify_segment(store, &seg).await?;
            let decoded = cdc_segment::reader::open(&bytes, &expected).map_err(|e| match e {
                OpenError::Decode { path, source, .. } => RetrieveError::Segment { path, source },
                e @ OpenError::NotTheCheckpoints { .. } => RetrieveError::NotTheCheckpoints(e),
            })?;
            let scanned = decoded.rows.len();
            let (mut hits, mut earlier) = (Vec::new(), Vec::new());
            for row in decoded.rows {
                let into = if matcher.row_matches(&row) {
                    &mut hits
                } else if relaxed.is_some_and(|r| r.row_matches(&row)) {
                    &mut earlier
                } else {
                    continue;
                };
                into.push(Found {
                    row,
                    segment: seg.path.clone(),
                    checkpoint_first_offset: first,
                });
            }
            Ok::<_, RetrieveError>((scanned, hits, earlier))
        })
    }))
    .buffer_unordered(PARALLEL_SEGMENTS);
    let (mut hits, mut earlier) = (Vec::new(), Vec::new());
    while let Some((scanned, h, e)) = results.try_next().await? {
        stats.segments_read += 1;
        stats.rows_scanned += scanned;
        hits.extend(h);
        earlier.extend(e);
    }
    Ok((hits, earlier))
}
