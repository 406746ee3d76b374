//! Errors of the PostgreSQL changefeed, each saying whether a retry can help.

use cdc_common::retry::Retryable;

/// Everything that can stop the changefeed.
#[derive(Debug, thiserror::Error)]
pub enum ChangefeedError {
    /// The configuration cannot work (no tables, a bad name, a bad option).
    #[error("invalid pg-changefeed configuration: {0}")]
    Config(String),
    /// A configured table cannot be fed: missing, no primary key, ...
    #[error("table {table}: {reason}")]
    Table {
        /// The table as configured.
        table: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The replication slot exists but is not a wal2json slot of this database.
    #[error("replication slot {slot}: {reason}")]
    Slot {
        /// Slot name.
        slot: String,
        /// What is wrong.
        reason: String,
    },
    /// A PostgreSQL call failed.
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// Opening the session failed.
    #[error(transparent)]
    Connect(#[from] cdc_common::db::DbError),
    /// wal2json produced something this changefeed cannot read.
    #[error("cannot read wal2json output at LSN {lsn}: {reason}")]
    Wal2json {
        /// LSN of the offending change.
        lsn: String,
        /// What was wrong.
        reason: String,
    },
    /// The Kafka topic does not exist or has no partitions.
    #[error("Kafka topic {topic}: {reason}")]
    Topic {
        /// Topic name.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// A Kafka client or delivery error.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The idempotent producer raised a fatal error (with
    /// `enable.gapless.guarantee`: a message failed in a way that would
    /// leave a gap before later messages of its partition). The producer
    /// cannot be used any more, and the changefeed stops rather than
    /// carry on with a new one, so that an operator sees it.
    #[error(
        "Kafka producer fatal error {code}: {reason}. The changefeed stopped: a message could not \
         be delivered without risking a gap before later messages of its partition (the sink \
         relies on each partition's order). The replication slot was not advanced past the last \
         transaction Kafka acknowledged in full, so nothing is lost: restarting the changefeed \
         sends everything after it again (at least once)"
    )]
    KafkaFatal {
        /// librdkafka's underlying error code.
        code: String,
        /// librdkafka's description.
        reason: String,
    },
}

impl Retryable for ChangefeedError {
    fn is_retryable(&self) -> bool {
        match self {
            // 55006: the slot is still held, typically by the backend of a
            // killed predecessor that has not noticed yet; it lets go.
            ChangefeedError::Db(e) => {
                e.is_retryable()
                    || e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
            }
            ChangefeedError::Connect(e) => e.is_retryable(),
            // A broker that is down or a delivery that timed out heals;
            // the messages are re-sent because the slot was not advanced.
            ChangefeedError::Kafka(e) => !matches!(
                e,
                rdkafka::error::KafkaError::ClientCreation(_)
                    | rdkafka::error::KafkaError::Canceled
            ),
            // A topic may be created by an operator while we wait.
            ChangefeedError::Topic { .. } => true,
            // The producer is unusable, and a gap may be at stake: stop.
            ChangefeedError::KafkaFatal { .. } => false,
            ChangefeedError::Config(_)
            | ChangefeedError::Table { .. }
            | ChangefeedError::Slot { .. }
            | ChangefeedError::Wal2json { .. } => false,
        }
    }
}
