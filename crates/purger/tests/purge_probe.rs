//! The probe (the SELECT that says why a batch's DELETE kept some rows)
//! runs after the DELETE committed. A failure of the probe must not redo
//! the DELETE (its rows would then be counted as already gone), and a key
//! inserted again between the DELETE and the probe must not be counted
//! twice. Both are made deterministic with locks, observed in
//! `pg_stat_activity` / `pg_locks`:
//!
//! 1. a foreground transaction holds a row of the batch (`FOR UPDATE`), so
//!    the purger's DELETE waits;
//! 2. another session asks for `ACCESS EXCLUSIVE` on the table: it queues
//!    behind the waiting DELETE (which holds `ROW EXCLUSIVE`);
//! 3. the row lock is released: the DELETE completes and commits, the
//!    `ACCESS EXCLUSIVE` request is granted, and the probe, queued behind
//!    it, waits for the table lock;
//! 4. then either the probe times out (`lock_timeout`, retryable) before
//!    the table lock is released, or the locking session inserts a
//!    deleted key again and commits, and the probe sees it.

mod common;

use std::time::{Duration, Instant};

use cdc_purger::{PurgeOptions, PurgeSummary};
use common::Fixture;

const LOCK_TIMEOUT_MS: u64 = 2000;

/// Polls `sql` (one `$1` text parameter) until it returns a row; returns
/// its first column.
async fn until_row(pg: &tokio_postgres::Client, what: &str, sql: &str, p: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(r) = pg.query_opt(sql, &[&p]).await.unwrap() {
            return r.get(0);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A purger statement on table `q` (quoted; its text starts with one of
/// `prefixes`) waiting for a lock: its `query_start`, as text. The
/// statement names the table in its text (`pg_stat_activity` keeps the
/// first 1 kB of a long statement, which may end before the table's name)
/// or waits for a lock on the table itself.
async fn waiting(pg: &tokio_postgres::Client, what: &str, q: &str, prefixes: &[&str]) -> String {
    let like: Vec<String> = prefixes
        .iter()
        .map(|p| format!("a.query LIKE '{p}%'"))
        .collect();
    let sql = format!(
        "SELECT a.query_start::text FROM pg_stat_activity AS a \
         WHERE a.application_name = 'cdc-archiver-purge' AND a.wait_event_type = 'Lock' \
           AND ({}) \
           AND (strpos(a.query, $1) > 0 OR EXISTS (SELECT 1 FROM pg_locks AS l \
                WHERE l.pid = a.pid AND NOT l.granted AND l.relation = $1::text::regclass)) \
         LIMIT 1",
        like.join(" OR ")
    );
    until_row(pg, what, &sql, q).await
}

enum Then {
    /// Keep the table locked until the probe has timed out and been sent
    /// again.
    ProbeTimesOut,
    /// Insert deleted key 7 again, then release the table.
    ReinsertKey7,
}

/// Ten archived rows, row 5 un-marked after archiving (so the DELETE
/// keeps it and the probe runs), purged as one batch with `depth`
/// batches in flight while the locks above play out.
async fn purge_with_a_lock_between_delete_and_probe(
    depth: u32,
    then: Then,
) -> (Fixture, PurgeSummary) {
    let mut f = Fixture::archived(10).await;
    f.sql("UPDATE {t} SET archived = false WHERE id = 5").await;
    f.cfg.batching.batch_size = 50;
    f.cfg.pipeline_depth = depth;
    f.lock_timeout_ms(LOCK_TIMEOUT_MS);
    let q = f.q();

    let mut row_holder = cdc_tests::pg().await;
    let row_tx = row_holder.transaction().await.unwrap();
    row_tx
        .execute(&format!("SELECT 1 FROM {q} WHERE id = 3 FOR UPDATE"), &[])
        .await
        .unwrap();
    let table_locker = cdc_tests::pg().await;
    let watcher = cdc_tests::pg().await;

    let choreography = async {
        waiting(
            &watcher,
            "the DELETE to wait for row 3",
            &q,
            &["DELETE FROM"],
        )
        .await;
        // Queued behind the DELETE's ROW EXCLUSIVE lock.
        let (locked_tx, locked_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<bool>();
        let q2 = q.clone();
        let locker = tokio::spawn(async move {
            table_locker
                .batch_execute(&format!("BEGIN; LOCK TABLE {q2} IN ACCESS EXCLUSIVE MODE"))
                .await
                .unwrap();
            let _ = locked_tx.send(());
            if release_rx.await.unwrap() {
                table_locker
                    .batch_execute(&format!(
                        "INSERT INTO {q2} (id, payload) VALUES (7, 'inserted again')"
                    ))
                    .await
                    .unwrap();
            }
            table_locker.batch_execute("COMMIT").await.unwrap();
        });
        until_row(
            &watcher,
            "the ACCESS EXCLUSIVE request to queue",
            "SELECT 'queued' FROM pg_locks WHERE relation = $1::text::regclass \
             AND mode = 'AccessExclusiveLock' AND NOT granted",
            &q,
        )
        .await;
        // The DELETE proceeds and commits; the table lock is granted.
        row_tx.commit().await.unwrap();
        locked_rx.await.unwrap();
        let first = waiting(&watcher, "the probe to wait for the table", &q, &["SELECT"]).await;
        match then {
            Then::ProbeTimesOut => {
                // The probe timed out and something was sent again (the
                // probe; the whole batch, before the fix): a later start.
                let start = Instant::now();
                loop {
                    let now = waiting(
                        &watcher,
                        "the probe (or the batch) to be sent again",
                        &q,
                        &["SELECT", "DELETE FROM"],
                    )
                    .await;
                    if now != first {
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "probe never retried"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                release_tx.send(false).unwrap();
            }
            Then::ReinsertKey7 => release_tx.send(true).unwrap(),
        }
        locker.await.unwrap();
    };
    let opts = PurgeOptions::default();
    let (s, ()) = tokio::join!(f.purge(&opts), choreography);
    let s = s.unwrap();
    (f, s)
}

fn reconciles(s: &PurgeSummary) {
    let c = s.totals;
    assert_eq!(
        c.deleted + c.already_gone + c.skipped_changed + c.skipped_unmarked,
        10,
        "every archived row counted once: {}",
        s.render()
    );
}

#[tokio::test]
async fn a_failed_probe_is_retried_alone_and_the_delete_count_stands() {
    for depth in [1, 2] {
        let (f, s) = purge_with_a_lock_between_delete_and_probe(depth, Then::ProbeTimesOut).await;
        assert!(s.ok(), "depth {depth}: {}", s.render());
        assert!(
            s.retries >= 1,
            "depth {depth}: the probe failed at least once"
        );
        let c = s.totals;
        assert_eq!(
            (
                c.deleted,
                c.skipped_unmarked,
                c.already_gone,
                c.skipped_changed
            ),
            (9, 1, 0, 0),
            "depth {depth}: {}",
            s.render()
        );
        reconciles(&s);
        let rec = f.purge_record(0, 0).await.unwrap();
        assert_eq!((rec.deleted, rec.already_gone), (9, 0), "depth {depth}");
        assert_eq!(
            f.snapshot().await.keys().copied().collect::<Vec<_>>(),
            [5],
            "depth {depth}"
        );
        f.drop().await;
    }
}

#[tokio::test]
async fn a_key_inserted_again_before_the_probe_is_not_counted_twice() {
    let (f, s) = purge_with_a_lock_between_delete_and_probe(1, Then::ReinsertKey7).await;
    assert!(s.ok(), "{}", s.render());
    let c = s.totals;
    assert_eq!(
        (
            c.deleted,
            c.skipped_unmarked,
            c.already_gone,
            c.skipped_changed
        ),
        (9, 1, 0, 0),
        "{}",
        s.render()
    );
    reconciles(&s);
    let rec = f.purge_record(0, 0).await.unwrap();
    assert_eq!(rec.accounted_rows(), 10);
    // Row 7 is a new row (not the archived version), kept; row 5 held.
    let left = f.snapshot().await;
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), [5, 7]);
    assert_eq!(left[&7].0.as_deref(), Some("inserted again"));
    f.drop().await;
}
