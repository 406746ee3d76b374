//! What the sink reports on its own: per owned partition, the consumer lag
//! and the watermark age, on every tick; per group check, the partitions of
//! the sink's topics that no member of the group consumes.
//!
//! Guarantee: the lag (Kafka's high watermark - the chain's end + 1) and
//! the watermark age (now - the chain's latest resolved timestamp) of every
//! owned partition, active or stopped, are recomputed on every tick, so a
//! partition that stopped advancing shows it. A partition held by no member
//! of a settled group is logged and counted in
//! `cdc_sink_unconsumed_partitions`; a sink that holds nothing while that
//! lasts for three checks rejoins the group. Reporting never ends the
//! sink: a group check the broker does not answer is skipped.

use std::sync::Arc;
use std::time::Duration;

use cdc_changefeed::Hlc;
use rdkafka::consumer::Consumer;

use crate::consume::Sink;
use crate::{group, metric};

impl Sink {
    /// Recomputes, for every owned partition (active or stopped), the
    /// consumer lag (Kafka's high watermark - the chain's end + 1) and the
    /// watermark age (now - the chain's latest resolved timestamp), so a
    /// partition that stopped advancing shows it.
    pub(crate) fn report_partitions(&self) {
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

    /// Asks the broker who holds the partitions of the sink's topics. A
    /// partition held by no member of a settled group is archived by
    /// nobody: it is logged (with whether this sink holds anything) and
    /// counted in `cdc_sink_unconsumed_partitions`, and a sink that holds
    /// nothing while that lasts for three checks rejoins the group (a
    /// fresh JoinGroup), so that a coordinator that left it out hands it
    /// the partitions.
    pub(crate) async fn check_group(&mut self) {
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
}

pub(crate) fn watermark_age(r: Hlc) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    ((now - r.wall) as f64 / 1e9).max(0.0)
}
