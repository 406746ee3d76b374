//! The consume loop: it applies assignment changes, buffers each message
//! in its partition's [`PartitionBuffer`], and runs the timers (age
//! flushes and metrics on every tick, the group check) until cancelled;
//! then it flushes what is buffered and leaves the group.
//!
//! Guarantee: a message is buffered only at its partition's next expected
//! offset ([`accept`]): one below it (a redelivery) is dropped and counted
//! in `cdc_sink_duplicates_dropped_total`; one above it (a gap), or a
//! position that fell out of Kafka's range (an offset below the earliest
//! still in Kafka), stops the partition, loudly, rather than skip offsets.
//! An undecodable message is quarantined in the archive before its offset
//! is counted. At shutdown every partition is flushed up to where a
//! checkpoint may end: the events of a PostgreSQL transaction that may not
//! be complete yet are left to the next owner, which re-reads them from
//! the chain end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cdc_changefeed::{decode_with, DecodeOptions, Hlc, RawRecord};
use cdc_common::storage::ArchiveStore;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use crate::kafka::SinkContext;
use crate::partition::{accept, Accept, Outcome, PartitionBuffer};
use crate::{crash, metric, upload, SinkConfig, SinkError, SinkSummary, StopReason};

/// Decoder settings of a topic without `op_column`.
const NO_OP_COLUMN: DecodeOptions = DecodeOptions {
    bare_op_column: None,
};

pub(crate) enum State {
    /// Assigned and paused; waiting for the chain to be read.
    Loading,
    /// Consuming.
    Active(Box<PartitionBuffer>),
    /// Stopped for good (until reassigned).
    Stopped,
}

/// What the tick reports about an owned partition (active or stopped).
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) table: String,
    /// Resolved timestamp of the chain's last checkpoint.
    pub(crate) resolved: Option<Hlc>,
    /// The chain's end + 1 (what was committed to Kafka).
    pub(crate) next: i64,
}

/// Why a partition is being flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// `flush_rows` / `flush_bytes` reached.
    Threshold,
    /// The age timer (`flush_age`, `resolved_checkpoint_interval`).
    Age,
    /// Over the memory budget.
    Budget,
    /// Over the memory budget with only held-back transaction tails left:
    /// cut inside them (the checkpoint records `open_tail_xid`).
    ForceBudget,
    /// SIGTERM.
    Shutdown,
}

/// A running sink: its consumer, the state of the partitions it owns and
/// what it did so far.
pub(crate) struct Sink {
    pub(crate) config: SinkConfig,
    pub(crate) store: ArchiveStore,
    pub(crate) consumer: Arc<StreamConsumer<SinkContext>>,
    pub(crate) context: SinkContext,
    pub(crate) writer_id: String,
    pub(crate) parts: HashMap<(String, i32), State>,
    /// Owned partitions, for the metrics recomputed on every tick.
    pub(crate) watch: HashMap<(String, i32), Watch>,
    /// Decoder settings per topic (`op_column`).
    pub(crate) decode_opts: HashMap<String, DecodeOptions>,
    pub(crate) summary: SinkSummary,
    pub(crate) crash: crash::CrashPoints,
    /// Set once shutdown began: offset commits become synchronous.
    pub(crate) shutting_down: bool,
    /// Partitions of the sink's topics that the last group check found
    /// held by no member of the group.
    pub(crate) unconsumed: Vec<(String, i32)>,
    /// When the unconsumed partitions were last logged.
    pub(crate) unconsumed_logged: Option<std::time::Instant>,
    /// Consecutive group checks that found partitions unconsumed while
    /// this sink held none.
    pub(crate) unconsumed_checks: u32,
}

impl Sink {
    pub(crate) async fn main_loop(&mut self, cancel: &CancellationToken) -> Result<(), SinkError> {
        let tick_every =
            (self.config.flush_age / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut group_check = tokio::time::interval(self.config.group_check_interval);
        group_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.handle_rebalance().await?;
            let consumer = Arc::clone(&self.consumer);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = tick.tick() => self.on_tick().await?,
                _ = group_check.tick() => self.check_group().await,
                msg = consumer.recv() => match msg {
                    Ok(m) => self.on_message(&m).await?,
                    Err(e) => self.on_kafka_error(&e).await?,
                },
            }
        }
        tracing::info!("shutting down: flushing buffered partitions");
        self.shutting_down = true;
        self.handle_rebalance().await?;
        let keys: Vec<(String, i32)> = self.parts.keys().cloned().collect();
        for k in keys {
            self.flush(&k, Trigger::Shutdown).await?;
            if let Some(State::Active(b)) = self.parts.get(&k) {
                let held = b.held_back_events();
                if held > 0 {
                    tracing::info!(topic = %k.0, partition = k.1, events = held, xid = ?b.open_group.map(|g| g.xid),
                        "not checkpointing the events of a PostgreSQL transaction that may not be complete yet: \
                         the next owner re-reads them from the chain end");
                }
            }
        }
        self.consumer.unsubscribe();
        Ok(())
    }

    pub(crate) fn stop(&mut self, key: &(String, i32), reason: StopReason, message: String) {
        tracing::error!(topic = %key.0, partition = key.1, reason = reason.label(), %message,
            "PARTITION STOPPED: nothing more is archived from it until an operator acts");
        metrics::gauge!(metric::PARTITION_STOPPED, "topic" => key.0.clone(), "partition" => key.1.to_string(),
            "reason" => reason.label()).set(1.0);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&key.0, key.1);
        let _ = self.consumer.pause(&tpl);
        self.parts.insert(key.clone(), State::Stopped);
        self.summary
            .stopped
            .push((key.0.clone(), key.1, reason, message));
    }

    async fn on_kafka_error(&mut self, e: &KafkaError) -> Result<(), SinkError> {
        if matches!(
            e,
            KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)
                | KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)
        ) {
            // A position fell out of Kafka's range (retention deleted what we
            // had not archived yet). The error does not say which partition:
            // re-check every active one against the watermarks.
            tracing::error!(error = %e, "an offset is out of range; checking every partition for a gap");
            let keys: Vec<(String, i32)> = self
                .parts
                .iter()
                .filter(|(_, s)| matches!(s, State::Active(_)))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                let consumer = Arc::clone(&self.consumer);
                let (t, p) = k.clone();
                let (low, _) = tokio::task::spawn_blocking(move || {
                    consumer.fetch_watermarks(&t, p, Duration::from_secs(10))
                })
                .await??;
                if let Some(State::Active(b)) = self.parts.get(&k) {
                    if b.expected < low {
                        let msg = format!(
                            "next offset {} is below the earliest offset still in Kafka ({low})",
                            b.expected
                        );
                        self.stop(&k, StopReason::OffsetGap, msg);
                    }
                }
            }
            return Ok(());
        }
        tracing::warn!(error = %e, "kafka consumer error");
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }

    async fn on_message(
        &mut self,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<(), SinkError> {
        let key = (m.topic().to_owned(), m.partition());
        let offset = m.offset();
        let Some(State::Active(buffer)) = self.parts.get_mut(&key) else {
            // Not (yet) ours to consume: the seek after loading repositions it.
            return Ok(());
        };
        match accept(buffer.expected, offset) {
            Accept::Duplicate => {
                metrics::counter!(metric::DUPLICATES_DROPPED).increment(1);
                return Ok(());
            }
            Accept::Gap => {
                let msg = format!(
                    "expected offset {} but Kafka delivered {offset}",
                    buffer.expected
                );
                self.stop(&key, StopReason::OffsetGap, msg);
                return Ok(());
            }
            Accept::Next => {}
        }
        let raw = RawRecord {
            topic: &key.0,
            partition: key.1,
            offset,
            key: m.key(),
            value: m.payload(),
        };
        let opts = self.decode_opts.get(&key.0).unwrap_or(&NO_OP_COLUMN);
        let event = match decode_with(&raw, opts) {
            Ok(ev) => Ok(ev),
            Err(err) => {
                let table = self.config.table_of(&key.0).unwrap_or(&key.0).to_owned();
                upload::quarantine(
                    &self.store,
                    &self.config.retry,
                    &table,
                    &err,
                    &self.writer_id,
                )
                .await?;
                metrics::counter!(metric::QUARANTINED, "table" => table.clone()).increment(1);
                self.summary.quarantined += 1;
                tracing::warn!(%table, partition = key.1, offset, error = %err, "message quarantined");
                Err(())
            }
        };
        let Some(State::Active(buffer)) = self.parts.get_mut(&key) else {
            return Ok(());
        };
        buffer.note_fingerprint(
            offset,
            cdc_checkpoint::message_fingerprint(m.key(), m.payload()),
        );
        let outcome = buffer.push(offset, event, &self.config.archived_column);
        if matches!(outcome, Outcome::Archived | Outcome::Delete)
            && (buffer.rows >= self.config.flush_rows || buffer.bytes >= self.config.flush_bytes)
        {
            self.flush(&key, Trigger::Threshold).await?;
        }
        self.enforce_budget().await
    }

    /// The tick: metrics of every owned partition, then the age flushes.
    pub(crate) async fn on_tick(&mut self) -> Result<(), SinkError> {
        self.report_partitions();
        self.flush_aged().await
    }
}
