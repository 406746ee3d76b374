//! The archive most retrieve and restore tests read: 40 segments of about
//! 50 payments over 2 partitions, written in `updated` order, with
//!
//! - key [`K`] archived in two versions (transaction ids 50 and 60, in
//!   segments 3 and 17), both re-sent after a changefeed restart (segment
//!   30) with a later `updated` and the key spelled differently;
//! - 30-digit NUMERICs that differ only in their last digit (ids 100, 101)
//!   and `100.00` (id 102);
//! - notes with quotes and commas (ids divisible by 7).
#![allow(dead_code)]

use cdc_changefeed::{Hlc, Value};
use cdc_checkpoint::Checkpoint;
use cdc_segment::ArchivedRow;

use crate::archive::{version, Archive};

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

fn payment(n: i64, updated: Hlc) -> ArchivedRow {
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

/// The `updated` of the copy of [`K`] in segment `s`.
pub fn k_updated(s: i64) -> Hlc {
    Hlc::new(seg_base(s).wall + 500_000_000, 0)
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
        let resolved = Hlc::new(seg_base(s + 1).wall - 1, 0);
        checkpoints.push(archive.flush((s % 2) as i32, rows, Some(resolved)).await);
    }
    (archive, checkpoints)
}
