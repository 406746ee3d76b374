//! The invariant in the awkward but ordinary cases, on the real pipeline
//! (PostgreSQL + wal2json → the PostgreSQL changefeed → Kafka → the sink →
//! the archive → the purger): a row is deleted only when the state its
//! last transaction left is archived, and a marked row does not stay
//! marked for want of a matching version.
//!
//! - a transaction re-spells a key to an equal value (`numeric` 1.0 → 1.00,
//!   `citext` 'Ab' → 'ab'): its versions of the row go to two partitions;
//!   the partition holding the intermediate version is checkpointed first;
//! - a row last written inside a savepoint (its `xmin` is the
//!   subtransaction's, the archive records the top-level xid);
//! - a nullable `numeric` that is NULL (wal2json 2.5 writes NaN and NULL
//!   alike, so the changefeed sends such rows without a version);
//! - a tuple rewritten with a new `xmin` that the changefeed never sees (as
//!   `pg_repack` does).

mod common;

use std::time::{Duration, Instant};

use cdc_pg_changefeed::partition::partition_for_key;
use common::Pipeline;

/// The sink checkpoints a partition only when 50 rows are buffered (no
/// age or resolved-only checkpoints during the test), so one partition can
/// be checkpointed while another holds its events back.
fn checkpoint_on_rows_only(p: &mut Pipeline) {
    p.sink_cfg.flush_rows = 50;
    p.sink_cfg.flush_age = Duration::from_secs(3600);
    p.sink_cfg.resolved_checkpoint_interval = Duration::from_secs(3600);
}

/// Waits until the archive holds a version with these `(key, note)` texts.
async fn wait_for_archived(p: &Pipeline, key: &str, note: &str) {
    let want = vec![Some(key.to_owned()), Some(note.to_owned())];
    let start = Instant::now();
    while !p.archived_text(&["id", "note"]).await.contains(&want) {
        assert!(
            start.elapsed() < common::LIMIT,
            "({key}, {note}) never archived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `CREATE EXTENSION citext`, tolerating a concurrent creation.
async fn p_client_extension() -> Result<(), tokio_postgres::Error> {
    cdc_tests::pg()
        .await
        .batch_execute(
            "DO $$ BEGIN CREATE EXTENSION IF NOT EXISTS citext; \
             EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL; END $$",
        )
        .await
}

/// One transaction writes row `old` twice: a new note, then the key
/// re-spelled to `new` (equal under the type's `=`) with the final note.
/// The key text changed, so the changefeed sends the final version to
/// another partition than the intermediate one. That other partition is
/// not checkpointed yet when the purge runs: the row must stay. Once the
/// final version is checkpointed, the next purge deletes it.
async fn respelled_key(prefix: &str, key_type: &str, old: &str, new: &str) {
    // The changefeed's key: numbers are their own JSON text, strings quoted.
    let json_of = |k: &str| {
        if key_type == "numeric" {
            format!("[{k}]")
        } else {
            format!("[{}]", serde_json::to_string(k).unwrap())
        }
    };
    let partitions = (2..16)
        .find(|n| {
            partition_for_key(json_of(old).as_bytes(), *n)
                != partition_for_key(json_of(new).as_bytes(), *n)
        })
        .expect("a partition count that separates the two spellings");
    if key_type == "citext" {
        // Concurrent tests may race to create it.
        let _ = p_client_extension().await;
    }
    let ddl = format!(
        "CREATE TABLE {{t}} (id {key_type} PRIMARY KEY, note text, archived bool NOT NULL DEFAULT false);
         ALTER TABLE {{t}} REPLICA IDENTITY FULL;"
    );
    let mut p = Pipeline::create(prefix, &ddl, partitions, 50).await;
    checkpoint_on_rows_only(&mut p);
    p.start_feed().await;
    p.start_sink();
    // Fillers in the old spelling's partition: a later transaction of 60 of
    // them fills that partition's buffer and proves the first transaction
    // complete there.
    let first = partition_for_key(json_of(old).as_bytes(), partitions);
    let fillers: Vec<String> = (1000..)
        .map(|i| {
            if key_type == "numeric" {
                i.to_string()
            } else {
                format!("f{i}")
            }
        })
        .filter(|k| partition_for_key(json_of(k).as_bytes(), partitions) == first)
        .take(60)
        .collect();
    let q = &p.qt;
    p.client
        .execute(
            &format!("INSERT INTO {q} (id, note) SELECT k::{key_type}, 'start' FROM unnest($1::text[]) k"),
            &[&fillers],
        )
        .await
        .unwrap();
    p.client
        .execute(
            &format!(
                "INSERT INTO {q} (id, note, archived) VALUES ($1::text::{key_type}, 'start', true)"
            ),
            &[&old],
        )
        .await
        .unwrap();
    p.client.batch_execute("BEGIN").await.unwrap();
    p.client
        .execute(
            &format!("UPDATE {q} SET note = 'mid' WHERE id = $1::text::{key_type}"),
            &[&old],
        )
        .await
        .unwrap();
    p.client
        .execute(
            &format!("UPDATE {q} SET id = $2::text::{key_type}, note = 'final' WHERE id = $1::text::{key_type}"),
            &[&old, &new],
        )
        .await
        .unwrap();
    p.client.batch_execute("COMMIT").await.unwrap();
    p.client
        .execute(
            &format!("UPDATE {q} SET archived = true WHERE id = ANY($1::text[]::{key_type}[])"),
            &[&fillers],
        )
        .await
        .unwrap();
    // The old spelling's partition is checkpointed with the intermediate
    // version; the new spelling's partition holds the final one back.
    wait_for_archived(&p, old, "mid").await;
    assert!(
        !p.archived_text(&["id", "note"])
            .await
            .contains(&vec![Some(new.to_owned()), Some("final".to_owned())]),
        "the final version must not be checkpointed yet for this test to mean anything"
    );
    let s = p.purge(&p.purger(100)).await;
    let row: Vec<(String, String)> = p
        .client
        .query(
            &format!("SELECT id::text, note FROM {q} WHERE id = $1::text::{key_type}"),
            &[&new],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        row,
        vec![(new.to_owned(), "final".to_owned())],
        "the row whose final state is in no checkpoint was deleted: {}",
        s.render()
    );
    assert!(
        s.totals.skipped_changed >= 1,
        "the intermediate version was looked at: {}",
        s.render()
    );

    // The sink is restarted with its usual settings: it re-reads every
    // partition from its chain's end and checkpoints everything.
    p.stop_sink().await;
    p.sink_cfg.flush_age = Duration::from_millis(300);
    p.sink_cfg.resolved_checkpoint_interval = Duration::from_millis(300);
    p.start_sink();
    p.wait_archived(p.db_now().await).await;
    wait_for_archived(&p, new, "final").await;
    let s = p.purge(&p.purger(100)).await;
    assert_eq!(
        s.totals.deleted,
        61,
        "the row and the fillers: {}",
        s.render()
    );
    assert_eq!(p.count("true").await, 0);
    if key_type == "numeric" {
        // A look-up by value finds the row whatever its spelling: `[1]` is
        // `[1.0]` and `[1.00]`. Each spelling's latest state is listed (one
        // transaction wrote both, in two partitions: which came last is not
        // recorded), and the row's final state is among them.
        let (found, _) = cdc_retrieve::retrieve(
            &p.archive,
            &cdc_retrieve::Query {
                table: p.table.clone(),
                selector: cdc_retrieve::Selector::Key(cdc_retrieve::parse_key_arg("[1]").unwrap()),
                all_versions: false,
                limit: None,
            },
        )
        .await
        .unwrap();
        let notes: Vec<String> = found
            .iter()
            .filter_map(|f| f.row.columns.iter().find(|(c, _)| c == "note"))
            .map(|(_, v)| v.to_json_text())
            .collect();
        assert!(notes.contains(&"\"final\"".to_owned()), "{notes:?}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_numeric_key_respelled_in_another_partition_stays_until_its_final_version_is_archived() {
    respelled_key("inv_num", "numeric", "1.0", "1.00").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_citext_key_respelled_in_another_partition_stays_until_its_final_version_is_archived() {
    respelled_key("inv_citext", "citext", "Ab", "ab").await;
}

/// Rows that no version guard could match are purged by the same run that
/// archived them, each deleted exactly as archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn savepoints_null_numerics_and_rewritten_tuples_are_purged_by_content() {
    let mut p = Pipeline::create(
        "inv_cases",
        "CREATE TABLE {t} (id bigint PRIMARY KEY, note text, amount numeric(40,12), ratio float8,
                           archived bool NOT NULL DEFAULT false);
         ALTER TABLE {t} REPLICA IDENTITY FULL;",
        3,
        100,
    )
    .await;
    // A replication origin of the test's own, in the changefeed's filter:
    // a session that takes it writes changes the changefeed never sends.
    let origin = cdc_tests::unique("inv_rewrite");
    p.feed_cfg.filter_origins.push(origin.clone());
    p.start_feed().await;
    p.start_sink();
    let q = p.qt.clone();
    p.client
        .batch_execute(&format!(
            "INSERT INTO {q} (id, note, amount, ratio)
             SELECT g, 'n' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE g * 1.5 END,
                    CASE WHEN g % 5 = 0 THEN NULL ELSE g / 7.0 END
             FROM generate_series(1, 300) g;
             UPDATE {q} SET amount = 'NaN' WHERE id = 300;"
        ))
        .await
        .unwrap();
    let witness = p.witness_deletes().await;
    p.client
        .batch_execute(&format!("UPDATE {q} SET archived = true"))
        .await
        .unwrap();
    // Row 7: last written inside a savepoint (Django's nested atomic()).
    p.client
        .batch_execute(&format!(
            "BEGIN; SAVEPOINT s; UPDATE {q} SET note = 'in a savepoint' WHERE id = 7; RELEASE s; COMMIT;"
        ))
        .await
        .unwrap();
    let sub_xmin: bool = p
        .client
        .query_one(
            &format!("SELECT xmin::text::int8 <> (SELECT xmin::text::int8 FROM {q} WHERE id = 8) FROM {q} WHERE id = 7"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(sub_xmin);
    p.wait_archived(p.db_now().await).await;
    // Row 9: its tuple rewritten with a new xmin the changefeed never sees.
    let other = cdc_tests::pg().await;
    other
        .batch_execute(&format!(
            "SELECT pg_replication_origin_create('{origin}');
             SELECT pg_replication_origin_session_setup('{origin}');
             UPDATE {q} SET note = note WHERE id = 9;
             SELECT pg_replication_origin_session_reset();
             SELECT pg_replication_origin_drop('{origin}');"
        ))
        .await
        .unwrap();

    let s = p.purge(&p.purger(50)).await;
    // Everything but, with a wal2json older than 2.6, the NaN row: it was
    // archived as null, so its value is not in the archive.
    let nan_archived = p
        .archived_text(&["id", "amount"])
        .await
        .contains(&vec![Some("300".to_owned()), Some("NaN".to_owned())]);
    let left: Vec<i64> = p
        .client
        .query(&format!("SELECT id FROM {q} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let kept: Vec<i64> = if nan_archived { vec![] } else { vec![300] };
    assert_eq!(left, kept, "{}", s.render());
    // Each deleted row exactly as archived.
    let cols = ["id", "note", "amount", "ratio", "archived"];
    let archived: std::collections::HashSet<_> = p.archived_text(&cols).await.into_iter().collect();
    let deleted = p.db_text(&witness, &cols).await;
    assert_eq!(deleted.len(), 300 - kept.len());
    for row in &deleted {
        assert!(
            archived.contains(row),
            "deleted but not archived as it was: {row:?}"
        );
    }
    assert!(deleted
        .iter()
        .any(|r| r[1].as_deref() == Some("in a savepoint")));
    p.stop().await;
}

/// Parents that a `NO ACTION` foreign key still references are kept (and
/// said to be kept, by child table), every other eligible parent is
/// purged by the same run, and the kept ones go in a later run once their
/// children are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn referenced_parents_are_kept_the_rest_purged_and_they_follow_later() {
    let p = Pipeline::start(
        "inv_fk",
        "CREATE TABLE {t} (id bigint PRIMARY KEY, created date NOT NULL, note text,
                           archived bool NOT NULL DEFAULT false);
         ALTER TABLE {t} REPLICA IDENTITY FULL;",
        3,
        200,
    )
    .await;
    let q = p.qt.clone();
    let child = cdc_common::ident::quote_ident(&format!("{}_line", p.table));
    p.client
        .batch_execute(&format!(
            "INSERT INTO {q} (id, created, note)
             SELECT g, current_date - CASE WHEN g <= 1000 THEN 100 ELSE 1 END, 'n' || g
             FROM generate_series(1, 1200) g;
             CREATE TABLE {child} (id serial PRIMARY KEY, parent bigint REFERENCES {q} (id));
             CREATE INDEX ON {child} (parent);
             INSERT INTO {child} (parent) SELECT g * 40 FROM generate_series(1, 25) g;"
        ))
        .await
        .unwrap();
    let run_cfg: cdc_run::RunConfig =
        toml::from_str("wait_timeout = \"120s\"\npoll_interval = \"200ms\"").unwrap();
    let plan = cdc_run::TablePlan {
        database_url: cdc_tests::pg_url(),
        marker: p.marker("created", "30 days", 100),
        purger: p.purger(100),
        sink: Some(p.sink_watch()),
    };
    let never = tokio_util::sync::CancellationToken::new();
    let run = || cdc_run::run_once(std::slice::from_ref(&plan), &run_cfg, &p.archive, &never);
    let report = run().await;
    let t = &report.tables[0];
    assert_eq!(report.outcome, cdc_run::Outcome::Success, "{report}");
    let purge = t.purge.as_ref().unwrap();
    assert_eq!(
        (
            purge.totals.deleted,
            purge.totals.skipped_referenced,
            purge.retouched
        ),
        (975, 25, 25),
        "{report}"
    );
    let v = t.verify.as_ref().unwrap();
    assert_eq!((v.rows_still_marked, v.rows_referenced), (0, 25));
    assert_eq!(v.referenced_by, vec![format!("public.{}_line", p.table)]);
    assert!(
        report.to_string().contains("kept: 25 referenced by"),
        "{report}"
    );
    // Exactly the referenced parents are left of the old rows.
    let left: Vec<i64> = p
        .client
        .query(
            &format!("SELECT id FROM {q} WHERE id <= 1000 ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, (1..=25).map(|g| g * 40).collect::<Vec<i64>>());

    // The children go; the next run purges the parents (their re-touched
    // versions were archived meanwhile).
    p.client
        .batch_execute(&format!("DELETE FROM {child}"))
        .await
        .unwrap();
    let report = run().await;
    let purge = report.tables[0].purge.as_ref().unwrap();
    assert_eq!(report.outcome, cdc_run::Outcome::Success, "{report}");
    assert_eq!(purge.totals.skipped_referenced, 0, "{report}");
    assert_eq!(p.count("id <= 1000").await, 0, "{report}");
    assert_eq!(p.count("true").await, 200);
    p.client
        .batch_execute(&format!("DROP TABLE {child}"))
        .await
        .unwrap();
    p.stop().await;
}

/// A column added after rows were archived: their archived copies lack it,
/// so no guard can match them and they stay marked (counted as having no
/// complete archived version). `cdc-archiver retouch` gives each a new
/// version, which the changefeed archives whole, and the next purge
/// deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_archived_before_a_column_was_added_leave_after_a_retouch() {
    let p = Pipeline::start(
        "inv_added",
        "CREATE TABLE {t} (id bigint PRIMARY KEY, note text, archived bool NOT NULL DEFAULT false);
         ALTER TABLE {t} REPLICA IDENTITY FULL;",
        2,
        100,
    )
    .await;
    let q = p.qt.clone();
    p.client
        .batch_execute(&format!(
            "INSERT INTO {q} (id, note) SELECT g, 'n' || g FROM generate_series(1, 100) g;
             UPDATE {q} SET archived = true;"
        ))
        .await
        .unwrap();
    p.wait_archived(p.db_now().await).await;
    p.client
        .batch_execute(&format!(
            "ALTER TABLE {q} ADD COLUMN region text NOT NULL DEFAULT 'eu'"
        ))
        .await
        .unwrap();
    let s = p.purge(&p.purger(50)).await;
    assert_eq!(
        (s.totals.deleted, s.totals.skipped_no_version),
        (0, 100),
        "{}",
        s.render()
    );

    let cfg = p.purger(50);
    assert_eq!(cdc_purger::retouch_marked(&cfg).await.unwrap(), 100);
    p.wait_archived(p.db_now().await).await;
    let s = p.purge(&p.purger(50)).await;
    assert_eq!(s.totals.deleted, 100, "{}", s.render());
    assert_eq!(p.count("true").await, 0);
    p.stop().await;
}

/// One transaction writes row 1 twice (`first`, then `final`) around many
/// other changes; the changefeed dies between the two and sends the whole
/// transaction again after its restart. Retrieval and restore answer with
/// the state the transaction left, `final`, whatever the deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retrieve_and_restore_return_the_state_a_transaction_left_across_redelivery() {
    let mut p = Pipeline::start(
        "inv_redeliver",
        "CREATE TABLE {t} (id bigint PRIMARY KEY, note text, archived bool NOT NULL DEFAULT true);
         ALTER TABLE {t} REPLICA IDENTITY FULL;",
        2,
        5_000,
    )
    .await;
    let q = p.qt.clone();
    p.client
        .batch_execute(&format!(
            "INSERT INTO {q} (id, note) SELECT g, 'start' FROM generate_series(1, 30000) g"
        ))
        .await
        .unwrap();
    p.wait_archived(p.db_now().await).await;
    let topic = p.sink_cfg.topics[0].name.clone();
    let watermarks: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .create()
        .unwrap();
    let published = || -> i64 {
        (0..2)
            .map(|part| {
                rdkafka::consumer::Consumer::fetch_watermarks(
                    &watermarks,
                    &topic,
                    part,
                    Duration::from_secs(5),
                )
                .map_or(0, |(_, h)| h)
            })
            .sum()
    };
    let before = published();
    // The transaction, while the feed runs: killed after ~2,000 of its
    // 30,001 changes reached Kafka.
    let writer = cdc_tests::pg().await;
    let tx = tokio::spawn(async move {
        writer
            .batch_execute(&format!(
                "BEGIN; UPDATE {q} SET note = 'first' WHERE id = 1;
                 UPDATE {q} SET note = 'touched' WHERE id > 1;
                 UPDATE {q} SET note = 'final' WHERE id = 1; COMMIT;"
            ))
            .await
            .unwrap();
    });
    tx.await.unwrap();
    let start = Instant::now();
    while published() < before + 2_000 {
        assert!(
            start.elapsed() < common::LIMIT,
            "the transaction never reached Kafka"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    p.kill_feed().await;
    let cut = published() - before;
    p.start_feed().await;
    p.wait_archived(p.db_now().await).await;
    eprintln!("first delivery cut after {cut} changes");

    let (found, stats) = cdc_retrieve::retrieve(
        &p.archive,
        &cdc_retrieve::Query {
            table: p.table.clone(),
            selector: cdc_retrieve::Selector::Key(cdc_retrieve::parse_key_arg("[1]").unwrap()),
            all_versions: false,
            limit: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(found.len(), 1);
    let note = found[0]
        .row
        .columns
        .iter()
        .find(|(c, _)| c == "note")
        .unwrap();
    assert_eq!(
        note.1,
        cdc_changefeed::Value::String("final".into()),
        "{stats:?}"
    );
    // Restored into an empty copy of the table: the same state.
    let copy = format!("{}_copy", p.table);
    p.client
        .batch_execute(&format!(
            "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
            cdc_common::ident::quote_ident(&copy),
            p.qt
        ))
        .await
        .unwrap();
    let opts = cdc_retrieve::RestoreOptions {
        table: cdc_common::ident::TableName::parse(&format!("public.{copy}")).unwrap(),
        archived_column: "archived".into(),
        keep_archived_flag: true,
        batch_size: 10,
    };
    let s = cdc_retrieve::restore_url(
        &cdc_tests::pg_url(),
        &found,
        &opts,
        &cdc_common::retry::RetryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(s.inserted, 1);
    let restored: String = p
        .client
        .query_one(
            &format!(
                "SELECT note FROM {} WHERE id = 1",
                cdc_common::ident::quote_ident(&copy)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(restored, "final");
    p.client
        .batch_execute(&format!(
            "DROP TABLE {}",
            cdc_common::ident::quote_ident(&copy)
        ))
        .await
        .unwrap();
    p.stop().await;
}
