//! The sink's Prometheus metrics against the real broker: events are
//! counted on arrival (before any checkpoint), and the consumer lag and
//! watermark age are recomputed on the tick for every owned partition, so
//! the age of a partition that does not advance keeps growing.
//! (Its own test binary: the metrics recorder is global to the process.)

mod common;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use cdc_changefeed::line::OwnedRecord;
use cdc_changefeed::Hlc;
use cdc_checkpoint::{Checkpoint, Counts};
use cdc_common::storage::ArchiveStore;
use cdc_sink::SinkConfig;
use common::*;
use tokio_util::sync::CancellationToken;

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample whose line starts with `name{` and contains
/// every `label="value"` in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_watermark_age_move_on_the_tick_and_events_count_on_arrival() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cdc_common::telemetry::serve_metrics(([127, 0, 0, 1], port).into()).unwrap();

    let topic = cdc_tests::unique("metrics");
    cdc_tests::create_topic(&topic, 1).await;
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
        - 3_600_000_000_000;
    let resolved = Hlc::new(hour_ago, 0);
    // Offset 0 (a resolved message) is already checkpointed, with a
    // resolved timestamp an hour old; offsets 1 and 2 are rows.
    let records: Vec<OwnedRecord> = (0..3)
        .map(|o| OwnedRecord {
            topic: topic.clone(),
            partition: 0,
            offset: o,
            key: (o > 0).then(|| format!("[{o}]").into_bytes()),
            value: Some(if o == 0 {
                format!(r#"{{"resolved": "{resolved}"}}"#).into_bytes()
            } else {
                format!(r#"{{"after": {{"archived": true, "id": {o}}}, "updated": "{resolved}"}}"#)
                    .into_bytes()
            }),
        })
        .collect();
    produce(&records).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let store = ArchiveStore::open(&storage).unwrap();
    cdc_checkpoint::create(
        &store,
        &Checkpoint {
            partitions: 1,
            counts: Counts {
                events: 1,
                resolved: 1,
                ..Counts::default()
            },
            resolved: Some(resolved),
            writer_id: "by-hand".into(),
            created_at: cdc_checkpoint::now_rfc3339(),
            ..cdc_checkpoint::fixtures::checkpoint(&topic, 0, 0, 0)
        },
    )
    .await
    .unwrap();
    // Nothing is flushed during the test: no new checkpoint, no commit.
    let cfg = SinkConfig {
        flush_age: Duration::from_secs(3600),
        resolved_checkpoint_interval: Duration::from_secs(3600),
        ..config(&topic, storage)
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { cdc_sink::run(&cfg, cancel).await }
    });
    let table = format!("table=\"{topic}\"");
    let part = "partition=\"0\"";
    let topic_label = format!("topic=\"{topic}\"");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let first = loop {
        let text = scrape(port);
        let events = sample(&text, "cdc_sink_events_total", &[&table]);
        let lag = sample(&text, "cdc_sink_consumer_lag", &[&topic_label, part]);
        if (events == Some(2.0) && lag.is_some()) || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Counted on arrival: no checkpoint was written.
    assert_eq!(
        sample(&first, "cdc_sink_events_total", &[&table]),
        Some(2.0),
        "{first}"
    );
    assert_eq!(
        sample(&first, "cdc_sink_checkpoints_total", &[&table]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        cdc_checkpoint::read_chain(&store, &topic, 0)
            .await
            .unwrap()
            .checkpoints
            .len(),
        1
    );
    // Lag: Kafka holds offsets up to 2, the chain ends at 0.
    assert_eq!(
        sample(&first, "cdc_sink_consumer_lag", &[&topic_label, part]),
        Some(2.0),
        "{first}"
    );
    let age1 = sample(&first, "cdc_sink_watermark_age_seconds", &[&table, part]).unwrap();
    assert!((3590.0..3700.0).contains(&age1), "{age1}");
    // Without any flush, the tick keeps the age current.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = scrape(port);
    let age2 = sample(&second, "cdc_sink_watermark_age_seconds", &[&table, part]).unwrap();
    assert!(age2 >= age1 + 2.0, "{age1} -> {age2}");
    cancel.cancel();
    task.await.unwrap().unwrap();
}
