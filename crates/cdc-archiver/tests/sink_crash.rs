//! Crash tests of `cdc-archiver sink`: the real binary aborts (as abruptly
//! as `kill -9`, via the `CDC_SINK_CRASH_AT` test hook) at each durability
//! step, then restarts. The chain must have no gap and no overlap, and
//! every archivable event must be in exactly one checkpointed segment.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use cdc_common::storage::{ArchiveStore, StorageConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const PER_PARTITION: i64 = 200;

/// Offsets (per partition) of the events that must be archived.
async fn produce(topic: &str) -> Vec<Vec<i64>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .create()
        .expect("producer");
    let mut archivable = vec![Vec::new(), Vec::new()];
    for p in 0..2i32 {
        for i in 0..PER_PARTITION {
            let (key, value) = if i % 40 == 39 {
                (
                    None,
                    format!(
                        r#"{{"resolved":"{}.0000000000"}}"#,
                        1_700_000_000_000_000_000i64 + i
                    ),
                )
            } else {
                let archived = i % 7 != 3;
                if archived {
                    archivable[p as usize].push(i);
                }
                (
                    Some(format!("[{p}, {i}]")),
                    format!(
                        r#"{{"after": {{"amount": {i}.50, "archived": {archived}, "id": {i}, "p": {p}}}, "updated": "{}.0000000000"}}"#,
                        1_700_000_000_000_000_000i64 + i
                    ),
                )
            };
            let mut rec: FutureRecord<'_, str, str> =
                FutureRecord::to(topic).partition(p).payload(&value);
            if let Some(k) = &key {
                rec = rec.key(k.as_str());
            }
            let d = producer
                .send(rec, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
            assert_eq!(d.offset, i);
        }
    }
    archivable
}

fn write_config(dir: &Path, topic: &str, group: &str) -> std::path::PathBuf {
    write_sink_config(
        dir,
        "sink.toml",
        topic,
        group,
        "flush_rows = 50\nflush_age = \"300ms\"\nmultipart_threshold = 1\nmultipart_part_size = 512\n\
         metrics_addr = \"127.0.0.1:0\"",
        "",
    )
}

/// A sink config file `name` in `dir` (archive: `dir/archive`), with
/// `settings` (TOML lines of the `[sink]` section) and `kafka` (lines of
/// `[sink.kafka]`).
fn write_sink_config(
    dir: &Path,
    name: &str,
    topic: &str,
    group: &str,
    settings: &str,
    kafka: &str,
) -> std::path::PathBuf {
    let archive = dir.join("archive");
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            r#"brokers = "{brokers}"
[sink]
group_id = "{group}"
orphan_grace = "0s"
{settings}
[[sink.topics]]
name = "{topic}"
[sink.storage]
url = "file://{archive}"
[sink.kafka]
{kafka}
"#,
            brokers = cdc_tests::kafka_brokers(),
            archive = archive.display()
        ),
    )
    .unwrap();
    path
}

fn sink(config: &Path, crash_at: Option<&str>, args: &[&str], log: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-archiver"));
    cmd.arg("--config")
        .arg(config)
        .args(["--log-format", "text", "sink"])
        .args(args);
    cmd.env_remove("CDC_SINK_CRASH_AT");
    if let Some(c) = crash_at {
        cmd.env("CDC_SINK_CRASH_AT", c);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stderr(log.try_clone().unwrap())
        .stdout(std::process::Stdio::piped());
    cmd.spawn().expect("start cdc-archiver sink")
}

async fn wait_exit(child: &mut Child, what: &str, log: &Path) -> ExitStatus {
    for _ in 0..600 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!(
        "{what} did not exit; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn high_watermark(topic: &str, p: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .create()
        .unwrap();
    c.fetch_watermarks(topic, p, Duration::from_secs(10))
        .unwrap()
        .1
}

async fn chain_ends(store: &ArchiveStore, table: &str) -> Vec<Option<i64>> {
    let mut ends = Vec::new();
    for p in 0..2 {
        ends.push(
            cdc_checkpoint::read_chain(store, table, p)
                .await
                .expect("chain verifies")
                .end(),
        );
    }
    ends
}

async fn crash_then_restart(step: &str) {
    let topic = cdc_tests::unique("sinkcrash");
    cdc_tests::create_topic(&topic, 2).await;
    let archivable = produce(&topic).await;
    assert_eq!(high_watermark(&topic, 0), PER_PARTITION);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &topic, &cdc_tests::unique("crashgrp"));
    let log = dir.path().join("sink.log");
    let store = ArchiveStore::open(&StorageConfig {
        url: format!("file://{}", dir.path().join("archive").display()),
        ..Default::default()
    })
    .unwrap();

    // 1. Crash at the step.
    let mut child = sink(&config, Some(step), &[], &log);
    let status = wait_exit(&mut child, "crashing sink", &log).await;
    assert!(
        !status.success() && status.code().is_none(),
        "expected an abort at {step}, got {status:?}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("CDC_SINK_CRASH_AT reached"), "{log_text}");
    let after_crash = chain_ends(&store, &topic).await;

    let orphan_step = step.starts_with("after_segment_upload");
    if orphan_step {
        // The uploaded segment has no checkpoint: an orphan, listed. It lies
        // beyond the chain end (for all the cleaner knows, its sink is about
        // to write the checkpoint), so --clean keeps it, whatever its age.
        let out = sink(&config, None, &["orphans"], &log)
            .wait_with_output()
            .unwrap();
        assert!(out.status.success());
        let listed = String::from_utf8(out.stdout).unwrap();
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with("orphan\t") && l.ends_with("\tbeyond_chain_end")),
            "no orphan listed beyond the chain end: {listed:?}"
        );
        let out = sink(&config, None, &["orphans", "--clean"], &log)
            .wait_with_output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "");
    }

    // 2. Restart, let it finish, stop it with SIGTERM.
    let mut child = sink(&config, None, &[], &log);
    for _ in 0..600 {
        if chain_ends(&store, &topic).await == vec![Some(PER_PARTITION - 1); 2] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut child, "restarted sink", &log).await;
    assert!(
        status.success(),
        "restarted sink exited with {status:?}; log:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );

    if orphan_step {
        // The restart's chain now covers the orphan's offsets: cleaned.
        let out = sink(&config, None, &["orphans", "--clean"], &log)
            .wait_with_output()
            .unwrap();
        assert!(String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .any(|l| l.starts_with("deleted\t")));
        let out = sink(&config, None, &["orphans"], &log)
            .wait_with_output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "");
    }

    // 3. No gap, no overlap; every archivable event in exactly one segment.
    for p in 0..2i32 {
        let chain = cdc_checkpoint::read_chain(&store, &topic, p)
            .await
            .expect("chain verifies");
        assert_eq!(
            (chain.start(), chain.end()),
            (Some(0), Some(PER_PARTITION - 1)),
            "p{p} after {step}"
        );
        let mut offsets = Vec::new();
        let mut events = 0;
        for c in &chain.checkpoints {
            events += c.counts.events;
            if let Some(seg) = &c.segment {
                let bytes = cdc_checkpoint::verify_segment(&store, seg)
                    .await
                    .expect("segment verifies");
                for r in cdc_segment::decode_segment(&bytes).unwrap().rows {
                    assert!((c.first_offset..=c.last_offset).contains(&r.meta.offset));
                    assert_eq!(
                        r.columns[0],
                        (
                            "amount".to_owned(),
                            cdc_changefeed::Value::Number(format!("{}.50", r.meta.offset))
                        )
                    );
                    offsets.push(r.meta.offset);
                }
            }
        }
        assert_eq!(
            events, PER_PARTITION as u64,
            "p{p}: every offset counted once"
        );
        assert_eq!(
            offsets, archivable[p as usize],
            "p{p} after {step}: each archivable event exactly once, in order"
        );
    }
    // The crash left the chain where it was; the restart continued it.
    assert!(
        after_crash
            .iter()
            .all(|e| e.is_none_or(|e| e < PER_PARTITION - 1)),
        "{after_crash:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_segment_upload() {
    crash_then_restart("after_segment_upload:2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_checkpoint_before_commit() {
    crash_then_restart("after_checkpoint:2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_upload() {
    crash_then_restart("mid_upload:2").await;
}

// ---------------------------------------------------------------------
// SIGTERM drains; a stalled sink is a zombie whose checkpoints are refused.

const BASE: i64 = 1_760_000_000_000_000_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sample of the sink's Prometheus endpoint: the line starting with
/// `name{` that contains every label (0 when absent or unreachable).
fn sample(port: u16, name: &str, labels: &[&str]) -> f64 {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Produces `(partition, key, value)` one record per request, awaiting
/// each (the local broker cannot fetch from inside a multi-record batch);
/// returns the offsets.
async fn produce_values(topic: &str, records: &[(i32, Option<String>, String)]) -> Vec<i64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let mut offsets = Vec::new();
    for (p, key, value) in records {
        let mut rec: FutureRecord<'_, str, str> =
            FutureRecord::to(topic).partition(*p).payload(value);
        if let Some(k) = key {
            rec = rec.key(k.as_str());
        }
        let d = producer
            .send(rec, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        offsets.push(d.offset);
    }
    offsets
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig}");
}

/// The group's committed offset of each partition (`None`: nothing committed).
fn committed(group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("OffsetFetch");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    log: &Path,
    mut f: impl FnMut() -> F,
) {
    for _ in 0..900 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out: {what}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn archive_store(dir: &Path) -> ArchiveStore {
    ArchiveStore::open(&StorageConfig {
        url: format!("file://{}", dir.join("archive").display()),
        ..Default::default()
    })
    .unwrap()
}

/// Every row of a chain's segments and every delete of its delete files,
/// each verified against its checkpoint.
async fn chain_contents(
    store: &ArchiveStore,
    chain: &cdc_checkpoint::Chain,
) -> (Vec<cdc_segment::ArchivedRow>, Vec<cdc_segment::DeletedRow>) {
    let (mut rows, mut deletes) = (Vec::new(), Vec::new());
    for c in &chain.checkpoints {
        if let Some(seg) = &c.segment {
            let bytes = cdc_checkpoint::verify_segment(store, seg).await.unwrap();
            let decoded = cdc_segment::decode_segment(&bytes).unwrap();
            assert!(decoded
                .rows
                .iter()
                .all(|r| (c.first_offset..=c.last_offset).contains(&r.meta.offset)));
            rows.extend(decoded.rows);
        }
        if let Some(d) = &c.deletes {
            let bytes = cdc_checkpoint::verify_deletes(store, d).await.unwrap();
            let decoded = cdc_segment::decode_deletes(&bytes).unwrap();
            assert_eq!(decoded.deletes.len() as u64, c.counts.deletes);
            deletes.extend(decoded.deletes);
        }
        assert_eq!(c.counts.events, (c.last_offset - c.first_offset + 1) as u64);
    }
    (rows, deletes)
}

/// A PostgreSQL changefeed row event (as pg-changefeed writes it). Each
/// transaction commits at its own, increasing LSN (`0/<xid in hex>`).
fn pg_row(key: i64, xid: u64, updated: i64, archived: bool, version: i64) -> String {
    format!(
        r#"{{"after": {{"archived": {archived}, "id": {key}, "version": {version}}}, "before": null, "pg_lsn": "0/{xid:X}", "pg_xid": "{xid}", "updated": "{}.0000000000"}}"#,
        BASE + updated
    )
}

fn resolved(at: i64) -> String {
    format!(r#"{{"resolved": "{}.0000000000"}}"#, BASE + at)
}

/// SIGTERM with `flush_age`/`flush_rows` that would never flush on their
/// own: the real binary stops consuming, checkpoints everything it
/// buffered (except a PostgreSQL transaction not yet proven complete,
/// held back by design), commits the offsets and exits 0. The next run
/// re-reads the held-back transaction from the chain's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_everything_buffered_and_commits() {
    let topic = cdc_tests::unique("sinkterm");
    cdc_tests::create_topic(&topic, 2).await;
    // Partition 0: CockroachDB events (rows, unmarked rows, deletes of
    // archived rows with `diff`). No resolved messages: a partition whose
    // resolved timestamp advanced gets its first checkpoint at once.
    let mut p0 = Vec::new();
    let (mut archivable0, mut deleted0) = (Vec::new(), Vec::new());
    for i in 0..24i64 {
        let t = BASE + i;
        let (key, value) = match i % 6 {
            5 => {
                deleted0.push(i);
                (
                    Some(format!("[{}]", i - 1)),
                    format!(
                        r#"{{"after": null, "before": {{"amount": {}.50, "archived": true, "id": {}}}, "mvcc_timestamp": "{t}.0000000000", "updated": "{t}.0000000000"}}"#,
                        i - 1,
                        i - 1
                    ),
                )
            }
            2 => (
                Some(format!("[{i}]")),
                format!(
                    r#"{{"after": {{"amount": {i}.50, "archived": false, "id": {i}}}, "mvcc_timestamp": "{t}.0000000000", "updated": "{t}.0000000000"}}"#
                ),
            ),
            _ => {
                archivable0.push(i);
                (
                    Some(format!("[{i}]")),
                    format!(
                        r#"{{"after": {{"amount": {i}.50, "archived": true, "id": {i}}}, "mvcc_timestamp": "{t}.0000000000", "updated": "{t}.0000000000"}}"#
                    ),
                )
            }
        };
        p0.push((0, key, value));
    }
    // Partition 1: PostgreSQL transactions (502 proves 501 complete); the
    // last one, 502, has no proof of completeness yet.
    let k = |n: i64| Some(format!("[{n}]"));
    let p1 = vec![
        (1, k(1), pg_row(1, 500, 1, true, 0)),
        (1, k(1), pg_row(1, 500, 1, true, 1)),
        (1, k(2), pg_row(2, 501, 2, true, 2)),
        (1, k(3), pg_row(3, 501, 2, false, 3)),
        (
            1,
            k(1),
            format!(
                r#"{{"after": null, "before": {{"archived": true, "id": 1, "version": 1}}, "pg_lsn": "0/1F5", "pg_xid": "501", "updated": "{}.0000000000"}}"#,
                BASE + 2
            ),
        ),
        (1, k(4), pg_row(4, 502, 3, true, 5)),
        (1, k(4), pg_row(4, 502, 3, true, 6)),
    ];
    let mut all = p0.clone();
    all.extend(p1.clone());
    produce_values(&topic, &all).await;
    let total = all.len() as f64;

    let dir = tempfile::tempdir().unwrap();
    let group = cdc_tests::unique("termgrp");
    let port = free_port();
    let config = write_sink_config(
        dir.path(),
        "sink.toml",
        &topic,
        &group,
        &format!(
            "flush_rows = 1000000\nflush_age = \"1h\"\nresolved_checkpoint_interval = \"1h\"\n\
             metrics_addr = \"127.0.0.1:{port}\""
        ),
        "",
    );
    let log = dir.path().join("sink.log");
    let store = archive_store(dir.path());
    let mut child = sink(&config, None, &[], &log);
    let table = format!("table=\"{topic}\"");
    wait_until("every event consumed", &log, || async {
        sample(port, "cdc_sink_events_total", &[&table]) >= total
    })
    .await;
    // Several ticks: nothing is flushed on its own, nothing committed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(chain_ends(&store, &topic).await, vec![None, None]);
    assert_eq!(committed(&group, &topic, 2), vec![None, None]);

    signal(&child, "-TERM");
    let status = wait_exit(&mut child, "sink after SIGTERM", &log).await;
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}; log:\n{log_text}");
    assert!(
        log_text.contains("not checkpointing the events of a PostgreSQL transaction"),
        "{log_text}"
    );
    // Everything consumed is checkpointed, except transaction 502 (p1
    // offsets 5, 6); the offsets after the chains' ends are committed.
    assert_eq!(chain_ends(&store, &topic).await, vec![Some(23), Some(4)]);
    assert_eq!(committed(&group, &topic, 2), vec![Some(24), Some(5)]);
    let c0 = cdc_checkpoint::read_chain(&store, &topic, 0).await.unwrap();
    let (rows, deletes) = chain_contents(&store, &c0).await;
    assert_eq!(
        rows.iter().map(|r| r.meta.offset).collect::<Vec<_>>(),
        archivable0
    );
    for r in &rows {
        assert_eq!(
            r.columns[0].1,
            cdc_changefeed::Value::Number(format!("{}.50", r.meta.offset))
        );
    }
    assert_eq!(
        deletes.iter().map(|d| d.meta.offset).collect::<Vec<_>>(),
        deleted0
    );
    assert!(deletes.iter().all(|d| d.before.is_some()));
    let c1 = cdc_checkpoint::read_chain(&store, &topic, 1).await.unwrap();
    let (rows, deletes) = chain_contents(&store, &c1).await;
    let xids: Vec<(i64, Option<u64>)> = rows
        .iter()
        .map(|r| (r.meta.offset, r.meta.pg_xid))
        .collect();
    assert_eq!(xids, vec![(0, Some(500)), (1, Some(500)), (2, Some(501))]);
    assert_eq!(
        deletes
            .iter()
            .map(|d| (d.meta.offset, d.meta.pg_xid))
            .collect::<Vec<_>>(),
        vec![(4, Some(501))]
    );

    // The proof of 502 arrives; the next run re-reads it from the chain
    // end, and SIGTERM checkpoints it whole.
    produce_values(&topic, &[(1, None, resolved(3))]).await;
    let mut child = sink(&config, None, &[], &log);
    wait_until("the held-back transaction is consumed", &log, || async {
        sample(port, "cdc_sink_events_total", &[&table]) >= 3.0
    })
    .await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, "second sink after SIGTERM", &log).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(chain_ends(&store, &topic).await, vec![Some(23), Some(7)]);
    assert_eq!(committed(&group, &topic, 2), vec![Some(24), Some(8)]);
    let c1 = cdc_checkpoint::read_chain(&store, &topic, 1).await.unwrap();
    let (rows, _) = chain_contents(&store, &c1).await;
    let xids: Vec<(i64, Option<u64>)> = rows
        .iter()
        .map(|r| (r.meta.offset, r.meta.pg_xid))
        .collect();
    assert_eq!(
        xids,
        vec![
            (0, Some(500)),
            (1, Some(500)),
            (2, Some(501)),
            (5, Some(502)),
            (6, Some(502))
        ]
    );
}

/// A true zombie: sink A holds buffered events of both partitions when it
/// stalls (SIGSTOP: no poll, no heartbeat). The group evicts it, sink B
/// takes both partitions and extends their chains. When A resumes, its age
/// flush runs before it hears of the eviction: each of its checkpoint
/// creates must fail (conditional create: B's checkpoint is there), and A
/// must abandon that buffered work and reload the chain. In the end both
/// sinks share the partitions, every chain covers every offset once, and
/// every archivable event is in exactly one checkpointed segment. A's
/// rejected segments are orphans the chain covers, and are cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_is_a_zombie_whose_checkpoints_are_refused() {
    const PER: i64 = 40;
    let topic = cdc_tests::unique("zombie");
    cdc_tests::create_topic(&topic, 2).await;
    let batch = |range: std::ops::Range<i64>| -> Vec<(i32, Option<String>, String)> {
        (0..2)
            .flat_map(|p| range.clone().map(move |i| (p, i)))
            .map(|(p, i)| {
                let archived = i % 4 != 1;
                (
                    p,
                    Some(format!("[{p}, {i}]")),
                    format!(
                        r#"{{"after": {{"amount": {i}.50, "archived": {archived}, "id": {i}, "p": {p}}}, "mvcc_timestamp": "{t}.0000000000", "updated": "{t}.0000000000"}}"#,
                        t = BASE + i
                    ),
                )
            })
            .collect()
    };
    let archivable: Vec<i64> = (0..2 * PER).filter(|i| i % 4 != 1).collect();
    produce_values(&topic, &batch(0..PER)).await;

    let dir = tempfile::tempdir().unwrap();
    let group = cdc_tests::unique("zombiegrp");
    // Short sessions so the group evicts the stalled member quickly.
    let kafka = "\"heartbeat.interval.ms\" = \"500\"";
    let (port_a, port_b) = (free_port(), free_port());
    let config_a = write_sink_config(
        dir.path(),
        "sink-a.toml",
        &topic,
        &group,
        &format!(
            "writer_id = \"sink-a\"\nflush_rows = 1000000\nflush_age = \"15s\"\nsession_timeout = \"6s\"\n\
             resolved_checkpoint_interval = \"1h\"\nmetrics_addr = \"127.0.0.1:{port_a}\""
        ),
        kafka,
    );
    let config_b = write_sink_config(
        dir.path(),
        "sink-b.toml",
        &topic,
        &group,
        &format!(
            "writer_id = \"sink-b\"\nflush_rows = 10\nflush_age = \"300ms\"\nsession_timeout = \"6s\"\n\
             metrics_addr = \"127.0.0.1:{port_b}\""
        ),
        kafka,
    );
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let store = archive_store(dir.path());
    let table = format!("table=\"{topic}\"");

    // 1. A buffers the first batch of both partitions, checkpoints nothing.
    let mut a = sink(&config_a, None, &[], &log_a);
    wait_until("A buffers both partitions", &log_a, || async {
        sample(port_a, "cdc_sink_events_total", &[&table]) >= (2 * PER) as f64
    })
    .await;
    let buffered_at = tokio::time::Instant::now();
    assert_eq!(chain_ends(&store, &topic).await, vec![None, None]);

    // 2. A stalls; B joins, the group evicts A, B archives both partitions.
    signal(&a, "-STOP");
    let mut b = sink(&config_b, None, &[], &log_b);
    wait_until("B archives both partitions", &log_b, || async {
        chain_ends(&store, &topic).await == vec![Some(PER - 1); 2]
    })
    .await;
    for p in 0..2 {
        let chain = cdc_checkpoint::read_chain(&store, &topic, p).await.unwrap();
        assert!(chain.checkpoints.iter().all(|c| c.writer_id == "sink-b"));
    }
    // A's buffers are now older than its flush_age.
    tokio::time::sleep_until(buffered_at + Duration::from_secs(17)).await;

    // 3. A resumes: its first tick flushes what it holds, as the owner it
    // still believes it is. Both creates conflict; the work is abandoned.
    signal(&a, "-CONT");
    wait_until("A's two checkpoint creates are refused", &log_a, || async {
        sample(port_a, "cdc_sink_conflicts_total", &[&table]) >= 2.0
    })
    .await;
    let log_text = std::fs::read_to_string(&log_a).unwrap();
    assert_eq!(
        log_text
            .matches("another sink extended this chain first")
            .count(),
        2,
        "{log_text}"
    );
    for p in 0..2 {
        let chain = cdc_checkpoint::read_chain(&store, &topic, p).await.unwrap();
        assert!(
            chain.checkpoints.iter().all(|c| c.writer_id == "sink-b"),
            "the zombie added nothing to p{p}'s chain"
        );
    }

    // 4. A rejoins the group; more data; both sinks share the partitions.
    produce_values(&topic, &batch(PER..2 * PER)).await;
    wait_until("everything archived", &log_b, || async {
        chain_ends(&store, &topic).await == vec![Some(2 * PER - 1); 2]
    })
    .await;
    signal(&a, "-TERM");
    signal(&b, "-TERM");
    for (child, log, what) in [(&mut a, &log_a, "sink A"), (&mut b, &log_b, "sink B")] {
        let status = wait_exit(child, what, log).await;
        assert!(
            status.success(),
            "{what}: {status:?}; log:\n{}",
            std::fs::read_to_string(log).unwrap()
        );
    }

    // 5. No gap, no overlap, each offset counted once; every archivable
    // event in exactly one checkpointed segment, in order.
    for p in 0..2 {
        let chain = cdc_checkpoint::read_chain(&store, &topic, p)
            .await
            .expect("chain verifies");
        assert_eq!((chain.start(), chain.end()), (Some(0), Some(2 * PER - 1)));
        let (rows, _) = chain_contents(&store, &chain).await;
        assert_eq!(
            rows.iter().map(|r| r.meta.offset).collect::<Vec<_>>(),
            archivable,
            "p{p}"
        );
        let first = &chain.checkpoints[0];
        assert_eq!(
            (first.first_offset, first.writer_id.as_str()),
            (0, "sink-b")
        );
    }
    // A's refused uploads: orphans inside the chain, which --clean deletes.
    let out = sink(&config_a, None, &["orphans"], &log_a)
        .wait_with_output()
        .unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    let orphans: Vec<&str> = listed.lines().collect();
    assert_eq!(orphans.len(), 2, "{listed}");
    assert!(orphans.iter().all(|l| l.ends_with("\tcovered")), "{listed}");
    let out = sink(&config_a, None, &["orphans", "--clean"], &log_a)
        .wait_with_output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
}
