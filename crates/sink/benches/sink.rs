//! Sink throughput against a baseline measured in the same run, on the
//! same pre-filled topic:
//!
//! - baseline: an rdkafka `StreamConsumer` (own group) that reads every
//!   message and discards it;
//! - sink: `cdc_sink::run` (own group) until every partition's checkpoint
//!   chain ends at Kafka's last offset: decoding, Avro + zstd encoding,
//!   uploads to a local file system archive and checkpoints included.
//!
//! Target: sink events/s >= 0.50 x baseline events/s, and the process's
//! peak resident memory (VmHWM) under 256 MB. Prints a summary and writes
//! `target/bench/sink.json`. Not part of `cargo test`; run with
//! `cargo bench -p cdc-sink` against the local stack. `CDC_BENCH_EVENTS`
//! (default 1 000 000) and `CDC_BENCH_PARTITIONS` (default 4) change the size.

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
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
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

#[tokio::main]
async fn main() {
    cdc_common::telemetry::init_logging(cdc_common::telemetry::LogFormat::Text, "warn");
    let events = env_num("CDC_BENCH_EVENTS", 1_000_000);
    let partitions = env_num("CDC_BENCH_PARTITIONS", 4) as i32;
    let topic = cdc_tests::unique("bench_sink");
    cdc_tests::create_topic(&topic, partitions).await;
    let t = Instant::now();
    let bytes = fill(&topic, partitions, events).await;
    eprintln!(
        "filled {topic}: {events} events, {:.1} MB in {:.1}s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let rss_after_fill = vm("VmRSS:");

    let base = baseline(&topic, events).await;
    let base_eps = events as f64 / base.as_secs_f64();
    let hwm_after_baseline = vm("VmHWM:");
    eprintln!("baseline consumer: {:.0} events/s", base_eps);

    // Messages per partition, as produced (i % partitions). Kafka's high
    // watermark is not used: the local broker reports it with a lag.
    let highs: Vec<i64> = (0..i64::from(partitions))
        .map(|p| (events - p + i64::from(partitions) - 1) / i64::from(partitions))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig {
        url: format!("file://{}", dir.path().display()),
        ..Default::default()
    };
    let store = ArchiveStore::open(&storage).unwrap();
    let config = cdc_sink::SinkConfig {
        brokers: cdc_tests::kafka_brokers(),
        group_id: cdc_tests::unique("bench_sink"),
        topics: vec![cdc_sink::TopicConfig {
            name: topic.clone(),
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
    while !archived(&store, &topic, partitions, &highs, polls % 100 == 99).await {
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sink_time = start.elapsed();
    cancel.cancel();
    let summary = task.await.unwrap().expect("sink");
    assert_eq!(summary.rows, events as u64, "every event archived");
    let sink_eps = events as f64 / sink_time.as_secs_f64();
    let ratio = sink_eps / base_eps;
    let hwm = vm("VmHWM:");
    let archive_bytes: u64 = walk(dir.path());
    let report = serde_json::json!({
        "events": events,
        "partitions": partitions,
        "message_mb": bytes as f64 / 1e6,
        "baseline": {"seconds": base.as_secs_f64(), "events_per_s": base_eps, "mb_per_s": bytes as f64 / 1e6 / base.as_secs_f64()},
        "sink": {"seconds": sink_time.as_secs_f64(), "events_per_s": sink_eps, "mb_per_s": bytes as f64 / 1e6 / sink_time.as_secs_f64(),
                 "segments": summary.segments, "checkpoints": summary.checkpoints, "archive_mb": archive_bytes as f64 / 1e6},
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "vm_hwm_mb": hwm,
        "vm_rss_after_fill_mb": rss_after_fill,
        "vm_hwm_after_baseline_mb": hwm_after_baseline,
        "memory_limit_mb": MEMORY_LIMIT_MB,
        "memory_ok": hwm < MEMORY_LIMIT_MB,
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
        "sink {sink_eps:.0} events/s vs baseline {base_eps:.0} events/s: ratio {ratio:.2} (target {TARGET_RATIO}); VmHWM {hwm:.0} MB (limit {MEMORY_LIMIT_MB})"
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
