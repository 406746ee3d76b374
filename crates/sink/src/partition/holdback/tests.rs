//! Unit tests of the hold-back rule: what proves a transaction complete,
//! what does not, where safe and forced cuts end, and which checkpoints
//! record `open_tail_xid`.

use crate::partition::test_support::*;
use crate::partition::*;

/// The bug this guards against: a row updated twice in one transaction
/// gives two events with one xid; a checkpoint ending between them
/// would let the purger's `xmin = X` guard delete the second version,
/// which only the next checkpoint holds.
#[test]
fn never_cuts_inside_an_unproven_transaction() {
    let mut b = buffer(0);
    b.push(0, pg(0, 1, 10, 100, true), "archived");
    b.push(1, pg(1, 1, 10, 100, true), "archived");
    // Flush (rows, age, shutdown...): nothing may be cut yet.
    assert_eq!(b.safe_end(), -1);
    assert_eq!(b.preview(Cut::Safe), None);
    assert!(b.take(Cut::Safe).is_empty());
    assert_eq!(b.held_back_events(), 2);
    assert_eq!((b.pending_events(), b.rows), (2, 2));
    // The next transaction proves 10 complete, and is held itself.
    b.push(2, pg(2, 2, 11, 101, true), "archived");
    assert_eq!(b.safe_end(), 1);
    let p = b.preview(Cut::Safe).unwrap();
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(0, 1)]);
    assert_eq!(offsets(&runs[0]), vec![0, 1]);
    assert_eq!((p.end, p.rows, p.other_events), (1, 2, 0));
    assert_eq!(runs[0].counts.events, 2);
    assert_eq!(runs[0].open_tail_xid, None);
    assert_eq!(
        (runs[0].min_updated, runs[0].max_updated),
        (
            Some("100.0000000000".parse().unwrap()),
            Some("100.0000000000".parse().unwrap())
        )
    );
    // What is left is exactly transaction 11, its bookkeeping intact.
    assert_eq!((b.first(), b.pending_events(), b.rows), (2, 1, 1));
    assert_eq!(b.bytes, p_bytes_of(&b));
    assert_eq!(
        b.runs[0].min_updated,
        Some("101.0000000000".parse().unwrap())
    );
    // A resolved timestamp >= its `updated` proves it complete.
    b.push(3, resolved_at(100), "archived");
    assert_eq!(b.safe_end(), 1, "resolved 100 < updated 101 proves nothing");
    b.push(4, resolved_at(101), "archived");
    assert_eq!(b.safe_end(), 4);
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(2, 4)]);
    assert_eq!(runs[0].resolved, Some("101.0000000000".parse().unwrap()));
    assert_eq!(
        (b.first(), b.pending_events(), b.rows, b.bytes),
        (5, 0, 0, 0)
    );
}

/// Delete events become delete records (never rows), keep their
/// `before` only when it was marked archived, and stay with their
/// transaction when a cut holds it back.
#[test]
fn deletes_are_recorded_and_cut_with_their_transaction() {
    let mut b = buffer(0);
    b.push(0, pg(0, 1, 10, 100, true), "archived");
    // Transaction 11: delete key 1 (archived), archive key 3, delete
    // key 2 (never marked).
    assert_eq!(
        b.push(1, pg_delete(1, 1, 11, 101, true), "archived"),
        Outcome::Delete
    );
    b.push(2, pg(2, 3, 11, 101, true), "archived");
    b.push(3, pg_delete(3, 2, 11, 101, false), "archived");
    assert_eq!((b.rows, b.deletes), (2, 2));
    // 11 is not proven complete: the cut ends before its first event.
    let p = b.preview(Cut::Safe).unwrap();
    assert_eq!((p.end, p.rows, p.deletes), (0, 1, 0));
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(0, 0)]);
    assert!(runs[0].deletes.is_empty());
    assert_eq!((b.rows, b.deletes, b.bytes), (1, 2, p_bytes_of(&b)));
    b.push(4, resolved_at(101), "archived");
    let p = b.preview(Cut::Safe).unwrap();
    assert_eq!((p.end, p.rows, p.deletes, p.other_events), (4, 1, 2, 2));
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(1, 4)]);
    let run = &runs[0];
    assert_eq!((run.counts.deletes, run.counts.rows_archived), (2, 1));
    assert_eq!(offsets(run), vec![2]);
    let d: Vec<(i64, &str, Option<u64>)> = run
        .deletes
        .iter()
        .map(|d| (d.meta.offset, d.meta.key_json.as_str(), d.meta.pg_xid))
        .collect();
    assert_eq!(d, vec![(1, "[1]", Some(11)), (3, "[2]", Some(11))]);
    assert_eq!(
        run.deletes[0].before,
        Some(vec![
            ("archived".to_owned(), cdc_changefeed::Value::Bool(true)),
            ("id".to_owned(), cdc_changefeed::Value::Number("1".into())),
            ("v".to_owned(), cdc_changefeed::Value::Number("1.50".into())),
        ])
    );
    assert_eq!(run.deletes[1].before, None, "never marked: not copied");
    assert_eq!((b.rows, b.deletes, b.bytes), (0, 0, 0));
}

/// The PostgreSQL changefeed re-sends a transaction after a restart
/// with a new, greater `updated` and the same xid: not a proof.
#[test]
fn same_xid_with_a_greater_updated_is_no_proof() {
    let mut b = buffer(0);
    b.push(0, pg(0, 1, 10, 100, true), "archived");
    b.push(1, pg(1, 1, 10, 200, true), "archived");
    assert!(b.take(Cut::Safe).is_empty());
    // A resolved at the first `updated` is not enough either.
    b.push(2, resolved_at(150), "archived");
    assert!(b.take(Cut::Safe).is_empty());
    b.push(3, resolved_at(200), "archived");
    assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 3)]);
}

/// The group starts at the transaction's first event, archivable or
/// not, and events without a row (quarantined, resolved below it)
/// inside it stay with it.
#[test]
fn the_group_starts_at_the_transactions_first_event() {
    let mut b = buffer(0);
    b.push(0, pg(0, 9, 9, 90, false), "archived");
    b.push(1, pg(1, 1, 10, 100, false), "archived");
    b.push(2, Err(()), "archived");
    b.push(3, pg(3, 1, 10, 100, true), "archived");
    b.push(4, resolved_at(99), "archived");
    b.push(5, pg(5, 2, 10, 100, true), "archived");
    assert_eq!(b.safe_end(), 0);
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(0, 0)]);
    assert_eq!(runs[0].counts.not_archived, 1);
    assert_eq!(b.held_back_events(), 5);
    assert_eq!(b.runs[0].counts.quarantined, 1);
    assert_eq!(b.runs[0].counts.resolved, 1);
    assert_eq!(b.runs[0].counts.not_archived, 1);
    // Nothing more to cut until a proof.
    assert!(b.take(Cut::Safe).is_empty());
    b.push(6, pg(6, 3, 12, 101, false), "archived");
    // 12 holds no archivable row: no group is open, everything goes.
    assert_eq!(b.open_group, None);
    assert_eq!(ranges(&b.take(Cut::Safe)), vec![(1, 6)]);
}

/// Only past the memory budget, a forced cut inside the group: the
/// checkpoint says so, and the rest of the transaction follows in the
/// next checkpoint, cut cleanly once proven.
#[test]
fn forced_cut_records_the_open_transaction() {
    let mut b = buffer(0);
    b.push(0, pg(0, 1, 10, 100, true), "archived");
    b.push(1, pg(1, 1, 10, 100, true), "archived");
    let runs = b.take(Cut::Force);
    assert_eq!(ranges(&runs), vec![(0, 1)]);
    assert_eq!(runs[0].open_tail_xid, Some(10));
    b.push(2, pg(2, 1, 10, 100, true), "archived");
    assert!(b.take(Cut::Safe).is_empty());
    b.push(3, pg(3, 5, 11, 101, true), "archived");
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(2, 2)]);
    assert_eq!(runs[0].open_tail_xid, None);
    assert_eq!(offsets(&runs[0]), vec![2]);
}

/// A column change inside a transaction splits its events over two
/// segments: the first one's checkpoint must carry the xid.
#[test]
fn column_change_inside_a_transaction_marks_the_run() {
    let mut b = buffer(0);
    let wide = |offset: i64, xid: u64| {
        let v = format!(
            r#"{{"after": {{"archived": true, "extra": 1, "id": 1}}, "pg_lsn": "{}", "pg_xid": "{xid}", "updated": "100.0000000000"}}"#,
            lsn_of(xid)
        );
        ev(offset, &v)
    };
    b.push(0, pg(0, 1, 9, 99, true), "archived");
    // Transaction 10 starts with the new column set: a clean boundary.
    b.push(1, wide(1, 10), "archived");
    b.push(2, pg(2, 1, 10, 100, true), "archived");
    b.push(3, pg(3, 1, 11, 101, true), "archived");
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(0, 0), (1, 1), (2, 2)]);
    assert_eq!(
        runs.iter().map(|r| r.open_tail_xid).collect::<Vec<_>>(),
        vec![None, Some(10), None]
    );
    assert_eq!((b.first(), b.rows), (3, 1));
}

/// CockroachDB events (no pg_xid) are never held back.
#[test]
fn events_without_xid_are_not_held() {
    let mut b = buffer(0);
    let row = r#"{"after": {"archived": true, "id": 1}, "updated": "5.0000000000"}"#;
    b.push(0, ev(0, row), "archived");
    b.push(1, ev(1, row), "archived");
    assert_eq!(b.safe_end(), 1);
    assert_eq!(b.held_back_events(), 0);
    assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 1)]);
}

/// Review finding: an incomplete row (no `pg_xid`, a column missing)
/// inside transaction 10 changes the column set, so a run is sealed
/// inside 10. Its checkpoint must name 10: the purger would otherwise
/// delete key 1 by version A (`xmin = 10`) while its current version
/// B, written by 10 too, is only in the next checkpoint, incomplete.
#[test]
fn an_incomplete_row_inside_a_transaction_marks_the_split() {
    let (l10, l11) = (lsn_of(10), lsn_of(11));
    let mut b = buffer(0);
    b.push(0, pg(0, 9, 9, 90, true), "archived");
    // Transaction 10: key 1 updated twice, version B incomplete.
    b.push(1, pg(1, 1, 10, 100, true), "archived");
    b.push(2, incomplete(2, 1, Some(&l10), 100), "archived");
    assert_eq!(b.open_group.map(|g| g.xid), Some(10), "B proves nothing");
    assert_eq!(b.runs.len(), 2);
    assert_eq!(b.runs[0].open_tail_xid, Some(10));
    b.push(3, pg(3, 5, 11, 101, true), "archived");
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(0, 1), (2, 2)]);
    assert_eq!(open_tails(&runs), vec![Some(10), None]);
    assert_eq!(offsets(&runs[1]), vec![2]);

    // Without a commit LSN, it is inside the group as well.
    let mut b = buffer(0);
    b.push(0, pg(0, 1, 10, 100, true), "archived");
    b.push(1, incomplete(1, 1, None, 100), "archived");
    b.push(2, pg(2, 5, 11, 101, true), "archived");
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(0, 0), (1, 1)]);
    assert_eq!(open_tails(&runs), vec![Some(10), None]);

    // One committed later (a greater LSN) is a clean boundary: it
    // proves 10 complete.
    let mut b = buffer(0);
    b.push(0, pg(0, 1, 10, 100, true), "archived");
    b.push(1, incomplete(1, 1, Some(&l11), 101), "archived");
    assert_eq!(b.open_group, None);
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(0, 0), (1, 1)]);
    assert_eq!(open_tails(&runs), vec![None, None]);
}

/// A forced cut (memory budget) inside a transaction marks every run it
/// cuts from the transaction's first event on, not only the last one.
#[test]
fn a_forced_cut_marks_every_run_inside_the_transaction() {
    let l10 = lsn_of(10);
    let mut b = buffer(0);
    b.push(0, pg(0, 9, 9, 90, true), "archived");
    b.push(1, pg(1, 1, 10, 100, true), "archived");
    b.push(2, incomplete(2, 1, Some(&l10), 100), "archived");
    b.push(3, pg(3, 2, 10, 100, true), "archived");
    let runs = b.take(Cut::Force);
    assert_eq!(ranges(&runs), vec![(0, 1), (2, 2), (3, 3)]);
    assert_eq!(open_tails(&runs), vec![Some(10); 3]);
    // 10 goes on, still held; its end is cut cleanly once proven.
    b.push(4, pg(4, 3, 10, 100, true), "archived");
    assert!(b.take(Cut::Safe).is_empty());
    b.push(5, pg(5, 4, 11, 101, true), "archived");
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(4, 4)]);
    assert_eq!(open_tails(&runs), vec![None]);
    // Runs that end before the transaction's first event are not marked.
    let mut b = buffer(0);
    b.push(0, pg(0, 9, 9, 90, true), "archived");
    b.push(1, incomplete(1, 8, Some(&lsn_of(9)), 90), "archived");
    b.push(2, pg(2, 1, 10, 100, true), "archived");
    let runs = b.take(Cut::Force);
    assert_eq!(ranges(&runs), vec![(0, 0), (1, 1), (2, 2)]);
    assert_eq!(open_tails(&runs), vec![Some(9), None, Some(10)]);
}

/// Review finding: the changefeed published part of transaction 11,
/// stopped, and re-sends from its slot: transaction 10 (committed
/// earlier, another xid, a new `updated`) comes again before 11 does.
/// That is no proof that 11 is complete; only a later commit is.
#[test]
fn a_resent_earlier_transaction_is_no_proof() {
    let mut b = buffer(0);
    b.push(0, pg(0, 5, 10, 100, true), "archived");
    // 11 writes key 1 twice; only version A was published.
    b.push(1, pg(1, 1, 11, 101, true), "archived");
    // Restart: from the slot, with new (greater) `updated`.
    b.push(2, pg(2, 5, 10, 200, true), "archived");
    assert_eq!(b.open_group.map(|g| g.xid), Some(11));
    assert_eq!(b.safe_end(), 0);
    assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 0)]);
    b.push(3, pg(3, 1, 11, 201, true), "archived");
    b.push(4, pg(4, 1, 11, 201, true), "archived");
    assert!(b.take(Cut::Safe).is_empty());
    assert_eq!(b.held_back_events(), 4);
    // A later commit proves 11 (and the re-sent 10) complete.
    b.push(5, pg(5, 7, 12, 202, true), "archived");
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(1, 4)]);
    assert_eq!(offsets(&runs[0]), vec![1, 2, 3, 4]);
    assert_eq!(open_tails(&runs), vec![None]);
    assert_eq!((b.first(), b.rows, b.bytes), (5, 1, p_bytes_of(&b)));
}

/// What proves a group complete: a greater commit LSN, or a resolved
/// timestamp at or above the group's largest `updated`; nothing else.
#[test]
fn only_a_later_commit_or_resolved_is_proof() {
    let mut b = buffer(0);
    b.push(0, pg(0, 1, 11, 101, true), "archived");
    // Another xid with the same commit LSN, an earlier one, none.
    b.push(1, pg_at(1, 2, 12, &lsn_of(11), 102, true), "archived");
    b.push(2, pg_at(2, 2, 13, &lsn_of(10), 103, true), "archived");
    let no_lsn = r#"{"after": {"archived": true, "id": 3, "v": 3}, "pg_xid": "14", "updated": "104.0000000000"}"#;
    b.push(3, ev(3, no_lsn), "archived");
    // The same xid re-sent with a greater `updated`.
    b.push(4, pg(4, 1, 11, 300, true), "archived");
    assert_eq!(
        b.open_group.map(|g| (g.xid, g.updated)),
        Some((11, Some("300.0000000000".parse().unwrap())))
    );
    // Resolved below the group's largest `updated`.
    b.push(5, resolved_at(299), "archived");
    assert_eq!(b.safe_end(), -1);
    b.push(6, pg(6, 3, 15, 301, true), "archived");
    assert_eq!((b.safe_end(), b.open_group.map(|g| g.xid)), (5, Some(15)));
    assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 5)]);
    // A group whose events carry no commit LSN: only resolved proves it.
    let mut b = buffer(0);
    let row = |xid: u64, updated: i64| {
        format!(
            r#"{{"after": {{"archived": true, "id": 1}}, "pg_xid": "{xid}", "updated": "{updated}.0000000000"}}"#
        )
    };
    b.push(0, ev(0, &row(20, 100)), "archived");
    b.push(1, pg(1, 2, 21, 101, true), "archived");
    assert_eq!(b.safe_end(), -1);
    b.push(2, resolved_at(100), "archived");
    assert_eq!((b.safe_end(), b.open_group.map(|g| g.xid)), (0, Some(21)));
}

/// A group proven by a resolved timestamp that does not cover the
/// re-sent earlier transaction whose rows came in while the group was
/// held: that transaction is held in turn, from its first re-sent event
/// (whose mark followed the cuts made meanwhile).
#[test]
fn a_resent_transaction_is_held_when_the_group_is_proven_first() {
    let mut b = buffer(0);
    b.push(0, pg(0, 9, 9, 90, true), "archived");
    b.push(1, pg(1, 1, 11, 101, true), "archived");
    b.push(2, pg(2, 5, 10, 200, true), "archived");
    assert_eq!(ranges(&b.take(Cut::Safe)), vec![(0, 0)]);
    b.push(3, pg(3, 6, 10, 200, true), "archived");
    b.push(4, resolved_at(150), "archived");
    assert_eq!(b.open_group.map(|g| g.xid), Some(10));
    assert_eq!(b.safe_end(), 1);
    let p = b.preview(Cut::Safe).unwrap();
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(1, 1)]);
    assert_eq!(offsets(&runs[0]), vec![1]);
    assert_eq!(
        (p.end, p.rows, p.bytes),
        (1, 1, row_bytes(&runs[0].rows[0]))
    );
    assert_eq!(runs[0].counts.events, 1);
    assert_eq!((b.first(), b.rows, b.pending_events()), (2, 2, 3));
    assert_eq!(b.bytes, p_bytes_of(&b));
    b.push(5, resolved_at(200), "archived");
    let runs = b.take(Cut::Safe);
    assert_eq!(ranges(&runs), vec![(2, 5)]);
    assert_eq!(offsets(&runs[0]), vec![2, 3]);
    assert_eq!((b.rows, b.bytes, b.pending_events()), (0, 0, 0));
}
