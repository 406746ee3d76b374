//! Smoke test: rdkafka (bundled librdkafka) against the stack's broker:
//! idempotent produce with acks=all, consume through a consumer group with
//! manual offset commits, and read the committed offset back.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

#[tokio::test]
async fn produce_consume_commit_round_trip() {
    let brokers = cdc_tests::kafka_brokers();
    let topic = cdc_tests::unique("smoke");
    cdc_tests::create_topic(&topic, 1).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    for i in 0..10 {
        let key = format!("[{i}]");
        let value = format!("{{\"after\": {{\"id\": {i}}}}}");
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&value)
                    .partition(0),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| {
                panic!("produce to {brokers} failed ({e}): run `scripts/stack up`")
            });
    }

    let group = cdc_tests::unique("smoke_group");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");

    let mut seen = Vec::new();
    while seen.len() < 10 {
        let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("no message within 60s from the consumer group")
            .expect("consume");
        seen.push((
            msg.offset(),
            String::from_utf8(msg.key().unwrap().to_vec()).unwrap(),
        ));
    }
    let keys: Vec<_> = seen.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(keys, (0..10).map(|i| format!("[{i}]")).collect::<Vec<_>>());
    assert_eq!(
        seen.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (0..10).collect::<Vec<i64>>()
    );

    // Commit "next offset to read" = 7, as a sink would after archiving 0..=6.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(7))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");

    let mut query = TopicPartitionList::new();
    query.add_partition(&topic, 0);
    let committed = consumer
        .committed_offsets(query, Duration::from_secs(10))
        .expect("committed offsets");
    let off = committed
        .find_partition(&topic, 0)
        .expect("partition")
        .offset();
    assert_eq!(
        off,
        Offset::Offset(7),
        "the committed offset must read back"
    );
}
