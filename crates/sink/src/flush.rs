//! Flushing: when a partition's buffer becomes checkpoints (flush
//! thresholds, age, resolved checkpoint interval, memory budget, shutdown)
//! and how each of its runs is written.
//!
//! Guarantee: for every run, the order of durability is delete file and
//! segment upload -> checkpoint (conditional create, never overwrite) ->
//! Kafka offset commit of the chain's end + 1. Cuts follow the hold-back
//! rule (`partition/holdback.rs`): a flush forces a cut inside a
//! PostgreSQL transaction not known to be complete only when the held-back
//! events alone keep the sink over the memory budget (recorded in
//! `open_tail_xid`, warned and counted). A checkpoint records
//! the topic's partition count as the broker states it after the run's
//! resolved timestamps were read (unknown: no resolved timestamp newer
//! than the chain's last one). A create refused because another sink
//! extended the chain first abandons the partition's buffered work and
//! reloads the partition from its chain. Object names carry a random
//! nonce: a zombie's upload never overwrites the winner's object.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable as _;
use cdc_changefeed::Hlc;
use cdc_checkpoint::key_filter::KeyFilter;
use cdc_checkpoint::{Checkpoint, CheckpointError, DeletesRef, SegmentRef};
use cdc_common::retry::Retryable;
use cdc_segment::{encode_deletes, encode_segment, SegmentMeta};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::consume::{Sink, State, Trigger};
use crate::partition::{Cut, PartitionBuffer, Preview, Run};
use crate::report::watermark_age;
use crate::{metric, upload, SinkConfig, SinkError};

/// The random part of a segment's or delete file's name: a zombie's
/// upload for the same offsets never overwrites the winner's object.
fn object_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

impl Sink {
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
    pub(crate) async fn enforce_budget(&mut self) -> Result<(), SinkError> {
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

    pub(crate) async fn flush_aged(&mut self) -> Result<(), SinkError> {
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
    pub(crate) async fn flush(
        &mut self,
        key: &(String, i32),
        trigger: Trigger,
    ) -> Result<(), SinkError> {
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
        if preview.rows == 0 && preview.deletes == 0 && trigger != Trigger::Shutdown {
            // Resolved messages only, after an existing chain, and no real
            // checkpoint due yet: the idle progress object takes the
            // resolved timestamp instead of a new checkpoint.
            if let Some(base) = buffer.chain_last.filter(|_| {
                preview.other_events == 0
                    && !idle_checkpoint_due(buffer, preview.resolved, &self.config)
            }) {
                if progress_due(buffer, preview.resolved, &self.config) {
                    self.write_idle_progress(key, base, preview).await?;
                }
                return Ok(());
            }
            if !segmentless_due(buffer, &preview, &self.config) {
                return Ok(());
            }
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
        let mut previous = buffer.chain_digest.clone();
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
                .write_run(
                    &table,
                    &topic,
                    (partition, partitions),
                    run,
                    (last_message, previous.take()),
                )
                .await
            {
                Ok(digest) => {
                    committed_to = Some(last + 1);
                    resolved = run_resolved;
                    previous = Some(digest);
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
                b.chain_last = Some(next - 1);
                b.chain_digest = previous;
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

    /// Records that the partition's offsets `base + 1 ..= preview.end`
    /// hold resolved messages only, the last `preview.resolved`, in its
    /// idle progress object ([`cdc_checkpoint::IdleProgress`]). Like a
    /// checkpoint, it records the partition count the broker states after
    /// the resolved timestamp was read, and is not written when that is
    /// unknown.
    async fn write_idle_progress(
        &mut self,
        key: &(String, i32),
        base: i64,
        preview: Preview,
    ) -> Result<(), SinkError> {
        let Some(State::Active(b)) = self.parts.get(key) else {
            return Ok(());
        };
        let Some(resolved) = preview.resolved else {
            return Ok(());
        };
        let (table, topic, partition, known) =
            (b.table.clone(), b.topic.clone(), b.partition, b.partitions);
        let Some(count) = self.fresh_partition_count(&topic).await else {
            // Not now; tried again after `resolved_checkpoint_interval`
            // (not at every tick: each try is a Metadata request).
            if let Some(State::Active(b)) = self.parts.get_mut(key) {
                let held = b.last_progress.and_then(|(_, r)| r);
                b.last_progress = Some((std::time::Instant::now(), held));
            }
            return Ok(());
        };
        let progress = cdc_checkpoint::IdleProgress {
            format_version: cdc_checkpoint::FORMAT_VERSION,
            table: table.clone(),
            topic,
            partition,
            partitions: count.max(known),
            base_last_offset: base,
            last_offset: preview.end,
            resolved,
            resolved_messages: preview.resolved_messages,
            writer_id: self.writer_id.clone(),
            written_at: cdc_checkpoint::now_rfc3339(),
        };
        (|| cdc_checkpoint::write_idle_progress(&self.store, &progress))
            .retry(self.config.retry.backoff())
            .when(Retryable::is_retryable)
            .await?;
        tracing::debug!(%table, partition, base, last = preview.end, %resolved, "idle progress written");
        metrics::counter!(metric::IDLE_PROGRESS_WRITES, "table" => table.clone()).increment(1);
        metrics::gauge!(metric::WATERMARK_AGE, "table" => table, "partition" => partition.to_string())
            .set(watermark_age(resolved));
        if let Some(State::Active(b)) = self.parts.get_mut(key) {
            b.partitions = progress.partitions;
            b.last_progress = Some((std::time::Instant::now(), Some(resolved)));
        }
        if let Some(w) = self.watch.get_mut(key) {
            w.resolved = w.resolved.max(Some(resolved));
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

    /// Writes one run: delete file, segment, then the checkpoint, which
    /// records `last_message`, the fingerprint of the run's last message.
    async fn write_run(
        &mut self,
        table: &str,
        topic: &str,
        (partition, partitions): (i32, i32),
        run: Run,
        (last_message, previous_sha256): (Option<String>, Option<String>),
    ) -> Result<String, SinkError> {
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
                let filter =
                    KeyFilter::from_key_json(run.rows.iter().map(|r| r.meta.key_json.as_str()));
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
            previous_sha256,
            merged: None,
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
        Ok(checkpoint.digest())
    }
}

/// A segment-less range is worth a checkpoint when the resolved timestamp
/// it carries advanced and `interval` passed since the partition's last
/// checkpoint.
fn resolved_due(b: &PartitionBuffer, resolved: Option<Hlc>, interval: Duration) -> bool {
    resolved > b.checkpointed_resolved && b.last_checkpoint.is_none_or(|t| t.elapsed() >= interval)
}

/// Whether a resolved-only range after an existing chain is old enough for
/// a real checkpoint: its resolved timestamp is `idle_checkpoint_interval`
/// (in HLC wall time) past the chain's last one. Measured on the data, not
/// on this process's clock, so a sink restarted or rebalanced more often
/// than the interval still writes it (the chain never falls further
/// behind than that, whatever happens to the buffer).
fn idle_checkpoint_due(b: &PartitionBuffer, resolved: Option<Hlc>, config: &SinkConfig) -> bool {
    match (resolved, b.checkpointed_resolved) {
        (Some(r), Some(c)) => {
            i128::from(r.wall) - i128::from(c.wall)
                >= i128::try_from(config.idle_checkpoint_interval.as_nanos()).unwrap_or(i128::MAX)
        }
        (_, None) => true,
        (None, Some(_)) => false,
    }
}

/// Whether the idle progress is worth writing now: its resolved timestamp
/// advanced past what the chain and the progress object hold, and
/// `resolved_checkpoint_interval` passed since this sink's last checkpoint
/// or progress write (or try).
fn progress_due(b: &PartitionBuffer, resolved: Option<Hlc>, config: &SinkConfig) -> bool {
    let (at, recorded) = match b.last_progress {
        Some((at, r)) => (
            Some(b.last_checkpoint.map_or(at, |c| c.max(at))),
            b.checkpointed_resolved.max(r),
        ),
        None => (b.last_checkpoint, b.checkpointed_resolved),
    };
    resolved > recorded && at.is_none_or(|t| t.elapsed() >= config.resolved_checkpoint_interval)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::test_support::buffer;

    fn hlc(secs: i64) -> Option<Hlc> {
        Some(Hlc::new(
            1_760_000_000_000_000_000 + secs * 1_000_000_000,
            0,
        ))
    }

    #[test]
    fn the_idle_checkpoint_is_due_by_the_data_not_by_this_process() {
        let config = SinkConfig::default();
        assert_eq!(config.idle_checkpoint_interval, Duration::from_secs(3600));
        let mut b = buffer(10);
        // No resolved timestamp in the chain yet: a real checkpoint.
        assert!(idle_checkpoint_due(&b, hlc(5), &config));
        b.checkpointed_resolved = hlc(0);
        // A fresh buffer (a restart, a rebalance) changes nothing: what
        // counts is how far the range's resolved timestamp is past the
        // chain's.
        assert!(!idle_checkpoint_due(&b, hlc(3599), &config));
        assert!(idle_checkpoint_due(&b, hlc(3600), &config));
        assert!(!idle_checkpoint_due(&b, None, &config));
        let every = SinkConfig {
            idle_checkpoint_interval: Duration::ZERO,
            ..SinkConfig::default()
        };
        assert!(idle_checkpoint_due(&b, hlc(0), &every));
    }

    #[test]
    fn progress_is_written_past_what_the_object_holds_once_per_interval() {
        let config = SinkConfig::default();
        let mut b = buffer(10);
        b.checkpointed_resolved = hlc(0);
        // Nothing written yet by this sink: due as soon as resolved advances.
        assert!(!progress_due(&b, hlc(0), &config));
        assert!(progress_due(&b, hlc(1), &config));
        // The object holds 50 (read at assignment, or just written): not
        // before resolved passes it, nor before the interval passed.
        let now = std::time::Instant::now();
        b.last_progress = Some((now - Duration::from_secs(60), hlc(50)));
        assert!(!progress_due(&b, hlc(40), &config));
        assert!(progress_due(&b, hlc(51), &config));
        b.last_progress = Some((now, hlc(50)));
        assert!(!progress_due(&b, hlc(51), &config));
        // A try that failed (partition count unknown) also waits the
        // interval before the next.
        b.last_progress = Some((now, None));
        assert!(!progress_due(&b, hlc(51), &config));
    }
}
