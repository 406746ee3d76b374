//! `cdc-archiver sink`: consumes changefeed events from Kafka and archives
//! them as Avro segments in object storage, each recorded in a checkpoint.
//!
//! Guarantee: for every partition, the order of durability is segment
//! upload -> checkpoint (conditional create, never overwrite) -> Kafka
//! offset commit, and the checkpoint chain covers every Kafka offset
//! exactly once with no gap: on assignment the sink resumes at the chain's
//! end + 1 whatever Kafka's committed offset says, drops redelivered
//! offsets below it, and stops a partition (loudly, with the metric
//! `cdc_sink_partition_stopped{reason}`) rather than skip offsets it cannot
//! account for. A sink that lost its partition cannot extend the chain:
//! its conditional create fails and it abandons its buffered work. Delete
//! events are recorded in the checkpoint's delete file, never as rows of
//! its segment, so no reader of row versions can take one for a version.

pub mod config;
pub mod crash;
pub mod group;
mod kafka;
pub mod metric;
pub mod partition;
mod upload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable as _;
use cdc_changefeed::{decode_with, DecodeOptions, Hlc, RawRecord};
use cdc_checkpoint::key_filter::KeyFilter;
use cdc_checkpoint::{Checkpoint, CheckpointError, DeletesRef, SegmentRef};
use cdc_common::retry::Retryable;
use cdc_common::storage::ArchiveStore;
use cdc_segment::{encode_deletes, encode_segment, SegmentMeta};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub use config::{SinkConfig, StartPolicy, TopicConfig};
pub use partition::StopReason;

use crate::kafka::SinkContext;
use crate::partition::{accept, start_offset, Accept, Cut, Outcome, PartitionBuffer, Preview, Run};

/// Decoder settings of a topic without `op_column`.
const NO_OP_COLUMN: DecodeOptions = DecodeOptions {
    bare_op_column: None,
};

/// Errors that end the sink. Per-partition problems (gaps, conflicts,
/// quarantined messages) do not: they are handled per partition.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Invalid configuration.
    #[error("sink configuration: {0}")]
    Config(String),
    /// The archive could not be opened.
    #[error(transparent)]
    Storage(#[from] cdc_common::storage::StorageError),
    /// Kafka client failure.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Checkpoint/object store failure that survived the retries.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A segment could not be encoded.
    #[error(transparent)]
    Segment(#[from] cdc_segment::SegmentError),
    /// A blocking task panicked.
    #[error("internal task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Retryable for SinkError {
    fn is_retryable(&self) -> bool {
        match self {
            SinkError::Checkpoint(e) => e.is_retryable(),
            SinkError::Kafka(e) => !matches!(
                e,
                KafkaError::ClientCreation(_) | KafkaError::Subscription(_)
            ),
            _ => false,
        }
    }
}

/// What a sink run did, returned at shutdown.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkSummary {
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Segments written.
    pub segments: u64,
    /// Rows archived.
    pub rows: u64,
    /// Delete events recorded in delete files.
    pub deletes: u64,
    /// Messages quarantined.
    pub quarantined: u64,
    /// Checkpoint creates refused because another sink had extended the
    /// chain first (this sink was a zombie for that partition): the
    /// buffered work was abandoned each time.
    pub conflicts: u64,
    /// Partitions stopped: `(topic, partition, reason, message)`.
    pub stopped: Vec<(String, i32, StopReason, String)>,
}

enum State {
    /// Assigned and paused; waiting for the chain to be read.
    Loading,
    /// Consuming.
    Active(Box<PartitionBuffer>),
    /// Stopped for good (until reassigned).
    Stopped,
}

/// What the tick reports about an owned partition (active or stopped).
#[derive(Debug, Clone)]
struct Watch {
    table: String,
    /// Resolved timestamp of the chain's last checkpoint.
    resolved: Option<Hlc>,
    /// The chain's end + 1 (what was committed to Kafka).
    next: i64,
}

/// The random part of a segment's or delete file's name: a zombie's
/// upload for the same offsets never overwrites the winner's object.
fn object_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Why a partition is being flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
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

struct Sink {
    config: SinkConfig,
    store: ArchiveStore,
    consumer: Arc<StreamConsumer<SinkContext>>,
    context: SinkContext,
    writer_id: String,
    parts: HashMap<(String, i32), State>,
    /// Owned partitions, for the metrics recomputed on every tick.
    watch: HashMap<(String, i32), Watch>,
    /// Decoder settings per topic (`op_column`).
    decode_opts: HashMap<String, DecodeOptions>,
    summary: SinkSummary,
    crash: crash::CrashPoints,
    /// Set once shutdown began: offset commits become synchronous.
    shutting_down: bool,
    /// Partitions of the sink's topics that the last group check found
    /// held by no member of the group.
    unconsumed: Vec<(String, i32)>,
    /// When the unconsumed partitions were last logged.
    unconsumed_logged: Option<std::time::Instant>,
    /// Consecutive group checks that found partitions unconsumed while
    /// this sink held none.
    unconsumed_checks: u32,
}

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

impl Sink {
    async fn main_loop(&mut self, cancel: &CancellationToken) -> Result<(), SinkError> {
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

    /// Applies recorded assignment changes: drops revoked partitions'
    /// buffers (the next owner re-reads them) and loads new ones.
    async fn handle_rebalance(&mut self) -> Result<(), SinkError> {
        let (assigned, revoked) = {
            let mut ev = self
                .context
                .events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                std::mem::take(&mut ev.assigned),
                std::mem::take(&mut ev.revoked),
            )
        };
        for k in revoked {
            if let Some(State::Active(b)) = self.parts.remove(&k) {
                if b.pending_events() > 0 {
                    tracing::info!(topic = %k.0, partition = k.1, events = b.pending_events(),
                        "partition revoked: abandoning its unflushed events to the next owner");
                }
            }
            self.watch.remove(&k);
            metrics::gauge!(metric::ASSIGNED, "topic" => k.0.clone(), "partition" => k.1.to_string()).set(0.0);
        }
        for k in assigned {
            self.parts.insert(k, State::Loading);
        }
        let loading: Vec<(String, i32)> = self
            .parts
            .iter()
            .filter(|(_, s)| matches!(s, State::Loading))
            .map(|(k, _)| k.clone())
            .collect();
        for k in loading {
            self.load(k).await?;
        }
        Ok(())
    }

    /// Reads the chain, checks it against Kafka's watermarks, seeks to its
    /// end + 1 and resumes the partition.
    async fn load(&mut self, key: (String, i32)) -> Result<(), SinkError> {
        let (topic, partition) = key.clone();
        let Some(table) = self.config.table_of(&topic).map(str::to_owned) else {
            self.stop(
                &key,
                StopReason::ChainBroken,
                format!("topic {topic} is not configured"),
            );
            return Ok(());
        };
        let chain = match (|| cdc_checkpoint::read_chain(&self.store, &table, partition))
            .retry(self.config.retry.backoff())
            .when(Retryable::is_retryable)
            .await
        {
            Ok(c) => c,
            Err(e @ CheckpointError::Broken { .. }) => {
                self.stop(&key, StopReason::ChainBroken, e.to_string());
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let consumer = Arc::clone(&self.consumer);
        let t = topic.clone();
        let (low, high, count) =
            tokio::task::spawn_blocking(move || -> Result<(i64, i64, i32), KafkaError> {
                let timeout = Duration::from_secs(10);
                let (low, high) = consumer.fetch_watermarks(&t, partition, timeout)?;
                let md = consumer.fetch_metadata(Some(&t), timeout)?;
                let count = md.topics().first().map_or(0, |m| m.partitions().len());
                Ok((low, high, i32::try_from(count).unwrap_or(i32::MAX)))
            })
            .await??;
        if let Some(end) = chain.end() {
            self.watch.insert(
                key.clone(),
                Watch {
                    table: table.clone(),
                    resolved: chain.resolved(),
                    next: end + 1,
                },
            );
        }
        // The message the chain's last checkpoint ends with must still be
        // there: a topic deleted and recreated starts again at offset 0 and,
        // once past the chain's end, would otherwise be taken for the rest
        // of the old one.
        if let (Some(end), Some(want)) = (
            chain.end(),
            chain.last().and_then(|c| c.last_message.clone()),
        ) {
            if (low..high).contains(&end) {
                match self.message_at(&topic, partition, end).await {
                    Some(found) if found != want => {
                        let msg = format!(
                            "Kafka's message at offset {end} (fingerprint {found}) is not the one the chain \
                             archived there ({want}): the topic was deleted and recreated, or rewritten. \
                             Its chain is kept as it is; to archive the new topic, give it a new archive \
                             table (topics[].table, and purger.archive_table) as the README's \"A recreated topic\" says"
                        );
                        self.stop(&key, StopReason::TopicChanged, msg);
                        return Ok(());
                    }
                    Some(_) => {}
                    None => tracing::warn!(%topic, partition, offset = end,
                        "cannot read the chain's last message back from Kafka to check the topic's identity; resuming"),
                }
            }
        }
        let start = match start_offset(chain.end(), low, high, self.config.start) {
            Ok(s) => s,
            Err((reason, msg)) => {
                self.stop(&key, reason, msg);
                return Ok(());
            }
        };
        self.seek(&topic, partition, start).await?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        self.consumer.resume(&tpl)?;
        tracing::info!(%topic, partition, %table, start, chain_end = ?chain.end(), low, high, "partition resumed after its chain");
        metrics::gauge!(metric::ASSIGNED, "topic" => topic.clone(), "partition" => partition.to_string()).set(1.0);
        self.watch.insert(
            key.clone(),
            Watch {
                table: table.clone(),
                resolved: chain.resolved(),
                next: start,
            },
        );
        let mut buffer = PartitionBuffer::new(
            table,
            topic,
            partition,
            count.max(partition + 1),
            start,
            chain.resolved(),
        );
        buffer.events_counter = metrics::counter!(metric::EVENTS, "table" => buffer.table.clone());
        self.parts.insert(key, State::Active(Box::new(buffer)));
        Ok(())
    }

    /// The fingerprint of the message at `offset` of a partition, read with
    /// a consumer of its own (no group), or `None` if Kafka does not give
    /// it within a few seconds.
    async fn message_at(&self, topic: &str, partition: i32, offset: i64) -> Option<String> {
        let mut cc = ClientConfig::new();
        for (k, v) in &self.config.kafka {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &self.config.brokers)
            .set("group.id", "cdc-archiver-sink-identity-check")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let t = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: rdkafka::consumer::BaseConsumer = cc.create().ok()?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&t, partition, Offset::Offset(offset))
                .ok()?;
            consumer.assign(&tpl).ok()?;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) if m.offset() == offset => {
                        return Some(cdc_checkpoint::message_fingerprint(m.key(), m.payload()))
                    }
                    Some(Ok(_)) => return None,
                    _ => {}
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Seeks, retrying while the partition's fetcher is still starting
    /// (librdkafka answers `Erroneous state` until it is).
    async fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<(), SinkError> {
        let mut attempt = 0;
        loop {
            let consumer = Arc::clone(&self.consumer);
            let t = topic.to_owned();
            let r = tokio::task::spawn_blocking(move || {
                consumer.seek(
                    &t,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                )
            })
            .await?;
            match r {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 100 => {
                    attempt += 1;
                    tracing::debug!(topic, partition, offset, error = %e, "seek not accepted yet; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn stop(&mut self, key: &(String, i32), reason: StopReason, message: String) {
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

    /// Past the memory budget: flush the largest buffers until under half
    /// the budget. Consumption is paused meanwhile by construction: the
    /// main loop does not poll while it flushes, and librdkafka's prefetch
    /// queue is capped (`queued.max.messages.kbytes`, for all partitions
    /// together), so memory stays bounded without `pause()`/`resume()`,
    /// which would purge the prefetched messages and fetch them again
    /// (from an offset inside a record batch, which the local test broker
    /// answers from the next batch). Flushes never cut inside an
    /// incomplete PostgreSQL transaction; only if those held-back tails
    /// alone keep the sink over the budget are they cut anyway (with
    /// `open_tail_xid`, a warning and `cdc_sink_open_tail_checkpoints_total`),
    /// as few as possible: the largest first, and only until the sink is
    /// back under the budget (not half of it), because the purger keeps,
    /// for good, that transaction's rows of every such checkpoint.
    async fn enforce_budget(&mut self) -> Result<(), SinkError> {
        let budget = self.config.memory_budget;
        let total = self.buffered_bytes();
        if total <= budget {
            return Ok(());
        }
        tracing::debug!(
            buffered = total,
            budget,
            "memory budget reached: flushing the largest buffers"
        );
        for (trigger, target) in [
            (Trigger::Budget, budget / 2),
            (Trigger::ForceBudget, budget),
        ] {
            for k in self.largest_buffers() {
                if self.buffered_bytes() <= target {
                    break;
                }
                self.flush(&k, trigger).await?;
            }
        }
        Ok(())
    }

    /// Estimated bytes buffered over all partitions.
    fn buffered_bytes(&self) -> u64 {
        self.buffers().map(|b| b.bytes).sum()
    }

    /// Active partitions, largest buffer first.
    fn largest_buffers(&self) -> Vec<(String, i32)> {
        let mut sizes: Vec<((String, i32), u64)> = self
            .parts
            .iter()
            .filter_map(|(k, s)| match s {
                State::Active(b) if b.bytes > 0 => Some((k.clone(), b.bytes)),
                _ => None,
            })
            .collect();
        sizes.sort_by_key(|s| std::cmp::Reverse(s.1));
        sizes.into_iter().map(|(k, _)| k).collect()
    }

    fn buffers(&self) -> impl Iterator<Item = &PartitionBuffer> {
        self.parts.values().filter_map(|s| match s {
            State::Active(b) => Some(b.as_ref()),
            _ => None,
        })
    }

    /// The tick: metrics of every owned partition, then the age flushes.
    async fn on_tick(&mut self) -> Result<(), SinkError> {
        self.report_partitions();
        self.flush_aged().await
    }

    /// Recomputes, for every owned partition (active or stopped), the
    /// consumer lag (Kafka's high watermark - the chain's end + 1) and the
    /// watermark age (now - the chain's latest resolved timestamp), so a
    /// partition that stopped advancing shows it.
    fn report_partitions(&self) {
        for ((topic, partition), w) in &self.watch {
            if let Some(high) = self.context.high_watermark(topic, *partition) {
                metrics::gauge!(metric::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
                    .set((high - w.next).max(0) as f64);
            }
            if let Some(r) = w.resolved {
                metrics::gauge!(metric::WATERMARK_AGE, "table" => w.table.clone(), "partition" => partition.to_string())
                    .set(watermark_age(r));
            }
        }
    }

    async fn flush_aged(&mut self) -> Result<(), SinkError> {
        let total = self.buffered_bytes();
        metrics::gauge!(metric::BUFFERED_BYTES).set(total as f64);
        let age = self.config.flush_age;
        let interval = self.config.resolved_checkpoint_interval;
        let due: Vec<(String, i32)> = self
            .parts
            .iter()
            .filter_map(|(k, s)| match s {
                State::Active(b)
                    if b.oldest.is_some_and(|t| t.elapsed() >= age)
                        || resolved_due(b, b.resolved, interval) =>
                {
                    Some(k.clone())
                }
                _ => None,
            })
            .collect();
        for k in due {
            self.flush(&k, Trigger::Age).await?;
        }
        Ok(())
    }

    /// Writes the buffered runs of a partition up to where a checkpoint may
    /// end (see [`PartitionBuffer::safe_end`]): segment, then checkpoint,
    /// then the offset commit.
    async fn flush(&mut self, key: &(String, i32), trigger: Trigger) -> Result<(), SinkError> {
        let Some(State::Active(buffer)) = self.parts.get_mut(key) else {
            return Ok(());
        };
        let cut = if trigger == Trigger::ForceBudget {
            Cut::Force
        } else {
            Cut::Safe
        };
        let Some(preview) = buffer.preview(cut) else {
            return Ok(());
        };
        if preview.rows == 0
            && preview.deletes == 0
            && trigger != Trigger::Shutdown
            && !segmentless_due(buffer, &preview, &self.config)
        {
            return Ok(());
        }
        if cut == Cut::Force {
            if let Some(g) = buffer.open_group {
                tracing::warn!(table = %buffer.table, partition = buffer.partition, xid = g.xid,
                    held_bytes = buffer.bytes, budget = self.config.memory_budget,
                    "one PostgreSQL transaction's events exceed the memory budget: checkpointing inside it \
                     (open_tail_xid; the purger keeps that transaction's rows of this checkpoint)");
                metrics::counter!(metric::OPEN_TAIL_CHECKPOINTS, "table" => buffer.table.clone())
                    .increment(1);
            }
        }
        let mut runs = buffer.take(cut);
        if runs.is_empty() {
            return Ok(());
        }
        let (table, topic, partition, known, checkpointed_resolved) = (
            buffer.table.clone(),
            buffer.topic.clone(),
            buffer.partition,
            buffer.partitions,
            buffer.checkpointed_resolved,
        );
        // The topic's partition count as the broker states it now, after
        // this range's resolved timestamps were read: a changefeed sends a
        // resolved timestamp only after it knows every partition it wrote
        // to, so the checkpoint's count includes every partition that
        // resolved timestamp covers, and the watermark waits for them.
        let partitions = match self.fresh_partition_count(&topic).await {
            Some(n) => n.max(known),
            None => {
                // Not known now: record no resolved timestamp newer than
                // the one already checkpointed (still true, just older).
                for run in &mut runs {
                    run.resolved = run.resolved.min(checkpointed_resolved);
                }
                known
            }
        };
        let mut fingerprints = Vec::with_capacity(runs.len());
        if let Some(State::Active(b)) = self.parts.get_mut(key) {
            b.partitions = partitions;
            for run in &runs {
                fingerprints.push(run.last.and_then(|l| b.take_fingerprint(l)));
            }
        }
        let mut committed_to = None;
        let mut resolved = None;
        for (run, last_message) in runs.into_iter().zip(fingerprints) {
            let last = run.last.expect("taken runs are sealed");
            let run_resolved = run.resolved;
            match self
                .write_run(&table, &topic, (partition, partitions), run, last_message)
                .await
            {
                Ok(()) => {
                    committed_to = Some(last + 1);
                    resolved = run_resolved;
                }
                Err(SinkError::Checkpoint(CheckpointError::Conflict {
                    path,
                    existing_writer,
                })) => {
                    tracing::warn!(%table, partition, %path, ?existing_writer,
                        "another sink extended this chain first: abandoning buffered work and reloading");
                    metrics::counter!(metric::CONFLICTS, "table" => table.clone()).increment(1);
                    self.summary.conflicts += 1;
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&topic, partition);
                    let _ = self.consumer.pause(&tpl);
                    self.parts.insert(key.clone(), State::Loading);
                    self.watch.remove(key);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(next) = committed_to {
            if let Some(State::Active(b)) = self.parts.get_mut(key) {
                b.last_checkpoint = Some(std::time::Instant::now());
                b.checkpointed_resolved = resolved;
            }
            if let Some(w) = self.watch.get_mut(key) {
                w.next = next;
                w.resolved = resolved;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(next))?;
            // A failed commit only costs redelivered (and dropped) duplicates.
            let mode = if self.shutting_down {
                CommitMode::Sync
            } else {
                CommitMode::Async
            };
            if let Err(e) = self.consumer.commit(&tpl, mode) {
                tracing::warn!(%topic, partition, error = %e, "offset commit failed");
            }
        }
        Ok(())
    }

    /// The partition count of `topic` from a fresh Metadata request, or
    /// `None` when the broker does not answer it in a few seconds.
    async fn fresh_partition_count(&self, topic: &str) -> Option<i32> {
        let consumer = Arc::clone(&self.consumer);
        let t = topic.to_owned();
        let md = tokio::task::spawn_blocking(move || {
            consumer.fetch_metadata(Some(&t), Duration::from_secs(5))
        })
        .await
        .ok()?;
        match md {
            Ok(md) => md
                .topics()
                .iter()
                .find(|m| m.name() == topic && m.error().is_none())
                .and_then(|m| i32::try_from(m.partitions().len()).ok())
                .filter(|n| *n > 0),
            Err(e) => {
                tracing::warn!(%topic, error = %e,
                    "no partition count from the broker: this checkpoint keeps the previous resolved timestamp");
                None
            }
        }
    }

    /// Asks the broker who holds the partitions of the sink's topics. A
    /// partition held by no member of a settled group is archived by
    /// nobody: it is logged (with whether this sink holds anything) and
    /// counted in `cdc_sink_unconsumed_partitions`, and a sink that holds
    /// nothing while that lasts for three checks rejoins the group (a
    /// fresh JoinGroup), so that a coordinator that left it out hands it
    /// the partitions.
    async fn check_group(&mut self) {
        let consumer = Arc::clone(&self.consumer);
        let group = self.config.group_id.clone();
        let topics: Vec<String> = self.config.topics.iter().map(|t| t.name.clone()).collect();
        let view = match tokio::task::spawn_blocking(move || {
            group::describe(consumer.client(), &group, &topics, Duration::from_secs(5))
        })
        .await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "group check: no answer from the broker");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "group check failed");
                return;
            }
        };
        let unconsumed = if view.settled() {
            view.unassigned()
        } else {
            Vec::new()
        };
        for (topic, n) in &view.partitions {
            metrics::gauge!(metric::TOPIC_PARTITIONS, "topic" => topic.clone()).set(f64::from(*n));
            let missing = unconsumed.iter().filter(|(t, _)| t == topic).count();
            metrics::gauge!(metric::UNCONSUMED_PARTITIONS, "topic" => topic.clone())
                .set(missing as f64);
        }
        metrics::gauge!(metric::GROUP_MEMBERS).set(view.members.len() as f64);
        let holds_none = self.parts.is_empty();
        if unconsumed.is_empty() {
            if !self.unconsumed.is_empty() {
                tracing::info!(group = %view.group, "every partition of the sink's topics is consumed again");
            }
            self.unconsumed.clear();
            self.unconsumed_checks = 0;
            return;
        }
        let changed = unconsumed != self.unconsumed;
        if changed
            || self
                .unconsumed_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(group = %view.group, state = %view.state, members = view.members.len(),
                partitions = %group::list_partitions(&unconsumed), this_sink_holds_none = holds_none,
                "partitions of the sink's topics are consumed by no member of the group: nothing archives them \
                 (is every sink of the group running? `cdc-archiver check` shows the group)");
            self.unconsumed_logged = Some(std::time::Instant::now());
        }
        self.unconsumed = unconsumed;
        self.unconsumed_checks = if holds_none {
            self.unconsumed_checks + 1
        } else {
            0
        };
        if self.unconsumed_checks >= 3 {
            tracing::warn!(group = %view.group,
                "this sink has held no partition for three group checks while partitions are unconsumed: rejoining the group");
            self.unconsumed_checks = 0;
            self.consumer.unsubscribe();
            let topics: Vec<&str> = self.config.topics.iter().map(|t| t.name.as_str()).collect();
            if let Err(e) = self.consumer.subscribe(&topics) {
                tracing::error!(error = %e, "cannot subscribe again");
            }
        }
    }

    /// Writes one run: delete file, segment, then the checkpoint, which
    /// records `last_message`, the fingerprint of the run's last message.
    async fn write_run(
        &mut self,
        table: &str,
        topic: &str,
        (partition, partitions): (i32, i32),
        run: Run,
        last_message: Option<String>,
    ) -> Result<(), SinkError> {
        let last = run.last.expect("sealed");
        let rows = run.rows.len() as u64;
        let deletes_n = run.deletes.len() as u64;
        let open_tail_xid = run.open_tail_xid;
        let mut key_filter = None;
        let meta = SegmentMeta {
            table: table.to_owned(),
            topic: topic.to_owned(),
            partition,
            first_offset: run.first,
            last_offset: last,
        };
        // Delete events: their own file, never mixed with row versions.
        let deletes = if run.deletes.is_empty() {
            None
        } else {
            let (m, list) = (meta.clone(), run.deletes);
            let body = tokio::task::spawn_blocking(move || encode_deletes(&m, &list)).await??;
            let nonce = &object_nonce();
            let path =
                cdc_checkpoint::layout::deletes_path(table, partition, run.first, last, nonce);
            let d = DeletesRef::describe(path.clone(), &body, deletes_n);
            upload::put_segment(&self.store, &self.config, &path, body, &mut self.crash).await?;
            Some(d)
        };
        let segment = if run.rows.is_empty() {
            None
        } else {
            let columns: Vec<String> = run.rows[0].columns.iter().map(|(c, _)| c.clone()).collect();
            // The key filter lets a look-up by key skip this segment.
            let (body, filter) = tokio::task::spawn_blocking(move || {
                let filter = KeyFilter::from_key_json(run.rows.iter().map(|r| r.key_json.as_str()));
                encode_segment(&meta, &run.rows).map(|body| (body, filter.encode()))
            })
            .await??;
            key_filter = Some(filter);
            let nonce = &object_nonce();
            let path =
                cdc_checkpoint::layout::segment_path(table, partition, run.first, last, nonce);
            let seg = SegmentRef::describe(path.clone(), &body, rows, columns);
            upload::put_segment(&self.store, &self.config, &path, body, &mut self.crash).await?;
            self.crash.hit("after_segment_upload");
            metrics::counter!(metric::SEGMENTS, "table" => table.to_owned()).increment(1);
            metrics::counter!(metric::SEGMENT_BYTES, "table" => table.to_owned())
                .increment(seg.size);
            Some(seg)
        };
        let checkpoint = Checkpoint {
            format_version: cdc_checkpoint::FORMAT_VERSION,
            table: table.to_owned(),
            topic: topic.to_owned(),
            partition,
            partitions,
            first_offset: run.first,
            last_offset: last,
            segment,
            deletes,
            counts: run.counts,
            min_updated: run.min_updated,
            max_updated: run.max_updated,
            resolved: run.resolved,
            writer_id: self.writer_id.clone(),
            created_at: cdc_checkpoint::now_rfc3339(),
            key_filter,
            open_tail_xid,
            last_message,
        };
        (|| cdc_checkpoint::create(&self.store, &checkpoint))
            .retry(self.config.retry.backoff())
            .when(Retryable::is_retryable)
            .await?;
        self.crash.hit("after_checkpoint");
        tracing::info!(%table, partition, first = run.first, last, rows, deletes = deletes_n, events = run.counts.events,
            segment = ?checkpoint.segment.as_ref().map(|s| &s.path), "checkpoint written");
        metrics::counter!(metric::CHECKPOINTS, "table" => table.to_owned()).increment(1);
        metrics::counter!(metric::ROWS_ARCHIVED, "table" => table.to_owned()).increment(rows);
        metrics::counter!(metric::DELETES_RECORDED, "table" => table.to_owned())
            .increment(deletes_n);
        if let Some(xid) = open_tail_xid {
            tracing::warn!(%table, partition, first = run.first, last, xid,
                "checkpoint ends inside PostgreSQL transaction {xid} (open_tail_xid)");
        }
        if let Some(r) = run.resolved {
            metrics::gauge!(metric::WATERMARK_AGE, "table" => table.to_owned(), "partition" => partition.to_string())
                .set(watermark_age(r));
        }
        self.summary.checkpoints += 1;
        self.summary.rows += rows;
        self.summary.deletes += deletes_n;
        self.summary.segments += u64::from(checkpoint.segment.is_some());
        Ok(())
    }
}

/// A segment-less range is worth a checkpoint when the resolved timestamp
/// it carries advanced and `interval` passed since the partition's last
/// checkpoint.
fn resolved_due(b: &PartitionBuffer, resolved: Option<Hlc>, interval: Duration) -> bool {
    resolved > b.checkpointed_resolved && b.last_checkpoint.is_none_or(|t| t.elapsed() >= interval)
}

/// Whether a cut without rows (`preview`) gets a checkpoint now: when its
/// resolved timestamp advanced and `resolved_checkpoint_interval` passed,
/// or when it holds other events (deletes, unmarked rows, quarantined
/// messages) and is `flush_age` old, so their offsets are not re-read
/// forever (nor lost to retention) when no resolved timestamp comes.
fn segmentless_due(b: &PartitionBuffer, preview: &Preview, config: &SinkConfig) -> bool {
    resolved_due(b, preview.resolved, config.resolved_checkpoint_interval)
        || (preview.other_events > 0 && b.oldest.is_some_and(|t| t.elapsed() >= config.flush_age))
}

fn watermark_age(r: Hlc) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    ((now - r.wall) as f64 / 1e9).max(0.0)
}

/// Orphan segments of every configured table (`cdc-archiver sink orphans`);
/// with `clean`, deletes those older than `config.orphan_grace`.
pub async fn orphans(
    config: &SinkConfig,
    clean: bool,
) -> Result<Vec<(String, cdc_checkpoint::Orphan)>, SinkError> {
    let store = ArchiveStore::open(&config.storage)?;
    let mut out = Vec::new();
    for t in &config.topics {
        let list = if clean {
            cdc_checkpoint::clean_orphans(&store, t.table(), config.orphan_grace).await?
        } else {
            cdc_checkpoint::orphans(&store, t.table()).await?
        };
        out.extend(list.into_iter().map(|o| (t.table().to_owned(), o)));
    }
    Ok(out)
}
