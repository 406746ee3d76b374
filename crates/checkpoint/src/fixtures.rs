//! Checkpoints for tests and benchmarks (feature `test-fixtures`), so
//! that no test spells out every field of the format: take one and
//! override what the test is about with struct update syntax.

use crate::{Checkpoint, Counts, FORMAT_VERSION};

/// A checkpoint of `table` (its topic has the same name, 2 partitions),
/// partition `partition`, offsets `first..=last`, naming no file, with no
/// resolved timestamp, written by `test` at a fixed time.
pub fn checkpoint(table: &str, partition: i32, first: i64, last: i64) -> Checkpoint {
    Checkpoint {
        format_version: FORMAT_VERSION,
        table: table.into(),
        topic: table.into(),
        partition,
        partitions: 2,
        first_offset: first,
        last_offset: last,
        segment: None,
        deletes: None,
        counts: Counts::default(),
        min_updated: None,
        max_updated: None,
        resolved: None,
        writer_id: "test".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        key_filter: None,
        open_tail_xid: None,
        last_message: None,
        previous_sha256: None,
        merged: None,
    }
}

/// A purge record of the checkpoint `first..=last` of `table`/`partition`
/// (nothing deleted), by purger `test` at a fixed time.
pub fn purge_record(table: &str, partition: i32, first: i64, last: i64) -> crate::PurgeRecord {
    crate::PurgeRecord {
        format_version: FORMAT_VERSION,
        table: table.into(),
        partition,
        first_offset: first,
        last_offset: last,
        segment: None,
        deleted: 0,
        already_gone: 0,
        skipped_changed: 0,
        skipped_unmarked: 0,
        skipped_referenced: 0,
        skipped_no_version: 0,
        skipped_open_transaction: 0,
        skipped_xid_too_old: 0,
        superseded: 0,
        dry_run: false,
        purger_id: "test".into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: "2026-01-01T00:00:00Z".into(),
    }
}
