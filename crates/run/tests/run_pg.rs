//! `run` against real PostgreSQL and a real archive (local file system),
//! with no sink process: the archive is written by the test the way the
//! sink writes it (segments, then checkpoints), or not at all.
//!
//! - No sink: the run times out waiting for the watermark, reports
//!   Partial (the binary exits 3) and purges nothing, not even rows that
//!   an older checkpoint does prove archived.
//! - A sink that archives what the run marks: Success, and the rows
//!   archived during the run are counted by chain position.
//! - Rows still marked after the purge: Partial, with the count.

#[path = "../../retrieve/tests/common/archive.rs"]
mod archive;

use std::time::Duration;

use archive::Archive;
use cdc_changefeed::{Hlc, Value};
use cdc_common::ident::quote_ident;
use cdc_run::{Outcome, RunConfig, RunReport, TablePlan};
use tokio_util::sync::CancellationToken;

/// Rows 1..=40 are past the 90-day cutoff, 41..=60 are not.
const ELIGIBLE: i64 = 40;
const ROWS: i64 = 60;
/// Rows 1..=20 were marked (and archived) before the run.
const PRE_MARKED: i64 = 20;

struct Setup {
    client: tokio_postgres::Client,
    table: String,
    archive: Archive,
}

fn hlc_in(offset: chrono::Duration) -> Hlc {
    Hlc::new(
        (chrono::Utc::now() + offset).timestamp_nanos_opt().unwrap(),
        0,
    )
}

impl Setup {
    /// The table, rows 1..=20 marked and archived as one checkpoint whose
    /// partition has seen `resolved`.
    async fn new(resolved: Hlc) -> Self {
        let client = cdc_tests::pg().await;
        let table = cdc_tests::unique("run");
        let q = quote_ident(&table);
        client
            .batch_execute(&format!(
                "CREATE TABLE {q} (id BIGINT PRIMARY KEY, created DATE NOT NULL, amount NUMERIC NOT NULL,
                   archived BOOL NOT NULL DEFAULT false);
                 INSERT INTO {q} SELECT g, CASE WHEN g <= {ELIGIBLE} THEN current_date - 400 ELSE current_date END,
                   g * 1.5 FROM generate_series(1, {ROWS}) g;
                 UPDATE {q} SET archived = true WHERE id <= {PRE_MARKED};"
            ))
            .await
            .unwrap();
        let mut setup = Self {
            client,
            archive: Archive::new(&table, 1),
            table,
        };
        setup.archive_marked(1, PRE_MARKED, resolved).await;
        setup
    }

    /// Archives the current versions of ids `from..=to` (marked) as the
    /// next checkpoint, exactly as the sink would: real `xmin`s.
    async fn archive_marked(&mut self, from: i64, to: i64, resolved: Hlc) {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT id, created::text, amount::text, xmin::text::int8 FROM {} \
                     WHERE id BETWEEN $1 AND $2 AND archived ORDER BY id",
                    quote_ident(&self.table)
                ),
                &[&from, &to],
            )
            .await
            .unwrap();
        assert_eq!(
            rows.len() as i64,
            to - from + 1,
            "rows to archive are marked"
        );
        let updated = hlc_in(chrono::Duration::zero());
        let versions = rows
            .iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let cols = [
                    ("id", Value::Number(id.to_string())),
                    ("created", Value::String(r.get(1))),
                    ("amount", Value::Number(r.get(2))),
                    ("archived", Value::Bool(true)),
                ];
                archive::version(
                    &format!("[{id}]"),
                    updated,
                    Some(r.get::<_, i64>(3) as u64),
                    &cols,
                )
            })
            .collect();
        self.archive.flush(0, versions, Some(resolved)).await;
    }

    fn plan(&self) -> TablePlan {
        let url = cdc_tests::pg_url();
        TablePlan {
            database_url: url.clone(),
            marker: toml::from_str(&self.marker_toml()).unwrap(),
            purger: toml::from_str(&format!("database_url = \"{url}\"\n{}", self.purger_toml()))
                .unwrap(),
            sink: None,
        }
    }

    fn marker_toml(&self) -> String {
        format!(
            "table = \"public.{}\"\ncutoff = {{ column = \"created\", older_than = \"90 days\" }}\nbatch_size = 7\nmin_batch_size = 2\n",
            self.table
        )
    }

    fn purger_toml(&self) -> String {
        format!(
            "table = \"public.{}\"\nbatch_size = 9\nmin_batch_size = 2\n[storage]\nurl = \"{}\"\n",
            self.table, self.archive.store.url
        )
    }

    async fn count(&self, filter: &str) -> i64 {
        self.client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE {filter}",
                    quote_ident(&self.table)
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Nothing was deleted and the pre-run checkpoint has no purge record.
    async fn assert_nothing_purged(&self) {
        assert_eq!(self.count("true").await, ROWS, "no row deleted");
        assert_eq!(
            self.count("archived").await,
            ELIGIBLE,
            "every eligible row marked"
        );
        let record = cdc_checkpoint::read_purge_record(&self.archive.store, &self.table, 0, 0)
            .await
            .unwrap();
        assert!(
            record.is_none(),
            "the checkpoint was not purged: {record:?}"
        );
    }

    async fn drop(self) {
        let _ = self
            .client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {}",
                quote_ident(&self.table)
            ))
            .await;
    }
}

fn config(wait: &str) -> RunConfig {
    toml::from_str(&format!(
        "wait_timeout = \"{wait}\"\npoll_interval = \"100ms\""
    ))
    .unwrap()
}

async fn run(setup: &Setup, cfg: &RunConfig) -> RunReport {
    let store = setup.archive.store.clone();
    cdc_run::run_once(&[setup.plan()], cfg, &store, &CancellationToken::new()).await
}

#[tokio::test]
async fn without_a_sink_the_run_times_out_reports_partial_and_purges_nothing() {
    // The sink ran once, a day ago: there is a watermark, and a checkpoint
    // that proves rows 1..=20 archived, but nothing after.
    let resolved = hlc_in(-chrono::Duration::days(1));
    let setup = Setup::new(resolved).await;
    let report = run(&setup, &config("2s")).await;
    let text = report.to_string();
    eprintln!("{text}");
    let t = &report.tables[0];
    assert_eq!(report.outcome, Outcome::Partial, "{text}");
    assert_eq!(report.outcome.exit_code(), 3);
    assert_eq!(
        t.mark.as_ref().unwrap().rows_marked as i64,
        ELIGIBLE - PRE_MARKED,
        "{text}"
    );
    let wait = t.wait.as_ref().unwrap();
    assert!(!wait.reached, "{text}");
    assert_eq!(wait.watermark, Some(resolved));
    assert!(wait.target.unwrap() > resolved);
    assert!(wait.waited_secs >= 2.0, "{text}");
    assert!(t.purge.is_none() && t.verify.is_none(), "{text}");
    assert_eq!(t.archived, 0, "no checkpoint was written during the run");
    assert!(
        t.error.as_deref().unwrap().contains("nothing was purged"),
        "{text}"
    );
    assert!(
        text.contains("NOT past") && text.contains("elapsed"),
        "{text}"
    );
    setup.assert_nothing_purged().await;

    // The report is in the archive, as JSON.
    let path = cdc_checkpoint::layout::run_path(&setup.table, &report.run_id);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.archive.dir.path().join(path)).unwrap())
            .unwrap();
    assert_eq!(stored["outcome"], "partial");
    assert_eq!(stored["tables"][0]["wait"]["reached"], false);
    setup.drop().await;
}

/// The binary, built for this test (a no-op when it is up to date).
fn cdc_archiver() -> std::path::PathBuf {
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let built =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace)
            .args(["build", "--quiet", "--package", "cdc-archiver"])
            .status()
            .expect("cargo runs");
    assert!(built.success(), "building cdc-archiver failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || std::path::Path::new(workspace).join("target"),
            Into::into,
        )
        .join("debug")
        .join("cdc-archiver")
}

#[tokio::test]
async fn the_binary_exits_3_when_the_sink_is_not_running() {
    let setup = Setup::new(hlc_in(-chrono::Duration::days(1))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cdc-archiver.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\n[[marker]]\n{}\n[purger]\n{}\n[run]\nwait_timeout = \"2s\"\npoll_interval = \"100ms\"\n",
            cdc_tests::pg_url(),
            setup.marker_toml(),
            setup.purger_toml()
        ),
    )
    .unwrap();
    let report_json = dir.path().join("report.json");
    let out = std::process::Command::new(cdc_archiver())
        .arg("--config")
        .arg(&config)
        .args(["--log-level", "warn", "run", "--report-json"])
        .arg(&report_json)
        .output()
        .expect("cdc-archiver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stdout.contains("outcome: Partial"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_json).unwrap()).unwrap();
    assert_eq!(report["outcome"], "partial");
    setup.assert_nothing_purged().await;
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_archives_what_the_run_marks_lets_it_purge_everything() {
    let mut setup = Setup::new(hlc_in(-chrono::Duration::days(1))).await;
    let cfg = config("60s");
    let store = setup.archive.store.clone();
    let plan = setup.plan();
    let token = CancellationToken::new();
    let run = cdc_run::run_once(std::slice::from_ref(&plan), &cfg, &store, &token);
    // The "sink": once the run has marked every eligible row, archive the
    // new versions with a resolved timestamp past the marker's last write.
    let sink = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while setup.count("archived").await < ELIGIBLE {
            assert!(std::time::Instant::now() < deadline, "the run did not mark");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        setup
            .archive_marked(
                PRE_MARKED + 1,
                ELIGIBLE,
                hlc_in(chrono::Duration::seconds(5)),
            )
            .await;
    };
    let (report, ()) = tokio::join!(run, sink);
    let text = report.to_string();
    eprintln!("{text}");
    let t = &report.tables[0];
    assert_eq!(report.outcome, Outcome::Success, "{text}");
    assert_eq!(
        t.archived as i64,
        ELIGIBLE - PRE_MARKED,
        "counted by chain position: {text}"
    );
    assert_eq!(
        t.purge.as_ref().unwrap().totals.deleted as i64,
        ELIGIBLE,
        "{text}"
    );
    assert_eq!(t.verify.as_ref().unwrap().rows_still_marked, 0);
    assert!(
        t.rates.archive.is_some() && t.rates.purge.is_some(),
        "{text}"
    );
    assert!(text.contains("rows/s"), "{text}");
    assert_eq!(setup.count("true").await, ROWS - ELIGIBLE);
    setup.drop().await;
}

#[tokio::test]
async fn rows_still_marked_after_the_purge_make_the_run_partial() {
    // The watermark is already past anything the run will mark, but only
    // rows 1..=20 are archived: the rows the run marks stay marked.
    let setup = Setup::new(hlc_in(chrono::Duration::hours(1))).await;
    let report = run(&setup, &config("10s")).await;
    let text = report.to_string();
    let t = &report.tables[0];
    assert!(t.wait.as_ref().unwrap().reached, "{text}");
    assert_eq!(
        t.purge.as_ref().unwrap().totals.deleted as i64,
        PRE_MARKED,
        "{text}"
    );
    let still = ELIGIBLE - PRE_MARKED;
    assert_eq!(
        t.verify.as_ref().unwrap().rows_still_marked as i64,
        still,
        "{text}"
    );
    assert_eq!(report.outcome, Outcome::Partial, "{text}");
    assert!(
        t.error
            .as_deref()
            .unwrap()
            .contains(&format!("{still} row(s) are still marked")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{still} row(s) still marked")),
        "{text}"
    );
    assert_eq!(setup.count("true").await, ROWS - PRE_MARKED);
    setup.drop().await;
}
