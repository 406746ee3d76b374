//! `restore`: put archived rows back into a table.
//!
//! Idempotent: rows are inserted with `ON CONFLICT DO NOTHING`, so a
//! restore interrupted half-way can simply be run again, and a row that is
//! still (or again) in the table is left exactly as it is.
//!
//! By default the archived flag of a restored row is set to `false`: a
//! restored row is wanted in the database, and leaving it marked would let
//! the next scheduled run archive and purge it again.

use cdc_changefeed::Value;
use cdc_common::ident::{quote_ident, TableName};
use cdc_common::retry::Retryable;
use serde::Serialize;
use tokio_postgres::Client;

use crate::Found;

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Target table (the original or another with the same columns).
    pub table: TableName,
    /// The archived flag column, reset to `false` unless `keep_archived_flag`.
    pub archived_column: String,
    /// Keep the archived flag as it was archived (`true`). Default: false.
    pub keep_archived_flag: bool,
    /// Rows per transaction. Default: 500.
    pub batch_size: usize,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Rows handed to restore.
    pub rows: u64,
    /// Rows inserted.
    pub inserted: u64,
    /// Rows whose key was already in the table (left untouched).
    pub already_present: u64,
    /// Transactions committed.
    pub batches: u64,
}

/// Errors of a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target table does not exist.
    #[error("restore target table {0} does not exist")]
    NoTable(String),
    /// An archived column has no counterpart in the target table.
    #[error("archived column {column:?} does not exist in restore target {table}; restore into a table with the archived columns")]
    MissingColumn {
        /// Target table.
        table: String,
        /// The column.
        column: String,
    },
    /// The database refused a batch.
    #[error("restoring into {table}: {source}")]
    Db {
        /// Target table.
        table: String,
        /// Driver error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl Retryable for RestoreError {
    fn is_retryable(&self) -> bool {
        match self {
            RestoreError::Db { source, .. } => source.is_retryable(),
            RestoreError::NoTable(_) | RestoreError::MissingColumn { .. } => false,
        }
    }
}

/// Target columns and their SQL types, from the catalog.
const COLUMNS_SQL: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
     FROM pg_catalog.pg_attribute a \
     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Number(t) | Value::Json(t) => Some(t.clone()),
    }
}

/// The INSERT for one batch: one text array per column, unnested and cast
/// to the column's type by the server, so every value is a bound
/// parameter and exact text (a NUMERIC never passes through a float).
fn insert_sql(table: &TableName, columns: &[(String, String)]) -> String {
    let names: Vec<String> = columns.iter().map(|(n, _)| quote_ident(n)).collect();
    let arrays: Vec<String> = (1..=columns.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("u.c{i}::{ty}"))
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT DO NOTHING",
        table.quoted(),
        names.join(", "),
        casts.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// Writes `rows` into `opts.table`, a transaction per batch.
pub async fn restore(
    client: &mut Client,
    rows: &[Found],
    opts: &RestoreOptions,
) -> Result<RestoreSummary, RestoreError> {
    let mut summary = RestoreSummary {
        rows: rows.len() as u64,
        ..Default::default()
    };
    if rows.is_empty() {
        return Ok(summary);
    }
    let db = |source| RestoreError::Db {
        table: opts.table.to_string(),
        source,
    };
    let catalog = client
        .query(COLUMNS_SQL, &[&opts.table.quoted()])
        .await
        .map_err(|e| {
            match e
                .as_db_error()
                .map(|d| d.code().code().to_owned())
                .as_deref()
            {
                Some("42P01") => RestoreError::NoTable(opts.table.to_string()),
                _ => db(e),
            }
        })?;
    let types: std::collections::HashMap<String, String> = catalog
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();

    // Columns of the archived rows, in the first row's order.
    let mut columns: Vec<(String, String)> = Vec::new();
    for (name, _) in &rows[0].row.columns {
        let ty = types.get(name).ok_or_else(|| RestoreError::MissingColumn {
            table: opts.table.to_string(),
            column: name.clone(),
        })?;
        columns.push((name.clone(), ty.clone()));
    }
    let sql = insert_sql(&opts.table, &columns);
    let stmt = client.prepare(&sql).await.map_err(db)?;

    for chunk in rows.chunks(opts.batch_size.max(1)) {
        let mut arrays: Vec<Vec<Option<String>>> =
            vec![Vec::with_capacity(chunk.len()); columns.len()];
        for f in chunk {
            for (i, (name, _)) in columns.iter().enumerate() {
                let v = f
                    .row
                    .columns
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v);
                let text = if *name == opts.archived_column && !opts.keep_archived_flag {
                    Some("false".to_owned())
                } else {
                    v.and_then(value_text)
                };
                arrays[i].push(text);
            }
        }
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
            .iter()
            .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let tx = client.transaction().await.map_err(db)?;
        let inserted = tx.execute(&stmt, &params).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        summary.inserted += inserted;
        summary.already_present += chunk.len() as u64 - inserted;
        summary.batches += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_quotes_identifiers_and_binds_values() {
        let t = TableName::parse("public.Odd \"Table\"").unwrap();
        let sql = insert_sql(
            &t,
            &[
                ("id".into(), "uuid".into()),
                ("a\"b".into(), "numeric".into()),
            ],
        );
        assert_eq!(
            sql,
            "INSERT INTO \"public\".\"Odd \"\"Table\"\"\" (\"id\", \"a\"\"b\") SELECT u.c0::uuid, u.c1::numeric \
             FROM unnest($1::text[], $2::text[]) AS u(c0, c1) ON CONFLICT DO NOTHING"
        );
    }
}
