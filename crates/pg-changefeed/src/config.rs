//! Configuration of `cdc-archiver pg-changefeed`.

use std::time::Duration;

use cdc_common::ident::TableName;
use cdc_common::retry::RetryConfig;
use serde::{Deserialize, Serialize};

/// The PostgreSQL changefeed. Every field has a default except `tables`,
/// which must name at least one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgChangefeedConfig {
    /// PostgreSQL URL (wal_level=logical, wal2json installed, a role with
    /// REPLICATION). Default: the local stack,
    /// `postgres://postgres@127.0.0.1:54329/postgres`.
    pub database_url: String,
    /// Logical replication slot, created with the wal2json plugin if
    /// missing. Default: `cdc_archiver`.
    pub slot_name: String,
    /// The tables to feed. Default: none (an error).
    pub tables: Vec<TableConfig>,
    /// Kafka bootstrap servers. Default: `127.0.0.1:9092`.
    pub brokers: String,
    /// How often resolved timestamps are sent to every partition; also how
    /// often an idle database gets a heartbeat transaction. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub resolved_interval: Duration,
    /// Pause after a peek that found nothing. Default: 500ms.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// `upto_nchanges` of one peek (PostgreSQL always finishes the current
    /// transaction, so one peek may return more). Default: 10000.
    pub max_changes_per_peek: i32,
    /// Messages produced but not yet acknowledged by Kafka, at most.
    /// Default: 10000.
    pub max_in_flight: usize,
    /// How long Kafka may take to acknowledge a message before the batch
    /// is retried (from the last advanced slot position). Default: 60s.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Backoff for retryable failures (database or broker down). Default:
    /// the shared retry defaults.
    pub retry: RetryConfig,
    /// Replication-origin pools whose transactions are left out (wal2json
    /// `filter-origins`): each entry covers the origin of that name and its
    /// numbered pool members `<name>_1`, `<name>_2`, … (as the purger's
    /// `replication_origin` / `replication_origin_pool` create them), so
    /// the purger's deletes do not come back as delete events. Names are
    /// resolved to origin ids before every peek; an origin created later is
    /// covered from then on. An empty list sends every transaction.
    /// Default: `["cdc_archiver_purger"]`
    /// ([`cdc_common::db::PURGER_REPLICATION_ORIGIN`], the purger's
    /// default).
    pub filter_origins: Vec<String>,
    /// Create the replication slot even though the topics already hold
    /// messages, i.e. an earlier slot of this changefeed is gone (dropped,
    /// or lost with a failover): the changes made in between never reach
    /// Kafka, so marked rows they touched must be re-touched afterwards
    /// (`cdc-archiver retouch`). Without it such a start is refused.
    /// Default: false (flag `--recreate-slot`).
    #[serde(default)]
    pub recreate_slot: bool,
}

impl Default for PgChangefeedConfig {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:54329/postgres".to_owned(),
            slot_name: "cdc_archiver".to_owned(),
            tables: Vec::new(),
            brokers: "127.0.0.1:9092".to_owned(),
            resolved_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            max_changes_per_peek: 10_000,
            max_in_flight: 10_000,
            delivery_timeout: Duration::from_secs(60),
            retry: RetryConfig::default(),
            filter_origins: vec![cdc_common::db::PURGER_REPLICATION_ORIGIN.to_owned()],
            recreate_slot: false,
        }
    }
}

/// One fed table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `table` or `schema.table` (schema defaults to `public`).
    pub name: TableName,
    /// Kafka topic. Default: the table's name without schema, as
    /// CockroachDB names changefeed topics.
    #[serde(default)]
    pub topic: Option<String>,
    /// Like a CockroachDB CDC query `WHERE <column>`: inserts and updates
    /// are sent only when the new row has this boolean column true.
    /// Default: none (every change is sent).
    #[serde(default)]
    pub filter_column: Option<String>,
    /// Send deletes (the purger's deletes included). Default: true.
    #[serde(default = "yes")]
    pub emit_deletes: bool,
}

fn yes() -> bool {
    true
}

impl TableConfig {
    /// The topic this table's messages go to.
    pub fn topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| self.name.default_archive_name())
    }
}

impl PgChangefeedConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), crate::ChangefeedError> {
        let bad = |m: String| Err(crate::ChangefeedError::Config(m));
        if self.tables.is_empty() {
            return bad("`tables` is empty: name at least one table to feed".into());
        }
        if self.slot_name.is_empty()
            || !self
                .slot_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return bad(format!(
                "slot_name {:?}: PostgreSQL slot names use only lower-case letters, digits and _",
                self.slot_name
            ));
        }
        if self.max_changes_per_peek < 1 || self.max_in_flight < 1 {
            return bad("max_changes_per_peek and max_in_flight must be at least 1".into());
        }
        if let Some(o) = self.filter_origins.iter().find(|o| o.is_empty()) {
            return bad(format!(
                "filter_origins {o:?}: an origin name is never empty (use an empty list to filter nothing)"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut topics: std::collections::HashMap<String, String> =
            std::collections::HashMap::new();
        for t in &self.tables {
            let key = (t.name.schema_or_public().to_owned(), t.name.name.clone());
            if !seen.insert(key) {
                return bad(format!("table {} is listed twice", t.name));
            }
            if let Some(other) = topics.insert(t.topic(), t.name.to_string()) {
                return bad(format!(
                    "tables {other} and {} both go to topic {:?}: one topic (and one archive) per table; \
                     set `topic` on one of them",
                    t.name,
                    t.topic()
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
    fn two_tables_never_share_a_topic() {
        let c: PgChangefeedConfig =
            toml::from_str("tables = [{ name = \"a.t\" }, { name = \"b.t\" }]").unwrap();
        assert_eq!(
            (c.tables[0].topic(), c.tables[1].topic()),
            ("a.t".to_owned(), "b.t".to_owned())
        );
        c.validate().unwrap();
        let c: PgChangefeedConfig = toml::from_str(
            "tables = [{ name = \"a.t\", topic = \"x\" }, { name = \"b.t\", topic = \"x\" }]",
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("both go to topic"), "{err}");
    }

    #[test]
    fn parses_and_defaults() {
        let c: PgChangefeedConfig = toml::from_str(
            r#"
            tables = [{ name = "public.payments", filter_column = "archived" }, { name = "b", topic = "t", emit_deletes = false }]
            resolved_interval = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(c.slot_name, "cdc_archiver");
        assert_eq!(c.resolved_interval, Duration::from_secs(2));
        assert_eq!(c.tables[0].topic(), "payments");
        assert!(c.tables[0].emit_deletes);
        assert_eq!(c.tables[1].topic(), "t");
        assert!(!c.tables[1].emit_deletes);
        assert_eq!(
            c.filter_origins,
            [cdc_common::db::PURGER_REPLICATION_ORIGIN]
        );
        c.validate().unwrap();
        let c: PgChangefeedConfig =
            toml::from_str("tables = [{ name = \"t\" }]\nfilter_origins = []").unwrap();
        assert!(c.filter_origins.is_empty());
        c.validate().unwrap();
        let c: PgChangefeedConfig =
            toml::from_str("tables = [{ name = \"t\" }]\nfilter_origins = [\"\"]").unwrap();
        assert!(c.validate().is_err());
        let err = toml::from_str::<PgChangefeedConfig>("tabels = []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tabels"), "{err}");
        assert!(PgChangefeedConfig::default().validate().is_err());
    }
}
