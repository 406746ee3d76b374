//! `cdc-archiver sink rewind` on a real pipeline (PostgreSQL changefeed,
//! the stack's Apache Kafka, the sink, the purger), run as a user runs it:
//! a partition whose chain was compacted, gc'd, partly purged and extended
//! is rewound to an early checkpoint; the sink archives the rest again
//! from Kafka, the purger purges the re-archived checkpoints, and every
//! deleted row is in the archive with exactly the values it was deleted
//! with. Refused: while a sink of the group runs, and once Kafka no longer
//! holds the offsets after the target.

#[path = "../../../tests/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Pipeline;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TABLE: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, created date NOT NULL,
       note text NOT NULL, archived bool NOT NULL DEFAULT false);
       ALTER TABLE {t} REPLICA IDENTITY FULL;";
const COLUMNS: &[&str] = &["id", "created", "note", "archived"];

fn write_config(p: &Pipeline) -> PathBuf {
    let path = p.dir.path().join("cdc-archiver.toml");
    std::fs::write(
        &path,
        format!(
            r#"database_url = "{pg}"

[sink]
brokers = "{brokers}"
group_id = "{group}"
topics = [{{ name = "{topic}", table = "{t}" }}]
[sink.storage]
url = "{url}"

[[marker]]
table = "public.{t}"
cutoff = {{ column = "created", older_than = "5 days" }}
batch_size = 1000

[purger]
table = "public.{t}"
batch_size = 200
[purger.storage]
url = "{url}"

[run]
wait_timeout = "120s"
poll_interval = "200ms"
"#,
            pg = cdc_tests::pg_url(),
            brokers = cdc_tests::kafka_brokers(),
            group = p.sink_cfg.group_id,
            topic = p.sink_cfg.topics[0].name,
            t = p.table,
            url = p.archive.url,
        ),
    )
    .unwrap();
    path
}

/// `cdc-archiver -c <config> <args>`: success, stdout, stderr.
fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdc-archiver"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("cdc-archiver runs");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn wait_members(p: &Pipeline, n: usize) {
    let start = Instant::now();
    while p.group().members.len() != n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the group never had {n} member(s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn mark_and_wait(p: &Pipeline, condition: &str) {
    p.client
        .batch_execute(&format!(
            "UPDATE {t} SET archived = true WHERE {condition}",
            t = p.qt
        ))
        .await
        .unwrap();
    p.wait_archived(p.db_now().await).await;
}

async fn chain(p: &Pipeline) -> cdc_checkpoint::Chain {
    cdc_checkpoint::read_chain(&p.archive, &p.table, 0)
        .await
        .expect("partition 0's chain reads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewound_partition_is_archived_again_and_purged() {
    let mut p = Pipeline::start("rewind", TABLE, 2, 150).await;
    p.client
        .batch_execute(&format!(
            "INSERT INTO {t} (id, created, note)
             SELECT g, CASE WHEN g <= 1000 THEN current_date - 30 ELSE current_date END, 'row ' || g
             FROM generate_series(1, 3000) g",
            t = p.qt
        ))
        .await
        .unwrap();
    let witness = p.witness_deletes().await;
    let config = write_config(&p);
    let url = p.archive.url.clone();
    let archive = ["--archive-url", url.as_str()];

    // Archived, then a scheduled `run` marks the other old rows and purges
    // both (one checkpoint per marking transaction and partition: the sink
    // never cuts a source transaction); more archived; compacted and gc'd
    // (the manifest is then the only copy of most checkpoints); more
    // archived after it.
    mark_and_wait(&p, "id <= 500").await;
    let report = p.dir.path().join("run.json");
    let (ok, _, err) = cli(&config, &["run", "--report-json", report.to_str().unwrap()]);
    assert!(ok, "{err}");
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let run_id = run["run_id"].as_str().expect("the run's id").to_owned();
    assert_eq!(p.count("created < current_date - 5").await, 0, "{run:#}");
    mark_and_wait(&p, "id > 1000 AND id <= 2000").await;
    let (ok, _, err) = cli(
        &config,
        &[&["checkpoints", "compact", "--yes"][..], &archive].concat(),
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &config,
        &[
            &["checkpoints", "gc", "--older-than", "0s", "--yes"][..],
            &archive,
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    mark_and_wait(&p, "id > 2000 AND id <= 2500").await;
    p.stop_sink().await;
    wait_members(&p, 0).await;

    let before = chain(&p).await;
    let end = before.end().unwrap();
    // The target: the first checkpoint of partition 0 with rows; what
    // follows it includes purged checkpoints, gc'd ones and the tail.
    let target = before
        .checkpoints
        .iter()
        .find(|c| c.segment.is_some())
        .expect("partition 0 archived rows")
        .clone();
    assert!(target.last_offset < end);
    let superseded_purged = before
        .checkpoints
        .iter()
        .filter(|c| c.first_offset > target.last_offset && c.segment.is_some())
        .count();
    assert!(superseded_purged > 1, "{before:?}");

    // Refused while a sink of the group runs; nothing changes.
    p.start_sink();
    wait_members(&p, 1).await;
    let (ok, _, err) = cli(&config, &["sink", "rewind", &target.path(), "--yes"]);
    assert!(!ok && err.contains("sinks are running"), "{err}");
    p.stop_sink().await;
    wait_members(&p, 0).await;
    let before = chain(&p).await;
    let end = before.end().unwrap();

    // Past purged checkpoints only with --including-purged.
    let (ok, _, err) = cli(&config, &["sink", "rewind", &target.path(), "--yes"]);
    assert!(!ok && err.contains("--including-purged"), "{err}");
    // The dry run says what would move and moves nothing.
    let (ok, out, err) = cli(&config, &["sink", "rewind", &target.path()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("would move checkpoint") && out.contains("--yes"),
        "{out}"
    );
    assert_eq!(chain(&p).await, before);

    let (ok, out, err) = cli(
        &config,
        &[
            "sink",
            "rewind",
            &target.path(),
            "--yes",
            "--including-purged",
            "--reason",
            "test",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("recorded as"), "{out}");
    let after = chain(&p).await;
    assert_eq!(after.end(), Some(target.last_offset));
    assert_eq!(
        after.checkpoints[..],
        before.checkpoints[..after.checkpoints.len()]
    );
    let records = cdc_checkpoint::rewind_records(&p.archive, &p.table)
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].previous_end, Some(end));
    assert_eq!(records[0].reason.as_deref(), Some("test"));
    for kind in ["purge record", "manifest", "checkpoint"] {
        assert!(
            records[0].moved.iter().any(|m| m.kind == kind),
            "no {kind} moved: {out}"
        );
    }

    // The sink archives the rest again, the rest is marked and archived,
    // and the purger purges the re-archived checkpoints (the rows deleted
    // before count as already gone).
    p.start_sink();
    mark_and_wait(&p, "id > 2500").await;
    let again = chain(&p).await;
    assert!(again.end().unwrap() > end);
    assert_eq!(
        again.checkpoints[..after.checkpoints.len()],
        after.checkpoints[..]
    );
    let second = p.purge(&p.purger(200)).await;
    // The run's deletes still reconcile with the archive: its checkpoints
    // the rewind superseded are audited as the rewind kept them.
    let (ok, out, err) = cli(
        &config,
        &[
            &["checkpoints", "audit", "--run", &run_id, "--json"][..],
            &archive,
        ]
        .concat(),
    );
    assert!(ok, "{out}{err}");
    let audit: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(audit["audit"]["findings"], serde_json::json!([]), "{out}");
    assert!(
        audit["audit"]["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["superseded_by_rewind"] == records[0].rewind_id.as_str()),
        "{out}"
    );
    assert_eq!(second.totals.deleted, 2000);
    assert_eq!(p.count("true").await, 0);
    assert_eq!(
        p.deleted_rows_are_archived_exactly(&witness, COLUMNS).await,
        3000
    );

    // The files the superseded checkpoints named are kept: gc and orphan
    // cleaning leave them.
    let files = &records[0].files;
    assert!(!files.is_empty());
    let gc = cdc_checkpoint::plan_gc(&p.archive, &p.table, Duration::ZERO)
        .await
        .unwrap();
    assert!(gc.remove.iter().all(|i| !files.contains(&i.path)), "{gc:?}");
    cdc_checkpoint::clean_orphans(&p.archive, &p.table, Duration::ZERO)
        .await
        .unwrap();
    for f in files {
        assert!(cdc_checkpoint::get_object(&p.archive, f)
            .await
            .unwrap()
            .is_some());
    }

    // Once Kafka no longer holds the offsets after a target (retention,
    // here DeleteRecords), the rewind is refused with the offset to use.
    p.stop_sink().await;
    wait_members(&p, 0).await;
    let last = chain(&p).await;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        &p.sink_cfg.topics[0].name,
        0,
        Offset::Offset(target.last_offset + 5),
    )
    .unwrap();
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("DeleteRecords");
    let (ok, _, err) = cli(&config, &["sink", "rewind", &target.path(), "--yes"]);
    assert!(!ok && err.contains("no longer holds offset"), "{err}");
    assert!(
        chain(&p).await == last,
        "the refused rewind changed the chain"
    );
    p.stop().await;
}
