//! Why a marker run fails, and which failures are worth retrying:
//! SQLSTATE 40001, timeouts and dropped connections are retried (with
//! jittered exponential backoff by the caller); any other error stops the
//! run with a message naming the table and the step.

use cdc_common::db::DbError;
use cdc_common::retry::Retryable;

/// Why a marker run failed.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// No cutoff configured.
    #[error(
        "table {table}: no cutoff configured (set cutoff.column and one of cutoff.older_than / cutoff.before); \
         the marker never marks a whole table"
    )]
    MissingCutoff {
        /// The table.
        table: String,
    },
    /// An invalid setting.
    #[error("configuration error: {0}")]
    Config(String),
    /// The table does not exist.
    #[error("table {table} not found (looked in schema {schema:?})")]
    TableNotFound {
        /// The table as configured.
        table: String,
        /// The schema searched.
        schema: String,
    },
    /// A configured column does not exist.
    #[error("table {table} has no column {column:?} (configured as {what})")]
    ColumnNotFound {
        /// The table.
        table: String,
        /// The missing column.
        column: String,
        /// The setting that named it.
        what: &'static str,
    },
    /// The table has no primary key to walk in.
    #[error("table {table} has no primary key: the marker walks in primary-key order and cannot run without one")]
    NoPrimaryKey {
        /// The table.
        table: String,
    },
    /// The database could not be reached.
    #[error(transparent)]
    Connect(#[from] DbError),
    /// The table of holds (rows never to mark) could not be made ready.
    #[error(transparent)]
    Holds(#[from] cdc_common::holds::HoldsError),
    /// A statement failed.
    #[error("{context}: {source}")]
    Db {
        /// What the marker was doing.
        context: String,
        /// The driver's error (carries the SQLSTATE).
        #[source]
        source: tokio_postgres::Error,
    },
    /// A retryable failure persisted past the retry limit.
    #[error("{context}: still failing after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// What the marker was doing.
        context: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Box<MarkError>,
    },
}

impl Retryable for MarkError {
    fn is_retryable(&self) -> bool {
        match self {
            MarkError::Connect(e) => e.is_retryable(),
            MarkError::Db { source, .. } => source.is_retryable(),
            // Transient by nature: a later run may well succeed.
            MarkError::RetriesExhausted { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_told_apart() {
        assert!(!MarkError::MissingCutoff { table: "t".into() }.is_retryable());
        assert!(!MarkError::NoPrimaryKey { table: "t".into() }.is_retryable());
        assert!(MarkError::RetriesExhausted {
            context: "x".into(),
            attempts: 3,
            last: Box::new(MarkError::Config("y".into()))
        }
        .is_retryable());
    }
}
