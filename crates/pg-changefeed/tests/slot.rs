//! A replication slot that disappeared (dropped by hand, lost in a
//! failover) is not silently created again: the changes made while there
//! was none would never reach Kafka. The changefeed refuses to start until
//! told to recreate it.

mod common;

use std::time::Duration;

use cdc_pg_changefeed::ChangefeedError;
use common::{config, one_table, table, Feed, OneTable, Reader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_refused_until_recreated_explicitly() {
    let OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup: _cleanup,
    } = one_table("pgcf_lost", "k int PRIMARY KEY, v int NOT NULL", Some(1)).await;
    let cfg = config(&slot, vec![table(&t)]);
    let feed = Feed::start(cfg.clone()).await;
    pg.batch_execute(&format!("INSERT INTO {qt} VALUES (1, 0)"))
        .await
        .unwrap();
    let mut reader = Reader::new(&t, 1);
    reader
        .until(Duration::from_secs(60), "the first row", |tp| {
            !tp.rows().is_empty()
        })
        .await;
    feed.stop().await;

    // The slot goes; a change is made while there is none.
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    pg.batch_execute(&format!("UPDATE {qt} SET v = 1"))
        .await
        .unwrap();
    let err = cdc_pg_changefeed::run(&cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ChangefeedError::Slot { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("--recreate-slot") && text.contains("retouch"),
        "{text}"
    );
    let exists: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(exists, 0, "no slot was created");

    // Told to: it starts, and carries on from now.
    let mut cfg = cfg;
    cfg.recreate_slot = true;
    let feed = Feed::start(cfg).await;
    assert!(feed.is_running());
    feed.stop().await;
}
