//! The purger against real PostgreSQL and a real (local) object store.

mod common;

use std::collections::BTreeSet;

use cdc_common::ident::{quote_ident, TableName};
use cdc_purger::{CheckpointStatus, PurgeError, PurgeOptions, RowCounts};
use common::{as_snapshot_values, Fixture};
use object_store::{ObjectStoreExt, PutPayload};

fn opts() -> PurgeOptions {
    PurgeOptions::default()
}

#[tokio::test]
async fn deletes_exactly_the_archived_versions_and_nothing_else() {
    let f = Fixture::new(100).await;
    f.mark(1, 61).await;
    let cp1 = f.archive(0, 0, 1, 30, true).await;
    let cp2 = f.archive(0, 30, 31, 60, true).await;
    // After archiving: row 5 changes (new xmin, still marked), row 6 is
    // un-marked (legal hold), row 7 disappears. Row 61 is marked but was
    // never archived.
    f.sql("UPDATE {t} SET payload = 'changed' WHERE id = 5")
        .await;
    f.sql("UPDATE {t} SET archived = false WHERE id = 6").await;
    f.sql("DELETE FROM {t} WHERE id = 7").await;
    let before = f.snapshot().await;

    let s = f.purge(&opts()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    assert_eq!(s.checkpoints.len(), 2);
    assert!(s
        .checkpoints
        .iter()
        .all(|c| c.status == CheckpointStatus::Purged));
    let c1 = s.checkpoints[0].counts;
    assert_eq!(
        (
            c1.rows,
            c1.deleted,
            c1.already_gone,
            c1.skipped_changed,
            c1.skipped_unmarked
        ),
        (30, 27, 1, 1, 1)
    );
    let c2 = s.checkpoints[1].counts;
    assert_eq!(
        (
            c2.rows,
            c2.deleted,
            c2.already_gone,
            c2.skipped_changed,
            c2.skipped_unmarked
        ),
        (30, 30, 0, 0, 0)
    );
    assert!(
        s.batches >= 8,
        "batch_size 8 over 60 rows: {} batches",
        s.batches
    );

    let after = f.snapshot().await;
    let deleted = common::deleted_ids(&before, &after);
    let expected: BTreeSet<i64> = (1..=60).filter(|id| ![5, 6, 7].contains(id)).collect();
    assert_eq!(deleted, expected);
    // Every deleted row is in the archive with identical values.
    let mut archived = std::collections::BTreeMap::new();
    for cp in [&cp1, &cp2] {
        for r in f.archived_rows(cp).await {
            let id: i64 = r.meta.key_json.trim_matches(['[', ']']).parse().unwrap();
            archived.insert(
                id,
                (as_snapshot_values(&r), r.meta.pg_xid.unwrap().to_string()),
            );
        }
    }
    for id in &deleted {
        let (payload, amount, marked, xmin) = before[id].clone();
        assert!(marked);
        assert_eq!(archived[id], ((payload, amount), xmin), "row {id}");
    }
    // No row outside the archive was touched (same values, same xmin).
    for (id, row) in &after {
        assert_eq!(&before[id], row, "row {id} changed");
    }
    assert_eq!(after.len(), 100 - 60 + 2); // 5, 6 kept; 7 gone before; 61..100 kept

    // Purge records are written; a rerun is a no-op.
    let rec = f.purge_record(0, 0).await.unwrap();
    assert_eq!(
        (
            rec.deleted,
            rec.already_gone,
            rec.skipped_changed,
            rec.skipped_unmarked
        ),
        (27, 1, 1, 1)
    );
    assert_eq!(rec.segment, cp1.segment.as_ref().map(|s| s.path.clone()));
    let again = f.purge(&opts()).await.unwrap();
    assert!(again
        .checkpoints
        .iter()
        .all(|c| c.status == CheckpointStatus::AlreadyPurged));
    assert_eq!(again.totals.deleted, 0);
    assert_eq!(again.batches, 0);
    assert_eq!(f.snapshot().await, after);
    f.drop().await;
}

#[tokio::test]
async fn a_changed_row_is_deleted_once_its_new_version_is_archived() {
    let f = Fixture::archived(10).await;
    f.sql("UPDATE {t} SET payload = 'v2' WHERE id = 3").await;
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!((s.totals.deleted, s.totals.skipped_changed), (9, 1));
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        vec![3]
    );
    // The sink archives the new version in the next checkpoint.
    f.archive(0, 10, 3, 3, true).await;
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!(s.totals.deleted, 1);
    assert!(f.snapshot().await.is_empty());
    f.drop().await;
}

/// PostgreSQL compares content, not versions: an archived row without its
/// transaction id (the changefeed could not vouch for a float's NULL, a
/// write inside a savepoint has another xmin) is deleted when every column
/// prints as archived; one that lacks a column of the table never is.
#[tokio::test]
async fn versionless_complete_rows_are_deleted_and_incomplete_ones_never() {
    let f = Fixture::new(6).await;
    f.mark(1, 6).await;
    let snap = f.snapshot().await;
    let mut rows: Vec<_> = (1..=6)
        .map(|id| f.event(&snap, id, 0, id - 1, None))
        .collect();
    // Rows 5 and 6: a column missing from the archived copy (the sink
    // starts a segment for another column set).
    for r in &mut rows[4..] {
        r.columns.retain(|(c, _)| c != "payload");
    }
    f.write_checkpoint(0, 0, &rows[..4]).await;
    f.write_checkpoint(0, 4, &rows[4..]).await;
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!((s.totals.deleted, s.totals.skipped_no_version), (4, 2));
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        vec![5, 6]
    );
    let rec = f.purge_record(0, 4).await.unwrap();
    assert_eq!(
        (rec.deleted, rec.skipped_changed, rec.skipped_no_version),
        (0, 0, 2)
    );
    f.drop().await;
}

#[tokio::test]
async fn missing_or_altered_segments_are_refused_and_their_rows_stay() {
    let f = Fixture::new(40).await;
    f.mark(1, 40).await;
    // Partition 0: one checkpoint whose segment was deleted.
    let gone = f.archive(0, 0, 1, 10, true).await;
    // Partition 1: a good checkpoint, then one with a flipped byte, then a
    // good one after it (must wait: the partition stops at the refusal).
    f.archive(1, 0, 11, 20, true).await;
    let bad = f.archive(1, 10, 21, 30, true).await;
    f.archive(1, 20, 31, 40, true).await;
    let seg = gone.segment.as_ref().unwrap();
    f.store
        .store
        .delete(&f.store.path(&seg.path))
        .await
        .unwrap();
    let seg = bad.segment.as_ref().unwrap();
    let path = f.store.path(&seg.path);
    let mut bytes = f
        .store
        .store
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    f.store
        .store
        .put(&path, PutPayload::from(bytes))
        .await
        .unwrap();

    let s = f.purge(&opts()).await.unwrap();
    assert!(!s.ok());
    assert_eq!(s.refused.len(), 2, "{}", s.render());
    assert_eq!(s.refused[0].checkpoint, gone.path());
    assert!(
        s.refused[0].reason.contains("missing")
            && s.refused[0]
                .reason
                .contains(&gone.segment.as_ref().unwrap().path)
    );
    assert_eq!(s.refused[1].checkpoint, bad.path());
    assert!(
        s.refused[1].reason.contains("corrupt"),
        "{}",
        s.refused[1].reason
    );
    let statuses: Vec<_> = s
        .checkpoints
        .iter()
        .map(|c| (c.partition, c.first_offset, c.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (0, 0, CheckpointStatus::Refused),
            (1, 0, CheckpointStatus::Purged),
            (1, 10, CheckpointStatus::Refused)
        ]
    );
    let left: Vec<i64> = f.snapshot().await.keys().copied().collect();
    assert_eq!(left, (1..=10).chain(21..=40).collect::<Vec<_>>());
    assert!(f.purge_record(0, 0).await.is_none());
    assert!(f.purge_record(1, 10).await.is_none());
    assert!(f.purge_record(1, 20).await.is_none());
    f.drop().await;
}

#[tokio::test]
async fn dry_run_counts_and_deletes_nothing() {
    let f = Fixture::archived(20).await;
    f.sql("UPDATE {t} SET archived = false WHERE id = 1").await;
    let before = f.snapshot().await;
    let s = f.dry_run(&opts()).await.unwrap();
    assert_eq!(s.checkpoints[0].status, CheckpointStatus::DryRun);
    assert_eq!(
        (
            s.totals.would_delete,
            s.totals.deleted,
            s.totals.skipped_unmarked
        ),
        (19, 0, 1)
    );
    assert_eq!(f.snapshot().await, before);
    assert!(f.purge_record(0, 0).await.is_none());
    f.drop().await;
}

#[tokio::test]
async fn unindexed_foreign_key_refuses_with_the_create_index_statement() {
    let f = Fixture::archived(5).await;
    let (child, qc) = f.child_table("NO ACTION", "").await;
    let err = f.purge(&opts()).await.unwrap_err();
    assert!(matches!(err, PurgeError::UnindexedForeignKeys { .. }));
    let expected = format!("CREATE INDEX CONCURRENTLY ON \"public\".\"{child}\" (\"parent_id\");");
    assert!(err.to_string().contains(&expected), "{err}");
    assert_eq!(f.snapshot().await.len(), 5, "nothing deleted");
    // The dry run refuses the same way.
    let err = f.dry_run(&opts()).await.unwrap_err();
    assert!(err.to_string().contains(&expected));
    // The override works, and so does the fix.
    f.client.batch_execute(&expected).await.unwrap();
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!(s.totals.deleted, 5);
    assert_eq!(s.preflight.referencing.len(), 1);
    assert!(s.preflight.referencing[0].indexed);
    let _ = f.client.batch_execute(&format!("DROP TABLE {qc}")).await;
    f.drop().await;
}

#[tokio::test]
async fn restrict_foreign_keys_keep_only_the_referenced_rows() {
    let f = Fixture::archived(5).await;
    let (_, qc) = f
        .child_table("RESTRICT", " INSERT INTO {c} VALUES (1, 3);")
        .await;
    let mut o = opts();
    o.allow_unindexed_foreign_keys = true;
    let dry = f.dry_run(&o).await.unwrap();
    assert!(dry.preflight.referencing[0].blocks_deletes());
    assert!(
        dry.render().contains("ON DELETE RESTRICT"),
        "{}",
        dry.render()
    );
    assert_eq!(
        (dry.totals.would_delete, dry.totals.skipped_referenced),
        (4, 1)
    );
    let s = f.purge(&o).await.unwrap();
    assert_eq!(
        (s.totals.deleted, s.totals.skipped_referenced, s.retouched),
        (4, 1, 1),
        "{}",
        s.render()
    );
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        vec![3],
        "only the referenced row stays"
    );
    assert_eq!(f.purge_record(0, 0).await.unwrap().skipped_referenced, 1);
    let _ = f.client.batch_execute(&format!("DROP TABLE {qc}")).await;
    f.drop().await;
}

#[tokio::test]
async fn lock_timeouts_are_retried_with_a_smaller_batch() {
    let mut f = Fixture::archived(40).await;
    // The purger's session gives up on a row lock after 50ms (SQLSTATE
    // 55P03, retryable); a foreground transaction holds row 20 for a while.
    f.lock_timeout_ms(50);
    let mut holder = cdc_tests::pg().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        &format!("SELECT 1 FROM {} WHERE id = 20 FOR UPDATE", f.q()),
        &[],
    )
    .await
    .unwrap();
    let release = async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        tx.commit().await.unwrap();
    };
    let o = PurgeOptions::default();
    let (s, ()) = tokio::join!(f.purge(&o), release);
    let s = s.unwrap();
    assert!(
        s.retries >= 1,
        "the locked row made a batch retry: {}",
        s.render()
    );
    assert!(s.batch_size_cuts >= 1);
    assert_eq!(s.totals.deleted, 40);
    assert!(f.snapshot().await.is_empty());
    f.drop().await;
}

/// A table as `Fixture::new` makes it, in a schema of its own: same name,
/// same ids, rows marked in the same transaction as the fixture's (so the
/// same `xmin`, which the version guard alone could not tell apart).
async fn decoy(f: &Fixture) -> String {
    let schema = cdc_tests::unique("decoy");
    let qs = quote_ident(&schema);
    let qd = format!("{qs}.{}", f.q());
    f.client
        .batch_execute(&format!(
            "CREATE SCHEMA {qs};
             CREATE TABLE {qd} (LIKE {t} INCLUDING ALL);
             INSERT INTO {qd} SELECT id, payload, amount, false FROM {t};
             BEGIN;
             UPDATE {t} SET archived = true;
             UPDATE {qd} SET archived = true;
             COMMIT;",
            t = f.q()
        ))
        .await
        .unwrap();
    schema
}

fn with_options(url: &str, options: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options={options}")
}

#[tokio::test]
async fn an_unqualified_table_is_purged_in_public_never_through_search_path() {
    let mut f = Fixture::new(20).await;
    let schema = decoy(&f).await;
    let qd = format!("{}.{}", quote_ident(&schema), f.q());
    let xmin = |sql: String| {
        let c = &f.client;
        async move {
            c.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
        }
    };
    let ours = xmin(format!("SELECT id, xmin::text FROM {} ORDER BY id", f.q())).await;
    let theirs = xmin(format!("SELECT id, xmin::text FROM {qd} ORDER BY id")).await;
    assert_eq!(
        ours, theirs,
        "the decoy matches the version guard row for row"
    );
    f.archive(0, 0, 1, 20, true).await;

    // The table configured without a schema; the session's search_path puts
    // the decoy schema first. The catalog checks look at public.<table>, so
    // must the DELETE.
    f.cfg.table = TableName::parse(&f.table).unwrap();
    f.cfg.database_url = with_options(
        &f.cfg.database_url,
        &format!("-c%20search_path%3D{schema}%2Cpublic"),
    );
    let s = f.dry_run(&opts()).await.unwrap();
    assert_eq!(s.totals.would_delete, 20, "{}", s.render());
    let s = f.purge(&opts()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    assert_eq!(s.totals.deleted, 20);
    assert!(f.snapshot().await.is_empty(), "public.<table> was purged");
    let left: i64 = f
        .client
        .query_one(&format!("SELECT count(*) FROM {qd} WHERE archived"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 20,
        "the same-named table earlier on the search_path is untouched"
    );
    f.client
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
        .await
        .unwrap();
    f.drop().await;
}

#[tokio::test]
async fn session_settings_are_pinned_whatever_the_connection_asks_for() {
    let mut f = Fixture::new(1).await;
    f.cfg.database_url = with_options(
        &f.cfg.database_url,
        "-c%20DateStyle%3DSQL%2CDMY%20-c%20IntervalStyle%3Dsql_standard%20-c%20TimeZone%3DAsia%2FKolkata%20-c%20extra_float_digits%3D-5",
    );
    // Every session cdc-archiver opens overrides them (the marker's, the
    // restore's, the holds command's: `cdc_common::db::connect`), the
    // purger's too.
    let raw = cdc_common::db::connect(&f.cfg.database_url, "t")
        .await
        .unwrap();
    let tz: String = raw.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "UTC");
    let opened = cdc_purger::open_session(&f.cfg, cdc_purger::SessionUse::Purge)
        .await
        .unwrap();
    let (client, dialect) = (opened.client, opened.dialect);
    assert_eq!(dialect, cdc_common::db::Dialect::Postgres);
    for (name, want) in [
        ("DateStyle", "ISO, YMD"),
        ("IntervalStyle", "postgres"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
        ("bytea_output", "hex"),
    ] {
        let got: String = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, want, "{name}");
    }
    f.drop().await;
}

#[tokio::test]
async fn primary_keys_whose_text_does_not_round_trip_are_refused() {
    let f = Fixture::archived(1).await;
    let client = &f.client;
    let base = cdc_tests::unique("keytype");
    let domain = format!("{base}_dom");
    client
        .batch_execute(&format!("CREATE DOMAIN {} AS real", quote_ident(&domain)))
        .await
        .unwrap();
    let types: Vec<(String, String)> = [
        ("double precision", "double precision"),
        ("real", "real"),
        ("money", "money"),
        ("interval", "interval"),
        ("float8[]", "double precision[]"),
    ]
    .iter()
    .map(|(d, s)| ((*d).to_owned(), (*s).to_owned()))
    .chain([(quote_ident(&domain), domain.clone())])
    .collect();
    for (i, (decl, shown)) in types.iter().enumerate() {
        let name = format!("{base}_{i}");
        let q = quote_ident(&name);
        client
            .batch_execute(&format!(
                "CREATE TABLE {q} (region TEXT, \"Odd Key\" {decl}, archived BOOLEAN NOT NULL DEFAULT false, \
                 PRIMARY KEY (region, \"Odd Key\"))"
            ))
            .await
            .unwrap();
        let mut cfg = f.cfg.clone();
        cfg.table = TableName::parse(&format!("public.{name}")).unwrap();
        cfg.archive_table = Some(name.clone());
        let err = cdc_purger::purge(
            &cfg,
            &f.store,
            tokio_util::sync::CancellationToken::new(),
            &opts(),
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, PurgeError::UnsupportedKeyType { ref column, .. } if column == "Odd Key"),
            "{decl}: {msg}"
        );
        assert!(
            msg.contains("\"Odd Key\"") && msg.contains(shown),
            "{decl}: {msg}"
        );
        client
            .batch_execute(&format!("DROP TABLE {q}"))
            .await
            .unwrap();
    }
    client
        .batch_execute(&format!("DROP DOMAIN {}", quote_ident(&domain)))
        .await
        .unwrap();
    f.drop().await;
}

#[tokio::test]
async fn date_and_timestamptz_keys_purge_under_hostile_connection_settings() {
    let client = cdc_tests::pg().await;
    let name = cdc_tests::unique("tskey");
    let q = quote_ident(&name);
    // A two-column key declared in the other order than the columns.
    // Keys written with the server defaults (ISO), read back by a purger
    // whose connection asks for a DMY date order and another time zone.
    client
        .batch_execute(&format!(
            "SET TimeZone = 'UTC';
             CREATE TABLE {q} (day DATE, at TIMESTAMPTZ, archived BOOLEAN NOT NULL DEFAULT false, PRIMARY KEY (at, day));
             INSERT INTO {q} SELECT DATE '2024-01-02' + g, TIMESTAMPTZ '2024-03-04 05:06:07.123456+00' + g * INTERVAL '1 hour', true
               FROM generate_series(1, 12) g;"
        ))
        .await
        .unwrap();
    let rows = client
        .query(
            &format!("SELECT day::text, at::text, xmin::text FROM {q} ORDER BY day"),
            &[],
        )
        .await
        .unwrap();
    let (store, _dir) = cdc_tests::local_archive();
    let events: Vec<cdc_segment::ArchivedRow> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (day, at, xmin): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            cdc_segment::ArchivedRow {
                op: cdc_changefeed::Op::Update,
                meta: cdc_segment::RecordMeta {
                    // Key order is the primary key's, not the table's.
                    key_json: serde_json::to_string(&[&at, &day]).unwrap(),
                    updated: Some(cdc_changefeed::Hlc::new(
                        1_700_000_000_000_000_000 + i as i64,
                        0,
                    )),
                    mvcc_timestamp: None,
                    pg_xid: Some(xmin.parse().unwrap()),
                    topic: name.clone(),
                    partition: 0,
                    offset: i as i64,
                },
                columns: vec![
                    ("day".into(), cdc_changefeed::Value::String(day)),
                    ("at".into(), cdc_changefeed::Value::String(at)),
                    ("archived".into(), cdc_changefeed::Value::Bool(true)),
                ],
            }
        })
        .collect();
    assert!(
        events[0].meta.key_json.contains("+00"),
        "{}",
        events[0].meta.key_json
    );
    common::write_checkpoint_to(&store, &name, 0, 0, &events, None).await;
    let mut cfg =
        cdc_purger::PurgerConfig::new(TableName::parse(&format!("public.{name}")).unwrap());
    cfg.database_url = with_options(
        &cdc_tests::pg_url(),
        "-c%20DateStyle%3DSQL%2CDMY%20-c%20TimeZone%3DAmerica%2FSt_Johns",
    );
    cfg.storage.url = store.url.clone();
    cfg.batching.batch_size = 5;
    let s = cdc_purger::purge(
        &cfg,
        &store,
        tokio_util::sync::CancellationToken::new(),
        &opts(),
    )
    .await
    .unwrap();
    assert_eq!(s.totals.deleted, 12, "{}", s.render());
    let left: i64 = client
        .query_one(&format!("SELECT count(*) FROM {q}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    client
        .batch_execute(&format!("DROP TABLE {q}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn cascading_foreign_keys_refuse_unless_allowed_and_the_dry_run_reports_them() {
    for action in ["CASCADE", "SET NULL", "SET DEFAULT"] {
        let mut f = Fixture::archived(5).await;
        // Indexed, so only the ON DELETE action is at issue. Child row 1
        // references parent 3; the child was never archived.
        let (child, qc) = f
            .child_table(
                action,
                " CREATE INDEX ON {c} (parent_id); INSERT INTO {c} VALUES (1, 3);",
            )
            .await;
        let err = f.purge(&opts()).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, PurgeError::CascadingForeignKeys { ref constraints, .. } if constraints.len() == 1),
            "{action}: {msg}"
        );
        assert!(
            msg.contains(&format!("public.{child} (parent_id) ON DELETE {action}"))
                && msg.contains("--allow-cascading-foreign-keys"),
            "{action}: {msg}"
        );
        assert_eq!(f.snapshot().await.len(), 5, "{action}: nothing deleted");
        // The dry run deletes nothing, so it reports instead of refusing.
        let s = f.dry_run(&opts()).await.unwrap();
        assert_eq!(s.totals.would_delete, 5);
        assert_eq!(s.preflight.cascading().count(), 1);
        let text = s.render();
        assert!(
            text.contains(&format!("ON DELETE {action}"))
                && text.contains("refuses to start without --allow-cascading-foreign-keys"),
            "{text}"
        );
        let child_row = format!("SELECT parent_id FROM {qc} WHERE id = 1");
        let before: Option<i64> = f.client.query_one(&child_row, &[]).await.unwrap().get(0);
        assert_eq!(before, Some(3));
        // Allowed explicitly: the purge runs, and the child row is what the
        // action makes of it.
        f.cfg.allow_cascading_foreign_keys = true;
        let s = f.purge(&opts()).await.unwrap();
        assert_eq!(s.totals.deleted, 5, "{action}: {}", s.render());
        assert!(s.allowed_cascading_foreign_keys);
        let after = f.client.query_opt(&child_row, &[]).await.unwrap();
        match action {
            "CASCADE" => assert!(after.is_none()),
            _ => assert_eq!(after.unwrap().get::<_, Option<i64>>(0), None),
        }
        let _ = f.client.batch_execute(&format!("DROP TABLE {qc}")).await;
        f.drop().await;
    }
}

#[tokio::test]
async fn invalid_partial_and_expression_indexes_do_not_serve_a_foreign_key() {
    let f = Fixture::archived(5).await;
    // Two child rows with the same parent: a unique index on parent_id
    // built CONCURRENTLY fails and leaves an INVALID index behind.
    let (child, qc) = f
        .child_table(
            "NO ACTION",
            " INSERT INTO {c} VALUES (1, 2), (2, 2);
              CREATE INDEX ON {c} (parent_id) WHERE parent_id > 100;
              CREATE INDEX ON {c} ((parent_id + 0));
              CREATE INDEX ON {c} ((parent_id + 0), parent_id);",
        )
        .await;
    let failed = f
        .client
        .batch_execute(&format!(
            "CREATE UNIQUE INDEX CONCURRENTLY {} ON {qc} (parent_id)",
            quote_ident(&format!("{child}_bad"))
        ))
        .await;
    assert!(
        failed.is_err(),
        "duplicate parent ids: the unique build fails"
    );
    let invalid: i64 = f
        .client
        .query_one(
            "SELECT count(*) FROM pg_index WHERE indrelid = $1::text::regclass AND NOT indisvalid",
            &[&qc],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(invalid, 1, "an invalid index is left behind");
    let err = f.purge(&opts()).await.unwrap_err();
    let expected = format!("CREATE INDEX CONCURRENTLY ON \"public\".\"{child}\" (\"parent_id\");");
    assert!(
        matches!(err, PurgeError::UnindexedForeignKeys { ref statements, .. } if statements == std::slice::from_ref(&expected)),
        "{err}"
    );
    // The printed statement is the fix.
    f.client.batch_execute(&expected).await.unwrap();
    f.client
        .batch_execute(&format!("DELETE FROM {qc}"))
        .await
        .unwrap();
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!(s.totals.deleted, 5);
    assert!(s.preflight.referencing[0].indexed);
    let _ = f.client.batch_execute(&format!("DROP TABLE {qc}")).await;
    f.drop().await;
}

/// A checkpoint that ends inside a transaction X (the sink could not fit
/// all of X's events) holds an intermediate state of row 4 with X's xmin:
/// the version guard of old had to keep every row of X. The content guard
/// deletes exactly the rows whose current state it holds (1, 2) and keeps
/// row 4 until the checkpoint with its final state arrives.
#[tokio::test]
async fn a_checkpoint_ending_inside_a_transaction_deletes_only_final_states() {
    let f = Fixture::new(6).await;
    // Row 5 is marked by an earlier transaction W.
    f.mark(5, 5).await;
    let snap_w = f.snapshot().await;
    // Transaction X marks 1..4 and updates row 4 a second time: wal2json
    // emits r1, r2, r3, r4(v1), r4(v2), all with xid X.
    f.sql(
        "BEGIN; UPDATE {t} SET archived = true WHERE id BETWEEN 1 AND 4; \
         UPDATE {t} SET payload = 'v2' WHERE id = 4; COMMIT;",
    )
    .await;
    let snap_v2 = f.snapshot().await;
    let x = Fixture::xmin(&snap_v2, 1);
    assert_eq!(Fixture::xmin(&snap_v2, 4), x);
    let mut snap_v1 = snap_v2.clone();
    snap_v1.get_mut(&4).unwrap().0 = Some("row 4".into());
    // Checkpoint A: W's row 5, then X's r1, r2, r4(v1); the sink had to end
    // it inside X, whose r3 and r4(v2) go to checkpoint B, not yet durable.
    let a_rows = vec![
        f.event(&snap_w, 5, 0, 0, Some(Fixture::xmin(&snap_w, 5))),
        f.event(&snap_v1, 1, 0, 1, Some(x)),
        f.event(&snap_v1, 2, 0, 2, Some(x)),
        f.event(&snap_v1, 4, 0, 3, Some(x)),
    ];
    let a = f.write_checkpoint_with(0, 0, &a_rows, Some(x)).await;
    let s = f.purge(&opts()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    let c = s.checkpoints[0].counts;
    assert_eq!((c.rows, c.deleted, c.skipped_changed), (4, 3, 1));
    let left = f.snapshot().await;
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), vec![3, 4, 6]);
    assert_eq!(
        left[&4].0.as_deref(),
        Some("v2"),
        "row 4's final version is not in any durable segment: it must stay"
    );
    let rec = f.purge_record(0, 0).await.unwrap();
    assert_eq!((rec.deleted, rec.skipped_changed), (3, 1));
    assert_eq!(rec.accounted_rows(), a.segment.as_ref().unwrap().rows);

    // Checkpoint B (the rest of X) arrives: its versions are final.
    let b_rows = vec![
        f.event(&snap_v2, 3, 0, 4, Some(x)),
        f.event(&snap_v2, 4, 0, 5, Some(x)),
    ];
    f.write_checkpoint_with(0, 4, &b_rows, None).await;
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!(s.totals.deleted, 2, "{}", s.render());
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        vec![6]
    );
    f.drop().await;
}

/// Recorded transaction ids no longer decide anything: rows archived with
/// an xid from another history (an epoch this server has not reached, as
/// after a restore) are deleted when their content is the row's, and a row
/// whose content changed since is kept whatever its xid says.
#[tokio::test]
async fn xids_from_another_history_do_not_matter_content_does() {
    let f = Fixture::new(4).await;
    f.mark(1, 4).await;
    let snap = f.snapshot().await;
    let x = Fixture::xmin(&snap, 1);
    let rows = vec![
        f.event(&snap, 1, 0, 0, Some((1u64 << 32) | x)),
        f.event(&snap, 2, 0, 1, Some((7u64 << 32) | x)),
        f.event(&snap, 3, 0, 2, Some(x)),
        f.event(&snap, 4, 0, 3, Some(x)),
    ];
    f.write_checkpoint(0, 0, &rows).await;
    // Row 2 changes without the changefeed seeing it (say, a restore).
    f.sql("UPDATE {t} SET amount = amount + 1 WHERE id = 2")
        .await;
    let s = f.purge(&opts()).await.unwrap();
    let c = s.checkpoints[0].counts;
    assert_eq!(
        (c.deleted, c.skipped_changed, c.skipped_xid_too_old),
        (3, 1, 0),
        "{}",
        s.render()
    );
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        vec![2]
    );
    f.drop().await;
}

fn reconciles(c: &RowCounts) {
    assert_eq!(c.rows, c.accounted(), "counts do not reconcile: {c:?}");
}

#[tokio::test]
async fn counts_reconcile_with_duplicates_versions_and_every_kind_of_skip() {
    let f = Fixture::new(12).await;
    f.mark(1, 12).await;
    let old = f.snapshot().await;
    // Row 5 gets a second archived version; rows 8 (changed), 9 (un-marked)
    // and 10 (gone) change after archiving.
    f.sql("UPDATE {t} SET payload = 'row 5 v2' WHERE id = 5")
        .await;
    let new = f.snapshot().await;
    let xid = |s: &common::Snapshot, id| Some(Fixture::xmin(s, id));
    let mut rows = Vec::new();
    let mut offset = 0;
    let mut push = |snap: &common::Snapshot, id: i64, pg_xid: Option<u64>| {
        rows.push(f.event(snap, id, 0, offset, pg_xid));
        offset += 1;
    };
    for id in 1..=12 {
        match id {
            5 => {
                push(&old, 5, xid(&old, 5));
                push(&new, 5, xid(&new, 5));
            }
            // Not comparable: a value of a shape the changefeed never
            // writes for a text column (set below).
            11 => push(&old, 11, xid(&old, 11)),
            _ => push(&old, id, xid(&old, id)),
        }
    }
    // Redeliveries (at least once): rows 3 and 5 (its latest version) again.
    push(&old, 3, xid(&old, 3));
    push(&new, 5, xid(&new, 5));
    rows[11].columns[1].1 = cdc_changefeed::Value::Bool(true);
    let cp = f.write_checkpoint(0, 0, &rows).await;
    let segment_rows = cp.segment.as_ref().unwrap().rows;
    assert_eq!(segment_rows, 15);
    f.sql("UPDATE {t} SET payload = 'changed' WHERE id = 8")
        .await;
    f.sql("UPDATE {t} SET archived = false WHERE id = 9").await;
    f.sql("DELETE FROM {t} WHERE id = 10").await;

    let dry = f.dry_run(&opts()).await.unwrap();
    let d = dry.checkpoints[0].counts;
    reconciles(&d);
    assert_eq!(d.rows, segment_rows);
    assert_eq!(
        (
            d.would_delete,
            d.already_gone,
            d.skipped_changed,
            d.skipped_unmarked,
            d.skipped_no_version,
            d.superseded
        ),
        (8, 1, 1, 1, 1, 3)
    );

    let s = f.purge(&opts()).await.unwrap();
    let c = s.checkpoints[0].counts;
    reconciles(&c);
    reconciles(&s.totals);
    assert_eq!(
        (
            c.rows,
            c.deleted,
            c.already_gone,
            c.skipped_changed,
            c.skipped_unmarked,
            c.skipped_no_version,
            c.superseded
        ),
        (15, 8, 1, 1, 1, 1, 3)
    );
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        vec![8, 9, 11]
    );
    let rec = f.purge_record(0, 0).await.unwrap();
    assert_eq!(rec.accounted_rows(), segment_rows);
    assert_eq!((rec.superseded, rec.skipped_no_version), (3, 1));
    // A rerun reports the stored record, reconciled the same way.
    let again = f.purge(&opts()).await.unwrap();
    assert_eq!(again.checkpoints[0].status, CheckpointStatus::AlreadyPurged);
    assert_eq!(again.checkpoints[0].counts.rows, segment_rows);
    reconciles(&again.checkpoints[0].counts);
    f.drop().await;
}

#[test]
fn purge_records_written_before_the_per_reason_fields_still_parse() {
    let old = r#"{
      "format_version": 1, "table": "t", "partition": 0, "first_offset": 0, "last_offset": 9,
      "segment": "t/segments/p0/x.avro", "deleted": 7, "already_gone": 1, "skipped_changed": 2,
      "skipped_unmarked": 0, "dry_run": false, "purger_id": "p", "started_at": "s", "finished_at": "f"
    }"#;
    let r: cdc_checkpoint::PurgeRecord = serde_json::from_str(old).unwrap();
    assert_eq!(
        (
            r.skipped_no_version,
            r.skipped_open_transaction,
            r.skipped_xid_too_old,
            r.superseded
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(r.accounted_rows(), 10);
}

#[tokio::test]
async fn a_version_that_is_not_marked_is_never_deleted_even_when_the_guard_matches() {
    // The version guard alone cannot tell: the archive holds exactly the
    // row's current version, but that version is not marked (a sink that
    // archived an unmarked row, a CDC query without the filter). `AND
    // archived` keeps it, in both statement shapes.
    let f = Fixture::new(12).await;
    // Rows 1-6: one transaction (one xmin: a uniform batch), in which row
    // 3 is marked and un-marked again; rows 7-12: one transaction each
    // (mixed versions: paired batches), row 9 never marked (its xmin is
    // the INSERT's).
    f.sql(
        "BEGIN; UPDATE {t} SET archived = true WHERE id BETWEEN 1 AND 6; \
         UPDATE {t} SET archived = false WHERE id = 3; COMMIT;",
    )
    .await;
    for id in [7, 8, 10, 11, 12] {
        f.mark(id, id).await;
    }
    let snap = f.snapshot().await;
    let mut marked_view = snap.clone();
    for id in [3, 9] {
        marked_view.get_mut(&id).unwrap().2 = true; // only for building the event
    }
    // Rows 3 and 9: archived as they are now (their current xmin, not marked).
    let rows: Vec<_> = (1..=12)
        .map(|id| f.event(&marked_view, id, 0, id - 1, Some(Fixture::xmin(&snap, id))))
        .collect();
    f.write_checkpoint(0, 0, &rows).await;
    let s = f.purge(&opts()).await.unwrap();
    let c = s.checkpoints[0].counts;
    assert_eq!((c.deleted, c.skipped_unmarked), (10, 2), "{}", s.render());
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        vec![3, 9]
    );
    f.drop().await;
}

#[tokio::test]
async fn archived_keys_that_do_not_fit_the_primary_key_refuse_the_checkpoint() {
    let f = Fixture::new(6).await;
    f.mark(1, 6).await;
    let snap = f.snapshot().await;
    // Two values for a one-column key (a segment of another table, or a
    // changed primary key): refused, and the partition stops there.
    let mut rows: Vec<_> = (1..=3)
        .map(|id| f.event(&snap, id, 0, id - 1, Some(Fixture::xmin(&snap, id))))
        .collect();
    for r in &mut rows {
        r.meta.key_json = format!("[{}, 0]", r.meta.key_json.trim_matches(['[', ']']));
    }
    let bad = f.write_checkpoint(0, 0, &rows).await;
    f.archive(0, 3, 4, 6, true).await;
    let s = f.purge(&opts()).await.unwrap();
    assert!(!s.ok());
    assert_eq!(s.refused.len(), 1, "{}", s.render());
    assert_eq!(s.refused[0].checkpoint, bad.path());
    assert!(
        s.refused[0]
            .reason
            .contains("does not match the primary key (1 column(s))"),
        "{}",
        s.refused[0].reason
    );
    assert_eq!(s.checkpoints.len(), 1, "the partition stops at the refusal");
    assert_eq!(f.snapshot().await.len(), 6, "nothing deleted");
    assert!(f.purge_record(0, 0).await.is_none());
    f.drop().await;
}

/// A hold added on a row that is marked and archived (a legal hold that
/// arrives after the marker) keeps it: the purger's DELETE checks holds.
#[tokio::test]
async fn a_held_row_is_never_deleted_even_when_marked_and_archived() {
    let f = Fixture::archived(6).await;
    let pg = &f.client;
    cdc_common::holds::ensure(pg, "public", &f.table)
        .await
        .unwrap();
    pg.batch_execute(&format!(
        "INSERT INTO {} (hold_key, hold_reason) SELECT jsonb_build_array(id)::text, 'legal' FROM {} WHERE id = 4",
        cdc_common::holds::qualified("public", &f.table),
        f.q()
    ))
    .await
    .unwrap();
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!(
        (s.totals.deleted, s.totals.skipped_unmarked),
        (5, 1),
        "{}",
        s.render()
    );
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        vec![4]
    );
    let _ = pg
        .batch_execute(&format!(
            "DROP TABLE {}",
            cdc_common::holds::qualified("public", &f.table)
        ))
        .await;
    f.drop().await;
}

/// The content guard tells a NULL from a composite whose fields are all
/// NULL (`IS NULL` does not), and the column-set check sees a column added
/// after the guard was built.
#[tokio::test]
async fn the_content_guard_is_exact_about_nulls_and_the_column_set() {
    use cdc_purger::sql::{column_set_check, content_guard, signature, ContentColumn};
    let pg = cdc_tests::pg().await;
    let ty = cdc_tests::unique("addr");
    let t = cdc_tests::unique("guard");
    let (qty, qt) = (quote_ident(&ty), quote_ident(&t));
    pg.batch_execute(&format!(
        "CREATE TYPE {qty} AS (street text, city text);
         CREATE TABLE {qt} (id int PRIMARY KEY, a {qty});
         INSERT INTO {qt} VALUES (1, NULL), (2, ROW(NULL, NULL));"
    ))
    .await
    .unwrap();
    let oid: i64 = pg
        .query_one(&format!("SELECT '{ty}'::regtype::oid::int8"), &[])
        .await
        .unwrap()
        .get(0);
    let columns = [
        ContentColumn {
            name: "id".into(),
            typeoid: 23,
        },
        ContentColumn {
            name: "a".into(),
            typeoid: oid as u32,
        },
    ];
    let sig = signature(&columns);
    let name = format!("public.{qt}");
    let guard = format!(
        "SELECT t.id FROM {qt} AS t, (SELECT $1::text AS c0, $2::text AS c1) AS d \
         WHERE {} AND {} ORDER BY t.id",
        content_guard(&columns),
        column_set_check(3, 4)
    );
    let ids = |c0: &str, c1: Option<&str>| {
        let (guard, name, sig) = (&guard, &name, &sig);
        let pg = &pg;
        let (c0, c1) = (c0.to_owned(), c1.map(str::to_owned));
        async move {
            pg.query(guard.as_str(), &[&c0, &c1, name, sig])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, i32>(0))
                .collect::<Vec<_>>()
        }
    };
    // Archived NULL matches row 1 only; archived `(,)` matches row 2 only.
    assert_eq!(ids("1", None).await, vec![1]);
    assert_eq!(ids("2", None).await, Vec::<i32>::new());
    assert_eq!(ids("2", Some("(,)")).await, vec![2]);
    // A column added since the guard was built: nothing matches.
    pg.batch_execute(&format!("ALTER TABLE {qt} ADD COLUMN legal text"))
        .await
        .unwrap();
    assert_eq!(ids("1", None).await, Vec::<i32>::new());
    pg.batch_execute(&format!("DROP TABLE {qt}; DROP TYPE {qty}"))
        .await
        .unwrap();
}

/// Compaction and gc change where the chain is read from, never what is
/// purged: a chain with segments between idle runs (resolved-only
/// checkpoints), compacted into a manifest (the idle runs merged) and then
/// collected (the checkpoint objects the manifest holds removed), purges
/// exactly the archived versions, and a row changed after archiving stays;
/// the next compaction folds the purge records into its manifest.
#[tokio::test]
async fn a_compacted_and_collected_chain_purges_exactly_the_archived_versions() {
    let f = Fixture::new(70).await;
    f.mark(1, 60).await;
    use cdc_checkpoint::Checkpoint;
    let idle = |like: &Checkpoint, first: i64| Checkpoint {
        first_offset: first,
        last_offset: first,
        segment: None,
        counts: cdc_checkpoint::Counts {
            events: 1,
            resolved: 1,
            ..Default::default()
        },
        min_updated: None,
        max_updated: None,
        key_filter: None,
        ..like.clone()
    };
    let cp1 = f.archive(0, 0, 1, 20, true).await;
    for o in 20..30 {
        cdc_checkpoint::create(&f.store, &idle(&cp1, o))
            .await
            .unwrap();
    }
    let cp2 = f.archive(0, 30, 21, 40, true).await;
    for o in 50..55 {
        cdc_checkpoint::create(&f.store, &idle(&cp1, o))
            .await
            .unwrap();
    }
    let cp3 = f.archive(0, 55, 41, 60, true).await;
    f.sql("UPDATE {t} SET payload = 'changed' WHERE id = 25")
        .await;
    let before = f.snapshot().await;

    let m = cdc_checkpoint::plan_manifest(&f.store, &f.table, 0)
        .await
        .unwrap()
        .unwrap();
    let shape: Vec<(i64, Option<u64>, bool)> = m
        .checkpoints
        .iter()
        .map(|c| (c.first_offset, c.merged, c.segment.is_some()))
        .collect();
    assert_eq!(
        shape,
        [
            (0, None, true),
            (20, Some(10), false),
            (30, None, true),
            (50, Some(5), false),
            (55, None, true)
        ]
    );
    cdc_checkpoint::write_manifest(&f.store, &m).await.unwrap();
    let plan = cdc_checkpoint::plan_gc(&f.store, &f.table, std::time::Duration::ZERO)
        .await
        .unwrap();
    // Every checkpoint object but the chain's first (an anchor) and last.
    assert_eq!(plan.remove.len(), 16, "{plan:?}");
    cdc_checkpoint::run_gc(&f.store, &plan, "purge-test")
        .await
        .unwrap();
    assert!(
        cdc_checkpoint::read(&f.store, &f.table, 0, cp2.first_offset)
            .await
            .unwrap()
            .is_none(),
        "gc left {}",
        cp2.path()
    );

    let s = f.purge(&opts()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    let after = f.snapshot().await;
    let deleted = common::deleted_ids(&before, &after);
    let expected: BTreeSet<i64> = (1..=60).filter(|id| *id != 25).collect();
    assert_eq!(deleted, expected);
    let mut archived = std::collections::BTreeMap::new();
    for cp in [&cp1, &cp2, &cp3] {
        for r in f.archived_rows(cp).await {
            let id: i64 = r.meta.key_json.trim_matches(['[', ']']).parse().unwrap();
            archived.insert(id, as_snapshot_values(&r));
        }
    }
    for id in &deleted {
        let (payload, amount, marked, _) = before[id].clone();
        assert!(marked);
        assert_eq!(archived[id], (payload, amount), "row {id}");
    }
    assert_eq!(after[&25], before[&25]);
    // Records for the checkpoints with a segment only: the idle ones have
    // nothing to purge, and a purge run reads no record for them.
    let mut records = Vec::new();
    for first in 0..75 {
        if f.purge_record(0, first).await.is_some() {
            records.push(first);
        }
    }
    assert_eq!(records, [0, 30, 55]);
    assert_eq!(s.checkpoints.len(), 3);

    // The next compaction folds those records into its manifest: a later
    // purge neither lists nor reads them, and purges what came after.
    f.mark(61, 70).await;
    let cp4 = f.archive(0, cp3.last_offset + 1, 61, 70, true).await;
    let m2 = cdc_checkpoint::plan_manifest(&f.store, &f.table, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m2.purged_through,
        Some(cp3.last_offset),
        "cp4 has no record"
    );
    cdc_checkpoint::write_manifest(&f.store, &m2).await.unwrap();
    let before = f.snapshot().await;
    let s2 = f.purge(&opts()).await.unwrap();
    assert!(s2.ok(), "{}", s2.render());
    assert_eq!(s2.purged_before, 3, "{}", s2.render());
    let firsts: Vec<i64> = s2.checkpoints.iter().map(|c| c.first_offset).collect();
    assert_eq!(firsts, [cp4.first_offset]);
    assert_eq!(
        common::deleted_ids(&before, &f.snapshot().await),
        (61..=70).collect::<BTreeSet<i64>>()
    );
    // A replay still takes the checkpoints a manifest records as purged.
    let dry = f
        .dry_run(&PurgeOptions {
            replay: Some(cdc_purger::Replay {
                partition: Some(0),
                first_offsets: 0..=cp4.first_offset,
                id: "all".into(),
            }),
            ..opts()
        })
        .await
        .unwrap();
    assert_eq!(dry.checkpoints.len(), 4, "{}", dry.render());
    f.drop().await;
}

/// A purge record at a checkpoint's first offset that describes another
/// checkpoint (one a rewind superseded, purged by a purge that ran during
/// the rewind) says nothing about this one: the purger refuses the
/// checkpoint with the reason and the fix, deletes nothing of it, and
/// compaction does not fold it as purged (found by the red-team review:
/// the re-archived checkpoint used to be reported as already purged, its
/// rows never deleted).
#[tokio::test]
async fn a_stale_purge_record_is_refused_not_taken_for_the_checkpoints() {
    let f = Fixture::new(20).await;
    f.mark(1, 20).await;
    let cp = f.archive(0, 0, 1, 20, true).await;
    let stale = cdc_checkpoint::PurgeRecord {
        segment: Some(format!("{}/segments/p0/superseded.avro", f.table)),
        deleted: 7,
        ..cdc_checkpoint::fixtures::purge_record(&f.table, 0, 0, 9)
    };
    assert!(!stale.describes(&cp));
    cdc_checkpoint::write_purge_record(&f.store, &stale)
        .await
        .unwrap();
    let before = f.snapshot().await;
    let s = f.purge(&opts()).await.unwrap();
    assert!(!s.ok());
    assert_eq!(s.refused.len(), 1, "{}", s.render());
    assert!(
        s.refused[0]
            .reason
            .contains("is the purge record of another checkpoint"),
        "{}",
        s.refused[0].reason
    );
    assert_eq!(s.totals.deleted, 0);
    assert_eq!(f.snapshot().await, before);
    let m = cdc_checkpoint::plan_manifest(&f.store, &f.table, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.purged_through, None);
    f.drop().await;
}

/// A replay purges again only the checkpoints it names, whatever their
/// purge records say, through the same guard: a row put back in its
/// archived version (a restore that kept the archived flag) is counted by
/// a dry run and deleted by the replay, a row put back changed is kept,
/// what the replay did is a new object under `replays/`, and the
/// checkpoint's purge record stays as it was.
#[tokio::test]
async fn a_replay_purges_again_only_what_it_names_and_records_it_apart() {
    let f = Fixture::new(40).await;
    f.mark(1, 40).await;
    f.archive(0, 0, 1, 20, true).await;
    f.archive(0, 20, 21, 40, true).await;
    let s = f.purge(&opts()).await.unwrap();
    assert_eq!(s.totals.deleted, 40, "{}", s.render());
    let record = f.purge_record(0, 0).await.unwrap();
    // Rows 3 and 23 back as archived, row 4 back changed.
    f.sql(
        "INSERT INTO {t} (id, payload, amount, archived) \
         SELECT g, 'row ' || g, g * 1.25, true FROM unnest(ARRAY[3, 23]) g; \
         INSERT INTO {t} (id, payload, amount, archived) VALUES (4, 'changed', 5.00, true)",
    )
    .await;
    let replay = |id: &str| cdc_purger::Replay {
        partition: Some(0),
        first_offsets: 0..=0,
        id: id.to_owned(),
    };
    let dry = f
        .dry_run(&PurgeOptions {
            replay: Some(replay("dry")),
            ..opts()
        })
        .await
        .unwrap();
    assert_eq!(dry.replay.as_deref(), Some("dry"));
    assert_eq!(dry.checkpoints.len(), 1, "{}", dry.render());
    assert_eq!(
        (
            dry.totals.would_delete,
            dry.totals.skipped_changed,
            dry.totals.already_gone
        ),
        (1, 1, 18)
    );
    assert_eq!(f.snapshot().await.len(), 3, "a dry run deletes nothing");

    let done = f
        .purge(&PurgeOptions {
            replay: Some(replay("r1")),
            ..opts()
        })
        .await
        .unwrap();
    assert!(done.ok(), "{}", done.render());
    assert_eq!(done.totals.deleted, 1);
    let left: Vec<i64> = f.snapshot().await.keys().copied().collect();
    assert_eq!(left, [4, 23], "row 3 deleted; 23 is outside the replay");
    let stored = f
        .store
        .store
        .get(&f.store.path(&cdc_checkpoint::layout::replay_record_path(
            &f.table, "r1", 0, 0,
        )))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let replayed: cdc_checkpoint::PurgeRecord = serde_json::from_slice(&stored).unwrap();
    assert_eq!(
        (
            replayed.deleted,
            replayed.skipped_changed,
            replayed.already_gone
        ),
        (1, 1, 18)
    );
    assert_eq!(replayed.purger_id, done.purger_id);
    assert_eq!(f.purge_record(0, 0).await.unwrap(), record);
    // A checkpoint never purged is not a replay's: it is left to the plain
    // purge (chain order, its record, its refusals).
    f.sql(
        "INSERT INTO {t} (id, payload, amount, archived) \
         SELECT g, 'row ' || g, g * 1.25, true FROM generate_series(41, 45) g",
    )
    .await;
    f.archive(0, 40, 41, 45, true).await;
    let skipped = f
        .purge(&PurgeOptions {
            replay: Some(cdc_purger::Replay {
                first_offsets: 40..=40,
                ..replay("r2")
            }),
            ..opts()
        })
        .await
        .unwrap();
    assert!(skipped.checkpoints.is_empty(), "{}", skipped.render());
    assert_eq!(f.snapshot().await.len(), 7);
    // A plain purge deletes 41..=45 and leaves row 23 alone: its
    // checkpoint is recorded.
    let again = f.purge(&opts()).await.unwrap();
    assert_eq!(again.totals.deleted, 5);
    let left: Vec<i64> = f.snapshot().await.keys().copied().collect();
    assert_eq!(left, [4, 23]);
    f.drop().await;
}
