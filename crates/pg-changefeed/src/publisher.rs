//! The Kafka side. One idempotent producer with the gapless guarantee
//! ([`make_producer`]): every partition's acknowledged messages are a
//! prefix of what was sent, in order. [`Publisher`] keeps at most
//! `max_in_flight` messages unacknowledged (it waits for the oldest when
//! that limit or librdkafka's queue is full); a failed delivery fails the
//! session, so the slot is not advanced past it, and when the producer has
//! raised a fatal error that error is returned instead
//! ([`ChangefeedError::KafkaFatal`], not retried). A resolved timestamp
//! goes to every partition of every topic, partition 0 first, and
//! [`Publisher::send_resolved`] returns only once all of them are
//! acknowledged. A topic must exist on the broker ([`topic_partitions`]).
//! [`resolved_floor`] reads the latest resolved timestamp an earlier
//! process sent back from the topics, for the clock to start above it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tracing::warn;

use crate::config::PgChangefeedConfig;
use crate::encode;
use crate::error::ChangefeedError;
use crate::hlc::Hlc;

/// The producer plus the messages it has not yet acknowledged.
pub(crate) struct Publisher {
    pub(crate) producer: FutureProducer,
    /// Messages Kafka acknowledged in this session (for the logs).
    pub(crate) acked_total: u64,
    pub(crate) inflight: VecDeque<DeliveryFuture>,
    pub(crate) max_in_flight: usize,
}

impl Publisher {
    pub(crate) async fn send(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), ChangefeedError> {
        loop {
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .partition(partition)
                .payload(payload);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            match self.producer.send_result(rec) {
                Ok(f) => {
                    self.inflight.push_back(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if !self.await_oldest().await? {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((e, _)) => return Err(self.kafka_error(e)),
            }
        }
        while self.inflight.len() > self.max_in_flight {
            self.await_oldest().await?;
        }
        Ok(())
    }

    /// Waits for the oldest unacknowledged message; `false` if none.
    async fn await_oldest(&mut self) -> Result<bool, ChangefeedError> {
        let Some(f) = self.inflight.pop_front() else {
            return Ok(false);
        };
        match f.await {
            Ok(Ok(_)) => {
                self.acked_total += 1;
                Ok(true)
            }
            Ok(Err((e, _))) => Err(self.kafka_error(e)),
            Err(_) => Err(self.kafka_error(KafkaError::Canceled)),
        }
    }

    /// A produce or delivery error, or the producer's fatal error if it
    /// raised one (the failed message's own error is then a consequence:
    /// the failed batch's broker error, or a purge of the queue).
    fn kafka_error(&self, e: KafkaError) -> ChangefeedError {
        fatal_or(&self.producer, e)
    }

    pub(crate) async fn drain(&mut self) -> Result<(), ChangefeedError> {
        while self.await_oldest().await? {}
        Ok(())
    }

    /// Resolved `ts` to every partition of every topic, acknowledged.
    pub(crate) async fn send_resolved(
        &mut self,
        topics: &BTreeMap<String, i32>,
        ts: Hlc,
    ) -> Result<(), ChangefeedError> {
        let value = encode::resolved(ts);
        for (topic, partitions) in topics {
            for p in 0..*partitions {
                self.send(topic, p, None, value.as_bytes()).await?;
            }
        }
        self.drain().await?;
        Ok(())
    }
}

/// `e`, unless the producer has raised a fatal error: then that, as
/// [`ChangefeedError::KafkaFatal`] (not retried).
pub(crate) fn fatal_or(producer: &FutureProducer, e: KafkaError) -> ChangefeedError {
    match producer.client().fatal_error() {
        Some((code, reason)) => {
            tracing::error!(%code, %reason, "Kafka producer fatal error: stopping without advancing the slot");
            ChangefeedError::KafkaFatal {
                code: format!("{code:?}"),
                reason,
            }
        }
        None => e.into(),
    }
}

/// The idempotent producer (no duplicates or reordering from its own
/// retries), with the gapless guarantee: a message that fails for good in
/// a way that would let later messages of its partition be acknowledged
/// after it (a gap) is instead a fatal error that stops the producer, so
/// every partition's acknowledged messages are a prefix of what was sent,
/// in order (the sink's hold-back of open transactions relies on that
/// order). A fatal error stops the changefeed, see
/// [`ChangefeedError::KafkaFatal`]. Messages that fail by
/// `message.timeout.ms` are not covered by librdkafka's guarantee; they
/// fail the delivery and the session, and the slot is not advanced.
pub(crate) fn make_producer(
    config: &PgChangefeedConfig,
) -> Result<FutureProducer, ChangefeedError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "5")
        .create()?)
}

pub(crate) async fn topic_partitions(
    producer: &FutureProducer,
    topic: &str,
) -> Result<i32, ChangefeedError> {
    let p = producer.clone();
    let t = topic.to_owned();
    let md = tokio::task::spawn_blocking(move || {
        p.client().fetch_metadata(Some(&t), Duration::from_secs(10))
    })
    .await
    .map_err(|e| ChangefeedError::Topic {
        topic: topic.to_owned(),
        reason: format!("metadata lookup failed: {e}"),
    })??;
    let found = md.topics().iter().find(|m| m.name() == topic);
    match found {
        Some(m) if m.error().is_none() && !m.partitions().is_empty() => {
            Ok(m.partitions().len() as i32)
        }
        _ => Err(ChangefeedError::Topic {
            topic: topic.to_owned(),
            reason: "does not exist on the broker: create it with the partition count you want"
                .into(),
        }),
    }
}

/// How far back [`resolved_floor`] reads a partition at most.
const FLOOR_SEARCH_LIMIT: i64 = 1 << 20;

/// The latest resolved timestamp an earlier changefeed sent to `topics`:
/// the greatest of the last resolved message of every partition (each is
/// sent to every partition, and a crash may have stopped that part way),
/// each read backwards in growing windows from the end. `Some(None)`: the
/// topics hold messages of no resolved timestamp at all (a new changefeed:
/// nothing to stay above). `None` (the caller falls back to the database
/// clock): a topic cannot be read, or a partition that holds messages has
/// no resolved one within its last [`FLOOR_SEARCH_LIMIT`] (one may lie
/// further back, or have expired).
pub(crate) async fn resolved_floor(
    config: &PgChangefeedConfig,
    topics: &BTreeMap<String, i32>,
) -> Option<Option<Hlc>> {
    let brokers = config.brokers.clone();
    let topics: BTreeMap<String, i32> = topics.clone();
    let found = tokio::task::spawn_blocking(move || -> Option<Option<Hlc>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message as _;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "cdc-archiver-pgcf-floor")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .ok()?;
        let timeout = Duration::from_secs(10);
        let mut floor: Option<Hlc> = None;
        let partitions: Vec<(String, i32)> = topics
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
            .collect();
        for (topic, partition) in &partitions {
            let (topic, partition) = (topic, *partition);
            let (low, high) = match consumer.fetch_watermarks(topic, partition, timeout) {
                Ok(w) => w,
                Err(e) => {
                    warn!(%topic, error = %e, "reading the topic's watermarks for its latest resolved timestamp");
                    return None;
                }
            };
            let mut window = 1024;
            let mut end = high;
            while end > low {
                let start = (end - window).max(low);
                let mut tpl = rdkafka::TopicPartitionList::new();
                tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(start))
                    .ok()?;
                consumer.assign(&tpl).ok()?;
                let mut last: Option<Hlc> = None;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if Instant::now() > deadline {
                        return None;
                    }
                    match consumer.poll(Duration::from_millis(500)) {
                        Some(Ok(m)) => {
                            if m.offset() >= end {
                                break;
                            }
                            if m.key().is_none() {
                                if let Some(h) = m.payload().and_then(encode::parse_resolved) {
                                    last = Some(h);
                                }
                            }
                            if m.offset() + 1 >= end {
                                break;
                            }
                        }
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                        Some(Err(e)) => {
                            warn!(%topic, error = %e, "reading the topic back for its latest resolved timestamp");
                            return None;
                        }
                        None => {}
                    }
                }
                if let Some(h) = last {
                    floor = floor.max(Some(h));
                    break;
                }
                if high - start >= FLOOR_SEARCH_LIMIT {
                    warn!(%topic, partition, "no resolved timestamp in the last {FLOOR_SEARCH_LIMIT} messages");
                    return None;
                }
                end = start;
                window *= 4;
            }
        }
        Some(floor)
    })
    .await
    .ok()
    .flatten();
    if found.is_none() {
        warn!("could not read the topics back for their latest resolved timestamp; the clock starts at the database's clock");
    }
    found
}
