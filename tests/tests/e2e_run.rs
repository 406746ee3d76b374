//! The whole pipeline through `run`, on a table with awkward types, against
//! the real local stack: PostgreSQL → its changefeed → the broker → the
//! sink → the archive on the local file system → `run` (mark, wait for the
//! watermark, purge, verify) → retrieve → restore.
//!
//! Asserted: every deleted row can be retrieved with identical values, a
//! restore puts it back byte-identical (as PostgreSQL prints it), no row
//! outside the cutoff is touched, and the run report's counts reconcile
//! with the database.

mod common;

use std::collections::BTreeMap;

use cdc_changefeed::Value;
use cdc_common::ident::quote_ident;
use cdc_retrieve::{Query, Selector};
use common::Pipeline;
use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

/// Each row as PostgreSQL prints it, keyed by `(region, id)`.
async fn snapshot(
    client: &tokio_postgres::Client,
    table: &str,
    filter: &str,
) -> BTreeMap<(String, i32), Vec<Option<String>>> {
    let sql = format!(
        "SELECT region, id, amount::text, happened_at::text, doc::text, encode(blob, 'hex'), note, created::text \
         FROM {} WHERE {filter}",
        quote_ident(table)
    );
    client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let key = (r.get::<_, String>(0), r.get::<_, i32>(1));
            let vals = (2..8).map(|i| r.get::<_, Option<String>>(i)).collect();
            (key, vals)
        })
        .collect()
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_json_text()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_archives_deletes_retrieves_and_restores_awkward_rows() {
    // REPLICA IDENTITY FULL: the changefeed then sees every column of an
    // update, TOASTed values included.
    let p = Pipeline::start(
        "awkward",
        r#"CREATE TABLE {t} (
             region TEXT NOT NULL, id INT NOT NULL,
             amount NUMERIC NOT NULL, happened_at TIMESTAMPTZ, doc JSONB, blob BYTEA, note TEXT,
             created DATE NOT NULL, archived BOOL NOT NULL DEFAULT false,
             PRIMARY KEY (region, id));
           ALTER TABLE {t} REPLICA IDENTITY FULL;
           INSERT INTO {t} (region, id, amount, happened_at, doc, blob, note, created)
           SELECT (ARRAY['eu-west', 'Zürich', '東京', 'o''brien "q"'])[1 + g % 4], g,
                  CASE WHEN g % 3 = 0 THEN 123456789012345678901234.567890 + g
                       WHEN g % 3 = 1 THEN -0.000000000000000000000000000001 * g
                       ELSE 1250.00 END,
                  CASE WHEN g % 5 = 0 THEN NULL ELSE timestamptz '2024-02-29 23:59:59.123456+05:30' + g * interval '1 hour' END,
                  CASE WHEN g % 4 = 0 THEN NULL
                       ELSE jsonb_build_object('n', g, 'dec', 2.50, 'nested', jsonb_build_array(1, 'two', NULL, jsonb_build_object('q', 'say "hi"\n'))) END,
                  CASE WHEN g % 6 = 0 THEN NULL ELSE decode(lpad(to_hex(g), 6, '0') || '00ff', 'hex') END,
                  CASE WHEN g % 7 = 0 THEN NULL ELSE 'Line ' || g || E' with \'quotes\', "doubles", a \\ backslash, tab\t and ü€🚀' END,
                  -- Not the day before the 60-day cutoff or on it: a run
                  -- crossing midnight would see those become eligible.
                  current_date - CASE WHEN g % 200 IN (59, 60) THEN 62 ELSE g % 200 END
           FROM generate_series(1, 300) AS g;"#,
        3,
        40,
    )
    .await;
    let (client, table, qt, archive) = (&p.client, &p.table, &p.qt, &p.archive);

    let eligible = snapshot(client, table, "created < now() - interval '60 days'").await;
    let recent = snapshot(client, table, "created >= now() - interval '60 days'").await;
    assert!(eligible.len() > 150 && !recent.is_empty());

    let run_cfg: cdc_run::RunConfig =
        toml::from_str("wait_timeout = \"120s\"\npoll_interval = \"200ms\"").unwrap();
    let plan = cdc_run::TablePlan {
        database_url: cdc_tests::pg_url(),
        marker: p.marker("created", "60 days", 37),
        purger: p.purger(29),
        sink: Some(p.sink_watch()),
    };
    let report = cdc_run::run_once(
        std::slice::from_ref(&plan),
        &run_cfg,
        archive,
        &CancellationToken::new(),
    )
    .await;

    // Retrieve everything archived.
    let (found, stats) = cdc_retrieve::retrieve(
        archive,
        &Query {
            table: table.clone(),
            selector: Selector::KeyPrefix(vec![]),
            all_versions: false,
            limit: None,
        },
    )
    .await
    .unwrap();

    // On failure, show what the archive holds.
    let mut chains = String::new();
    for part in cdc_checkpoint::partitions(archive, table)
        .await
        .unwrap_or_default()
    {
        if let Ok(chain) = cdc_checkpoint::read_chain(archive, table, part).await {
            for c in chain.checkpoints {
                chains.push_str(&format!(
                    "p{part} {}..{} rows {} events {} not_archived {} resolved {:?} created {}\n",
                    c.first_offset,
                    c.last_offset,
                    c.counts.rows_archived,
                    c.counts.events,
                    c.counts.not_archived,
                    c.resolved,
                    c.created_at
                ));
            }
        }
    }
    let diag = format!("{report}\nwait {:?}\n{chains}", report.tables[0].wait);
    let t = &report.tables[0];
    assert_eq!(report.outcome, cdc_run::Outcome::Success, "{diag}");
    let mark = t.mark.as_ref().unwrap();
    let purge = t.purge.as_ref().unwrap();
    let n = eligible.len() as u64;
    assert_eq!(t.eligible, Some(n), "{diag}");
    assert_eq!(mark.rows_marked, n, "{diag}");
    assert_eq!(
        t.archived, n,
        "every marked row version archived once: {diag}"
    );
    assert_eq!(purge.totals.deleted, n, "{diag}");
    assert_eq!(
        purge.totals.skipped_changed + purge.totals.skipped_unmarked + purge.totals.already_gone,
        0
    );
    assert_eq!(t.verify.as_ref().unwrap().rows_still_marked, 0);

    // The table holds exactly the recent rows, untouched.
    let remaining = snapshot(client, table, "true").await;
    assert_eq!(remaining, recent, "rows outside the cutoff are untouched");

    // Every deleted row is in the archive with identical values.
    assert_eq!(found.len(), eligible.len(), "{stats:?}");
    for f in &found {
        let cols: BTreeMap<&str, &Value> =
            f.row.columns.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let key = (
            cols["region"].as_str().unwrap().to_owned(),
            cols["id"].to_json_text().parse::<i32>().unwrap(),
        );
        let want = &eligible[&key];
        assert_eq!(
            text_of(cols["amount"]),
            want[0],
            "exact NUMERIC text for {key:?}"
        );
        assert_eq!(
            text_of(cols["note"]),
            want[4],
            "text with quotes and non-ASCII for {key:?}"
        );
        assert_eq!(text_of(cols["created"]), want[5]);
        match (&want[2], cols["doc"]) {
            (None, v) => assert!(v.is_null()),
            (Some(doc), v) => assert_eq!(
                serde_json::from_str::<serde_json::Value>(doc).unwrap(),
                serde_json::from_str::<serde_json::Value>(&v.to_json_text()).unwrap(),
                "JSONB for {key:?}"
            ),
        }
        match (&want[3], cols["blob"]) {
            (None, v) => assert!(v.is_null()),
            (Some(hex), v) => assert_eq!(
                v.as_str(),
                Some(format!("\\x{hex}").as_str()),
                "BYTEA for {key:?}"
            ),
        }
        assert_eq!(
            cols["happened_at"].is_null(),
            want[1].is_none(),
            "TIMESTAMPTZ NULLs for {key:?}"
        );
        assert_eq!(cols["archived"], &Value::Bool(true));
        assert!(
            f.row.meta.pg_xid.is_some(),
            "the version guard's transaction id is archived"
        );
    }

    // Restore puts every row back exactly as it was (archived flag reset).
    let mut rc = cdc_tests::pg().await;
    let opts = cdc_retrieve::RestoreOptions {
        table: cdc_common::ident::TableName::parse(&format!("public.{table}")).unwrap(),
        archived_column: "archived".into(),
        keep_archived_flag: false,
        batch_size: 50,
    };
    let restored = cdc_retrieve::restore(&mut rc, &found, &opts).await.unwrap();
    assert_eq!(restored.inserted, n);
    let again = cdc_retrieve::restore(&mut rc, &found, &opts).await.unwrap();
    assert_eq!(
        (again.inserted, again.already_present),
        (0, n),
        "restore is idempotent"
    );
    let after = snapshot(client, table, "created < now() - interval '60 days'").await;
    assert_eq!(
        after, eligible,
        "restored rows are identical to the originals"
    );
    let marked: i64 = client
        .query_one(&format!("SELECT count(*) FROM {qt} WHERE archived"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(marked, 0, "restored rows are not re-marked for archiving");

    // The run's deletes reconcile with the archive (`checkpoints audit`):
    // every checkpoint it purged has its purger's record over a verified
    // segment, and the records add up to what it reported. The stored
    // report's hash is the one recorded beside it.
    let audit = cdc_retrieve::inspect::audit(archive, table, &report.run_id)
        .await
        .unwrap()
        .expect("the run's report is in the archive");
    assert!(audit.findings.is_empty(), "{:?}", audit.findings);
    let purged: Vec<_> = purge
        .checkpoints
        .iter()
        .filter(|c| c.status == cdc_purger::CheckpointStatus::Purged)
        .collect();
    assert_eq!(audit.checkpoints.len(), purged.len());
    assert_eq!(audit.segments_verified, purged.len() as u64);
    assert_eq!((audit.reported_deleted, audit.recorded_deleted), (n, n));
    let (stored, sha) = cdc_retrieve::inspect::record_audit(archive, &audit)
        .await
        .unwrap();
    let get = |path: String| async move {
        archive
            .store
            .get(&archive.path(&path))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    let body = get(stored.clone()).await;
    assert_eq!(cdc_checkpoint::sha256_hex(&body), sha);
    assert_eq!(get(format!("{stored}.sha256")).await, format!("{sha}\n"));
    // A purge record altered after the run (one more row deleted than the
    // run reported) and a segment byte flipped are both found.
    let first = audit
        .checkpoints
        .iter()
        .find(|c| c.deleted > 0)
        .expect("a checkpoint with deletes");
    let mut record =
        cdc_checkpoint::read_purge_record(archive, table, first.partition, first.first_offset)
            .await
            .unwrap()
            .unwrap();
    record.deleted += 1;
    archive
        .store
        .put(
            &archive.path(&record.path()),
            serde_json::to_vec_pretty(&record).unwrap().into(),
        )
        .await
        .unwrap();
    let other = audit
        .checkpoints
        .iter()
        .find(|c| (c.partition, c.first_offset) != (first.partition, first.first_offset))
        .and_then(|c| c.segment.clone())
        .expect("a second segment");
    let mut bytes = get(other.clone()).await.to_vec();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    archive
        .store
        .put(&archive.path(&other), bytes.into())
        .await
        .unwrap();
    // A record of the run's purger that its report does not list.
    let mut stray = record.clone();
    (stray.partition, stray.first_offset) = (first.partition, 1_000_000_000);
    cdc_checkpoint::write_purge_record(archive, &stray)
        .await
        .unwrap();
    let damaged = cdc_retrieve::inspect::audit(archive, table, &report.run_id)
        .await
        .unwrap()
        .expect("the run's report is in the archive");
    let mut kinds: Vec<&str> = damaged.findings.iter().map(|f| f.kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "counts_mismatch",
            "record_mismatch",
            "record_not_reported",
            "segment_corrupt",
            "totals_mismatch"
        ],
        "{:?}",
        damaged.findings
    );

    // The changefeed and the sink stop cleanly on their shutdown signal.
    p.stop().await;
}
