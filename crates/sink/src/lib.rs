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
//!
//! Layout:
//! - [`config`]: the sink's configuration (`SinkConfig`) and its validation.
//! - `startup`: [`run`]: the startup checks and the Kafka consumer, then the
//!   consume loop.
//! - `consume`: the consume loop: messages, Kafka errors, stopped
//!   partitions, timers, shutdown.
//! - `assign`: assignment changes: revoked partitions dropped, assigned ones
//!   loaded from their chain and resumed.
//! - `resume`: where a partition resumes after its chain and which offsets
//!   it accepts (pure).
//! - [`partition`]: the per-partition buffer: runs, counts, cuts (pure);
//!   its `holdback` module: the PostgreSQL transaction hold-back rule.
//! - `flush`: when buffers become checkpoints, and the write order segment
//!   -> checkpoint -> offset commit.
//! - `upload`: object store writes: segments (single or multipart),
//!   quarantine records.
//! - `rewind`: [`rewind`]: a partition's chain made to end earlier, after
//!   checking that no sink runs and Kafka still holds what follows.
//! - `report`: consumer lag and watermark age per tick, the consumer group
//!   check.
//! - [`group`]: the consumer group as the broker sees it.
//! - `kafka`: the consumer context (rebalance callbacks, statistics).
//! - [`metric`]: the sink's metric names.
//! - [`crash`]: the `CDC_SINK_CRASH_AT` test hook (not in release builds).

mod assign;
pub mod config;
mod consume;
pub mod crash;
mod flush;
pub mod group;
mod kafka;
pub mod metric;
pub mod partition;
mod report;
mod resume;
mod rewind;
mod startup;
mod upload;

use cdc_checkpoint::CheckpointError;
use cdc_common::retry::Retryable;
use cdc_common::storage::ArchiveStore;
use rdkafka::error::KafkaError;

pub use config::{SinkConfig, StartPolicy, TopicConfig};
pub use partition::StopReason;
pub use rewind::{rewind, RewindOutcome};
pub use startup::run;

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
