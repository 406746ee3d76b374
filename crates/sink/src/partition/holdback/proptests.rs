//! Property tests of the hold-back rule: random PostgreSQL streams (with
//! and without changefeed restarts), random safe and forced cuts. They
//! check that the checkpoints are contiguous and account for every offset,
//! that safe cuts never split a transaction, and that no checkpoint lets the
//! purger's `xmin = x AND archived` guard delete a version the archive does
//! not hold.

use crate::partition::test_support::*;
use crate::partition::*;
use cdc_checkpoint::Counts;
use cdc_segment::ArchivedRow;

/// Random PostgreSQL streams (contiguous transactions, increasing
/// `updated`, some resolved and quarantined messages), random safe
/// flushes: the checkpoints are contiguous, account for every offset,
/// and no transaction's rows are ever split between two of them.
#[test]
fn random_streams_never_split_a_transaction() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..200 {
        let mut b = buffer(0);
        let mut checkpoints: Vec<Run> = Vec::new();
        let (mut offset, mut xid, mut updated) = (0i64, 100u64, 1000i64);
        for _ in 0..(5 + rand(20)) {
            xid += 1 + rand(3);
            updated += 1;
            for _ in 0..(1 + rand(4)) {
                let e = match rand(10) {
                    0 => Err(()),
                    1 => resolved_at(updated - 1 - rand(2) as i64),
                    _ => pg(offset, rand(3) as i64, xid, updated, rand(4) != 0),
                };
                b.push(offset, e, "archived");
                offset += 1;
                if rand(3) == 0 {
                    checkpoints.extend(b.take(Cut::Safe));
                }
            }
            if rand(4) == 0 {
                b.push(
                    offset,
                    resolved_at(updated + rand(2) as i64 - 1),
                    "archived",
                );
                offset += 1;
            }
        }
        checkpoints.extend(b.take(Cut::Safe));
        // Contiguous from 0 up to where the buffer continues.
        let mut next = 0;
        for c in &checkpoints {
            assert_eq!(c.first, next);
            next = c.last.unwrap() + 1;
            assert!(c
                .rows
                .iter()
                .all(|r| (c.first..=c.last.unwrap()).contains(&r.meta.offset)));
        }
        assert_eq!(b.first(), next);
        let total: u64 =
            checkpoints.iter().map(|c| c.counts.events).sum::<u64>() + b.pending_events();
        assert_eq!(total, offset as u64);
        // No xid with rows in two checkpoints, nor in a checkpoint and the buffer.
        let mut seen: std::collections::HashMap<u64, usize> = Default::default();
        let held = b.runs.iter().flat_map(|r| &r.rows);
        for (i, rows) in checkpoints
            .iter()
            .map(|c| c.rows.iter().collect::<Vec<_>>())
            .chain(std::iter::once(held.collect()))
            .enumerate()
        {
            for r in rows {
                let x = r.meta.pg_xid.unwrap();
                assert_eq!(*seen.entry(x).or_insert(i), i, "xid {x} split");
            }
        }
        assert!(checkpoints.iter().all(|c| c.open_tail_xid.is_none()));
    }
}

/// Random PostgreSQL streams with changefeed restarts, modelled on
/// pg-changefeed: rounds of whole transactions in commit order (xids in
/// any order), a resolved after some rounds; a crash cuts a round
/// short, inside a transaction, and the restart re-sends the round from
/// its start (the slot) with new `updated`. Random safe flushes and
/// forced cuts. For every checkpoint and every key whose latest
/// version in it was written by transaction x (other than its
/// `open_tail_xid`), x's final version of that key is in that
/// checkpoint or an earlier one: the purger's `xmin = x AND archived`
/// guard never deletes a version the archive does not hold.
#[test]
fn random_streams_with_restarts_never_expose_an_unarchived_version() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let event = |offset: usize,
                 key: i64,
                 xid: u64,
                 t: usize,
                 updated: i64,
                 archived: bool,
                 v: usize| {
        let value = format!(
            r#"{{"after": {{"archived": {archived}, "id": {key}, "v": {v}}}, "before": null, "pg_lsn": "0/{:X}", "pg_xid": "{xid}", "updated": "{updated}.0000000000"}}"#,
            0x1000 + t * 0x100
        );
        keyed(offset as i64, key, &value)
    };
    let (mut restarts, mut older_latest) = (0, 0);
    for _ in 0..400 {
        let n = 3 + rand(10) as usize;
        let mut xids: Vec<u64> = (0..n as u64).map(|i| 500 + i).collect();
        for i in (1..n).rev() {
            xids.swap(i, rand(i as u64 + 1) as usize);
        }
        let txs: Vec<Vec<(i64, bool)>> = (0..n)
            .map(|_| {
                (0..1 + rand(4))
                    .map(|_| (rand(3) as i64, rand(4) != 0))
                    .collect()
            })
            .collect();
        let round = 1 + rand(3) as usize;
        let mut stream = Vec::new();
        let (mut clock, mut slot, mut crashes) = (1000i64, 0usize, 0);
        while slot < n {
            let end = (slot + round).min(n);
            let crash_at = (crashes < 3 && rand(3) == 0).then(|| {
                let t = slot + rand((end - slot) as u64) as usize;
                (t, rand(txs[t].len() as u64) as usize)
            });
            let mut crashed = false;
            'round: for t in slot..end {
                clock += 1;
                for (v, &(key, archived)) in txs[t].iter().enumerate() {
                    if crash_at == Some((t, v)) {
                        crashed = true;
                        break 'round;
                    }
                    stream.push(event(stream.len(), key, xids[t], t, clock, archived, v));
                }
            }
            if crashed {
                crashes += 1;
                restarts += 1;
                clock += 100;
                continue;
            }
            if rand(2) == 0 {
                stream.push(resolved_at(clock));
            }
            slot = end;
        }
        let total = stream.len();
        let mut b = buffer(0);
        let mut checkpoints: Vec<Run> = Vec::new();
        let mut forced = false;
        for (offset, e) in stream.into_iter().enumerate() {
            b.push(offset as i64, e, "archived");
            match rand(12) {
                0..=3 => checkpoints.extend(b.take(Cut::Safe)),
                4 => {
                    forced |= b.open_group.is_some();
                    checkpoints.extend(b.take(Cut::Force));
                }
                _ => {}
            }
            assert_eq!(b.bytes, p_bytes_of(&b));
            assert_eq!(b.rows, b.runs.iter().map(|r| r.rows.len()).sum::<usize>());
        }
        checkpoints.extend(b.take(Cut::Safe));
        let mut next = 0;
        for c in &checkpoints {
            assert_eq!(c.first, next);
            next = c.last.unwrap() + 1;
        }
        assert_eq!(b.first(), next);
        let events: u64 = checkpoints.iter().map(|c| c.counts.events).sum();
        assert_eq!(events + b.pending_events(), total as u64);
        let v_of = |r: &ArchivedRow| match &r.columns[2] {
            (name, cdc_changefeed::Value::Number(v)) if name == "v" => v.parse::<usize>().unwrap(),
            other => panic!("{other:?}"),
        };
        for (i, c) in checkpoints.iter().enumerate() {
            let mut latest: std::collections::HashMap<&str, &ArchivedRow> = Default::default();
            for r in &c.rows {
                latest.insert(r.meta.key_json.as_str(), r);
            }
            for r in latest.values() {
                let x = r.meta.pg_xid.unwrap();
                if c.open_tail_xid == Some(x) {
                    continue;
                }
                let t = xids.iter().position(|&y| y == x).unwrap();
                let key: i64 = r.meta.key_json.trim_matches(['[', ']']).parse().unwrap();
                let (v, &(_, archived)) = txs[t]
                    .iter()
                    .enumerate()
                    .rfind(|(_, e)| e.0 == key)
                    .unwrap();
                if !archived {
                    continue;
                }
                older_latest += usize::from(v_of(r) != v);
                assert!(
                    checkpoints[..=i]
                        .iter()
                        .flat_map(|c| &c.rows)
                        .any(|a| a.meta.pg_xid == Some(x)
                            && a.meta.key_json == r.meta.key_json
                            && v_of(a) == v),
                    "checkpoint {i} ({:?}) lets the purger delete key {key} by xid {x}, \
                     whose final version {v} is not archived up to it",
                    (c.first, c.last)
                );
            }
        }
        if !forced {
            assert!(checkpoints.iter().all(|c| c.open_tail_xid.is_none()));
        }
    }
    assert!(restarts > 100, "{restarts}");
    // Checkpoints whose latest version of a key is not its transaction's
    // final one (a partial copy of a re-sent transaction, whose whole
    // copy an earlier checkpoint holds) were met, and were safe.
    assert!(older_latest > 0, "{older_latest}");
}

/// What a cut would take ([`PartitionBuffer::preview`]) is exactly what it
/// takes ([`PartitionBuffer::take`]): end, rows, deletes, other events,
/// resolved messages and resolved timestamp, over random streams of rows,
/// deletes, unmarked, quarantined and incomplete events, re-sent and
/// out-of-order transactions, and random safe and forced cuts. The sink
/// decides from the preview whether a range holds resolved messages only
/// (then the idle progress object, not a checkpoint, records it), so the
/// idle progress is only as true as this.
#[test]
fn preview_describes_exactly_what_take_returns() {
    let mut seed: u64 = 0x1234_5678_9abc_def1;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut cuts = 0;
    for _ in 0..5_000 {
        let mut b = buffer(0);
        let (mut offset, mut xid, mut updated) = (0i64, 100u64, 1000i64);
        for _ in 0..(5 + rand(40)) {
            let r = rand(14);
            if r < 5 && rand(2) == 0 {
                xid += 1;
                updated += 1;
            }
            let key = rand(3) as i64;
            let e = match r {
                0 => Err(()),
                1 | 2 => resolved_at(updated - 2 + rand(4) as i64),
                3 => pg_delete(offset, key, xid, updated, rand(2) == 0),
                4 => incomplete(offset, key, (rand(2) == 0).then_some("0/FFFFFFF"), updated),
                5 => {
                    let x = xid.saturating_sub(rand(4));
                    let u = updated + rand(3) as i64 - 1;
                    pg_at(offset, key, x, &lsn_of(x), u, rand(3) != 0)
                }
                6 => {
                    let x = xid + 50 + rand(3);
                    let lsn = lsn_of(xid.saturating_sub(rand(3)));
                    pg_at(offset, key, x, &lsn, updated, rand(3) != 0)
                }
                _ => pg(offset, key, xid, updated, rand(4) != 0),
            };
            b.push(offset, e, "archived");
            offset += 1;
            if rand(4) != 0 {
                continue;
            }
            let cut = if rand(4) == 0 { Cut::Force } else { Cut::Safe };
            let preview = b.preview(cut).map(|p| {
                (
                    p.end,
                    p.rows,
                    p.deletes,
                    p.other_events,
                    p.resolved_messages,
                    p.resolved,
                )
            });
            let runs = b.take(cut);
            let taken = runs.last().map(|last| {
                let c = runs
                    .iter()
                    .fold(Counts::default(), |a, r| counts_add(a, r.counts));
                (
                    last.last.expect("sealed"),
                    runs.iter().map(|r| r.rows.len()).sum::<usize>(),
                    runs.iter().map(|r| r.deletes.len()).sum::<usize>(),
                    c.deletes + c.not_archived + c.quarantined,
                    c.resolved,
                    last.resolved,
                )
            });
            assert_eq!(preview, taken, "cut {cut:?} at offset {offset}");
            cuts += usize::from(taken.is_some());
        }
    }
    assert!(cuts > 1_000, "{cuts} non-empty cuts");
}
