//! Event and buffer helpers shared by the partition unit tests: the
//! buffer's own, the hold-back rule's tests and its property tests.

use cdc_changefeed::{decode, Event, RawRecord};

use super::{delete_bytes, row_bytes, PartitionBuffer, Run};

pub(crate) fn ev(offset: i64, value: &str) -> Result<Event, ()> {
    keyed(offset, 1, value)
}

/// The decoded record of key `[key]` at `offset` of partition 0.
pub(crate) fn keyed(offset: i64, key: i64, value: &str) -> Result<Event, ()> {
    decode(&RawRecord {
        topic: "t",
        partition: 0,
        offset,
        key: Some(format!("[{key}]").as_bytes()),
        value: Some(value.as_bytes()),
    })
    .map_err(|_| ())
}

/// The commit LSN the tests give transaction `xid`: transactions
/// commit in xid order unless a test says otherwise.
pub(crate) fn lsn_of(xid: u64) -> String {
    format!("0/{:X}", 0x0100_0000 + xid * 0x40)
}

/// A PostgreSQL changefeed event (wrapped envelope with `pg_xid`).
pub(crate) fn pg(
    offset: i64,
    key: i64,
    xid: u64,
    updated: i64,
    archived: bool,
) -> Result<Event, ()> {
    pg_at(offset, key, xid, &lsn_of(xid), updated, archived)
}

/// [`pg`] with an explicit commit LSN.
pub(crate) fn pg_at(
    offset: i64,
    key: i64,
    xid: u64,
    lsn: &str,
    updated: i64,
    archived: bool,
) -> Result<Event, ()> {
    let value = format!(
        r#"{{"after": {{"archived": {archived}, "id": {key}, "v": {offset}}}, "before": null, "pg_lsn": "{lsn}", "pg_xid": "{xid}", "updated": "{updated}.0000000000"}}"#
    );
    keyed(offset, key, &value)
}

pub(crate) fn resolved_at(wall: i64) -> Result<Event, ()> {
    ev(0, &format!(r#"{{"resolved": "{wall}.0000000000"}}"#))
}

pub(crate) fn buffer(start: i64) -> PartitionBuffer {
    PartitionBuffer::new("t".into(), "t".into(), 0, 1, start, None)
}

pub(crate) fn ranges(runs: &[Run]) -> Vec<(i64, i64)> {
    runs.iter().map(|r| (r.first, r.last.unwrap())).collect()
}

pub(crate) fn offsets(run: &Run) -> Vec<i64> {
    run.rows.iter().map(|r| r.meta.offset).collect()
}

pub(crate) fn p_bytes_of(b: &PartitionBuffer) -> u64 {
    b.runs
        .iter()
        .flat_map(|r| &r.rows)
        .map(row_bytes)
        .sum::<u64>()
        + b.runs
            .iter()
            .flat_map(|r| &r.deletes)
            .map(delete_bytes)
            .sum::<u64>()
}

/// A PostgreSQL changefeed delete whose `before` row has `archived`.
pub(crate) fn pg_delete(
    offset: i64,
    key: i64,
    xid: u64,
    updated: i64,
    archived: bool,
) -> Result<Event, ()> {
    let value = format!(
        r#"{{"after": null, "before": {{"archived": {archived}, "id": {key}, "v": 1.50}}, "pg_lsn": "{}", "pg_xid": "{xid}", "updated": "{updated}.0000000000"}}"#,
        lsn_of(xid)
    );
    keyed(offset, key, &value)
}

pub(crate) fn open_tails(runs: &[Run]) -> Vec<Option<u64>> {
    runs.iter().map(|r| r.open_tail_xid).collect()
}

/// An incomplete row as the PostgreSQL changefeed sends it: no
/// `pg_xid`, a column missing (`v`), its transaction's commit LSN.
pub(crate) fn incomplete(
    offset: i64,
    key: i64,
    lsn: Option<&str>,
    updated: i64,
) -> Result<Event, ()> {
    let lsn = lsn.map_or(String::new(), |l| format!(r#""pg_lsn": "{l}", "#));
    let value = format!(
        r#"{{"after": {{"archived": true, "id": {key}}}, "before": null, {lsn}"updated": "{updated}.0000000000"}}"#
    );
    keyed(offset, key, &value)
}
