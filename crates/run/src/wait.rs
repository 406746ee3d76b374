//! The wait between marking and purging: until the archive watermark
//! (computed from the checkpoints alone) is strictly past the marker's last
//! write, or `run.wait_timeout`.
//!
//! Guarantee: a wait never ends "reached" unless every partition
//! `0..partitions` of the table's chains has a resolved timestamp past the
//! target. A wait that makes no progress is not silent: every
//! [`REPORT_EVERY`] (and in the report when it times out) it names each
//! partition that has not passed the target, how far behind it is, and,
//! where the config names the sink's consumer group, which member of the
//! group consumes it, or that none does.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cdc_changefeed::Hlc;
use cdc_common::storage::ArchiveStore;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::RunConfig;

/// How often a wait that has not finished logs who it is waiting for.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Where the sinks of a table consume: the `[sink]` section's brokers,
/// consumer group and the topic whose archive table this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkWatch {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// The sinks' consumer group.
    pub group_id: String,
    /// The topic archived into the table.
    pub topic: String,
    /// Extra client properties (TLS, SASL) from `[sink.kafka]`.
    pub kafka: BTreeMap<String, String>,
}

/// A partition that had not passed the target when last looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionWait {
    /// The partition.
    pub partition: i32,
    /// Its chain's latest resolved timestamp (`None`: no checkpoint with
    /// one yet).
    pub resolved: Option<Hlc>,
    /// Who consumes it: `member <client id> at <host>`, `no member of
    /// group <g>`, or why that is not known.
    pub consumer: String,
}

/// Waiting for the archive to catch up with the marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitReport {
    /// The marker's last write: the watermark must be strictly past it.
    /// CockroachDB: the full HLC `cluster_logical_timestamp()` read after
    /// the last batch; PostgreSQL: the server clock read then.
    pub target: Option<Hlc>,
    /// The watermark seen last.
    pub watermark: Option<Hlc>,
    /// Whether it got past the target (`watermark > target`).
    pub reached: bool,
    /// Seconds spent waiting.
    pub waited_secs: f64,
    /// When not reached: the partitions that had not passed the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub behind: Vec<PartitionWait>,
}

impl WaitReport {
    /// The partitions the wait ended behind, in words (empty when none).
    pub fn explain(&self) -> String {
        if self.behind.is_empty() {
            return "Is the sink running?".to_owned();
        }
        let parts: Vec<String> = self
            .behind
            .iter()
            .map(|b| {
                format!(
                    "partition {} (resolved {}; {})",
                    b.partition,
                    b.resolved
                        .map_or_else(|| "none".to_owned(), |r| r.to_string()),
                    b.consumer
                )
            })
            .collect();
        format!("Not past the target: {}.", parts.join(", "))
    }
}

/// Whether the archive watermark is past the marker's last write:
/// strictly, a tie is not passed.
pub fn passed(watermark: Option<Hlc>, target: Hlc) -> bool {
    watermark.is_some_and(|w| w > target)
}

pub(crate) async fn wait_for_watermark(
    store: &ArchiveStore,
    archive_table: &str,
    target: Option<Hlc>,
    cfg: &RunConfig,
    sink: Option<&SinkWatch>,
    shutdown: &CancellationToken,
) -> WaitReport {
    let start = Instant::now();
    let mut report = WaitReport {
        target,
        watermark: None,
        reached: target.is_none(),
        waited_secs: 0.0,
        behind: Vec::new(),
    };
    let Some(target) = target else { return report };
    let mut progress = cdc_checkpoint::Progress::default();
    let mut last_report = Instant::now();
    loop {
        match cdc_checkpoint::progress(store, archive_table).await {
            Ok(p) => {
                report.watermark = p.watermark();
                progress = p;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the archive watermark; retrying"),
        }
        if passed(report.watermark, target) {
            report.reached = true;
            break;
        }
        if start.elapsed() >= cfg.wait_timeout || shutdown.is_cancelled() {
            report.behind = behind(&progress, target, sink).await;
            break;
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            let b = behind(&progress, target, sink).await;
            tracing::warn!(table = %archive_table, target = %target, waited_secs = start.elapsed().as_secs(),
                timeout_secs = cfg.wait_timeout.as_secs(), partitions = progress.partitions,
                behind = %WaitReport { behind: b, ..report.clone() }.explain(),
                "still waiting for the archive to pass the marker's last write");
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.poll_interval) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    report.waited_secs = start.elapsed().as_secs_f64();
    report
}

/// The partitions of `progress` not past `target`, each with who consumes
/// it. A table without any checkpoint is reported as partition 0 (at least
/// one partition must exist).
async fn behind(
    progress: &cdc_checkpoint::Progress,
    target: Hlc,
    sink: Option<&SinkWatch>,
) -> Vec<PartitionWait> {
    let mut lagging = progress.behind(target);
    if progress.partitions == 0 {
        lagging.push((0, None));
    }
    let view = match sink {
        Some(w) => Some((w, describe(w).await)),
        None => None,
    };
    // Partitions the broker knows and the checkpoints do not yet (added to
    // the topic, never checkpointed) are behind too.
    if let Some((w, Ok(v))) = &view {
        let count = v.partitions.get(&w.topic).copied().unwrap_or(0);
        for p in progress.partitions.max(1)..count {
            lagging.push((p, None));
        }
    }
    lagging
        .into_iter()
        .map(|(partition, resolved)| PartitionWait {
            partition,
            resolved,
            consumer: match &view {
                None => "not known who consumes it: the config has no [sink] section".to_owned(),
                Some((_, Err(e))) => format!("consumer unknown: {e}"),
                Some((w, Ok(v))) => match v.owner(&w.topic, partition) {
                    Some(m) => format!("consumed by member {} at {}", m.client_id, m.host),
                    None => format!(
                        "consumed by NO member of group {} ({}, {} member(s))",
                        v.group,
                        v.state,
                        v.members.len()
                    ),
                },
            },
        })
        .collect()
}

async fn describe(w: &SinkWatch) -> Result<cdc_sink::group::GroupView, String> {
    let w = w.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer =
            cdc_sink::group::client_config(&w.brokers, &w.kafka)
                .create()
                .map_err(|e| format!("kafka client: {e}"))?;
        cdc_sink::group::describe(
            rdkafka::consumer::Consumer::client(&consumer),
            &w.group_id,
            std::slice::from_ref(&w.topic),
            Duration::from_secs(5),
        )
        .map_err(|e| format!("the broker did not describe group {}: {e}", w.group_id))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_must_be_strictly_past_the_target() {
        let t = Hlc::new(1_000, 5);
        assert!(!passed(None, t));
        assert!(!passed(Some(t), t), "a tie is not passed");
        assert!(!passed(Some(Hlc::new(1_000, 4)), t));
        assert!(
            passed(Some(Hlc::new(1_000, 6)), t),
            "the logical part counts"
        );
        assert!(passed(Some(Hlc::new(1_001, 0)), t));
    }
}
