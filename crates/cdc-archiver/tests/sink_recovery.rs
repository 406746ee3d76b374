//! The pipeline survives what happens to processes in production, run as a
//! user runs it (the real binary, one process per stage, the stack's Apache
//! Kafka): a sink killed with SIGKILL in the middle of a `run` and started
//! again, the changefeed killed and started again, a restarted static group
//! member, a group where one of two sinks dies, and a consumer group that
//! leaves partitions unconsumed (said by `check` and by `run`'s report).

#[path = "../../../tests/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::Pipeline;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

const TABLE: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, created date NOT NULL,
       amount numeric NOT NULL, note text, archived bool NOT NULL DEFAULT false);
       ALTER TABLE {t} REPLICA IDENTITY FULL;";
const COLUMNS: &[&str] = &["id", "created", "amount", "note", "archived"];

/// A stage of the pipeline as its own `cdc-archiver` process.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(config: &Path, args: &[&str], log: &Path) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cdc-archiver"))
            .arg("--config")
            .arg(config)
            .args(["--log-format", "text"])
            .args(args)
            .env_remove("CDC_SINK_CRASH_AT")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting cdc-archiver");
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// SIGKILL, as `kill -9`.
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    fn term(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait(Duration::from_secs(60))
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {limit:?}; its log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The whole configuration file of `p`: changefeed, sink (`sink_extra`:
/// more `[sink]` lines), marker (old rows: `created` more than 5 days ago),
/// purger and run.
fn write_config(p: &Pipeline, dir: &Path, sink_extra: &str, marker_extra: &str) -> PathBuf {
    let path = dir.join("cdc-archiver.toml");
    let t = &p.table;
    std::fs::write(
        &path,
        format!(
            r#"database_url = "{pg}"
brokers = "{brokers}"

[pg_changefeed]
slot_name = "{slot}"
resolved_interval = "300ms"
poll_interval = "100ms"
tables = [{{ name = "public.{t}", topic = "{topic}", filter_column = "archived" }}]

[sink]
group_id = "{group}"
topics = [{{ name = "{topic}", table = "{t}" }}]
flush_rows = 2000
flush_age = "300ms"
resolved_checkpoint_interval = "300ms"
group_check_interval = "1s"
{sink_extra}
[sink.storage]
url = "{url}"

[[marker]]
table = "public.{t}"
cutoff = {{ column = "created", older_than = "5 days" }}
batch_size = 500
{marker_extra}

[purger]
table = "public.{t}"
batch_size = 500
[purger.storage]
url = "{url}"

[run]
wait_timeout = "150s"
poll_interval = "200ms"
"#,
            pg = cdc_tests::pg_url(),
            brokers = cdc_tests::kafka_brokers(),
            slot = p.feed_cfg.slot_name,
            topic = p.sink_cfg.topics[0].name,
            group = p.sink_cfg.group_id,
            url = p.archive.url,
        ),
    )
    .unwrap();
    path
}

/// `old` rows past the cutoff and `recent` ones that are not.
async fn fill(p: &Pipeline, old: i64, recent: i64) {
    p.client
        .batch_execute(&format!(
            "INSERT INTO {t} (id, created, amount, note)
             SELECT g, current_date - 30, g / 100.0, 'old ' || g FROM generate_series(1, {old}) g;
             INSERT INTO {t} (id, created, amount, note)
             SELECT g, current_date, g / 100.0, 'new ' || g FROM generate_series({old} + 1, {old} + {recent}) g",
            t = p.qt
        ))
        .await
        .unwrap();
}

async fn wait_for_slot(p: &Pipeline, feed: &Proc) {
    let slot = p.feed_cfg.slot_name.clone();
    let start = Instant::now();
    loop {
        let n: i64 = p
            .client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no replication slot; changefeed log:\n{}",
            feed.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("the run's --report-json"))
        .expect("a JSON report")
}

/// A `run` whose sink is killed (SIGKILL) while it waits, and whose
/// changefeed is killed too: a new sink started two seconds later gets
/// the partitions within the session timeout (plus a margin), archiving
/// resumes, and the run ends Success with every old row deleted and
/// archived exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_killed_mid_run_is_replaced_and_the_run_completes() {
    const OLD: i64 = 20_000;
    const RECENT: i64 = 2_000;
    let p = Pipeline::create("sk_kill", TABLE, 3, 2_000).await;
    fill(&p, OLD, RECENT).await;
    let witness = p.witness_deletes().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &p,
        dir.path(),
        "session_timeout = \"6s\"",
        "max_rows_per_second = 4000",
    );
    let logs = dir.path();
    let feed = Proc::start(&config, &["pg-changefeed"], &logs.join("feed.log"));
    wait_for_slot(&p, &feed).await;
    let sink_a = Proc::start(&config, &["sink"], &logs.join("sink-a.log"));
    let report = logs.join("run.json");
    let mut run = Proc::start(
        &config,
        &["run", "--report-json", report.to_str().unwrap()],
        &logs.join("run.log"),
    );

    // Mid-run: some rows marked and archived, many not yet.
    let start = Instant::now();
    while p.count("archived").await < 3_000 {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing marked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sink_a.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sink_b = Proc::start(&config, &["sink"], &logs.join("sink-b.log"));
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    feed.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let feed = Proc::start(&config, &["pg-changefeed"], &logs.join("feed.log"));

    // The new sink holds every partition within the session timeout plus
    // a margin (the killed member is expired by then).
    loop {
        let g = p.group();
        if g.members.len() == 1 && g.unassigned().is_empty() {
            eprintln!(
                "the new sink held all partitions {:.1}s after it started",
                restarted.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(6 + 20),
            "the restarted sink does not hold every partition: {}; its log:\n{}",
            g.summary(),
            sink_b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let status = run.wait(Duration::from_secs(240));
    let r = run_report(&report);
    assert_eq!(
        (status.code(), r["outcome"].as_str()),
        (Some(0), Some("success")),
        "report: {r:#}\nrun log:\n{}\nsink log:\n{}",
        run.log_text(),
        sink_b.log_text()
    );
    assert_eq!(p.count("created < current_date - 5").await, 0);
    assert_eq!(p.count("true").await, RECENT);
    assert_eq!(
        p.deleted_rows_are_archived_exactly(&witness, COLUMNS).await,
        OLD as usize
    );
    assert!(sink_b.term().success());
    assert!(feed.term().success());
    p.stop().await;
}

/// With `instance_id` (static membership), a sink killed and started again
/// under the same name takes its place in the group at once: long before
/// the session timeout (30 s here) that a new dynamic member would wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_static_member_restarted_takes_its_place_at_once() {
    let p = Pipeline::create("sk_static", TABLE, 3, 2_000).await;
    fill(&p, 500, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &p,
        dir.path(),
        "session_timeout = \"30s\"\ninstance_id = \"archiver-0\"",
        "",
    );
    let sink = Proc::start(&config, &["sink"], &dir.path().join("sink-1.log"));
    let start = Instant::now();
    while !(p.group().members.len() == 1 && p.group().unassigned().is_empty()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "first sink never joined"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let member = p.group().members[0].member_id.clone();
    sink.kill9();
    let sink = Proc::start(&config, &["sink"], &dir.path().join("sink-2.log"));
    let restarted = Instant::now();
    loop {
        let g = p.group();
        // The new process has its own member id in the old place.
        if g.members.len() == 1 && g.members[0].member_id != member && g.unassigned().is_empty() {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "the restarted static member is not back before its session timeout: {}\n{}",
            g.summary(),
            sink.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "static member back with every partition after {:.1}s",
        restarted.elapsed().as_secs_f64()
    );
    // And it consumes them: each partition resumed after its chain.
    while sink
        .log_text()
        .matches("partition resumed after its chain")
        .count()
        < 3
    {
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "the restarted member does not consume its partitions:
{}",
            sink.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sink.kill9();
    p.stop().await;
}

/// Two sinks in one group, one killed: the survivor gets its partitions and
/// archives what arrives after the kill, each chain without gap or overlap.
/// (Both use the default metrics address: the second one must start too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sinks_one_killed_the_survivor_takes_its_partitions() {
    let mut p = Pipeline::create("sk_two", TABLE, 4, 500).await;
    fill(&p, 4_000, 0).await;
    p.start_feed().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&p, dir.path(), "session_timeout = \"6s\"", "");
    let a = Proc::start(&config, &["sink"], &dir.path().join("sink-a.log"));
    let b = Proc::start(&config, &["sink"], &dir.path().join("sink-b.log"));
    let start = Instant::now();
    loop {
        let g = p.group();
        if g.members.len() == 2
            && g.members.iter().all(|m| !m.assigned.is_empty())
            && g.unassigned().is_empty()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "two sinks never shared the partitions: {}",
            g.summary()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Half the rows archived with both sinks up, then one dies.
    p.client
        .batch_execute(&format!(
            "UPDATE {t} SET archived = true WHERE id <= 2000",
            t = p.qt
        ))
        .await
        .unwrap();
    p.wait_archived(p.db_now().await).await;
    a.kill9();
    let killed = Instant::now();
    p.client
        .batch_execute(&format!(
            "UPDATE {t} SET archived = true, note = 'after the kill' WHERE id > 2000",
            t = p.qt
        ))
        .await
        .unwrap();
    p.wait_archived(p.db_now().await).await;
    eprintln!(
        "archive caught up {:.1}s after one of two sinks was killed",
        killed.elapsed().as_secs_f64()
    );
    let g = p.group();
    assert_eq!(
        (g.members.len(), g.unassigned().len()),
        (1, 0),
        "{}",
        g.summary()
    );
    // Every chain verifies (contiguous) and every row's last version is
    // archived: the rows updated after the kill with their new note.
    for part in 0..4 {
        cdc_checkpoint::read_chain(&p.archive, &p.table, part)
            .await
            .expect("a contiguous chain");
    }
    let archived = p.archived_text(&["id", "note", "archived"]).await;
    for id in 2001..=4000 {
        assert!(
            archived.contains(&vec![
                Some(id.to_string()),
                Some("after the kill".into()),
                Some("true".into())
            ]),
            "row {id} updated after the kill is not archived"
        );
    }
    // Both sinks started with the default metrics address: the second one
    // (at least) served its metrics on a free port instead of failing.
    let logs = [dir.path().join("sink-a.log"), dir.path().join("sink-b.log")]
        .map(|l| std::fs::read_to_string(l).unwrap());
    assert!(
        logs.iter()
            .any(|l| l.contains("serving on a free port instead")),
        "{logs:?}"
    );
    assert!(b.term().success());
    p.stop().await;
}

/// A group whose members leave the sink's topic unconsumed: `check` fails
/// naming the partitions, and a `run` that waits in vain reports, per
/// partition, that no member consumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unconsumed_partitions_are_reported_by_check_and_run() {
    let p = Pipeline::create("sk_none", TABLE, 2, 500).await;
    fill(&p, 50, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&p, dir.path(), "", "");

    // No sink at all: a warning, not a failure (nothing started yet).
    let out = Command::new(env!("CARGO_BIN_EXE_cdc-archiver"))
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("group     WARN") && l.contains("no sink is running")),
        "{text}"
    );

    // A member of the group that consumes another topic only: the group is
    // stable, and nobody consumes the sink's topic.
    let other = cdc_tests::unique("sk_none_other");
    cdc_tests::create_topic(&other, 1).await;
    let stray: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .set("group.id", &p.sink_cfg.group_id)
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    stray.subscribe(&[&other]).unwrap();
    let topic = &p.sink_cfg.topics[0].name;
    let start = Instant::now();
    let text = loop {
        let _ = stray.poll(Duration::from_millis(100));
        let out = Command::new(env!("CARGO_BIN_EXE_cdc-archiver"))
            .arg("--config")
            .arg(&config)
            .arg("check")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "check never failed: {text}"
        );
    };
    assert!(
        text.lines().any(|l| l.starts_with("group     FAIL")
            && l.contains(&format!("consumed by no member: {topic}/0, {topic}/1"))),
        "{text}"
    );

    // A run with the changefeed up but no sink of the topic: partial, and
    // the report names each partition and says that nobody consumes it.
    let feed = Proc::start(&config, &["pg-changefeed"], &dir.path().join("feed.log"));
    wait_for_slot(&p, &feed).await;
    let report = dir.path().join("run.json");
    let mut run = Proc::start(
        &config,
        &[
            "run",
            "--wait-timeout",
            "4s",
            "--report-json",
            report.to_str().unwrap(),
        ],
        &dir.path().join("run.log"),
    );
    // Keep the stray member alive (polling) while the run waits.
    let status = loop {
        let _ = stray.poll(Duration::from_millis(100));
        if let Some(s) = run.child.try_wait().unwrap() {
            break s;
        }
    };
    assert_eq!(status.code(), Some(3), "{}", run.log_text());
    let r = run_report(&report);
    let behind = r["tables"][0]["wait"]["behind"].as_array().expect("behind");
    assert_eq!(behind.len(), 2, "{r:#}");
    for (i, b) in behind.iter().enumerate() {
        assert_eq!(b["partition"], i as i64);
        assert!(
            b["consumer"]
                .as_str()
                .unwrap()
                .contains(&format!("NO member of group {}", p.sink_cfg.group_id)),
            "{b}"
        );
    }
    assert!(r["tables"][0]["error"]
        .as_str()
        .unwrap()
        .contains("consumed by NO member"));
    assert!(feed.term().success());
    p.stop().await;
}
