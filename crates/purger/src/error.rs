//! The purger's errors, each saying whether a retry can help.

use cdc_common::retry::Retryable;

/// Why a purge could not run (or stopped). Refused checkpoints are not
/// errors of the whole run: they are listed in the summary, which then is
/// not [`crate::PurgeSummary::ok`].
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The configuration cannot work; fix it and rerun.
    #[error("purger configuration: {0}")]
    Config(String),
    /// The database could not be reached.
    #[error(transparent)]
    Connect(#[from] cdc_common::db::DbError),
    /// A statement failed (after retries when retryable).
    #[error("{context}: {source}")]
    Db {
        /// What the purger was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The table does not exist.
    #[error("table {table} does not exist")]
    TableNotFound {
        /// The configured table.
        table: String,
    },
    /// Without a primary key the archived keys cannot be mapped to rows.
    #[error("table {table} has no primary key; the purger deletes by primary key only")]
    NoPrimaryKey {
        /// The configured table.
        table: String,
    },
    /// Foreign keys reference the table from columns without an index:
    /// every delete would scan the child table.
    #[error(
        "refusing to purge {table}: {} foreign key(s) reference it from unindexed columns, so every delete would scan \
         the referencing table. Create the index(es) first:\n{}\n(or pass --allow-unindexed-foreign-keys)",
        statements.len(),
        statements.join("\n")
    )]
    UnindexedForeignKeys {
        /// The table.
        table: String,
        /// One `CREATE INDEX` per unindexed foreign key.
        statements: Vec<String>,
    },
    /// A primary-key column's type does not round-trip through the text the
    /// archive keeps, so archived keys cannot be trusted to name their row.
    #[error(
        "refusing to purge {table}: primary-key column {column:?} is {sql_type}, whose text form does not \
         reliably cast back to the same value ({reason}); the purger deletes by primary key only"
    )]
    UnsupportedKeyType {
        /// The table.
        table: String,
        /// The primary-key column.
        column: String,
        /// Its type, as `format_type()` names it.
        sql_type: String,
        /// Why the type is refused.
        reason: String,
    },
    /// Foreign keys reference the table with `ON DELETE CASCADE`,
    /// `SET NULL` or `SET DEFAULT`: purging would delete or change rows of
    /// the referencing tables that were never archived.
    #[error(
        "refusing to purge {table}: {} foreign key(s) reference it with an ON DELETE action that deletes or \
         changes the referencing rows, which were never archived:\n{}\nArchive and purge the referencing rows \
         first, or change the constraint(s) to ON DELETE NO ACTION / RESTRICT; if those child changes are \
         intended, pass --allow-cascading-foreign-keys (config: purger.allow_cascading_foreign_keys = true)",
        constraints.len(),
        constraints.join("\n")
    )]
    CascadingForeignKeys {
        /// The table.
        table: String,
        /// One line per foreign key (constraint, child table, columns, action).
        constraints: Vec<String>,
    },
    /// Reading the archive's bookkeeping failed.
    #[error(transparent)]
    Archive(#[from] cdc_checkpoint::CheckpointError),
    /// The storage configuration cannot be opened.
    #[error(transparent)]
    Storage(#[from] cdc_common::storage::StorageError),
}

impl Retryable for PurgeError {
    fn is_retryable(&self) -> bool {
        match self {
            PurgeError::Connect(e) => e.is_retryable(),
            PurgeError::Db { source, .. } => source.is_retryable(),
            PurgeError::Archive(e) => e.is_retryable(),
            PurgeError::Config(_)
            | PurgeError::TableNotFound { .. }
            | PurgeError::NoPrimaryKey { .. }
            | PurgeError::UnindexedForeignKeys { .. }
            | PurgeError::UnsupportedKeyType { .. }
            | PurgeError::CascadingForeignKeys { .. }
            | PurgeError::Storage(_) => false,
        }
    }
}

/// `map_err` for a failed statement: a [`PurgeError::Db`] saying what was
/// being done.
pub(crate) fn db(context: &str) -> impl FnOnce(tokio_postgres::Error) -> PurgeError {
    let context = context.to_owned();
    move |source| PurgeError::Db { context, source }
}
