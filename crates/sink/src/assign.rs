//! Assignment changes, applied by the consume loop: a revoked partition's
//! buffer is dropped (the next owner re-reads its unflushed events from
//! the chain); an assigned partition, paused by the rebalance callback, is
//! loaded from its checkpoint chain and resumed.
//!
//! Guarantee: an assigned partition is consumed only from its chain's
//! end + 1 (with no chain yet, from the start policy's offset; see
//! [`start_offset`]), whatever Kafka's committed offset says. It stops
//! instead of resuming when its topic is not configured, when its chain is
//! broken, when the chain does not fit Kafka's watermarks, or when Kafka
//! still holds the message at the chain's last offset and it is not the
//! one the chain archived there (the topic was deleted and recreated, or
//! rewritten).

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable as _;
use cdc_checkpoint::CheckpointError;
use cdc_common::retry::Retryable;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::consume::{Sink, State, Watch};
use crate::partition::{start_offset, PartitionBuffer};
use crate::{metric, SinkError, StopReason};

impl Sink {
    /// Applies recorded assignment changes: drops revoked partitions'
    /// buffers (the next owner re-reads them) and loads new ones.
    pub(crate) async fn handle_rebalance(&mut self) -> Result<(), SinkError> {
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
        // Kafka's watermarks and partition count. A broker slow to answer
        // (a partition just added, a loaded broker) is retried with the
        // storage backoff, not taken for a reason to stop the sink.
        let fetch = || {
            let consumer = Arc::clone(&self.consumer);
            let t = topic.clone();
            async move {
                tokio::task::spawn_blocking(move || -> Result<(i64, i64, i32), SinkError> {
                    let timeout = Duration::from_secs(10);
                    let (low, high) = consumer.fetch_watermarks(&t, partition, timeout)?;
                    let md = consumer.fetch_metadata(Some(&t), timeout)?;
                    let count = md.topics().first().map_or(0, |m| m.partitions().len());
                    Ok((low, high, i32::try_from(count).unwrap_or(i32::MAX)))
                })
                .await?
            }
        };
        let (low, high, count) = fetch
            .retry(self.config.retry.backoff())
            .when(Retryable::is_retryable)
            .notify(|e, delay| {
                tracing::warn!(%topic, partition, error = %e, ?delay,
                    "no watermarks from the broker yet; retrying")
            })
            .await?;
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
        buffer.chain_last = chain.end();
        buffer.chain_digest = chain.last().map(cdc_checkpoint::Checkpoint::digest);
        // What the partition's idle progress already holds (a previous
        // owner's): this sink writes it again only past that, so the
        // watermark does not step back after a rebalance or a restart.
        if let Some(last) = chain.last() {
            if let Ok(Some(idle)) =
                cdc_checkpoint::read_idle_progress(&self.store, &buffer.table, partition).await
            {
                if idle.extends(last) {
                    buffer.last_progress = Some((std::time::Instant::now(), Some(idle.resolved)));
                }
            }
        }
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
}
