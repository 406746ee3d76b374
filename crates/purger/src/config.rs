//! The purger's settings. One `[purger]` table in the TOML config file,
//! overridden by `CDC_ARCHIVER_PURGER__*` environment variables, overridden
//! in turn by command-line flags.

use std::path::Path;

use cdc_common::batching::Batching;
use cdc_common::config::{ConfigError, UnknownFields};
use cdc_common::ident::TableName;
use cdc_common::retry::RetryConfig;
use cdc_common::storage::StorageConfig;
use serde::{Deserialize, Serialize};

/// Everything the purger needs. Defaults are documented per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurgerConfig {
    /// PostgreSQL or CockroachDB connection URL. Default: the local stack,
    /// `postgres://postgres@127.0.0.1:54329/postgres`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// The table rows are deleted from, `name` or `schema.name`. Required.
    pub table: TableName,
    /// The table's name in the archive (`<archive_table>/checkpoints/…`).
    /// Default: the table's own name (without schema).
    #[serde(default)]
    pub archive_table: Option<String>,
    /// The boolean column the marker sets; the DELETE keeps `AND <column>`
    /// so that un-marking a row protects it. Default: `archived`.
    #[serde(default = "default_archived_column")]
    pub archived_column: String,
    /// Batch sizing and rate limit: `batch_size`, `min_batch_size`,
    /// `target_batch_latency`, `max_rows_per_second`, written beside the
    /// other keys (see [`cdc_common::batching::Batching`]).
    #[serde(flatten)]
    pub batching: Batching,
    /// DELETE batches in flight at once on the purger's one connection
    /// (pipelined: the server starts the next batch without waiting for a
    /// round trip through the purger). Each batch is still its own
    /// statement, transaction and result, retried on its own. 1 sends one
    /// batch at a time. Default: 2.
    #[serde(default = "default_pipeline_depth")]
    pub pipeline_depth: u32,
    /// Retry policy for SQLSTATE 40001, timeouts and dropped connections.
    /// Default: 50ms doubling to 5s, 10 retries per batch.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Keep the purger's deletes out of the changefeed, so they do not flow
    /// back to the sink as delete events. CockroachDB: the session runs
    /// `SET disable_changefeed_replication = true`. PostgreSQL: the session
    /// takes a replication origin of the pool [`Self::replication_origin`]
    /// (`pg_replication_origin_session_setup`), whose transactions the
    /// PostgreSQL changefeed leaves out (`pg_changefeed.filter_origins`);
    /// if it cannot (no privilege, every origin in use), it warns and
    /// purges anyway. Trade-off: a reader of the Kafka topic does not see
    /// these deletes; the purge records in the archive are their audit
    /// trail. Default: true.
    #[serde(default = "default_true")]
    pub disable_changefeed_replication: bool,
    /// PostgreSQL: the replication-origin pool the sessions take one origin
    /// of: `<name>`, `<name>_1`, … `<name>_<pool - 1>`, created when
    /// missing. Must be one of the PostgreSQL changefeed's
    /// `filter_origins`. Default: `cdc_archiver_purger`
    /// ([`cdc_common::db::PURGER_REPLICATION_ORIGIN`], also the
    /// changefeed's default).
    #[serde(default = "default_replication_origin")]
    pub replication_origin: String,
    /// PostgreSQL: origins in the pool, 1 to 64. An origin is active in one
    /// session at a time, so this many purger sessions (concurrent
    /// purgers, or a reconnect whose previous backend has not exited yet)
    /// can each take one. Each origin used holds a replication-state entry
    /// (`max_replication_slots` of them) until it is dropped. Default: 4.
    #[serde(default = "default_replication_origin_pool")]
    pub replication_origin_pool: u32,
    /// Start even though foreign keys reference the table with
    /// `ON DELETE CASCADE` / `SET NULL` / `SET DEFAULT`. Deleting an archived
    /// parent row then deletes or changes child rows that were never
    /// archived; without this the purger refuses to start. The flag
    /// `--allow-cascading-foreign-keys` sets it. Default: false.
    #[serde(default)]
    pub allow_cascading_foreign_keys: bool,
    /// Where the archive lives. Default: see [`StorageConfig`].
    #[serde(default)]
    pub storage: StorageConfig,
    /// Refuses any key not above (a typo names itself). Keep last.
    #[serde(flatten, skip_serializing)]
    pub unknown: UnknownFields,
}

fn default_database_url() -> String {
    "postgres://postgres@127.0.0.1:54329/postgres".to_owned()
}
fn default_archived_column() -> String {
    "archived".to_owned()
}
fn default_pipeline_depth() -> u32 {
    2
}
fn default_true() -> bool {
    true
}
fn default_replication_origin() -> String {
    cdc_common::db::PURGER_REPLICATION_ORIGIN.to_owned()
}
fn default_replication_origin_pool() -> u32 {
    4
}

/// PostgreSQL's limit on replication origin names (`MAX_RONAME_LEN`).
const MAX_ORIGIN_NAME_BYTES: usize = 512;

impl PurgerConfig {
    /// A config for `table` with every default.
    pub fn new(table: TableName) -> Self {
        Self {
            database_url: default_database_url(),
            table,
            archive_table: None,
            archived_column: default_archived_column(),
            batching: Batching::default(),
            pipeline_depth: default_pipeline_depth(),
            retry: RetryConfig::default(),
            disable_changefeed_replication: true,
            replication_origin: default_replication_origin(),
            replication_origin_pool: default_replication_origin_pool(),
            allow_cascading_foreign_keys: false,
            storage: StorageConfig::default(),
            unknown: UnknownFields,
        }
    }

    /// The table's directory name in the archive.
    pub fn archive_table(&self) -> String {
        self.archive_table
            .clone()
            .unwrap_or_else(|| self.table.default_archive_name())
    }

    /// Loads the `[purger]` table of `file` (if any), then the
    /// `CDC_ARCHIVER_PURGER__*` environment, then `overrides` (fields set by
    /// flags; serialize only the ones given). Errors name the field.
    pub fn load<O: Serialize>(file: Option<&Path>, overrides: &O) -> Result<Self, ConfigError> {
        let cfg: Self = cdc_common::config::load_section_with(
            file,
            "purger",
            &["database_url", "storage"],
            overrides,
        )?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what can be checked without a database.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.batching
            .validate("purger")
            .map_err(|message| ConfigError { message })?;
        if self.pipeline_depth == 0 || self.pipeline_depth > 8 {
            return Err(ConfigError {
                message: "field `purger.pipeline_depth`: must be between 1 and 8".into(),
            });
        }
        if self.replication_origin_pool == 0 || self.replication_origin_pool > 64 {
            return Err(ConfigError {
                message: "field `purger.replication_origin_pool`: must be between 1 and 64".into(),
            });
        }
        let longest = cdc_common::db::origin_pool_member(
            &self.replication_origin,
            self.replication_origin_pool - 1,
        );
        if self.replication_origin.is_empty()
            || self.replication_origin.contains('\0')
            || self.replication_origin.starts_with("pg_")
            || longest.len() > MAX_ORIGIN_NAME_BYTES
        {
            return Err(ConfigError {
                message: format!(
                    "field `purger.replication_origin`: {:?} cannot name a PostgreSQL replication origin \
                     (non-empty, no NUL, not starting with `pg_`, which PostgreSQL reserves, and at most \
                     {MAX_ORIGIN_NAME_BYTES} bytes with its pool suffix)",
                    self.replication_origin
                ),
            });
        }
        cdc_common::ident::validate_ident(&self.archived_column).map_err(|e| ConfigError {
            message: format!("field `purger.archived_column`: {e}"),
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        batch_size: Option<u32>,
    }

    #[test]
    fn loads_the_purger_table_and_flags_override_it() {
        let dir = tempfile_dir();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[marker]\nanything = 1\n[purger]\ntable = \"public.payments\"\nbatch_size = 100\n[purger.storage]\nurl = \"file:///tmp/x\"\n",
        )
        .unwrap();
        let cfg = PurgerConfig::load(Some(&file), &Flags::default()).unwrap();
        assert_eq!(cfg.table.to_string(), "public.payments");
        assert_eq!(cfg.batching.batch_size, 100);
        assert_eq!(cfg.archive_table(), "payments");
        assert!(cfg.disable_changefeed_replication);
        assert_eq!(
            cfg.replication_origin,
            cdc_common::db::PURGER_REPLICATION_ORIGIN
        );
        assert_eq!(cfg.replication_origin_pool, 4);
        assert_eq!(cfg, {
            let mut c = PurgerConfig::new(cfg.table.clone());
            c.batching.batch_size = 100;
            c.storage = cfg.storage.clone();
            c
        });
        assert_eq!(cfg.storage.url, "file:///tmp/x");
        let cfg = PurgerConfig::load(
            Some(&file),
            &Flags {
                batch_size: Some(7),
            },
        )
        .unwrap();
        assert_eq!(cfg.batching.batch_size, 7);

        std::fs::write(&file, "[purger]\ntable = \"t\"\nbatch_sise = 5\n").unwrap();
        let err = PurgerConfig::load(Some(&file), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_sise"), "{err}");
        std::fs::write(&file, "[purger]\ntable = \"t\"\nbatch_size = \"many\"\n").unwrap();
        let err = PurgerConfig::load(Some(&file), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
        std::fs::write(&file, "[purger]\nbatch_size = 5\n").unwrap();
        let err = PurgerConfig::load(Some(&file), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("table"), "{err}");
        for bad in [
            "replication_origin = \"pg_mine\"",
            "replication_origin = \"\"",
            "replication_origin_pool = 0",
            "replication_origin_pool = 65",
        ] {
            std::fs::write(&file, format!("[purger]\ntable = \"t\"\n{bad}\n")).unwrap();
            let err = PurgerConfig::load(Some(&file), &Flags::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("replication_origin"), "{bad}: {err}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("cdc-purger-cfg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
