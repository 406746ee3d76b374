//! Sink throughput against a baseline measured in the same run, on the
//! same pre-filled topic:
//!
//! - baseline: an rdkafka `StreamConsumer` (own group) that reads every
//!   message and discards it;
//! - sink: `cdc_sink::run` (own group) until every partition's checkpoint
//!   chain ends at Kafka's last offset: decoding, Avro + zstd encoding,
//!   uploads to a local file system archive and checkpoints included.
//!
//! Target: sink events/s >= 0.50 x baseline events/s, and the sink's peak
//! resident memory (VmHWM) under 256 MB. Each phase runs in a fresh child
//! process (this bench binary re-executed with `CDC_BENCH_ROLE`), so the
//! sink's VmHWM is that of a process that only ran the sink (as
//! `cdc-archiver sink` does), not of the producer or the baseline; the
//! parent also polls the child's `/proc/<pid>/status` while it runs.
//! Prints a summary and writes `target/bench/sink.json`. Not part of
//! `cargo test`; run with `cargo bench -p cdc-sink` against the local
//! stack. `CDC_BENCH_EVENTS` (default 1 000 000) and `CDC_BENCH_PARTITIONS`
//! (default 4) change the size.

use std::time::{Duration, Instant};

use cdc_common::storage::{ArchiveStore, StorageConfig};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

const TARGET_RATIO: f64 = 0.50;
const MEMORY_LIMIT_MB: f64 = 256.0;

fn env_num(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm(field: &str) -> f64 {
    vm_of("self", field)
}

/// A `/proc/<pid>/status` memory field in MB (0 if unreadable).
fn vm_of(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn value(i: i64) -> String {
    format!(
        r#"{{"after": {{"amount": {}.{:02}, "archived": true, "booking_date": "2025-06-{:02}", "currency": "EUR", "id": "8a1f5c3e-2b7d-4e41-9c0a-{:012x}", "reference": "INV-2025-{i:08}"}}, "updated": "{}.0000000000"}}"#,
        i % 100_000,
        i % 100,
        1 + i % 28,
        i,
        1_750_000_000_000_000_000i64 + i
    )
}

async fn fill(topic: &str, partitions: i32, events: i64) -> u64 {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.kbytes", "65536")
        .create()
        .expect("producer");
    let mut bytes = 0u64;
    let sends = futures::stream::iter(0..events).map(|i| {
        let producer = &producer;
        let v = value(i);
        let k = format!(r#"["2025-06-10", "{i}"]"#);
        let len = (v.len() + k.len()) as u64;
        async move {
            let rec = FutureRecord::to(topic)
                .partition((i % i64::from(partitions)) as i32)
                .key(&k)
                .payload(&v);
            producer
                .send(rec, Duration::from_secs(60))
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
            len
        }
    });
    let mut s = sends.buffer_unordered(20_000);
    while let Some(len) = s.next().await {
        bytes += len;
    }
    bytes
}

async fn baseline(topic: &str, events: i64) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .set("group.id", cdc_tests::unique("bench_base"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Same prefetch bound as the sink sets for itself.
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    let start = Instant::now();
    let mut n = 0;
    while n < events {
        let m = consumer.recv().await.expect("message");
        std::hint::black_box(&m);
        n += 1;
    }
    start.elapsed()
}

async fn archived(
    store: &ArchiveStore,
    topic: &str,
    partitions: i32,
    highs: &[i64],
    verbose: bool,
) -> bool {
    let mut ends = Vec::new();
    for p in 0..partitions {
        ends.push(
            cdc_checkpoint::latest(store, topic, p)
                .await
                .ok()
                .flatten()
                .map(|c| c.last_offset),
        );
    }
    if verbose {
        eprintln!("waiting for the sink: chain ends {ends:?}, Kafka high watermarks {highs:?}");
    }
    ends.iter().zip(highs).all(|(e, h)| *e == Some(h - 1))
}

/// Messages per partition, as produced (`i % partitions`). Kafka's high
/// watermark is not used: the local broker reports it with a lag.
fn highs(events: i64, partitions: i32) -> Vec<i64> {
    (0..i64::from(partitions))
        .map(|p| (events - p + i64::from(partitions) - 1) / i64::from(partitions))
        .collect()
}

/// Child process: the baseline consumer. Prints `{seconds, vm_hwm_mb}`.
async fn baseline_child(topic: &str, events: i64) {
    let base = baseline(topic, events).await;
    let out = serde_json::json!({"seconds": base.as_secs_f64(), "vm_hwm_mb": vm("VmHWM:")});
    println!("{out}");
}

/// Child process: the sink until every partition's chain ends at the last
/// offset. Prints its timing, summary and own VmHWM.
async fn sink_child(topic: &str, events: i64, partitions: i32, archive: &str) {
    let highs = highs(events, partitions);
    let storage = StorageConfig {
        url: format!("file://{archive}"),
        ..Default::default()
    };
    let store = ArchiveStore::open(&storage).unwrap();
    let config = cdc_sink::SinkConfig {
        brokers: cdc_tests::kafka_brokers(),
        group_id: cdc_tests::unique("bench_sink"),
        topics: vec![cdc_sink::TopicConfig {
            name: topic.to_owned(),
            table: None,
            op_column: None,
        }],
        storage,
        metrics_addr: None,
        // The age timer is a latency knob: 1s keeps the last partial
        // segment of each partition from dominating the measurement.
        flush_age: Duration::from_secs(1),
        ..Default::default()
    };
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { cdc_sink::run(&config, cancel).await }
    });
    let mut polls = 0u64;
    while !archived(&store, topic, partitions, &highs, polls % 100 == 99).await {
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    cancel.cancel();
    let summary = task.await.unwrap().expect("sink");
    assert_eq!(summary.rows, events as u64, "every event archived");
    let out = serde_json::json!({
        "seconds": seconds,
        "segments": summary.segments,
        "checkpoints": summary.checkpoints,
        "vm_hwm_mb": vm("VmHWM:"),
    });
    println!("{out}");
}

/// Runs this bench binary again as `role`, polling the child's VmHWM while
/// it runs; returns its JSON line and the highest VmHWM polled.
fn child(role: &str, envs: &[(&str, String)]) -> (serde_json::Value, f64) {
    let exe = std::env::current_exe().expect("bench executable");
    let mut cmd = std::process::Command::new(exe);
    cmd.env("CDC_BENCH_ROLE", role)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start bench child");
    let pid = child.id().to_string();
    let mut peak: f64 = 0.0;
    while child.try_wait().expect("child status").is_none() {
        peak = peak.max(vm_of(&pid, "VmHWM:"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("child output");
    assert!(
        out.status.success(),
        "{role} child failed: {:?}",
        out.status
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let line = text.lines().last().expect("a result line");
    (serde_json::from_str(line).expect("child JSON"), peak)
}

#[tokio::main]
async fn main() {
    cdc_common::telemetry::init_logging(cdc_common::telemetry::LogFormat::Text, "warn");
    let events = env_num("CDC_BENCH_EVENTS", 1_000_000);
    let partitions = env_num("CDC_BENCH_PARTITIONS", 4) as i32;
    match std::env::var("CDC_BENCH_ROLE").as_deref() {
        Ok("baseline") => {
            let topic = std::env::var("CDC_BENCH_TOPIC").unwrap();
            return baseline_child(&topic, events).await;
        }
        Ok("sink") => {
            let topic = std::env::var("CDC_BENCH_TOPIC").unwrap();
            let archive = std::env::var("CDC_BENCH_ARCHIVE").unwrap();
            return sink_child(&topic, events, partitions, &archive).await;
        }
        _ => {}
    }
    let topic = cdc_tests::unique("bench_sink");
    cdc_tests::create_topic(&topic, partitions).await;
    let t = Instant::now();
    let bytes = fill(&topic, partitions, events).await;
    eprintln!(
        "filled {topic}: {events} events, {:.1} MB in {:.1}s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let envs = |extra: Vec<(&'static str, String)>| {
        let mut v = vec![
            ("CDC_BENCH_TOPIC", topic.clone()),
            ("CDC_BENCH_EVENTS", events.to_string()),
            ("CDC_BENCH_PARTITIONS", partitions.to_string()),
        ];
        v.extend(extra);
        v
    };

    let (base, base_peak) = child("baseline", &envs(vec![]));
    let base_s = base["seconds"].as_f64().unwrap();
    let base_eps = events as f64 / base_s;
    eprintln!("baseline consumer: {base_eps:.0} events/s");

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().display().to_string();
    let (sink, sink_peak) = child("sink", &envs(vec![("CDC_BENCH_ARCHIVE", archive)]));
    let sink_s = sink["seconds"].as_f64().unwrap();
    let sink_eps = events as f64 / sink_s;
    let ratio = sink_eps / base_eps;
    let hwm = sink["vm_hwm_mb"].as_f64().unwrap().max(sink_peak);
    let archive_bytes: u64 = walk(dir.path());
    let report = serde_json::json!({
        "events": events,
        "partitions": partitions,
        "message_mb": bytes as f64 / 1e6,
        "baseline": {"seconds": base_s, "events_per_s": base_eps, "mb_per_s": bytes as f64 / 1e6 / base_s,
                     "vm_hwm_mb": base["vm_hwm_mb"].as_f64().unwrap().max(base_peak)},
        "sink": {"seconds": sink_s, "events_per_s": sink_eps, "mb_per_s": bytes as f64 / 1e6 / sink_s,
                 "segments": sink["segments"], "checkpoints": sink["checkpoints"], "archive_mb": archive_bytes as f64 / 1e6,
                 "vm_hwm_mb": hwm},
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "vm_hwm_mb": hwm,
        "memory_limit_mb": MEMORY_LIMIT_MB,
        "memory_ok": hwm < MEMORY_LIMIT_MB,
        "memory_measured": "VmHWM of a child process that ran only the sink",
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("sink.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    eprintln!(
        "sink {sink_eps:.0} events/s vs baseline {base_eps:.0} events/s: ratio {ratio:.2} (target {TARGET_RATIO}); sink VmHWM {hwm:.0} MB (limit {MEMORY_LIMIT_MB})"
    );
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
