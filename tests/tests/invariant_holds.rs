//! Rows someone needs in the table stay there in later runs: a restored
//! row, and a row the application un-marked after it was archived (a legal
//! hold), are held, and the next scheduled run neither marks nor deletes
//! them; a released hold lets the row go again. A restore that meets a
//! row already in the table says which and why.

mod common;

use cdc_retrieve::{Query, RestoreOptions, Selector};
use common::Pipeline;
use tokio_util::sync::CancellationToken;

const TABLE: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, created date NOT NULL, note text,
       archived bool NOT NULL DEFAULT false);
     ALTER TABLE {t} REPLICA IDENTITY FULL;";

async fn run(p: &Pipeline) -> cdc_run::RunReport {
    let run_cfg: cdc_run::RunConfig =
        toml::from_str("wait_timeout = \"120s\"\npoll_interval = \"200ms\"").unwrap();
    let plan = cdc_run::TablePlan {
        database_url: cdc_tests::pg_url(),
        marker: p.marker("created", "30 days", 50),
        purger: p.purger(50),
        sink: Some(p.sink_watch()),
    };
    cdc_run::run_once(
        std::slice::from_ref(&plan),
        &run_cfg,
        &p.archive,
        &CancellationToken::new(),
    )
    .await
}

async fn restore(p: &Pipeline, id: i64) -> cdc_retrieve::RestoreSummary {
    let (found, _) = cdc_retrieve::retrieve(
        &p.archive,
        &Query {
            table: p.table.clone(),
            selector: Selector::Key(cdc_retrieve::parse_key_arg(&format!("[{id}]")).unwrap()),
            all_versions: false,
            limit: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(found.len(), 1, "row {id} is in the archive");
    let opts = RestoreOptions {
        table: cdc_common::ident::TableName::parse(&format!("public.{}", p.table)).unwrap(),
        archived_column: "archived".into(),
        keep_archived_flag: false,
        batch_size: 100,
    };
    cdc_retrieve::restore_url(
        &cdc_tests::pg_url(),
        &found,
        &opts,
        &cdc_common::retry::RetryConfig::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_row_is_not_archived_again_by_the_next_run_until_released() {
    let p = Pipeline::start("hold_restore", TABLE, 3, 100).await;
    p.client
        .batch_execute(&format!(
            "INSERT INTO {} (id, created, note) SELECT g, current_date - 100, 'n' || g FROM generate_series(1, 200) g",
            p.qt
        ))
        .await
        .unwrap();
    let report = run(&p).await;
    assert_eq!(report.outcome, cdc_run::Outcome::Success, "{report}");
    assert_eq!(p.count("true").await, 0);

    // Row 5 is restored: back in the table, un-marked, and held.
    let s = restore(&p, 5).await;
    assert_eq!(
        (s.inserted, s.held, s.not_restored.len()),
        (1, 1, 0),
        "{s:?}"
    );
    let report = run(&p).await;
    assert_eq!(report.outcome, cdc_run::Outcome::Success, "{report}");
    let t = &report.tables[0];
    assert_eq!(t.mark.as_ref().unwrap().rows_marked, 0, "{report}");
    assert_eq!(t.verify.as_ref().unwrap().rows_held, 1, "{report}");
    assert_eq!(p.count("id = 5 AND NOT archived").await, 1, "{report}");

    // Restoring it again meets the row: not written, said why.
    let s = restore(&p, 5).await;
    assert_eq!(s.inserted, 0);
    assert_eq!(s.not_restored.len(), 1, "{s:?}");
    assert_eq!(s.not_restored[0].key, "[5]");
    assert!(s.not_restored[0].reason.contains("primary key"), "{s:?}");

    // Released: the next run archives and purges it again.
    p.client
        .batch_execute(&format!(
            "DELETE FROM {}",
            cdc_common::holds::qualified("public", &p.table)
        ))
        .await
        .unwrap();
    let report = run(&p).await;
    assert_eq!(report.outcome, cdc_run::Outcome::Success, "{report}");
    assert_eq!(p.count("true").await, 0, "{report}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_the_application_unmarks_stay_unmarked_in_later_runs() {
    let p = Pipeline::start("hold_unmark", TABLE, 3, 100).await;
    p.client
        .batch_execute(&format!(
            "INSERT INTO {} (id, created, note) SELECT g, current_date - 100, 'n' || g FROM generate_series(1, 300) g",
            p.qt
        ))
        .await
        .unwrap();
    // Marked and archived; then the application puts 16 rows on hold.
    p.mark(&p.marker("created", "30 days", 50)).await;
    p.client
        .batch_execute(&format!(
            "UPDATE {} SET archived = false WHERE id BETWEEN 10 AND 25",
            p.qt
        ))
        .await
        .unwrap();
    p.wait_archived(p.db_now().await).await;
    let s = p.purge(&p.purger(50)).await;
    assert_eq!(
        (s.totals.deleted, s.totals.skipped_unmarked, s.held),
        (284, 16, 16),
        "{}",
        s.render()
    );
    // The next runs mark none of them and delete none of them.
    for _ in 0..2 {
        let report = run(&p).await;
        assert_eq!(report.outcome, cdc_run::Outcome::Success, "{report}");
        let t = &report.tables[0];
        assert_eq!(t.mark.as_ref().unwrap().rows_marked, 0, "{report}");
        assert_eq!(t.verify.as_ref().unwrap().rows_held, 16, "{report}");
    }
    assert_eq!(p.count("id BETWEEN 10 AND 25 AND NOT archived").await, 16);
    assert_eq!(p.count("true").await, 16);
    p.stop().await;
}
