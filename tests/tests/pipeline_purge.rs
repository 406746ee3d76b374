//! The purger's guarantees through the real pipeline: PostgreSQL → the
//! PostgreSQL changefeed → the broker → the sink → the archive → the
//! purger. A trigger on every table records each row exactly as the purger
//! deleted it (the database's own witness), so "every deleted row version
//! is in the archive" is checked against what was really deleted, not
//! against what the purger says it did.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use common::Pipeline;

/// A `payments`-like table: composite key, exact NUMERIC, text.
/// REPLICA IDENTITY FULL: the changefeed then sees every column of every
/// update, TOASTed values included.
const PAYMENTS: &str =
    "CREATE TABLE {t} (id bigint NOT NULL, booking_date date NOT NULL, reference text,
       amount numeric NOT NULL, currency text NOT NULL, archived bool NOT NULL DEFAULT false,
       PRIMARY KEY (booking_date, id));
     ALTER TABLE {t} REPLICA IDENTITY FULL;";

const COLUMNS: &[&str] = &[
    "id",
    "booking_date",
    "reference",
    "amount",
    "currency",
    "archived",
];

/// Inserts ids `from..=to`, booked over the last 400 days (`id % 400` days
/// ago), amounts with exact cents and a few very long digit strings. No
/// row is booked the day before a cutoff the tests use (30 and 90 days) or
/// on it (those move 2 days further back): a run that crosses midnight
/// would see that day's rows become eligible between counting and marking.
async fn fill(p: &Pipeline, from: i64, to: i64) {
    p.client
        .batch_execute(&format!(
            "INSERT INTO {t} (id, booking_date, reference, amount, currency)
             SELECT g, current_date - CASE WHEN g % 400 IN (29, 30, 89, 90) THEN g % 400 + 2 ELSE g % 400 END::int, 'INV-' || lpad(g::text, 9, '0') || ' \"q\" ü',
                    CASE WHEN g % 97 = 0 THEN 123456789012345678901234.567890 + g
                         ELSE round(((g * 7919) % 2000000) / 100.0, 2) END,
                    (ARRAY['EUR', 'USD', 'GBP', 'CHF'])[1 + g % 4]
             FROM generate_series({from}, {to}) AS g;
             ANALYZE {t};",
            t = p.qt
        ))
        .await
        .expect("filling the table");
}

/// Every archived version, as a set of column texts.
async fn archived_set(p: &Pipeline) -> HashSet<Vec<Option<String>>> {
    p.archived_text(COLUMNS).await.into_iter().collect()
}

/// Asserts the invariant on what the witness saw: each deleted row, with
/// every column exactly as it was when deleted, is an archived version,
/// and no row was deleted twice. Returns the deleted rows.
async fn assert_deleted_rows_are_archived(p: &Pipeline, witness: &str) -> Vec<Vec<Option<String>>> {
    assert_deleted_rows_are_in(p, witness, &archived_set(p).await).await
}

/// As [`assert_deleted_rows_are_archived`], against archived versions read
/// earlier.
async fn assert_deleted_rows_are_in(
    p: &Pipeline,
    witness: &str,
    archived: &HashSet<Vec<Option<String>>>,
) -> Vec<Vec<Option<String>>> {
    let deleted = p.db_text(witness, COLUMNS).await;
    for row in &deleted {
        assert!(
            archived.contains(row),
            "a deleted row version is not in the archive: {row:?}"
        );
    }
    let keys: BTreeSet<(Option<String>, Option<String>)> = deleted
        .iter()
        .map(|r| (r[1].clone(), r[0].clone()))
        .collect();
    assert_eq!(keys.len(), deleted.len(), "a row was deleted twice");
    deleted
}

/// 100k rows, 90-day cutoff, while foreground writers insert new rows and
/// update eligible ones (some after they were marked and archived): every
/// eligible row ends up deleted, each exactly in an archived version; no
/// row outside the cutoff is touched; the counts reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_pipeline_deletes_exactly_archived_versions_under_foreground_writes() {
    let rows = 100_000;
    let p = Pipeline::start("pp_full", PAYMENTS, 3, 5_000).await;
    fill(&p, 1, rows).await;
    let witness = p.witness_deletes().await;
    let cutoff = "booking_date < now() - interval '90 days'";
    let eligible = p.count(cutoff).await;
    let recent_before = p
        .db_text(&format!("{} WHERE NOT ({cutoff})", p.qt), COLUMNS)
        .await;
    assert!(eligible > 70_000 && !recent_before.is_empty());

    // Foreground traffic for the whole marking phase: new (recent) rows,
    // and updates of eligible rows, marked or not yet.
    let writer_done = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let done = writer_done.clone();
        let t = p.qt.clone();
        async move {
            let c = cdc_tests::pg().await;
            let (mut inserts, mut updates) = (0i64, 0i64);
            let mut next = rows + 1;
            while !done.is_cancelled() {
                c.execute(
                    &format!(
                        "INSERT INTO {t} (id, booking_date, reference, amount, currency) \
                         VALUES ($1, current_date, 'new', 1.00, 'EUR')"
                    ),
                    &[&next],
                )
                .await
                .expect("a foreground insert");
                next += 1;
                inserts += 1;
                // An old row (id % 400 >= 100 is past the cutoff).
                let id = 100 + (next * 7919) % rows;
                let id = id - id % 400 + 200;
                updates += c
                    .execute(
                        &format!("UPDATE {t} SET reference = reference || '+' WHERE id = $1"),
                        &[&id],
                    )
                    .await
                    .expect("a foreground update") as i64;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            (inserts, updates)
        }
    });

    let mut marker = p.marker("booking_date", "90 days", 500);
    marker.count_eligible = true;
    let mark = p.mark(&marker).await;
    writer_done.cancel();
    let (inserts, updates) = writer.await.unwrap();
    assert!(inserts > 0 && updates > 0, "the foreground writer ran");
    assert_eq!(mark.rows_marked as i64, eligible, "{mark:?}");

    p.wait_archived(p.db_now().await).await;
    let summary = p.purge(&p.purger(500)).await;
    assert!(summary.refused.is_empty(), "{}", summary.render());

    let deleted = assert_deleted_rows_are_archived(&p, &witness).await;
    assert_eq!(deleted.len() as i64, eligible, "every eligible row deleted");
    assert_eq!(summary.totals.deleted as i64, eligible);
    assert_eq!(p.count(cutoff).await, 0);
    assert_eq!(
        p.count("archived").await,
        0,
        "no row outside the cutoff was marked"
    );
    // The rows outside the cutoff are exactly as they were, plus the new ones.
    let recent_after: BTreeSet<_> = p
        .db_text(&format!("{} WHERE reference <> 'new'", p.qt), COLUMNS)
        .await
        .into_iter()
        .collect();
    assert_eq!(recent_after, recent_before.into_iter().collect());
    assert_eq!(p.count("reference = 'new'").await, inserts);
    p.stop().await;
}

/// A row changed after it was archived is kept until its new version is
/// archived; a row un-marked after it was archived (a legal hold) is never
/// deleted. And a referencing table without an index on its foreign key
/// makes the purger refuse, printing the `CREATE INDEX` that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changed_and_unmarked_rows_are_kept_until_archived_again() {
    let p = Pipeline::start("pp_changed", PAYMENTS, 2, 100).await;
    fill(&p, 1, 400).await;
    let witness = p.witness_deletes().await;
    let cutoff = "booking_date < now() - interval '30 days'";
    let eligible = p.count(cutoff).await;
    let mark = p.mark(&p.marker("booking_date", "30 days", 50)).await;
    assert_eq!(mark.rows_marked as i64, eligible);
    p.wait_archived(p.db_now().await).await;

    // The sink goes down; meanwhile one archived row changes and another is
    // put on legal hold.
    let mut p = p;
    p.stop_sink().await;
    let (changed, held) = (77i64, 78i64);
    p.client
        .batch_execute(&format!(
            "UPDATE {t} SET amount = amount + 0.01 WHERE id = {changed};
             UPDATE {t} SET archived = false WHERE id = {held};",
            t = p.qt
        ))
        .await
        .unwrap();
    let changed_row = p
        .db_text(&format!("{} WHERE id = {changed}", p.qt), COLUMNS)
        .await;

    // A child table references the table through an unindexed key.
    let child = cdc_common::ident::quote_ident(&format!("{}_child", p.table));
    p.client
        .batch_execute(&format!(
            "CREATE TABLE {child} (n serial PRIMARY KEY, d date, pid bigint,
               FOREIGN KEY (d, pid) REFERENCES {t})",
            t = p.qt
        ))
        .await
        .unwrap();
    let cfg = p.purger(40);
    let err = cdc_purger::purge(
        &cfg,
        &p.archive,
        tokio_util::sync::CancellationToken::new(),
        &cdc_purger::PurgeOptions::default(),
    )
    .await
    .expect_err("an unindexed foreign key must stop the purger");
    let cdc_purger::PurgeError::UnindexedForeignKeys { statements, .. } = &err else {
        panic!("expected the unindexed-foreign-key refusal, got {err}");
    };
    assert_eq!(statements.len(), 1, "{statements:?}");
    assert!(
        statements[0].starts_with("CREATE INDEX") && statements[0].contains(&child),
        "{statements:?}"
    );
    assert_eq!(
        p.count("true").await,
        400,
        "nothing deleted before the refusal"
    );
    // The printed statement is the fix.
    p.client.batch_execute(&statements[0]).await.unwrap();

    let first = p.purge(&cfg).await;
    assert_eq!(first.totals.skipped_changed, 1, "{}", first.render());
    assert_eq!(first.totals.skipped_unmarked, 1, "{}", first.render());
    assert_eq!(first.totals.deleted as i64, eligible - 2);
    assert_eq!(
        p.db_text(&format!("{} WHERE id = {changed}", p.qt), COLUMNS)
            .await,
        changed_row,
        "the changed row is kept, as it is"
    );
    assert_eq!(p.count(&format!("id = {held} AND NOT archived")).await, 1);

    // Once the sink has archived the new version, it is deleted; the held
    // row never is.
    p.start_sink();
    p.wait_archived(p.db_now().await).await;
    let second = p.purge(&cfg).await;
    assert_eq!(second.totals.deleted, 1, "{}", second.render());
    assert_eq!(p.count(&format!("id = {changed}")).await, 0);
    assert_eq!(p.count(&format!("id = {held}")).await, 1);
    let deleted = assert_deleted_rows_are_archived(&p, &witness).await;
    assert_eq!(deleted.len() as i64, eligible - 1);
    assert!(
        deleted.contains(&changed_row[0]),
        "the changed row was deleted in its new, archived version"
    );
    p.client
        .batch_execute(&format!("DROP TABLE {child}"))
        .await
        .unwrap();
    p.stop().await;
}

/// Keys (as JSON values) of every row of a segment file.
fn segment_keys(bytes: &[u8]) -> Vec<serde_json::Value> {
    cdc_segment::decode_segment(bytes)
        .expect("a segment as written")
        .rows
        .iter()
        .map(|r| serde_json::from_str(&r.meta.key_json).unwrap())
        .collect()
}

/// A checkpoint whose segment was deleted, and one whose segment was
/// altered, are refused: nothing they (or later checkpoints of their
/// partitions) cover is deleted. The untouched partition is purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_or_altered_segments_are_refused_and_their_rows_stay() {
    let mut p = Pipeline::start("pp_refused", PAYMENTS, 3, 60).await;
    fill(&p, 1, 1200).await;
    let witness = p.witness_deletes().await;
    let mark = p.mark(&p.marker("booking_date", "0 days", 100)).await;
    assert_eq!(mark.rows_marked, 1200);
    p.wait_archived(p.db_now().await).await;
    p.stop_sink().await;

    // Per partition, the keys of each segment, in chain order.
    let mut by_partition: BTreeMap<i32, Vec<(String, Vec<serde_json::Value>)>> = BTreeMap::new();
    for part in cdc_checkpoint::partitions(&p.archive, &p.table)
        .await
        .unwrap()
    {
        let chain = cdc_checkpoint::read_chain(&p.archive, &p.table, part)
            .await
            .unwrap();
        for cp in chain.checkpoints {
            if let Some(seg) = cp.segment {
                let file = p.dir.path().join(&seg.path);
                let keys = segment_keys(&std::fs::read(&file).unwrap());
                by_partition
                    .entry(part)
                    .or_default()
                    .push((seg.path.clone(), keys));
            }
        }
    }
    assert_eq!(by_partition.len(), 3, "rows in every partition");
    assert!(
        by_partition.values().all(|s| s.len() >= 2),
        "several segments per partition"
    );
    // What the archive held, read while it was intact.
    let archived = archived_set(&p).await;
    // Partition 0 loses its second segment, partition 1's second is altered.
    let must_stay: Vec<serde_json::Value> = [0, 1]
        .iter()
        .flat_map(|part| by_partition[part][1..].iter().flat_map(|(_, k)| k.clone()))
        .collect();
    std::fs::remove_file(p.dir.path().join(&by_partition[&0][1].0)).unwrap();
    let altered = p.dir.path().join(&by_partition[&1][1].0);
    let mut bytes = std::fs::read(&altered).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&altered, bytes).unwrap();

    let summary = p.purge(&p.purger(50)).await;
    assert_eq!(summary.refused.len(), 2, "{}", summary.render());
    let refused: BTreeSet<i32> = summary.refused.iter().map(|r| r.partition).collect();
    assert_eq!(refused, BTreeSet::from([0, 1]));

    let left: HashSet<String> = p
        .client
        .query(
            &format!(
                "SELECT json_build_array(booking_date, id)::text FROM {}",
                p.qt
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.get::<_, String>(0))
                .unwrap()
                .to_string()
        })
        .collect();
    for k in &must_stay {
        assert!(
            left.contains(&k.to_string()),
            "row {k} of a refused checkpoint was deleted"
        );
    }
    assert_eq!(left.len(), must_stay.len(), "everything else was purged");
    let deleted = assert_deleted_rows_are_in(&p, &witness, &archived).await;
    assert_eq!(deleted.len() + must_stay.len(), 1200);
    p.stop().await;
}
