//! The whole pipeline through `run`, on a table with awkward types, against
//! the real local stack: PostgreSQL → its changefeed → the broker → the
//! sink → the archive on the local file system → `run` (mark, wait for the
//! watermark, purge, verify) → retrieve → restore.
//!
//! Asserted: every deleted row can be retrieved with identical values, a
//! restore puts it back byte-identical (as PostgreSQL prints it), no row
//! outside the cutoff is touched, and the run report's counts reconcile
//! with the database.

use std::collections::BTreeMap;
use std::time::Duration;

use cdc_changefeed::Value;
use cdc_common::ident::quote_ident;
use cdc_retrieve::{Query, Selector};
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
    let client = cdc_tests::pg().await;
    let table = cdc_tests::unique("awkward");
    let slot = cdc_tests::unique("e2e_slot");
    let topic = cdc_tests::unique("e2e_topic");
    let qt = quote_ident(&table);
    cdc_tests::create_topic(&topic, 3).await;

    client
        .batch_execute(&format!(
            r#"CREATE TABLE {qt} (
                 region TEXT NOT NULL, id INT NOT NULL,
                 amount NUMERIC NOT NULL, happened_at TIMESTAMPTZ, doc JSONB, blob BYTEA, note TEXT,
                 created DATE NOT NULL, archived BOOL NOT NULL DEFAULT false,
                 PRIMARY KEY (region, id));
               INSERT INTO {qt} (region, id, amount, happened_at, doc, blob, note, created)
               SELECT (ARRAY['eu-west', 'Zürich', '東京', 'o''brien "q"'])[1 + g % 4], g,
                      CASE WHEN g % 3 = 0 THEN 123456789012345678901234.567890 + g
                           WHEN g % 3 = 1 THEN -0.000000000000000000000000000001 * g
                           ELSE 1250.00 END,
                      CASE WHEN g % 5 = 0 THEN NULL ELSE timestamptz '2024-02-29 23:59:59.123456+05:30' + g * interval '1 hour' END,
                      CASE WHEN g % 4 = 0 THEN NULL
                           ELSE jsonb_build_object('n', g, 'dec', 2.50, 'nested', jsonb_build_array(1, 'two', NULL, jsonb_build_object('q', 'say "hi"\n'))) END,
                      CASE WHEN g % 6 = 0 THEN NULL ELSE decode(lpad(to_hex(g), 6, '0') || '00ff', 'hex') END,
                      CASE WHEN g % 7 = 0 THEN NULL ELSE 'Line ' || g || E' with \'quotes\', "doubles", a \\ backslash, tab\t and ü€🚀' END,
                      current_date - (g % 200)
               FROM generate_series(1, 300) AS g;"#
        ))
        .await
        .unwrap();

    let eligible = snapshot(&client, &table, "created < now() - interval '60 days'").await;
    let recent = snapshot(&client, &table, "created >= now() - interval '60 days'").await;
    assert!(eligible.len() > 150 && !recent.is_empty());

    let (archive, _dir) = cdc_tests::local_archive();
    let archive_url = archive.url.clone();
    let pg_url = cdc_tests::pg_url();
    let brokers = cdc_tests::kafka_brokers();

    let feed_cfg: cdc_pg_changefeed::PgChangefeedConfig = toml::from_str(&format!(
        r#"database_url = "{pg_url}"
           brokers = "{brokers}"
           slot_name = "{slot}"
           resolved_interval = "500ms"
           poll_interval = "100ms"
           tables = [{{ name = "public.{table}", topic = "{topic}", filter_column = "archived" }}]"#
    ))
    .unwrap();
    let sink_cfg: cdc_sink::SinkConfig = toml::from_str(&format!(
        r#"brokers = "{brokers}"
           group_id = "{group}"
           topics = [{{ name = "{topic}", table = "{table}" }}]
           flush_rows = 40
           flush_age = "500ms"
           [storage]
           url = "{archive_url}""#,
        group = cdc_tests::unique("e2e_group"),
    ))
    .unwrap();
    let marker: cdc_marker::MarkerConfig = toml::from_str(&format!(
        r#"table = "public.{table}"
           cutoff = {{ column = "created", older_than = "60 days" }}
           batch_size = 37"#
    ))
    .unwrap();
    let purger: cdc_purger::PurgerConfig = toml::from_str(&format!(
        r#"database_url = "{pg_url}"
           table = "public.{table}"
           batch_size = 29
           [storage]
           url = "{archive_url}""#
    ))
    .unwrap();
    let run_cfg: cdc_run::RunConfig =
        toml::from_str("wait_timeout = \"120s\"\npoll_interval = \"200ms\"").unwrap();

    let cancel = CancellationToken::new();
    let feed = tokio::spawn({
        let (cfg, c) = (feed_cfg.clone(), cancel.clone());
        async move { cdc_pg_changefeed::run(&cfg, c).await }
    });
    let sink = tokio::spawn({
        let (cfg, c) = (sink_cfg.clone(), cancel.clone());
        async move { cdc_sink::run(&cfg, c).await }
    });

    // The changefeed covers changes from its slot's creation on (like a
    // CockroachDB changefeed without an initial scan): mark only after it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the changefeed did not create its slot within 60s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let plan = cdc_run::TablePlan {
        database_url: pg_url.clone(),
        marker,
        purger,
    };
    let report = cdc_run::run_once(
        std::slice::from_ref(&plan),
        &run_cfg,
        &archive,
        &CancellationToken::new(),
    )
    .await;

    // Retrieve everything archived before stopping the pipeline's tasks.
    let (found, stats) = cdc_retrieve::retrieve(
        &archive,
        &Query {
            table: table.clone(),
            selector: Selector::KeyPrefix(vec![]),
            all_versions: false,
            limit: None,
        },
    )
    .await
    .unwrap();

    cancel.cancel();
    let feed_result = tokio::time::timeout(Duration::from_secs(60), feed).await;
    let sink_result = tokio::time::timeout(Duration::from_secs(60), sink).await;
    let _ = client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await;

    // On failure, show what the archive holds.
    let mut chains = String::new();
    for p in cdc_checkpoint::partitions(&archive, &table)
        .await
        .unwrap_or_default()
    {
        if let Ok(chain) = cdc_checkpoint::read_chain(&archive, &table, p).await {
            for c in chain.checkpoints {
                chains.push_str(&format!(
                    "p{p} {}..{} rows {} events {} not_archived {} resolved {:?} created {}\n",
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
    assert!(
        feed_result.is_ok() && sink_result.is_ok(),
        "changefeed and sink stop on the shutdown signal"
    );

    // The table holds exactly the recent rows, untouched.
    let remaining = snapshot(&client, &table, "true").await;
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
            f.row.pg_xid.is_some(),
            "the version guard's transaction id is archived"
        );
    }

    // Restore puts every row back exactly as it was (archived flag reset).
    let mut client = client;
    let opts = cdc_retrieve::RestoreOptions {
        table: cdc_common::ident::TableName::parse(&format!("public.{table}")).unwrap(),
        archived_column: "archived".into(),
        keep_archived_flag: false,
        batch_size: 50,
    };
    let restored = cdc_retrieve::restore(&mut client, &found, &opts)
        .await
        .unwrap();
    assert_eq!(restored.inserted, n);
    let again = cdc_retrieve::restore(&mut client, &found, &opts)
        .await
        .unwrap();
    assert_eq!(
        (again.inserted, again.already_present),
        (0, n),
        "restore is idempotent"
    );
    let after = snapshot(&client, &table, "created < now() - interval '60 days'").await;
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

    client
        .batch_execute(&format!("DROP TABLE {qt}"))
        .await
        .unwrap();
}
