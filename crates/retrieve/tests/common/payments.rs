//! The archive most retrieve and restore tests read: 40 segments of about
//! 50 payments over 2 partitions, written in `updated` order, with
//!
//! - key [`K`] archived in two versions (transaction ids 50 and 60, in
//!   segments 3 and 17), both re-sent after a changefeed restart (segment
//!   30) with a later `updated` and the key spelled differently;
//! - 30-digit NUMERICs that differ only in their last digit (ids 100, 101)
//!   and `100.00` (id 102);
//! - notes with quotes and commas (ids divisible by 7);
//! - deletes made at the source, each in its checkpoint's delete file
//!   (the checkpoints [`DELETE_CHECKPOINTS`]): [`K`] deleted by transaction
//!   [`K_DELETE_XID`] (its `before` is version 60) and that delete re-sent
//!   after a changefeed restart with a later `updated` and the key spelled
//!   differently; payment [`DELETED_PAYMENT`] deleted after it was
//!   archived; and [`NEVER_ARCHIVED`], a key no segment holds, deleted
//!   twice without `before` in a checkpoint with no segment.
#![allow(dead_code)]

use cdc_changefeed::{Hlc, Value};
use cdc_checkpoint::Checkpoint;
use cdc_retrieve::{Query, Selector};
use cdc_segment::{ArchivedRow, DeletedRow};

use crate::archive::{deleted, version, Archive, Event};

pub const SEGMENTS: i64 = 40;
pub const ROWS_PER_SEGMENT: i64 = 50;
/// The key with two versions and a redelivered copy.
pub const K: &str = r#"["2024-02-29",7]"#;
/// [`K`] as the changefeed re-sent it (other spacing).
pub const K_RESENT: &str = r#"["2024-02-29", 7]"#;
pub const BIG: &str = "123456789012345678901234.567890";
pub const BIG_NEIGHBOUR: &str = "123456789012345678901234.567891";
/// The segments holding a copy of [`K`].
pub const K_SEGMENTS: [i64; 3] = [3, 17, 30];
/// The transaction that deleted [`K`] (in checkpoint 33, re-sent in 35).
pub const K_DELETE_XID: u64 = 70;
/// The payment deleted after it was archived (checkpoint 31, transaction 90).
pub const DELETED_PAYMENT: i64 = 1500;
/// A key never archived, deleted by transactions 80 and 81 in the
/// segment-less checkpoint `checkpoints[SEGMENTS]`.
pub const NEVER_ARCHIVED: &str = r#"["2024-03-01",999999]"#;
/// The checkpoints with a delete file.
pub const DELETE_CHECKPOINTS: [usize; 4] = [31, 33, 35, SEGMENTS as usize];

/// `updated` of the first row of segment `s`; rows are 1 s apart.
pub fn seg_base(s: i64) -> Hlc {
    Hlc::new(
        1_700_000_000_000_000_000 + s * ROWS_PER_SEGMENT * 1_000_000_000,
        0,
    )
}

pub fn date_of(n: i64) -> String {
    format!("2024-01-{:02}", n % 28 + 1)
}

pub fn key_of(n: i64) -> String {
    format!(r#"["{}",{n}]"#, date_of(n))
}

pub fn amount_of(n: i64) -> String {
    match n {
        100 => BIG.to_owned(),
        101 => BIG_NEIGHBOUR.to_owned(),
        102 => "100.00".to_owned(),
        _ => format!("{n}.25"),
    }
}

pub fn note_of(n: i64) -> String {
    if n % 7 == 0 {
        format!("say \"hi\", to {n} — ü")
    } else {
        "plain".to_owned()
    }
}

pub fn columns(
    date: &str,
    id: i64,
    amount: &str,
    currency: &str,
    note: &str,
) -> Vec<(&'static str, Value)> {
    vec![
        ("booking_date", Value::String(date.to_owned())),
        ("id", Value::Number(id.to_string())),
        ("amount", Value::Number(amount.to_owned())),
        ("currency", Value::String(currency.to_owned())),
        ("note", Value::String(note.to_owned())),
        ("archived", Value::Bool(true)),
    ]
}

pub fn payment(n: i64, updated: Hlc) -> ArchivedRow {
    let currency = if n % 3 == 0 { "CHF" } else { "EUR" };
    let cols = columns(&date_of(n), n, &amount_of(n), currency, &note_of(n));
    version(&key_of(n), updated, Some(1_000 + n as u64), &cols)
}

/// Version `xid` of [`K`] (amount `1.00` for 50, `2.00` for 60).
pub fn k_version(key_json: &str, xid: u64, updated: Hlc) -> ArchivedRow {
    let amount = if xid == 50 { "1.00" } else { "2.00" };
    version(
        key_json,
        updated,
        Some(xid),
        &columns("2024-02-29", 7, amount, "EUR", "k"),
    )
}

/// The `updated` of the copy of [`K`] (or of its delete) in segment `s`.
pub fn k_updated(s: i64) -> Hlc {
    Hlc::new(seg_base(s).wall + 500_000_000, 0)
}

/// The `updated` of the delete of [`NEVER_ARCHIVED`] by transaction `xid`.
pub fn never_archived_updated(xid: u64) -> Hlc {
    Hlc::new(
        seg_base(SEGMENTS).wall + (xid as i64 - 79) * 1_000_000_000,
        0,
    )
}

/// The deletes of checkpoint `s`, each with its position among the events.
fn deletes_of(s: i64) -> Vec<(usize, DeletedRow)> {
    let k_60 = k_version(K, 60, k_updated(17));
    match s {
        31 => {
            let row = payment(DELETED_PAYMENT, seg_base(30));
            let at = Hlc::new(seg_base(31).wall + 250_000_000, 0);
            vec![(3, deleted(&key_of(DELETED_PAYMENT), at, 90, Some(&row)))]
        }
        33 => vec![(1, deleted(K, k_updated(33), K_DELETE_XID, Some(&k_60)))],
        35 => vec![(
            1,
            deleted(K_RESENT, k_updated(35), K_DELETE_XID, Some(&k_60)),
        )],
        SEGMENTS => [80, 81]
            .into_iter()
            .map(|xid| {
                (
                    0,
                    deleted(NEVER_ARCHIVED, never_archived_updated(xid), xid, None),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The archive and its checkpoints in the order written (segment `s` is
/// `checkpoints[s]`, partition `s % 2`).
pub async fn build(table: &str) -> (Archive, Vec<Checkpoint>) {
    let mut archive = Archive::new(table, 2);
    let mut checkpoints = Vec::new();
    for s in 0..SEGMENTS {
        let mut rows: Vec<ArchivedRow> = (0..ROWS_PER_SEGMENT)
            .map(|j| {
                let n = s * ROWS_PER_SEGMENT + j;
                payment(n, Hlc::new(seg_base(s).wall + j * 1_000_000_000, 0))
            })
            .collect();
        match s {
            3 => rows.insert(1, k_version(K, 50, k_updated(3))),
            17 => rows.insert(1, k_version(K, 60, k_updated(17))),
            // A restart of the changefeed replays both versions, in order.
            30 => {
                rows.insert(1, k_version(K_RESENT, 50, k_updated(30)));
                rows.insert(
                    2,
                    k_version(K_RESENT, 60, Hlc::new(k_updated(30).wall + 1, 0)),
                );
            }
            _ => {}
        }
        let mut events: Vec<Event> = rows.into_iter().map(Event::Row).collect();
        for (at, d) in deletes_of(s) {
            events.insert(at, Event::Delete(d));
        }
        let resolved = Hlc::new(seg_base(s + 1).wall - 1, 0);
        let cp = archive
            .flush_events((s % 2) as i32, events, Some(resolved))
            .await;
        checkpoints.push(cp);
    }
    // The application deletes a key that was never archived, twice.
    let deletes = deletes_of(SEGMENTS)
        .into_iter()
        .map(|(_, d)| Event::Delete(d));
    let resolved = Hlc::new(seg_base(SEGMENTS + 1).wall - 1, 0);
    let cp = archive
        .flush_events(0, deletes.collect(), Some(resolved))
        .await;
    checkpoints.push(cp);
    (archive, checkpoints)
}

/// A look-up of `selector` in `archive`, without a limit.
pub fn query(archive: &Archive, selector: Selector, all_versions: bool) -> Query {
    Query {
        table: archive.table.clone(),
        selector,
        all_versions,
        limit: None,
    }
}

/// A `--key` argument.
pub fn key(text: &str) -> Vec<Value> {
    cdc_retrieve::parse_key_arg(text).unwrap()
}
