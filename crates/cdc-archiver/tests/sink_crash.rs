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
    let archive = dir.join("archive");
    let path = dir.join("sink.toml");
    std::fs::write(
        &path,
        format!(
            r#"brokers = "{brokers}"
[sink]
group_id = "{group}"
flush_rows = 50
flush_age = "300ms"
multipart_threshold = 1
multipart_part_size = 512
metrics_addr = "127.0.0.1:0"
orphan_grace = "0s"
[[sink.topics]]
name = "{topic}"
[sink.storage]
url = "file://{archive}"
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
                    assert!((c.first_offset..=c.last_offset).contains(&r.offset));
                    assert_eq!(
                        r.columns[0],
                        (
                            "amount".to_owned(),
                            cdc_changefeed::Value::Number(format!("{}.50", r.offset))
                        )
                    );
                    offsets.push(r.offset);
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
