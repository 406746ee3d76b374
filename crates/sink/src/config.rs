//! `SinkConfig`: what the `sink` command reads from its TOML file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cdc_common::retry::RetryConfig;
use cdc_common::storage::StorageConfig;
use serde::{Deserialize, Serialize};

/// One consumed topic and the archive table it feeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Kafka topic.
    pub name: String,
    /// Archive table name (the folder under the archive root). Default: the topic name.
    #[serde(default)]
    pub table: Option<String>,
    /// CDC queries (bare envelope) only: the column that carries
    /// `event_op()`, i.e. `<name>` in `SELECT ..., event_op() AS <name> FROM t`.
    /// It is removed from the row and sets the event's operation (so a CDC
    /// query delete is recognised as one). Must match the query exactly.
    /// Default: none: every column is a table column (a real column named
    /// `op` is archived like any other) and bare rows are upserts; deletes
    /// of such a feed then show up as rows whose `archived` column is null
    /// (counted as not archived).
    #[serde(default)]
    pub op_column: Option<String>,
}

impl TopicConfig {
    /// The archive table name.
    pub fn table(&self) -> &str {
        self.table.as_deref().unwrap_or(&self.name)
    }
}

/// Where a partition without any checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPolicy {
    /// At the earliest offset still in Kafka (the low watermark), which the
    /// chain's first checkpoint records as its `first_offset`. If retention
    /// already removed messages, those are knowingly not archived: choosing
    /// this is the operator's decision. Default.
    #[default]
    Earliest,
    /// Only at offset 0: a fresh chain on a partition whose low watermark
    /// is above 0 stops with `offset_gap` instead of starting.
    Zero,
}

/// Configuration of `cdc-archiver sink`. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Kafka bootstrap servers. Default: `127.0.0.1:9092`.
    pub brokers: String,
    /// Consumer group; sinks sharing it share the partitions. Default: `cdc-archiver-sink`.
    pub group_id: String,
    /// Topics to archive (`[[topics]] name = "payments"`, optional `table`). Default: none (required).
    pub topics: Vec<TopicConfig>,
    /// Boolean column that marks a row as ready to archive; rows where it is
    /// not `true` are counted (`not_archived`) but not archived. Default: `archived`.
    pub archived_column: String,
    /// Flush a partition's buffer at this many rows. Default: 50 000.
    pub flush_rows: usize,
    /// Flush a partition's buffer at this many (estimated) bytes. Default: 64 MiB.
    pub flush_bytes: u64,
    /// Flush a partition's buffer when its oldest event is this old, even
    /// without new data (also moves the watermark of resolved-only
    /// partitions). Default: 30s.
    #[serde(with = "humantime_serde")]
    pub flush_age: Duration,
    /// A partition whose buffered range holds no archivable row gets a
    /// (segment-less) checkpoint only when its resolved timestamp advanced
    /// and this long has passed since its last checkpoint (or, for ranges
    /// with deletes / unmarked rows / quarantined messages, when the range
    /// is `flush_age` old). Bounds the chain's growth from resolved-only
    /// traffic to one checkpoint per interval per partition, while keeping
    /// the archive watermark (what `cdc-archiver run` waits for) at most
    /// this far behind. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub resolved_checkpoint_interval: Duration,
    /// A partition whose chain exists and whose buffered range holds
    /// nothing but resolved messages does not get a checkpoint per
    /// `resolved_checkpoint_interval`: its resolved timestamp goes to one
    /// object per partition, `<table>/progress/p<N>.json`, replaced in
    /// place, which the watermark reads beside the chain. A real
    /// (segment-less) checkpoint is still written once the range's resolved
    /// timestamp is this far past the chain's (HLC wall time, so restarts
    /// and rebalances do not postpone it), so that a restart resumes from
    /// offsets Kafka still holds: keep it well below the topic's
    /// `retention.ms`. `0s` writes a checkpoint per interval (the chain
    /// then grows by one object per interval on an idle table).
    /// Default: 1h.
    #[serde(with = "humantime_serde")]
    pub idle_checkpoint_interval: Duration,
    /// Bound on buffered bytes over all partitions; past it the sink stops
    /// consuming and flushes the largest buffers. Default: 128 MiB.
    pub memory_budget: u64,
    /// Segments at least this large are uploaded in parts. Default: 16 MiB.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (S3 needs at least 5 MiB). Default: 8 MiB.
    pub multipart_part_size: u64,
    /// Start position of a partition that has no chain yet. Default: `earliest`.
    pub start: StartPolicy,
    /// The archive. Default: `file:///var/lib/cdc-archiver/archive`.
    pub storage: StorageConfig,
    /// Backoff for transient storage errors. Default: see `RetryConfig`.
    pub retry: RetryConfig,
    /// Prometheus endpoint; `None` disables it. When the port is taken
    /// (a second sink on the same machine), the sink serves its metrics on
    /// a free port of the same address instead and logs which; it never
    /// fails to start because of its metrics. Default: `127.0.0.1:9464`.
    pub metrics_addr: Option<SocketAddr>,
    /// Static group membership (`group.instance.id`): a stable name of this
    /// sink instance (a StatefulSet pod name, a systemd instance name).
    /// A restarted sink with the same name takes its old place in the
    /// consumer group at once, with the same partitions and no rebalance;
    /// without it, a killed sink's partitions move only when
    /// `session_timeout` expires. Two live sinks must never share a name
    /// (the broker fences the older one). A static member does not leave
    /// the group on a clean stop either: its partitions wait
    /// `session_timeout` for it before moving to another sink.
    /// Default: none (dynamic membership).
    pub instance_id: Option<String>,
    /// How long the broker waits for a silent sink (killed, partitioned
    /// away) before giving its partitions to the rest of the group
    /// (`session.timeout.ms`; the broker accepts values between its
    /// `group.min.session.timeout.ms`, 6 s by default, and
    /// `group.max.session.timeout.ms`). Default: 10s.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often the sink checks that every partition of its topics is
    /// consumed by some member of its group, and refreshes the topics'
    /// partition counts (a partition added to a topic is picked up within
    /// this interval). Default: 10s.
    #[serde(with = "humantime_serde")]
    pub group_check_interval: Duration,
    /// Identifies this instance in checkpoints. Default: `<host>-<pid>-<uuid>`.
    pub writer_id: Option<String>,
    /// `sink orphans --clean` only deletes orphan segments older than this. Default: 1h.
    #[serde(with = "humantime_serde")]
    pub orphan_grace: Duration,
    /// Extra librdkafka consumer properties (e.g. `security.protocol`).
    /// The ones the sink's guarantees depend on (`enable.auto.commit`,
    /// `enable.auto.offset.store`, `auto.offset.reset`, `group.id`, `partition.assignment.strategy`)
    /// cannot be overridden. Default: none.
    pub kafka: BTreeMap<String, String>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "cdc-archiver-sink".into(),
            topics: Vec::new(),
            archived_column: "archived".into(),
            flush_rows: 50_000,
            flush_bytes: 64 << 20,
            flush_age: Duration::from_secs(30),
            resolved_checkpoint_interval: Duration::from_secs(10),
            idle_checkpoint_interval: Duration::from_secs(3600),
            memory_budget: 128 << 20,
            multipart_threshold: 16 << 20,
            multipart_part_size: 8 << 20,
            start: StartPolicy::Earliest,
            storage: StorageConfig::default(),
            retry: RetryConfig::default(),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            group_check_interval: Duration::from_secs(10),
            writer_id: None,
            orphan_grace: Duration::from_secs(3600),
            kafka: BTreeMap::new(),
        }
    }
}

/// Properties the sink sets itself and refuses to take from `kafka`.
pub const PROTECTED_KAFKA_KEYS: [&str; 8] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "group.id",
    "bootstrap.servers",
    // Settings of their own (`instance_id`, `session_timeout`).
    "group.instance.id",
    "session.timeout.ms",
    // The rebalance callback implements the eager protocol.
    "partition.assignment.strategy",
];

impl SinkConfig {
    /// The writer id: configured, or `<host>-<pid>-<uuid>`.
    pub fn writer_id(&self) -> String {
        self.writer_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "host".into());
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("{host}-{}-{}", std::process::id(), &id[..12])
        })
    }

    /// The configuration of `topic`.
    pub fn topic(&self, topic: &str) -> Option<&TopicConfig> {
        self.topics.iter().find(|t| t.name == topic)
    }

    /// The archive table of `topic`.
    pub fn table_of(&self, topic: &str) -> Option<&str> {
        self.topics
            .iter()
            .find(|t| t.name == topic)
            .map(TopicConfig::table)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.topics.is_empty() {
            return Err("`topics` is empty: add [[topics]] name = \"<topic>\"".into());
        }
        if self.flush_rows == 0 || self.flush_bytes == 0 || self.memory_budget == 0 {
            return Err("flush_rows, flush_bytes and memory_budget must be > 0".into());
        }
        if self.archived_column.is_empty() {
            return Err("archived_column must not be empty".into());
        }
        if self
            .instance_id
            .as_deref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return Err(
                "instance_id must not be empty: name this sink instance, or leave the key out for \
                 dynamic membership"
                    .into(),
            );
        }
        if self.session_timeout < Duration::from_secs(1)
            || self.session_timeout > Duration::from_secs(3600)
        {
            return Err(format!(
                "session_timeout {:?} is out of range: use a value between 1s and 1h (brokers accept 6s..30m by default)",
                self.session_timeout
            ));
        }
        if self.group_check_interval < Duration::from_millis(100) {
            return Err("group_check_interval must be at least 100ms".into());
        }
        for k in self.kafka.keys() {
            if PROTECTED_KAFKA_KEYS.contains(&k.as_str()) {
                return Err(format!(
                    "kafka.{k} is set by the sink itself and cannot be overridden"
                ));
            }
        }
        let mut tables: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for t in &self.topics {
            if let Some(other) = tables.insert(t.table(), &t.name) {
                return Err(format!(
                    "topics {other:?} and {:?} both archive into table {:?}: one archive per topic; \
                     set `table` on one of them",
                    t.name,
                    t.table()
                ));
            }
        }
        for t in &self.topics {
            let table = t.table();
            if t.op_column.as_deref() == Some("") {
                return Err(format!(
                    "op_column of topic {:?} must not be empty (leave it out for no op column)",
                    t.name
                ));
            }
            if table.is_empty() || table.contains('/') || table.starts_with('.') {
                return Err(format!(
                    "table name {table:?} of topic {:?} must be a plain folder name",
                    t.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults_and_validation() {
        let c = SinkConfig::default();
        assert_eq!(
            (c.flush_rows, c.flush_bytes, c.flush_age),
            (50_000, 64 << 20, Duration::from_secs(30))
        );
        assert_eq!(
            (c.memory_budget, c.archived_column.as_str()),
            (128 << 20, "archived")
        );
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            (
                c.instance_id.as_deref(),
                c.session_timeout,
                c.group_check_interval
            ),
            (None, Duration::from_secs(10), Duration::from_secs(10))
        );
        assert!(c.validate().unwrap_err().contains("topics"));
        let mut c = SinkConfig {
            topics: vec![TopicConfig {
                name: "payments".into(),
                table: None,
                op_column: None,
            }],
            ..SinkConfig::default()
        };
        c.validate().unwrap();
        assert_eq!(c.table_of("payments"), Some("payments"));
        c.kafka.insert("enable.auto.commit".into(), "true".into());
        assert!(c.validate().unwrap_err().contains("enable.auto.commit"));
        c.kafka.clear();
        c.kafka.insert("group.instance.id".into(), "x".into());
        assert!(c.validate().unwrap_err().contains("group.instance.id"));
        c.kafka.clear();
        c.instance_id = Some(" ".into());
        assert!(c.validate().unwrap_err().contains("instance_id"));
        c.instance_id = Some("sink-0".into());
        c.session_timeout = Duration::from_millis(10);
        assert!(c.validate().unwrap_err().contains("session_timeout"));
        c.session_timeout = Duration::from_secs(6);
        c.validate().unwrap();
        c.topics[0].table = Some("../x".into());
        assert!(c.validate().is_err());
        let id = c.writer_id();
        assert!(id.contains(&std::process::id().to_string()), "{id}");
    }

    #[test]
    fn two_topics_never_share_an_archive_table() {
        let c: SinkConfig = toml::from_str(
            "[[topics]]\nname = \"a\"\ntable = \"t\"\n[[topics]]\nname = \"b\"\ntable = \"t\"",
        )
        .unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("both archive into table"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<SinkConfig>("flush_rowz = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("flush_rowz"), "{err}");
        let c: SinkConfig =
            toml::from_str("flush_age = \"2s\"\n[[topics]]\nname = \"t\"\ntable = \"tt\"").unwrap();
        assert_eq!(
            (c.flush_age, c.table_of("t")),
            (Duration::from_secs(2), Some("tt"))
        );
        assert_eq!(c.resolved_checkpoint_interval, Duration::from_secs(10));
        assert_eq!(c.topic("t").unwrap().op_column, None);
        let c: SinkConfig = toml::from_str(
            "resolved_checkpoint_interval = \"1m\"\n[[topics]]\nname = \"t\"\nop_column = \"kind\"",
        )
        .unwrap();
        assert_eq!(c.resolved_checkpoint_interval, Duration::from_secs(60));
        assert_eq!(c.topic("t").unwrap().op_column.as_deref(), Some("kind"));
    }
}
