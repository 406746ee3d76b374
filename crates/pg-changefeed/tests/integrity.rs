//! What the purger may trust, against the local stack: a row version is
//! sent with `pg_xid` only when its new row is complete (unchanged TOASTed
//! values, columns added while running, NaN/Infinity), tables that cannot
//! be fed completely are refused with the fix, value text does not depend
//! on session defaults, and SIGTERM does not wait for a long peek.

mod common;

use std::time::{Duration, Instant};

use cdc_changefeed::{Op, RowEvent, Value};
use cdc_common::ident::quote_ident;
use common::{config, one_table, table, Cleanup, Feed, OneTable, Reader};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

/// An incompressible text of `n * 32` characters (random md5 hex, which
/// pglz cannot shrink by the 25% it requires): stored out of line.
fn big_text_sql(n: i32) -> String {
    format!("(SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, {n}) g)")
}

fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn num(s: &str) -> Value {
    Value::Number(s.to_owned())
}

fn sorted_rows(r: &Reader) -> Vec<RowEvent> {
    let mut rows: Vec<RowEvent> = r.topic.rows().into_iter().cloned().collect();
    rows.sort_by_key(|e| e.meta.updated);
    rows
}

#[tokio::test]
async fn default_identity_with_out_of_line_columns_is_refused() {
    let OneTable {
        pg,
        t,
        slot,
        cleanup: _cleanup,
        ..
    } = one_table(
        "pgcf_toastref",
        "id int PRIMARY KEY, \"Note\" text, doc jsonb, n numeric, archived bool NOT NULL DEFAULT false",
        None,
    )
    .await;
    let err = cdc_pg_changefeed::run(&config(&slot, vec![table(&t)]), CancellationToken::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&t), "names the table: {msg}");
    assert!(
        msg.contains(r#""Note", "doc""#),
        "names the out-of-line columns, quoted (numeric is MAIN storage, not listed): {msg}"
    );
    assert!(
        msg.contains(&format!(
            "ALTER TABLE \"public\".{} REPLICA IDENTITY FULL",
            quote_ident(&t)
        )),
        "gives the fix: {msg}"
    );
    assert!(
        msg.contains("unchanged") && msg.contains("incomplete"),
        "says why: {msg}"
    );
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

/// REPLICA IDENTITY FULL: the marker's update of `archived` leaves a
/// >8 kB out-of-line value unchanged; the archived row still has it, and
/// carries the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_value_is_filled_under_full_identity() {
    let OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup: _cleanup,
    } = one_table(
        "pgcf_toastfull",
        "id int PRIMARY KEY, big text, archived bool NOT NULL DEFAULT false",
        Some(1),
    )
    .await;
    pg.batch_execute(&format!("ALTER TABLE {qt} REPLICA IDENTITY FULL"))
        .await
        .unwrap();
    let feed = Feed::start(config(&slot, vec![table(&t)])).await;
    pg.batch_execute(&format!(
        "INSERT INTO {qt} (id, big) VALUES (1, {})",
        big_text_sql(400)
    ))
    .await
    .unwrap();
    pg.batch_execute(&format!("UPDATE {qt} SET archived = true WHERE id = 1"))
        .await
        .unwrap();
    let (big, stored): (String, i32) = {
        let r = pg
            .query_one(
                &format!("SELECT big, pg_column_size(big) FROM {qt} WHERE id = 1"),
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        stored > 8000,
        "the value is stored uncompressed ({stored} bytes), out of line"
    );
    let xid8 = common::row_xid8(&pg, &qt, "id = 1").await;
    let mut r = Reader::new(&t, 1);
    r.until(LIMIT, "insert and update", |tp| tp.rows().len() >= 2)
        .await;
    feed.stop().await;
    let rows = sorted_rows(&r);
    let upd = &rows[1];
    assert_eq!(upd.op, Op::Update);
    let after = upd.after.as_ref().unwrap();
    assert_eq!(after.get("archived"), Some(&Value::Bool(true)));
    assert_eq!(
        after.get("big"),
        Some(&text(&big)),
        "the unchanged value is in the row"
    );
    assert_eq!(upd.meta.pg_xid, Some(xid8), "complete, so versioned");
}

/// Run-time defence: a column added while the feed runs (so the start-up
/// check never saw it), and a table switched from FULL to DEFAULT while
/// it runs. An update that leaves the out-of-line value unchanged then
/// reaches the feed without it: the row is sent without `pg_xid`, so the
/// purger can never delete it by that incomplete copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_rows_are_sent_without_a_version() {
    let pg = cdc_tests::pg().await;
    let added = cdc_tests::unique("pgcf_added");
    let switched = cdc_tests::unique("pgcf_switched");
    let slot = cdc_tests::unique("pgcf_slot");
    let _cleanup = Cleanup {
        slot: slot.clone(),
        tables: vec![added.clone(), switched.clone()],
    };
    let (qa, qs) = (quote_ident(&added), quote_ident(&switched));
    pg.batch_execute(&format!(
        "CREATE TABLE {qa} (id int PRIMARY KEY, v int NOT NULL, archived bool NOT NULL DEFAULT false);
         CREATE TABLE {qs} (id int PRIMARY KEY, big text, archived bool NOT NULL DEFAULT false);
         ALTER TABLE {qs} REPLICA IDENTITY FULL;"
    ))
    .await
    .unwrap();
    cdc_tests::create_topic(&added, 1).await;
    cdc_tests::create_topic(&switched, 1).await;
    let feed = Feed::start(config(&slot, vec![table(&added), table(&switched)])).await;
    for stmt in [
        format!("ALTER TABLE {qa} ADD COLUMN big text"),
        format!(
            "INSERT INTO {qa} (id, v, big) VALUES (1, 0, {})",
            big_text_sql(400)
        ),
        format!("UPDATE {qa} SET archived = true WHERE id = 1"),
        format!(
            "INSERT INTO {qs} (id, big) VALUES (1, {})",
            big_text_sql(400)
        ),
        format!("ALTER TABLE {qs} REPLICA IDENTITY DEFAULT"),
        format!("UPDATE {qs} SET archived = true WHERE id = 1"),
    ] {
        pg.batch_execute(&stmt).await.unwrap();
    }
    let mut ra = Reader::new(&added, 1);
    let mut rs = Reader::new(&switched, 1);
    ra.until(LIMIT, "insert and update", |tp| tp.rows().len() >= 2)
        .await;
    rs.until(LIMIT, "insert and update", |tp| tp.rows().len() >= 2)
        .await;
    assert!(feed.is_running(), "incomplete rows do not stop the feed");
    feed.stop().await;
    for (r, qt) in [(&ra, &qa), (&rs, &qs)] {
        let rows = sorted_rows(r);
        assert_eq!(rows.len(), 2, "{qt}: {rows:?}");
        let (ins, upd) = (&rows[0], &rows[1]);
        let big: String = pg
            .query_one(&format!("SELECT big FROM {qt} WHERE id = 1"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            ins.after.as_ref().unwrap().get("big"),
            Some(&text(&big)),
            "{qt}: the insert carries the value"
        );
        assert!(
            ins.meta.pg_xid.is_some(),
            "{qt}: a complete insert is versioned"
        );
        let after = upd.after.as_ref().unwrap();
        assert_eq!(after.get("archived"), Some(&Value::Bool(true)), "{qt}");
        assert_eq!(
            after.get("big"),
            None,
            "{qt}: wal2json left the unchanged value out"
        );
        assert_eq!(
            upd.meta.pg_xid, None,
            "{qt}: an incomplete row must carry no version the purger could delete by"
        );
        assert!(upd.pg_lsn.is_some() && upd.meta.updated.is_some());
    }
}

/// `NaN`, `Infinity` and `-Infinity` of numeric, float8 and real. With a
/// wal2json that sends numbers as strings (2.6+) they arrive as
/// CockroachDB's strings and the rows are versioned; an older wal2json
/// writes them as `null`, and the rows are then sent without `pg_xid`
/// (never purged on the strength of a copy that lost the value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_and_infinity_are_kept_or_never_purged() {
    let OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup: _cleanup,
    } = one_table(
        "pgcf_nan",
        "id int PRIMARY KEY, n numeric, f float8, r real",
        Some(1),
    )
    .await;
    let feed = Feed::start(config(&slot, vec![table(&t)])).await;
    pg.batch_execute(&format!(
        "INSERT INTO {qt} VALUES (1, 'NaN', 'NaN', 'NaN'), (2, 'Infinity', 'Infinity', 'Infinity'), \
           (3, '-Infinity', '-Infinity', '-Infinity'), (4, 1.50, 0.1::float8 + 0.2::float8, 0.5), \
           (5, NULL, NULL, NULL)"
    ))
    .await
    .unwrap();
    let mut r = Reader::new(&t, 1);
    r.until(LIMIT, "five rows", |tp| tp.rows().len() >= 5).await;
    feed.stop().await;
    // The feed's own probe, now that the slot is free.
    let supported = pg
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_changes($1, '0/1'::pg_lsn, 1, \
             'format-version', '2', 'numeric-data-types-as-string', '1')",
            &[&slot],
        )
        .await
        .is_ok();
    eprintln!("wal2json numeric-data-types-as-string supported: {supported}");
    let row = |id: &str| {
        r.topic
            .rows()
            .into_iter()
            .find(|e| e.key == vec![num(id)])
            .cloned()
            .unwrap_or_else(|| panic!("row {id}"))
    };
    for (id, special) in [("1", "NaN"), ("2", "Infinity"), ("3", "-Infinity")] {
        let e = row(id);
        let a = e.after.as_ref().unwrap();
        for c in ["n", "f", "r"] {
            if supported {
                assert_eq!(a.get(c), Some(&text(special)), "row {id} column {c}");
            } else {
                assert_eq!(a.get(c), Some(&Value::Null), "row {id} column {c}");
            }
        }
        assert_eq!(
            e.meta.pg_xid.is_some(),
            supported,
            "row {id}: versioned only if the value survived"
        );
    }
    let finite = row("4");
    let a = finite.after.as_ref().unwrap();
    assert_eq!(a.get("n"), Some(&num("1.50")));
    assert_eq!(a.get("f"), Some(&num("0.30000000000000004")));
    assert_eq!(a.get("r"), Some(&num("0.5")));
    assert!(finite.meta.pg_xid.is_some(), "finite values: versioned");
    let nulls = row("5");
    assert_eq!(nulls.after.as_ref().unwrap().get("n"), Some(&Value::Null));
    // Without numeric strings a SQL NULL cannot be told from a dropped NaN.
    assert_eq!(nulls.meta.pg_xid.is_some(), supported);
}

/// The role's or database's session defaults must not change value text:
/// the feed pins TimeZone, DateStyle, IntervalStyle, extra_float_digits
/// and bytea_output. The URL here sets hostile ones for the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_text_does_not_depend_on_session_defaults() {
    let OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup: _cleanup,
    } = one_table(
        "pgcf_settings",
        "d date, id int, ts timestamp, tstz timestamptz, iv interval, f float8, b bytea, \
         PRIMARY KEY (d, id)",
        Some(1),
    )
    .await;
    pg.batch_execute(&format!("ALTER TABLE {qt} REPLICA IDENTITY FULL"))
        .await
        .unwrap();
    let mut cfg = config(&slot, vec![table(&t)]);
    cfg.database_url = common::url_with_options(
        &cfg.database_url,
        "-c DateStyle=SQL,DMY -c IntervalStyle=sql_standard -c extra_float_digits=0 \
         -c TimeZone=Asia/Kolkata -c bytea_output=escape",
    );
    // The URL does set them (so the test tests something): a plain session
    // (ours pins its own settings over the URL's).
    let (hostile, conn) = tokio_postgres::connect(&cfg.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let shown: String = hostile
        .query_one("SELECT '2025-06-10'::date::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "10/06/2025");
    let feed = Feed::start(cfg).await;
    pg.batch_execute(&format!(
        "INSERT INTO {qt} VALUES ('2025-06-10', 1, '2025-06-10 10:00:00.25', '2025-06-10 12:00:00.5+02', \
           '1 day 02:00:00', 0.1::float8 + 0.2::float8, '\\xdeadbeef')"
    ))
    .await
    .unwrap();
    let mut r = Reader::new(&t, 1);
    r.until(LIMIT, "the row", |tp| !tp.rows().is_empty()).await;
    feed.stop().await;
    let e = &r.topic.rows()[0];
    assert_eq!(
        e.meta.key_json, r#"["2025-06-10", 1]"#,
        "ISO date in the key"
    );
    let a = e.after.as_ref().unwrap();
    assert_eq!(a.get("d"), Some(&text("2025-06-10")));
    assert_eq!(a.get("ts"), Some(&text("2025-06-10T10:00:00.25")));
    assert_eq!(a.get("tstz"), Some(&text("2025-06-10T10:00:00.5Z")));
    assert_eq!(a.get("iv"), Some(&text("1 day 02:00:00")));
    assert_eq!(a.get("f"), Some(&num("0.30000000000000004")));
    assert_eq!(a.get("b"), Some(&text("\\xdeadbeef")));
}

/// wal2json reports a partitioned table's changes under its leaves'
/// names: configuring the parent would send nothing, so it is refused with
/// the leaves to configure instead.
#[tokio::test]
async fn partitioned_table_is_refused_with_its_leaves() {
    let pg = cdc_tests::pg().await;
    let parent = cdc_tests::unique("pgcf_parted");
    let (p1, p2) = (format!("{parent}_2024"), format!("{parent} 2025"));
    let slot = cdc_tests::unique("pgcf_slot");
    // Leaves first: dropping the parent drops them anyway.
    let _cleanup = Cleanup {
        slot: slot.clone(),
        tables: vec![p1.clone(), p2.clone(), parent.clone()],
    };
    let q = quote_ident(&parent);
    pg.batch_execute(&format!(
        "CREATE TABLE {q} (day date, id int, archived bool NOT NULL DEFAULT false, PRIMARY KEY (day, id)) \
           PARTITION BY RANGE (day);
         CREATE TABLE {} PARTITION OF {q} FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE {} PARTITION OF {q} FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');",
        quote_ident(&p1),
        quote_ident(&p2)
    ))
    .await
    .unwrap();
    let err = cdc_pg_changefeed::run(
        &config(&slot, vec![table(&parent)]),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("partitioned"), "{msg}");
    for leaf in [&p1, &p2] {
        assert!(
            msg.contains(&format!("\"public\".{}", quote_ident(leaf))),
            "lists leaf {leaf}: {msg}"
        );
    }
    assert!(
        msg.contains(&format!("topic = {parent:?}")),
        "suggests the parent's topic: {msg}"
    );
    assert!(!cdc_common::retry::Retryable::is_retryable(&err));
}

/// SIGTERM while a peek decodes a huge transaction: PostgreSQL returns no
/// row until the whole transaction is decoded, so checking for cancel
/// between rows would wait for all of it. The feed cancels the query, stops
/// cleanly well before the peek could have finished, and leaves the slot
/// where Kafka's acknowledgements put it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_a_long_peek() {
    let admin = cdc_tests::pg().await;
    let db = cdc_tests::unique("pgcf_cancel_db");
    let slot = cdc_tests::unique("pgcf_slot");
    let _db = common::OwnDatabase {
        name: db.clone(),
        slot: slot.clone(),
    };
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&db)))
        .await
        .unwrap();
    let url = common::url_for_database(&db);
    let pg = cdc_common::db::connect(&url, "cdc-tests").await.unwrap();
    let t = cdc_tests::unique("pgcf_cancel");
    let qt = quote_ident(&t);
    pg.batch_execute(&format!(
        "CREATE TABLE {qt} (id int PRIMARY KEY); CREATE TABLE other (id int)"
    ))
    .await
    .unwrap();
    cdc_tests::create_topic(&t, 1).await;
    let mut cfg = config(&slot, vec![table(&t)]);
    cfg.database_url = url.clone();
    let feed = Feed::start(cfg.clone()).await;
    pg.batch_execute(&format!("INSERT INTO {qt} VALUES (1)"))
        .await
        .unwrap();
    let mut r = Reader::new(&t, 1);
    r.until(LIMIT, "row 1", |tp| !tp.rows().is_empty()).await;
    // Stopped while the huge transaction is written, so that the first
    // peek of the next start covers all of it (a peek that started while
    // it was being written stops at the WAL position read before it).
    feed.stop().await;
    // Two million changes in one transaction of a table that is not fed:
    // seconds of decoding, no output row until it is done.
    pg.batch_execute("INSERT INTO other SELECT g FROM generate_series(1, 2000000) g")
        .await
        .unwrap();
    pg.batch_execute(&format!("INSERT INTO {qt} VALUES (2)"))
        .await
        .unwrap();
    let feed = Feed::start(cfg).await;
    let app = format!("cdc-pgcf:{slot}");
    let start = Instant::now();
    loop {
        let busy: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 \
                 AND state = 'active' AND query LIKE '%pg_logical_slot_peek_changes%' \
                 AND query_start < clock_timestamp() - interval '300 ms')",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if busy {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "the feed never started the long peek"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    feed.stop().await;
    let stop_took = stopping.elapsed();

    // The same peek, uninterrupted, for comparison.
    while admin
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peeking = Instant::now();
    let pending = common::unconfirmed_changes(&pg, &slot, &t).await;
    let peek_takes = peeking.elapsed();
    eprintln!("stop took {stop_took:?}; the whole peek takes {peek_takes:?}");
    // The stop starts once the peek has run 300 ms; a stop that waited for
    // the peek would take about `peek_takes - 300 ms`, which is above
    // `peek_takes / 2` (the bound below) whenever the peek takes more than
    // 600 ms. 800 ms leaves a margin; the transaction is sized for 2 s or
    // more on the reference machine.
    assert!(
        peek_takes >= Duration::from_millis(800),
        "the peek is too quick ({peek_takes:?}) for this test to mean anything: make the transaction larger"
    );
    assert!(
        stop_took < peek_takes / 2,
        "SIGTERM waited for the peek: stop took {stop_took:?}, the peek takes {peek_takes:?}"
    );
    assert_eq!(
        pending, 1,
        "row 2 (after the huge transaction) is still in the slot, row 1 was confirmed"
    );
    r.poll_for(Duration::from_secs(2)).await;
    assert_eq!(r.topic.rows().len(), 1, "only row 1 was published");
}
