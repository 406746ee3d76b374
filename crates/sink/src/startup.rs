//! Sink startup: [`run`] validates the configuration, refuses an archive
//! that does not honour conditional creates, configures the Kafka consumer
//! and subscribes, then hands over to the consume loop.
//!
//! Guarantee: no message is consumed before both checks pass: an invalid
//! configuration, or a store where a second create of one object
//! overwrote it instead of failing (two sinks could both extend a chain),
//! ends `run` with an error. The consumer never commits or stores offsets
//! by itself (`enable.auto.commit`, `enable.auto.offset.store` off) and
//! never jumps (`auto.offset.reset = error`): where a partition resumes is
//! the sink's decision, after its chain.

use std::collections::HashMap;
use std::sync::Arc;

use backon::Retryable as _;
use cdc_changefeed::DecodeOptions;
use cdc_common::retry::Retryable;
use cdc_common::storage::ArchiveStore;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::consume::Sink;
use crate::kafka::SinkContext;
use crate::{crash, SinkConfig, SinkError, SinkSummary};

/// Runs the sink until `cancel` fires, then flushes, checkpoints and
/// commits what is buffered and returns.
pub async fn run(config: &SinkConfig, cancel: CancellationToken) -> Result<SinkSummary, SinkError> {
    config.validate().map_err(SinkError::Config)?;
    let store = ArchiveStore::open(&config.storage)?;
    // The chain's one-writer guarantee rests on conditional creates: a
    // store that overwrites instead is refused before anything is written.
    if !(|| cdc_checkpoint::conditional_create_holds(&store))
        .retry(config.retry.backoff())
        .when(Retryable::is_retryable)
        .await?
    {
        return Err(SinkError::Config(format!(
            "the archive at {} does not honour conditional creates (a second create of one object \
             overwrote it instead of failing): two sinks could both extend a chain. Use a store that \
             supports If-None-Match on PUT (AWS S3, MinIO, Ceph RGW recent versions, a local directory)",
            store.url
        )));
    }
    let writer_id = config.writer_id();
    let context = SinkContext::default();
    let mut cc = ClientConfig::new();
    for (k, v) in &config.kafka {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Never jump: an out-of-range position is an error we handle.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false")
        // Eager assignors: the rebalance callback assigns/unassigns whole sets.
        .set("partition.assignment.strategy", "range,roundrobin")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        );
    if let Some(id) = &config.instance_id {
        // Static membership: a restart under the same name takes the old
        // member's place (and partitions) at once.
        cc.set("group.instance.id", id);
    }
    if !config.kafka.contains_key("heartbeat.interval.ms") {
        // A third of the session timeout, as Kafka recommends.
        cc.set(
            "heartbeat.interval.ms",
            (config.session_timeout.as_millis() / 3)
                .max(100)
                .to_string(),
        );
    }
    if !config
        .kafka
        .contains_key("topic.metadata.refresh.interval.ms")
    {
        // A partition added to a topic reaches the subscription (and a
        // rebalance) within one group check.
        cc.set(
            "topic.metadata.refresh.interval.ms",
            config.group_check_interval.as_millis().to_string(),
        );
    }
    if !config.kafka.contains_key("queued.max.messages.kbytes") {
        // librdkafka's prefetch queue counts against the memory budget.
        cc.set("queued.max.messages.kbytes", "16384");
    }
    if !config.kafka.contains_key("statistics.interval.ms") {
        // High watermarks for the consumer-lag gauge, without a request per tick.
        cc.set("statistics.interval.ms", "1000");
    }
    let consumer: StreamConsumer<SinkContext> = cc.create_with_context(context.clone())?;
    let topics: Vec<&str> = config.topics.iter().map(|t| t.name.as_str()).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(%writer_id, topics = ?topics, group = %config.group_id, instance_id = ?config.instance_id,
        session_timeout = ?config.session_timeout, archive = %store.url, "sink started");
    let mut sink = Sink {
        config: config.clone(),
        store,
        consumer: Arc::new(consumer),
        context,
        writer_id,
        parts: HashMap::new(),
        watch: HashMap::new(),
        decode_opts: config
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    DecodeOptions {
                        bare_op_column: t.op_column.clone(),
                    },
                )
            })
            .collect(),
        summary: SinkSummary::default(),
        crash: crash::CrashPoints::from_env(),
        shutting_down: false,
        unconsumed: Vec::new(),
        unconsumed_logged: None,
        unconsumed_checks: 0,
    };
    sink.main_loop(&cancel).await?;
    Ok(sink.summary)
}
