//! The consumer context: rebalance callbacks only record what changed.
//!
//! Callbacks run inside librdkafka's polling (within `recv()`), so they do
//! no I/O: newly assigned partitions are assigned at the logical offset
//! `Beginning` (never the committed offset, so `auto.offset.reset=error`
//! cannot fire for a fresh group) and paused at once; the async main loop
//! then reads the chain, seeks to its end + 1 and resumes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Assignment changes not yet handled by the main loop.
#[derive(Debug, Default)]
pub struct RebalanceEvents {
    /// Newly assigned `(topic, partition)`.
    pub assigned: Vec<(String, i32)>,
    /// Revoked `(topic, partition)`.
    pub revoked: Vec<(String, i32)>,
}

/// Consumer context shared with the main loop.
#[derive(Debug, Default, Clone)]
pub struct SinkContext {
    /// Filled by the callbacks, drained by the main loop.
    pub events: Arc<Mutex<RebalanceEvents>>,
    /// Kafka's high watermark per `(topic, partition)`, from librdkafka's
    /// statistics (`statistics.interval.ms`): read on every tick for the
    /// consumer lag without a broker round trip.
    pub high_watermarks: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl SinkContext {
    /// The last high watermark librdkafka reported for a partition.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.high_watermarks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(topic.to_owned(), partition))
            .copied()
    }
}

fn list(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        let mut hw = self
            .high_watermarks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // -1 (the internal UA partition, or not known yet) is skipped.
                if *id >= 0 && p.hi_offset >= 0 {
                    hw.insert((name.clone(), *id), p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = list(tpl);
                tracing::info!(partitions = ?parts, "partitions assigned");
                let result: KafkaResult<()> = tpl
                    .set_all_offsets(Offset::Beginning)
                    .and_then(|()| base_consumer.assign(tpl))
                    .and_then(|()| base_consumer.pause(tpl));
                if let Err(e) = result {
                    tracing::error!(error = %e, "cannot assign/pause the new partitions");
                }
                events.revoked.retain(|p| !parts.contains(p));
                events.assigned.extend(parts);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts = list(tpl);
                tracing::info!(partitions = ?parts, "partitions revoked");
                if let Err(e) = base_consumer.unassign() {
                    tracing::error!(error = %e, "cannot unassign revoked partitions");
                }
                events.assigned.retain(|p| !parts.contains(p));
                events.revoked.extend(parts);
            }
            other => {
                tracing::error!(code = ?other, "rebalance error; dropping the assignment");
                let _ = base_consumer.unassign();
                let parts = list(tpl);
                events.assigned.retain(|p| !parts.contains(p));
                events.revoked.extend(parts);
            }
        }
    }
}
