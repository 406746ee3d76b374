//! What to mark, per table. One `[[marker]]` entry in the TOML config per
//! table; command-line flags override single fields.

use std::time::Duration;

use cdc_common::batching::Batching;
use cdc_common::config::UnknownFields;
use cdc_common::ident::TableName;
use cdc_common::retry::RetryConfig;
use serde::{Deserialize, Serialize};

use crate::MarkError;

/// Which rows are past the cutoff. Exactly one of `older_than` and
/// `before` must be set. Both are bound as query parameters, never spliced
/// into SQL text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoffConfig {
    /// The timestamp (or date) column compared with the cutoff.
    pub column: String,
    /// A SQL interval, e.g. `"90 days"` or `"3 months 2 hours"`: rows with
    /// `column < now() - older_than` are eligible. The server parses it
    /// (`$1::interval`), so every form PostgreSQL and CockroachDB accept
    /// works, and a typo fails the dry run and the first batch alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
    /// An absolute instant (any `timestamptz` literal, e.g.
    /// `"2024-01-01T00:00:00Z"`): rows with `column < before` are eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

/// The cutoff, validated: exactly one bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cutoff {
    /// `column < now() - $n::interval`.
    OlderThan {
        /// The compared column.
        column: String,
        /// The SQL interval text (bound).
        interval: String,
    },
    /// `column < $n::timestamptz`.
    Before {
        /// The compared column.
        column: String,
        /// The timestamp text (bound).
        instant: String,
    },
}

impl Cutoff {
    /// The compared column.
    pub fn column(&self) -> &str {
        match self {
            Cutoff::OlderThan { column, .. } | Cutoff::Before { column, .. } => column,
        }
    }

    /// The value bound as the cutoff parameter.
    pub fn value(&self) -> &str {
        match self {
            Cutoff::OlderThan { interval, .. } => interval,
            Cutoff::Before { instant, .. } => instant,
        }
    }
}

/// How CockroachDB reads candidate keys. Reading in the past (a follower
/// read) does not conflict with foreground writers at all; the UPDATE
/// re-checks every condition at write time, so staleness only means a row
/// that became eligible in the last seconds waits for the next run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CrdbReadAsOf {
    /// `AS OF SYSTEM TIME follower_read_timestamp()` (the default).
    #[default]
    FollowerRead,
    /// `AS OF SYSTEM TIME '-10s'`: recent enough when follower reads are
    /// not licensed.
    TenSecondsAgo,
    /// A current read (contends with writers; for testing).
    Current,
}

/// One table's marker settings. Defaults are documented per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkerConfig {
    /// The table, `name` or `schema.name` (schema defaults to `public`).
    pub table: TableName,
    /// Which rows are past the cutoff. Required: the marker refuses to run
    /// without one, so it never marks a whole table by accident.
    #[serde(default)]
    pub cutoff: Option<CutoffConfig>,
    /// Extra SQL condition ANDed to the cutoff, e.g. `tenant_id <> 42`.
    /// Operator-trusted SQL text from the config file (like the WHERE clause
    /// of a cron job): it is wrapped in parentheses but not parsed or
    /// escaped, so only people who may run SQL on the table may write it.
    /// Default: none.
    #[serde(default)]
    pub predicate: Option<String>,
    /// The boolean column flipped to true. Default: `archived`.
    #[serde(default = "default_archived_column")]
    pub archived_column: String,
    /// Batch sizing and rate limit: `batch_size`, `min_batch_size`,
    /// `target_batch_latency`, `max_rows_per_second`, written beside the
    /// other keys (see [`cdc_common::batching::Batching`]).
    #[serde(flatten)]
    pub batching: Batching,
    /// Server-side timeout of one batch statement; a timeout is retried
    /// with a halved batch. Default: 30s.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Stop after marking this many rows. Default: unlimited.
    #[serde(default)]
    pub max_rows: Option<u64>,
    /// Stop starting new batches after this long. Default: unlimited.
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// Count eligible rows before starting (for the ETA). Default: true.
    #[serde(default = "default_true")]
    pub count_eligible: bool,
    /// Retry policy for SQLSTATE 40001, timeouts and dropped connections.
    /// Default: 50ms doubling to 5s, 10 retries per batch.
    #[serde(default)]
    pub retry: RetryConfig,
    /// CockroachDB only: how candidate keys are read. Default:
    /// `follower_read`.
    #[serde(default)]
    pub crdb_read_as_of: CrdbReadAsOf,
    /// PostgreSQL only: rows found locked by a foreground writer are put
    /// aside and revisited after the walk, this many rounds at most (each
    /// after a short pause). Rows still locked then are reported in the
    /// summary and stay eligible for the next run. Default: 5.
    #[serde(default = "default_revisit_rounds")]
    pub revisit_rounds: u32,
    /// Refuses any key not above (a typo names itself). Keep last.
    #[serde(flatten, skip_serializing)]
    pub unknown: UnknownFields,
}

fn default_archived_column() -> String {
    "archived".to_owned()
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}
fn default_revisit_rounds() -> u32 {
    5
}

impl MarkerConfig {
    /// A config for `table` with every default and no cutoff yet.
    pub fn new(table: TableName) -> Self {
        Self {
            table,
            cutoff: None,
            predicate: None,
            archived_column: default_archived_column(),
            batching: Batching::default(),
            statement_timeout: default_statement_timeout(),
            max_rows: None,
            max_duration: None,
            count_eligible: true,
            retry: RetryConfig::default(),
            crdb_read_as_of: CrdbReadAsOf::default(),
            revisit_rounds: default_revisit_rounds(),
            unknown: UnknownFields,
        }
    }

    /// Checks what can be checked without a database.
    pub fn validate(&self) -> Result<Cutoff, MarkError> {
        let table = self.table.to_string();
        let c = self
            .cutoff
            .as_ref()
            .ok_or_else(|| MarkError::MissingCutoff {
                table: table.clone(),
            })?;
        let cutoff = match (&c.older_than, &c.before) {
            (Some(i), None) => Cutoff::OlderThan {
                column: c.column.clone(),
                interval: i.clone(),
            },
            (None, Some(b)) => Cutoff::Before {
                column: c.column.clone(),
                instant: b.clone(),
            },
            (None, None) => return Err(MarkError::MissingCutoff { table }),
            (Some(_), Some(_)) => {
                return Err(MarkError::Config(format!(
                    "table {table}: cutoff has both `older_than` and `before`; set exactly one"
                )))
            }
        };
        for (what, name) in [
            ("cutoff.column", cutoff.column()),
            ("archived_column", &self.archived_column),
        ] {
            cdc_common::ident::validate_ident(name)
                .map_err(|e| MarkError::Config(format!("table {table}: {what}: {e}")))?;
        }
        self.batching
            .validate("marker")
            .map_err(|e| MarkError::Config(format!("table {table}: {e}")))?;
        if let Some(p) = &self.predicate {
            if p.trim().is_empty() {
                return Err(MarkError::Config(format!(
                    "table {table}: predicate is empty"
                )));
            }
        }
        Ok(cutoff)
    }
}

/// Parses a duration flag the way the config file does (`"30m"`,
/// `"1h 30m"`, `"90 days"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_toml_with_defaults() {
        let cfg: MarkerConfig = toml_from(
            r#"
            table = "public.orders"
            cutoff = { column = "created_at", older_than = "90 days" }
            "#,
        );
        assert_eq!(cfg.batching.batch_size, 500);
        assert_eq!(cfg.archived_column, "archived");
        assert_eq!(cfg.statement_timeout, Duration::from_secs(30));
        assert_eq!(
            cfg.validate().unwrap(),
            Cutoff::OlderThan {
                column: "created_at".into(),
                interval: "90 days".into()
            }
        );
    }

    #[test]
    fn parses_everything() {
        let cfg: MarkerConfig = toml_from(
            r#"
            table = "orders"
            predicate = "tenant <> 4"
            archived_column = "done"
            batch_size = 200
            max_rows_per_second = 1000
            max_rows = 5000
            max_duration = "10m"
            target_batch_latency = "250ms"
            crdb_read_as_of = "ten_seconds_ago"
            [cutoff]
            column = "ts"
            before = "2024-01-01T00:00:00Z"
            [retry]
            max_retries = 3
            "#,
        );
        assert_eq!(cfg.max_duration, Some(Duration::from_secs(600)));
        assert_eq!(
            cfg.batching,
            Batching {
                batch_size: 200,
                min_batch_size: 10,
                target_batch_latency: Duration::from_millis(250),
                max_rows_per_second: Some(1000),
            }
        );
        assert_eq!(cfg.retry.max_retries, 3);
        assert_eq!(cfg.crdb_read_as_of, CrdbReadAsOf::TenSecondsAgo);
        assert!(matches!(cfg.validate().unwrap(), Cutoff::Before { .. }));
    }

    #[test]
    fn unknown_field_is_refused() {
        let err = serde_json::from_value::<MarkerConfig>(serde_json::json!({
            "table": "t", "batch_sise": 5
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("batch_sise"), "{err}");
    }

    #[test]
    fn missing_or_double_cutoff_is_an_error() {
        let cfg = MarkerConfig::new(TableName::parse("orders").unwrap());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("cutoff") && err.contains("orders"), "{err}");
        let mut cfg = cfg;
        cfg.cutoff = Some(CutoffConfig {
            column: "c".into(),
            older_than: None,
            before: None,
        });
        assert!(matches!(
            cfg.validate(),
            Err(MarkError::MissingCutoff { .. })
        ));
        cfg.cutoff = Some(CutoffConfig {
            column: "c".into(),
            older_than: Some("1 day".into()),
            before: Some("x".into()),
        });
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
    }

    #[test]
    fn durations_parse_like_the_config() {
        assert_eq!(
            parse_duration("90 days").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }

    fn toml_from(text: &str) -> MarkerConfig {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .extract()
            .unwrap()
    }
}
