//! `filter_origins`: transactions committed under a replication origin of
//! a configured pool (the purger's sessions take one) are left out of the
//! feed; every other transaction, of sessions with no origin or with
//! another origin, is sent as before. Against the local stack's wal2json
//! (2.5 on Debian 12), which takes origin ids, not names.

mod common;

use std::time::{Duration, Instant};

use cdc_changefeed::Op;
use cdc_common::ident::quote_ident;
use common::{config, one_table, table, Feed, Reader};

const LIMIT: Duration = Duration::from_secs(120);

/// Drops the replication origins when the test ends (an origin that was
/// used holds a replication-state entry until it is dropped), waiting for
/// the sessions that held them to be gone.
struct Origins(Vec<String>);

impl Drop for Origins {
    fn drop(&mut self) {
        let names = self.0.clone();
        common::on_fresh_runtime(async move {
            let c = cdc_tests::pg().await;
            for name in names {
                common::drop_retrying(
                    &c,
                    "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1",
                    &name,
                )
                .await;
            }
        });
    }
}

/// A session whose transactions carry replication origin `name` (created
/// here), as a purger session's do.
async fn origin_session(name: &str) -> tokio_postgres::Client {
    let c = cdc_tests::pg().await;
    c.execute("SELECT pg_replication_origin_create($1)", &[&name])
        .await
        .unwrap();
    c.execute("SELECT pg_replication_origin_session_setup($1)", &[&name])
        .await
        .unwrap();
    c
}

/// The delete events' keys, in offset order.
fn deleted_keys(r: &Reader) -> Vec<String> {
    r.topic
        .rows()
        .iter()
        .filter(|e| e.op == Op::Delete)
        .map(|e| e.meta.key_json.clone())
        .collect()
}

/// Deletes by sessions holding the pool's origins (the base name, and a
/// numbered member created after the feed started) are not sent; a delete
/// by a session without origin and one by a session with an origin outside
/// the pool are. Without `filter_origins` (an empty list) all four are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_of_the_filtered_origin_pool_are_left_out() {
    for filtering in [true, false] {
        let t = one_table("pgcf_origins", "k int PRIMARY KEY, v int", Some(1)).await;
        let base = cdc_tests::unique("cdcorigin");
        let (member, outsider) = (format!("{base}_1"), format!("{base}x"));
        let _origins = Origins(vec![base.clone(), member.clone(), outsider.clone()]);
        let mut cfg = config(&t.slot, vec![table(&t.t)]);
        cfg.filter_origins = if filtering {
            vec![base.clone()]
        } else {
            Vec::new()
        };
        let feed = Feed::start(cfg).await;
        t.pg.batch_execute(&format!(
            "INSERT INTO {} SELECT k, 0 FROM generate_series(1, 5) k",
            t.qt
        ))
        .await
        .unwrap();
        let delete = |k: i32| format!("DELETE FROM {} WHERE k = {k}", t.qt);
        let s0 = origin_session(&base).await;
        s0.batch_execute(&delete(1)).await.unwrap();
        // Created while the feed runs: resolved before the next peek.
        let s1 = origin_session(&member).await;
        s1.batch_execute(&delete(2)).await.unwrap();
        let s2 = origin_session(&outsider).await;
        s2.batch_execute(&delete(3)).await.unwrap();
        t.pg.batch_execute(&delete(4)).await.unwrap();
        // The last change: once it is read, everything before it was
        // processed (one partition: one order).
        t.pg.batch_execute(&format!("UPDATE {} SET v = 1 WHERE k = 5", t.qt))
            .await
            .unwrap();
        let mut r = Reader::new(&t.t, 1);
        r.until(LIMIT, "the last update", |topic| {
            topic
                .rows()
                .iter()
                .filter(|e| e.meta.key_json == "[5]")
                .count()
                == 2
        })
        .await;
        feed.stop().await;
        drop((s0, s1, s2));
        let deleted = deleted_keys(&r);
        if filtering {
            assert_eq!(
                deleted,
                ["[3]", "[4]"],
                "only the deletes outside the pool are sent"
            );
        } else {
            assert_eq!(
                deleted,
                ["[1]", "[2]", "[3]", "[4]"],
                "an empty filter_origins sends everything"
            );
        }
        assert_eq!(
            r.topic.rows().iter().filter(|e| e.op != Op::Delete).count(),
            6,
            "5 inserts and the update"
        );
    }
}

/// Transactions left out by origin give a peek no commit to advance the
/// slot to. With a long `resolved_interval` (no idle heartbeat for a
/// minute), the feed still advances the slot past a large filtered purge
/// promptly: it writes a heartbeat once a peek read 1 MiB of WAL without a
/// transaction to send. A database of its own, so that no other test's
/// transactions give the slot a commit to advance to (and no autovacuum:
/// an auto-analyze of the table would be one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_advances_past_filtered_transactions() {
    let admin = cdc_tests::pg().await;
    let db = cdc_tests::unique("pgcf_origin_db");
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&db)))
        .await
        .unwrap();
    let slot = cdc_tests::unique("pgcf_slot");
    let _db = common::OwnDatabase {
        name: db.clone(),
        slot: slot.clone(),
    };
    let url = common::url_for_database(&db);
    let pg = cdc_common::db::connect(&url, "cdc-tests").await.unwrap();
    let t = cdc_tests::unique("pgcf_origin_adv");
    let qt = quote_ident(&t);
    pg.batch_execute(&format!(
        "CREATE TABLE {qt} (k int PRIMARY KEY, payload text NOT NULL)
           WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false);
         ALTER TABLE {qt} REPLICA IDENTITY FULL;"
    ))
    .await
    .unwrap();
    cdc_tests::create_topic(&t, 1).await;
    let base = cdc_tests::unique("cdcorigin");
    let _origins = Origins(vec![base.clone()]);
    let mut cfg = config(&slot, vec![table(&t)]);
    cfg.database_url = url.clone();
    cfg.resolved_interval = Duration::from_secs(600);
    cfg.filter_origins = vec![base.clone()];
    let feed = Feed::start(cfg).await;
    pg.batch_execute(&format!(
        "INSERT INTO {qt} SELECT k, repeat('x', 200) FROM generate_series(1, 20000) k"
    ))
    .await
    .unwrap();
    let mut r = Reader::new(&t, 1);
    r.until(LIMIT, "the inserts", |topic| topic.rows().len() == 20_000)
        .await;

    // The purge: 20k deletes with their whole old rows (~5 MB of WAL).
    let purger = cdc_common::db::connect(&url, "cdc-tests").await.unwrap();
    purger
        .execute("SELECT pg_replication_origin_create($1)", &[&base])
        .await
        .unwrap();
    purger
        .execute("SELECT pg_replication_origin_session_setup($1)", &[&base])
        .await
        .unwrap();
    purger
        .batch_execute(&format!("DELETE FROM {qt}"))
        .await
        .unwrap();
    let after: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    drop(purger);
    let start = Instant::now();
    loop {
        let past: bool = admin
            .query_one(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &after],
            )
            .await
            .unwrap()
            .get(0);
        if past {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the slot did not advance past the filtered deletes within 15s (resolved_interval is 10 minutes)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.poll_for(Duration::from_millis(500)).await;
    assert!(
        deleted_keys(&r).is_empty(),
        "the purge's deletes are not sent"
    );
    feed.stop().await;
}
