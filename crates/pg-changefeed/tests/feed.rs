//! The PostgreSQL changefeed against the local stack (PostgreSQL with
//! wal2json, Apache Kafka): what it publishes decodes with the
//! CockroachDB decoder into the expected keys, operations, values,
//! `pg_xid`s and resolved timestamps.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use cdc_changefeed::{Op, Value};
use cdc_common::ident::quote_ident;
use cdc_pg_changefeed::partition::partition_for_key;
use common::{
    check_resolved_guarantee, config, one_table, slot_then_rows, table, Cleanup, Feed, OneTable,
    Reader,
};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

fn num(s: &str) -> Value {
    Value::Number(s.to_owned())
}

fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_deletes_filter_and_composite_keys() {
    let pg = cdc_tests::pg().await;
    let full = cdc_tests::unique("pgcf_full");
    let filt = cdc_tests::unique("pgcf_filt");
    let slot = cdc_tests::unique("pgcf_slot");
    let _cleanup = Cleanup {
        slot: slot.clone(),
        tables: vec![full.clone(), filt.clone()],
    };
    // Key order (region, id) differs from column order (id, region).
    pg.batch_execute(&format!(
        "CREATE TABLE {f} (id int8, region text, amount numeric(30,2) NOT NULL, note text, doc jsonb, \
           at timestamptz, archived bool NOT NULL DEFAULT false, PRIMARY KEY (region, id));
         ALTER TABLE {f} REPLICA IDENTITY FULL;
         CREATE TABLE {g} (id int4 PRIMARY KEY, amount numeric NOT NULL, archived bool NOT NULL DEFAULT false);",
        f = quote_ident(&full),
        g = quote_ident(&filt)
    ))
    .await
    .unwrap();
    cdc_tests::create_topic(&full, 3).await;
    cdc_tests::create_topic(&filt, 3).await;

    let mut filtered = table(&filt);
    filtered.filter_column = Some("archived".into());
    let cfg = config(&slot, vec![table(&full), filtered]);
    // Returns once the slot exists: changes after this are in it.
    let feed = Feed::start(cfg).await;

    let f = quote_ident(&full);
    let g = quote_ident(&filt);
    // One statement per call: a multi-statement simple query would be
    // one implicit transaction.
    for stmt in [
        format!(
            "INSERT INTO {f} VALUES (1, 'eu', 1250.00, 'first', '{{\"k\": [1, 2.50]}}', '2025-06-10 12:00:00.5+02'), \
               (2, 'eu', -0.01, NULL, NULL, NULL), (1, 'us', 1234567890123456789012345678.90, 'big', NULL, NULL)"
        ),
        format!("UPDATE {f} SET note = 'second' WHERE region = 'eu' AND id = 1"),
        format!("DELETE FROM {f} WHERE region = 'eu' AND id = 2"),
        // A primary-key change: CockroachDB sends a delete of the old key
        // and an insert of the new one.
        format!("UPDATE {f} SET id = 3 WHERE region = 'us' AND id = 1"),
        format!("INSERT INTO {g} SELECT i, i * 1.10 FROM generate_series(1, 50) i"),
        format!("UPDATE {g} SET archived = true WHERE id <= 40"),
        format!("DELETE FROM {g} WHERE id = 1"),
    ] {
        pg.batch_execute(&stmt).await.unwrap();
    }
    let xmin_full: HashMap<(String, i64), String> = pg
        .query(&format!("SELECT region, id, xmin::text FROM {f}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let xmin_filt: HashMap<i32, String> = pg
        .query(&format!("SELECT id, xmin::text FROM {g}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let epoch = common::current_epoch(&pg).await;

    // Resolved must eventually cover the last change on every partition.
    let mut rf = Reader::new(&full, 3);
    rows_then_resolved(&mut rf, 7, "7 row events", "resolved past the last change").await;
    let mut rg = Reader::new(&filt, 3);
    rows_then_resolved(
        &mut rg,
        41,
        "41 row events",
        "resolved past the last change",
    )
    .await;
    feed.stop().await;

    // --- the REPLICA IDENTITY FULL table: before/after, composite key ---
    let mut rows = rf.topic.rows();
    rows.sort_by_key(|r| r.meta.updated);
    assert_eq!(
        rows.len(),
        7,
        "exactly the 7 events, no duplicates in a clean run"
    );
    for r in &rows {
        assert_eq!(
            partition_for_key(r.meta.key_json.as_bytes(), 3),
            r.meta.partition,
            "CockroachDB partitioner"
        );
    }
    let (ins, upd, del, moved) = (&rows[..3], &rows[3], &rows[4], &rows[5..]);
    assert!(ins.iter().all(|r| r.op == Op::Insert && r.before.is_none()));
    assert!(
        ins.iter().all(|r| r.meta.updated == ins[0].meta.updated),
        "one transaction, one updated"
    );
    assert!(
        ins[0].meta.updated < upd.meta.updated && upd.meta.updated < del.meta.updated,
        "{:?} {:?} {:?}",
        ins[0].meta.updated,
        upd.meta.updated,
        del.meta.updated
    );
    let eu1 = ins
        .iter()
        .find(|r| r.meta.key_json == r#"["eu", 1]"#)
        .expect("key [\"eu\", 1]");
    assert_eq!(eu1.key, vec![text("eu"), num("1")]);
    let after = eu1.after.as_ref().unwrap();
    assert_eq!(after.get("amount"), Some(&num("1250.00")));
    assert_eq!(after.get("note"), Some(&text("first")));
    assert_eq!(
        after.get("doc"),
        Some(&Value::Json(r#"{"k": [1, 2.50]}"#.into()))
    );
    assert_eq!(after.get("at"), Some(&text("2025-06-10T10:00:00.5Z")));
    assert_eq!(after.get("archived"), Some(&Value::Bool(false)));
    assert_eq!(
        after.columns().collect::<Vec<_>>(),
        ["amount", "archived", "at", "doc", "id", "note", "region"]
    );
    let big = ins
        .iter()
        .find(|r| r.meta.key_json == r#"["us", 1]"#)
        .unwrap();
    assert_eq!(
        big.after.as_ref().unwrap().get("amount"),
        Some(&num("1234567890123456789012345678.90"))
    );
    assert!(
        ins.iter()
            .all(|r| r.meta.pg_xid.is_some() && r.meta.pg_xid == big.meta.pg_xid),
        "one transaction, one xid"
    );
    assert!(big.pg_lsn.as_deref().is_some_and(|l| l.contains('/')));
    let minus = ins
        .iter()
        .find(|r| r.meta.key_json == r#"["eu", 2]"#)
        .unwrap();
    assert_eq!(
        minus.after.as_ref().unwrap().get("amount"),
        Some(&num("-0.01"))
    );
    assert_eq!(
        minus.after.as_ref().unwrap().get("note"),
        Some(&Value::Null)
    );

    assert_eq!(upd.op, Op::Update);
    assert_eq!(upd.meta.key_json, r#"["eu", 1]"#);
    assert_eq!(
        upd.before.as_ref().unwrap().get("note"),
        Some(&text("first"))
    );
    assert_eq!(
        upd.after.as_ref().unwrap().get("note"),
        Some(&text("second"))
    );
    assert_eq!(
        common::xmin_of(upd.meta.pg_xid.unwrap()),
        xmin_full[&("eu".to_owned(), 1)]
    );
    assert_eq!(
        upd.meta.pg_xid.unwrap() >> 32,
        epoch,
        "pg_xid is the 64-bit xid (epoch << 32 | xid)"
    );

    assert_eq!(del.op, Op::Delete);
    assert_eq!(del.key, vec![text("eu"), num("2")]);
    assert!(del.after.is_none());
    assert_eq!(
        del.before.as_ref().unwrap().get("amount"),
        Some(&num("-0.01"))
    );

    assert_eq!(
        moved[0].meta.updated, moved[1].meta.updated,
        "one transaction"
    );
    assert!(moved[0].meta.updated > del.meta.updated);
    let old = moved
        .iter()
        .find(|r| r.op == Op::Delete)
        .expect("delete of the old key");
    assert_eq!(old.meta.key_json, r#"["us", 1]"#);
    assert_eq!(old.before.as_ref().unwrap().get("note"), Some(&text("big")));
    let new = moved
        .iter()
        .find(|r| r.op == Op::Insert)
        .expect("insert of the new key");
    assert_eq!(new.meta.key_json, r#"["us", 3]"#);
    assert_eq!(
        new.after.as_ref().unwrap().get("amount"),
        Some(&num("1234567890123456789012345678.90"))
    );
    assert_eq!(
        common::xmin_of(new.meta.pg_xid.unwrap()),
        xmin_full[&("us".to_owned(), 3)]
    );

    // --- the filtered DEFAULT-identity table: only archived rows, deletes ---
    let rows = rg.topic.rows();
    assert_eq!(
        rows.len(),
        41,
        "50 inserts filtered out; 40 archived updates and 1 delete"
    );
    let (dels, upds): (Vec<&cdc_changefeed::RowEvent>, Vec<_>) =
        rows.into_iter().partition(|r| r.op == Op::Delete);
    assert_eq!(dels.len(), 1);
    assert_eq!(dels[0].key, vec![num("1")]);
    assert!(dels[0].before.is_none(), "DEFAULT identity: no before");
    assert_eq!(upds.len(), 40);
    let one_txn = upds[0].meta.updated;
    let mut ids = Vec::new();
    for r in &upds {
        assert_eq!(
            r.op,
            Op::Upsert,
            "no `before` field: CockroachDB without diff"
        );
        assert_eq!(r.meta.updated, one_txn, "one UPDATE statement, one updated");
        let after = r.after.as_ref().unwrap();
        assert_eq!(after.get("archived"), Some(&Value::Bool(true)));
        let Value::Number(id) = &r.key[0] else {
            panic!("numeric key")
        };
        let id: i32 = id.parse().unwrap();
        assert_eq!(
            after.get("amount"),
            Some(&num(&format!(
                "{}.{:02}",
                id * 11 / 10,
                (id * 11) % 10 * 10
            )))
        );
        if id != 1 {
            assert_eq!(
                common::xmin_of(r.meta.pg_xid.unwrap()),
                xmin_filt[&id],
                "pg_xid's low 32 bits are the row's xmin"
            );
        }
        ids.push(id);
    }
    ids.sort();
    assert_eq!(ids, (1..=40).collect::<Vec<_>>());
    assert!(dels[0].meta.updated > one_txn);
    check_resolved_guarantee(&rf.topic);
    check_resolved_guarantee(&rg.topic);
}

#[tokio::test]
async fn table_without_primary_key_is_refused() {
    let OneTable {
        pg,
        t,
        slot,
        cleanup: _cleanup,
        ..
    } = one_table("pgcf_nopk", "a int, b text", None).await;
    let err = cdc_pg_changefeed::run(&config(&slot, vec![table(&t)]), CancellationToken::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&t) && msg.contains("no primary key"), "{msg}");
    assert!(!cdc_common::retry::Retryable::is_retryable(&err));
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no slot is created for a refused configuration");
}

/// `PRIMARY KEY (id) INCLUDE (payload)`: the key is `[id]`, the INCLUDE
/// column is only stored in the index (and the purger, which reads the
/// key's columns the same way, would refuse keys of the wrong length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_columns_of_the_primary_key_are_not_in_the_key() {
    let OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup: _cleanup,
    } = one_table(
        "pgcf_incl",
        "id int8, payload int8, archived bool NOT NULL DEFAULT false, PRIMARY KEY (id) INCLUDE (payload)",
        Some(2),
    )
    .await;
    let feed = Feed::start(config(&slot, vec![table(&t)])).await;
    pg.batch_execute(&format!(
        "INSERT INTO {qt} (id, payload) VALUES (1, 10), (2, 20)"
    ))
    .await
    .unwrap();
    let mut r = Reader::new(&t, 2);
    r.until(LIMIT, "2 row events", |t| t.rows().len() >= 2)
        .await;
    let mut keys: Vec<(String, i32)> = r
        .topic
        .rows()
        .iter()
        .map(|e| (e.meta.key_json.clone(), e.meta.partition))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("[1]".to_owned(), partition_for_key(b"[1]", 2)),
            ("[2]".to_owned(), partition_for_key(b"[2]", 2)),
        ]
    );
    feed.stop().await;
}

/// Waits for `rows` row events, then for a resolved in every partition
/// that covers the latest `updated` among them.
async fn rows_then_resolved(r: &mut Reader, rows: usize, rows_what: &str, resolved_what: &str) {
    r.until(LIMIT, rows_what, |t| t.rows().len() >= rows).await;
    let last = r
        .topic
        .rows()
        .iter()
        .filter_map(|e| e.meta.updated)
        .max()
        .unwrap();
    r.until(LIMIT, resolved_what, |t| {
        t.min_resolved().is_some_and(|x| x >= last)
    })
    .await;
}

/// Concurrent writers, while resolved timestamps flow: in every partition,
/// nothing that follows a resolved T has `updated <= T`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_guarantee_holds_with_concurrent_writers() {
    let OneTable {
        t,
        qt,
        slot,
        cleanup: _cleanup,
        ..
    } = one_table(
        "pgcf_conc",
        "w int, i int, v int NOT NULL, PRIMARY KEY (w, i)",
        Some(3),
    )
    .await;
    let mut cfg = config(&slot, vec![table(&t)]);
    cfg.resolved_interval = Duration::from_millis(100);
    // Returns once the slot exists: changes after this are in it.
    let feed = Feed::start(cfg).await;
    let writers = 4;
    let per_phase = 25;
    let write_phase = |phase: i32| {
        let qt = qt.clone();
        async move {
            let mut tasks = Vec::new();
            for w in 0..writers {
                let qt = qt.clone();
                tasks.push(tokio::spawn(async move {
                    let c = cdc_tests::pg().await;
                    for k in 0..per_phase {
                        let i = phase * per_phase + k;
                        c.execute(&format!("INSERT INTO {qt} VALUES ($1, $2, 0)"), &[&w, &i])
                            .await
                            .unwrap();
                        c.execute(
                            &format!("UPDATE {qt} SET v = v + 1 WHERE w = $1 AND i = $2"),
                            &[&w, &i],
                        )
                        .await
                        .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    let mut r = Reader::new(&t, 3);
    write_phase(0).await;
    let phase0 = (writers * per_phase * 2) as usize;
    // Phase 1 starts only after resolved covered phase 0, so its events
    // necessarily follow a resolved in their partitions.
    rows_then_resolved(
        &mut r,
        phase0,
        "phase 0 events",
        "resolved covering phase 0",
    )
    .await;
    write_phase(1).await;
    let total = phase0 * 2;
    rows_then_resolved(&mut r, total, "phase 1 events", "final resolved").await;
    feed.stop().await;

    let exercised = check_resolved_guarantee(&r.topic);
    assert!(
        exercised >= phase0,
        "only {exercised} row events followed a resolved"
    );
    assert_eq!(
        r.topic.rows().len(),
        total,
        "a clean run sends each change once"
    );
    // updated is strictly increasing per transaction; events of different
    // transactions never share one.
    let mut by_updated: HashMap<_, usize> = HashMap::new();
    for e in r.topic.rows() {
        *by_updated.entry(e.meta.updated.unwrap()).or_default() += 1;
    }
    assert!(
        by_updated.values().all(|n| *n == 1),
        "one row per transaction here, so no two share `updated`"
    );
}

/// A table whose name needs quoting in SQL and escaping in wal2json's
/// `add-tables` (dot, comma, asterisk, space, quote): its changes pass
/// wal2json's filter and arrive; a table whose name is a prefix of it is
/// not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_table_names_are_quoted_and_escaped() {
    let pg = cdc_tests::pg().await;
    let base = cdc_tests::unique("pgcf_odd");
    let odd = format!("{base} we.ird,*\"x");
    let other = format!("{base} we");
    let topic = cdc_tests::unique("pgcf_odd_topic");
    let slot = cdc_tests::unique("pgcf_slot");
    let _cleanup = Cleanup {
        slot: slot.clone(),
        tables: vec![odd.clone(), other.clone()],
    };
    for t in [&odd, &other] {
        // `v text` may be stored out of line: FULL identity, or the feed
        // refuses the table.
        pg.batch_execute(&format!(
            "CREATE TABLE {q} (id int PRIMARY KEY, v text); ALTER TABLE {q} REPLICA IDENTITY FULL",
            q = quote_ident(t)
        ))
        .await
        .unwrap();
    }
    cdc_tests::create_topic(&topic, 2).await;
    let mut tc = table(&format!("public.{}", quote_ident(&odd)));
    tc.topic = Some(topic.clone());
    let mut cfg = config(&slot, vec![tc]);
    cfg.resolved_interval = Duration::from_millis(100);
    // Returns once the slot exists: changes after this are in it.
    let feed = Feed::start(cfg).await;
    pg.execute(
        &format!("INSERT INTO {} VALUES (1, 'skip me')", quote_ident(&other)),
        &[],
    )
    .await
    .unwrap();
    pg.execute(
        &format!("INSERT INTO {} VALUES (7, 'odd')", quote_ident(&odd)),
        &[],
    )
    .await
    .unwrap();
    let mut r = Reader::new(&topic, 2);
    r.until(LIMIT, "the row", |t| !t.rows().is_empty()).await;
    let last = r.topic.rows()[0].meta.updated.unwrap();
    // Everything up to this resolved is in the topic.
    r.until(LIMIT, "resolved past it", |t| {
        t.min_resolved().is_some_and(|x| x >= last)
    })
    .await;
    feed.stop().await;
    let rows = r.topic.rows();
    assert_eq!(rows.len(), 1, "only the configured table: {rows:?}");
    assert_eq!(rows[0].key, vec![num("7")]);
    assert_eq!(rows[0].after.as_ref().unwrap().get("v"), Some(&text("odd")));
}

/// No writes to the fed table at all: resolved timestamps still advance
/// (through heartbeat transactions when the whole database is idle), so
/// a sink can close its windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_advances_while_the_table_is_idle() {
    let OneTable {
        t,
        slot,
        cleanup: _cleanup,
        ..
    } = one_table("pgcf_idle", "id int PRIMARY KEY", Some(2)).await;
    let mut cfg = config(&slot, vec![table(&t)]);
    cfg.resolved_interval = Duration::from_millis(100);
    // Returns once the slot exists: changes after this are in it.
    let feed = Feed::start(cfg).await;
    let mut r = Reader::new(&t, 2);
    r.until(LIMIT, "a first resolved on every partition", |t| {
        t.min_resolved().is_some()
    })
    .await;
    let first = r.topic.min_resolved().unwrap();
    r.until(LIMIT, "a later resolved", |t| {
        t.min_resolved().is_some_and(|x| x > first)
    })
    .await;
    feed.stop().await;
    assert!(r.topic.rows().is_empty());
    for evs in r.topic.events.values() {
        assert!(
            evs.iter().all(|(_, key, _)| key.is_none()),
            "resolved records have a null key"
        );
    }
}

/// The feed's database session is terminated twice mid-stream: the feed
/// reconnects by itself (retryable error), and every change still arrives,
/// in per-key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_lost_database_sessions() {
    let OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup: _cleanup,
    } = one_table("pgcf_lost", "k int PRIMARY KEY, v int NOT NULL", Some(3)).await;
    let keys = 300;
    let rounds = 30;
    slot_then_rows(&pg, &slot, &qt, keys).await;
    for _ in 0..rounds {
        pg.batch_execute(&format!("UPDATE {qt} SET v = v + 1"))
            .await
            .unwrap();
    }
    let mut cfg = config(&slot, vec![table(&t)]);
    cfg.max_changes_per_peek = 100;
    // Returns once the slot exists: changes after this are in it.
    let feed = Feed::start(cfg).await;
    let mut r = Reader::new(&t, 3);
    let app = format!("cdc-pgcf:{slot}");
    let mut terminated = 0;
    for at in [300, 3000] {
        r.until(LIMIT, "progress", |tp| tp.rows().len() >= at).await;
        // The feed may be between sessions (reconnecting after the last
        // termination): wait for its next session rather than race it.
        let start = std::time::Instant::now();
        loop {
            let n: i64 = pg
                .query_one(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = $1",
                    &[&app],
                )
                .await
                .unwrap()
                .get(0);
            if n > 0 {
                terminated += n;
                break;
            }
            assert!(start.elapsed() < LIMIT, "the feed never reconnected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(terminated, 2, "one feed session terminated each time");
    let want = i64::from(rounds);
    r.until(LIMIT, "every key's last version", |tp| {
        common::all_reached(tp, "v", keys as usize, want)
    })
    .await;
    assert!(
        feed.is_running(),
        "the feed kept running through the lost sessions"
    );
    feed.stop().await;
    common::assert_every_version_in_order(&common::versions(&r.topic, "v"), keys as usize, want);
}

/// Every mapped type, through real wal2json output and the CockroachDB
/// decoder: the JSON forms a CockroachDB changefeed would use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_map_to_cockroachdb_json_forms() {
    let OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup: _cleanup,
    } = one_table(
        "pgcf_types",
        "id uuid PRIMARY KEY, d date, ts timestamp, tstz timestamptz, b bytea, \
         f float8, r real, i2 int2, i8 int8, ok bool, n numeric, ia int[], ta text[], na numeric[], \
         j json, iv interval, pt point, c char(3), vc varchar(10)",
        Some(1),
    )
    .await;
    // Text-like columns may be stored out of line: FULL identity.
    pg.batch_execute(&format!("ALTER TABLE {qt} REPLICA IDENTITY FULL"))
        .await
        .unwrap();
    let cfg = config(&slot, vec![table(&t)]);
    // Returns once the slot exists: changes after this are in it.
    let feed = Feed::start(cfg).await;
    pg.batch_execute(&format!(
        "INSERT INTO {qt} VALUES ('f0e1d2c3-b4a5-4968-8776-655443322110', '2025-06-10', \
           '2025-06-10 10:00:00.25', '2025-06-10 23:30:00.000001-02', '\\xdeadbeef', 1.5e300, 0.5, -7, \
           9007199254740993, true, 0.000000000000000000000000000001, '{{1,NULL,3}}', \
           '{{\"a b\",\"q\\\"\",NULL}}', '{{1.10,NaN}}', '{{\"z\": 1, \"a\": [true]}}', '1 day 02:00:00', \
           '(1,2)', 'ab', 'hé')"
    ))
    .await
    .unwrap();
    let mut r = Reader::new(&t, 1);
    r.until(LIMIT, "the row", |tp| !tp.rows().is_empty()).await;
    feed.stop().await;
    let row = r.topic.rows()[0].clone();
    assert_eq!(
        row.meta.key_json,
        r#"["f0e1d2c3-b4a5-4968-8776-655443322110"]"#
    );
    let a = row.after.unwrap();
    let get = |c: &str| {
        a.get(c)
            .cloned()
            .unwrap_or_else(|| panic!("column {c} missing"))
    };
    assert_eq!(get("d"), text("2025-06-10"));
    assert_eq!(get("ts"), text("2025-06-10T10:00:00.25"));
    assert_eq!(get("tstz"), text("2025-06-11T01:30:00.000001Z"));
    assert_eq!(get("b"), text("\\xdeadbeef"));
    assert_eq!(get("f"), num("1.5e+300"));
    assert_eq!(get("r"), num("0.5"));
    assert_eq!(get("i2"), num("-7"));
    assert_eq!(
        get("i8"),
        num("9007199254740993"),
        "beyond f64's exact integers"
    );
    assert_eq!(get("ok"), Value::Bool(true));
    assert_eq!(get("n"), num("0.000000000000000000000000000001"));
    assert_eq!(get("ia"), Value::Json("[1, null, 3]".into()));
    assert_eq!(get("ta"), Value::Json(r#"["a b", "q\"", null]"#.into()));
    assert_eq!(get("na"), Value::Json(r#"[1.10, "NaN"]"#.into()));
    assert_eq!(get("j"), Value::Json(r#"{"z": 1, "a": [true]}"#.into()));
    // Unsupported types: PostgreSQL's text, never dropped.
    assert_eq!(get("iv"), text("1 day 02:00:00"));
    assert_eq!(get("pt"), text("(1,2)"));
    assert_eq!(get("c"), text("ab "));
    assert_eq!(get("vc"), text("hé"));
}
