//! The sink's Prometheus metric names, in one place (the README's metrics
//! table lists them with their labels).

/// Counter `{table}`: changefeed events consumed.
pub const EVENTS: &str = "cdc_sink_events_total";
/// Counter `{table}`: row versions archived in checkpointed segments.
pub const ROWS_ARCHIVED: &str = "cdc_sink_rows_archived_total";
/// Counter `{table}`: delete events recorded in delete files.
pub const DELETES_RECORDED: &str = "cdc_sink_deletes_recorded_total";
/// Counter `{table}`: checkpoints written.
pub const CHECKPOINTS: &str = "cdc_sink_checkpoints_total";
/// Counter `{table}`: idle progress objects written (resolved-only ranges).
pub const IDLE_PROGRESS_WRITES: &str = "cdc_sink_idle_progress_writes_total";
/// Counter `{table}`: segments written.
pub const SEGMENTS: &str = "cdc_sink_segments_total";
/// Counter `{table}`: bytes of segments written.
pub const SEGMENT_BYTES: &str = "cdc_sink_segment_bytes_total";
/// Counter `{table}`: messages quarantined (undecodable).
pub const QUARANTINED: &str = "cdc_sink_quarantined_total";
/// Counter: redelivered offsets below a chain's end, dropped.
pub const DUPLICATES_DROPPED: &str = "cdc_sink_duplicates_dropped_total";
/// Counter `{table}`: checkpoint creates lost to another sink (zombie fencing).
pub const CONFLICTS: &str = "cdc_sink_conflicts_total";
/// Counter `{table}`: checkpoints cut inside a PostgreSQL transaction (`open_tail_xid`).
pub const OPEN_TAIL_CHECKPOINTS: &str = "cdc_sink_open_tail_checkpoints_total";
/// Counter: multipart uploads aborted after a failed part.
pub const MULTIPART_ABORTS: &str = "cdc_sink_multipart_aborts_total";
/// Gauge `{topic, partition}`: 1 while this sink consumes the partition.
pub const ASSIGNED: &str = "cdc_sink_assigned";
/// Gauge: bytes buffered over all partitions.
pub const BUFFERED_BYTES: &str = "cdc_sink_buffered_bytes";
/// Gauge `{topic, partition}`: Kafka's high watermark minus the chain's end + 1.
pub const CONSUMER_LAG: &str = "cdc_sink_consumer_lag";
/// Gauge `{topic, partition, reason}`: 1 once the partition stopped.
pub const PARTITION_STOPPED: &str = "cdc_sink_partition_stopped";
/// Gauge `{table, partition}`: seconds since the chain's latest resolved timestamp.
pub const WATERMARK_AGE: &str = "cdc_sink_watermark_age_seconds";
/// Gauge `{topic}`: the topic's partition count, as the broker states it.
pub const TOPIC_PARTITIONS: &str = "cdc_sink_topic_partitions";
/// Gauge `{topic}`: partitions that no member of the sink's group consumes.
pub const UNCONSUMED_PARTITIONS: &str = "cdc_sink_unconsumed_partitions";
/// Gauge: members of the sink's consumer group.
pub const GROUP_MEMBERS: &str = "cdc_sink_group_members";
