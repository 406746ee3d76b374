//! `cdc-archiver purge` killed with SIGKILL at an arbitrary moment of its
//! run, on an archive written by the real pipeline, then run again: the
//! rerun completes, no row is deleted twice, every deleted row is in the
//! archive exactly as it was deleted, and the purge records reconcile with
//! the rows the checkpoints cover.

#[path = "../../../tests/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Pipeline;

const TABLE: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, created date NOT NULL,
       amount numeric NOT NULL, archived bool NOT NULL DEFAULT false);";
const COLUMNS: &[&str] = &["id", "created", "amount", "archived"];

fn purge_command(p: &Pipeline, summary: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-archiver"));
    cmd.args(["--log-format", "json", "purge", "--table"])
        .arg(format!("public.{}", p.table))
        .arg("--database-url")
        .arg(cdc_tests::pg_url())
        .arg("--archive-url")
        .arg(&p.archive.url)
        .args(["--batch-size", "100", "--max-rows-per-second", "4000"])
        .arg("--summary-json")
        .arg(summary)
        .stdout(std::process::Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purger_killed_mid_run_then_rerun_completes_and_reconciles() {
    let rows = 20_000i64;
    let mut p = Pipeline::start("pk_kill", TABLE, 3, 1_500).await;
    p.client
        .batch_execute(&format!(
            "INSERT INTO {t} (id, created, amount)
             SELECT g, current_date - 10, (g * 3) / 100.0 FROM generate_series(1, {rows}) g",
            t = p.qt
        ))
        .await
        .unwrap();
    let witness = p.witness_deletes().await;
    let mark = p.mark(&p.marker("created", "1 day", 500)).await;
    assert_eq!(mark.rows_marked as i64, rows);
    p.wait_archived(p.db_now().await).await;
    p.stop_sink().await;

    // First run: rate-limited so that it is surely mid-way when killed.
    let dir = tempfile::tempdir().unwrap();
    let mut child = purge_command(&p, &dir.path().join("killed.json"))
        .spawn()
        .expect("starting cdc-archiver purge");
    let start = Instant::now();
    loop {
        let left = p.count("true").await;
        if left <= rows - 3_000 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the purger ended before it could be killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the purger made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status:?}");
    // The killed client's backend may still be finishing a DELETE it had
    // sent (the server completes and commits a statement in flight): count
    // what the kill left only once no purger session on this table is left
    // (other tests' purgers may run meanwhile).
    let start = std::time::Instant::now();
    loop {
        let sessions: i64 = p
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cdc-archiver-purge' \
                 AND strpos(query, $1) > 0",
                &[&p.table],
            )
            .await
            .unwrap()
            .get(0);
        if sessions == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the killed purger's session never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left_after_kill = p.count("true").await;
    assert!(
        left_after_kill > 0,
        "the kill came before the end of the run"
    );

    // The rerun completes.
    let summary_path = dir.path().join("rerun.json");
    let status = purge_command(&p, &summary_path).status().unwrap();
    assert!(status.success(), "the rerun failed: {status:?}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    assert_eq!(p.count("true").await, 0, "everything purged");
    assert_eq!(
        summary["totals"]["deleted"].as_i64(),
        Some(left_after_kill),
        "the rerun deleted exactly what the killed run left: {summary}"
    );

    // Nothing deleted twice, and every deleted row is archived as it was.
    let deleted = p.db_text(&witness, COLUMNS).await;
    assert_eq!(deleted.len() as i64, rows);
    let ids: BTreeSet<_> = deleted.iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids.len() as i64, rows, "a row was deleted twice");
    let archived: BTreeSet<_> = p.archived_text(COLUMNS).await.into_iter().collect();
    assert!(deleted.iter().all(|r| archived.contains(r)));

    // Every checkpoint with a segment has a purge record, and the records account for
    // every archived row: deleted by one run or found gone by the other.
    let (mut recorded_deleted, mut recorded_gone, mut covered) = (0u64, 0u64, 0u64);
    for part in cdc_checkpoint::partitions(&p.archive, &p.table)
        .await
        .unwrap()
    {
        let chain = cdc_checkpoint::read_chain(&p.archive, &p.table, part)
            .await
            .unwrap();
        for cp in &chain.checkpoints {
            let rec =
                cdc_checkpoint::read_purge_record(&p.archive, &p.table, part, cp.first_offset)
                    .await
                    .unwrap();
            if cp.segment.is_none() {
                // Nothing to purge: no record is written for it.
                assert!(rec.is_none(), "{}", cp.path());
                continue;
            }
            let rec = rec.unwrap_or_else(|| panic!("checkpoint {} has no purge record", cp.path()));
            recorded_deleted += rec.deleted;
            recorded_gone += rec.already_gone;
            covered += cp.segment.as_ref().map_or(0, |s| s.rows);
        }
    }
    assert_eq!(covered as i64, rows, "each row archived once");
    assert_eq!(recorded_deleted + recorded_gone, covered);
    assert!(
        recorded_gone < 3_000,
        "only the checkpoint in flight at the kill has rows found gone: {recorded_gone}"
    );

    // A replay as a dry run over every checkpoint cross-checks the purge
    // records against the table: no row is left in its archived version.
    let replay_path = dir.path().join("replay.json");
    let status = purge_command(&p, &replay_path)
        .args(["--replay-from", "0", "--replay-to", "9223372036854775807"])
        .status()
        .unwrap();
    assert!(status.success(), "the replay failed: {status:?}");
    let replay: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&replay_path).unwrap()).unwrap();
    assert!(replay["replay"].is_string(), "{replay}");
    assert_eq!(
        replay["dry_run"], true,
        "a replay without --yes deletes nothing"
    );
    assert_eq!(replay["totals"]["would_delete"], 0, "{replay}");
    assert_eq!(
        replay["totals"]["already_gone"].as_i64(),
        Some(rows),
        "{replay}"
    );
    p.stop().await;
}
