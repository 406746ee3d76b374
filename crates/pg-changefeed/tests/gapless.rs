//! The producer's gapless guarantee: a message that fails for good would
//! otherwise let later messages of its partition be acknowledged after it
//! (the idempotent producer bumps its epoch and carries on), leaving a gap
//! in the partition's order, which the sink's hold-back of open
//! transactions relies on. With `enable.gapless.guarantee` the producer
//! raises a fatal error instead; the changefeed must stop with a clear
//! message, and leave the slot where it was.
//!
//! A permanent produce error for exactly one request is not something the
//! stack's broker can be told to return, so this test runs the feed
//! against librdkafka's mock cluster (a broker protocol implementation
//! inside the test process) that injects one; it stands in for the broker
//! only in this test. Every other test runs the same producer
//! configuration against the stack's Apache Kafka.

mod common;

use std::time::Duration;

use cdc_common::retry::Retryable;
use cdc_pg_changefeed::ChangefeedError;
use common::{config, one_table, table, unconfirmed_changes, Feed, OneTable};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_error_that_would_leave_a_gap_stops_the_feed_and_keeps_the_slot() {
    let OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup: _cleanup,
    } = one_table("pgcf_gap", "id int8 PRIMARY KEY, v int8", None).await;
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(&t, 2, 1).expect("topic");
    let mut cfg = config(&slot, vec![table(&t)]);
    cfg.brokers = mock.bootstrap_servers();
    // No heartbeats or resolved messages: the rows are the first produce.
    cfg.resolved_interval = Duration::from_secs(3600);
    let feed = Feed::start(cfg).await;
    // The next produce request fails with a non-retriable broker error.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    pg.batch_execute(&format!(
        "INSERT INTO {qt} SELECT g, 0 FROM generate_series(1, 3) g"
    ))
    .await
    .unwrap();

    let err = feed
        .finished(Duration::from_secs(60))
        .await
        .expect_err("the feed stops on a fatal producer error");
    let msg = err.to_string();
    assert!(
        matches!(err, ChangefeedError::KafkaFatal { .. }),
        "not the fatal error: {msg}"
    );
    assert!(!err.is_retryable(), "{msg}");
    assert!(
        msg.contains("gap") && msg.contains("slot was not advanced"),
        "{msg}"
    );
    // Nothing was confirmed: the rows are still in the slot, to be sent
    // again when the changefeed restarts.
    assert_eq!(unconfirmed_changes(&pg, &slot, &t).await, 3);
}
