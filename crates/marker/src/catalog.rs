//! Resolves the configured table against the catalog: the table must
//! exist, have a primary key (the walk order) and the configured columns.
//! Uses `information_schema`, which PostgreSQL and CockroachDB both serve
//! with the same meaning; names are bound as parameters.

use tokio_postgres::Client;

use crate::config::{Cutoff, MarkerConfig};
use crate::sql::TableSql;
use crate::MarkError;

/// Looks the table up and returns what the SQL generator needs.
pub async fn resolve(
    client: &Client,
    cfg: &MarkerConfig,
    cutoff: &Cutoff,
) -> Result<TableSql, MarkError> {
    let schema = cfg.table.schema_or_public().to_owned();
    let name = cfg.table.name.clone();
    let table = cfg.table.to_string();
    let db = |context: &str| {
        let context = format!("{context} of table {table}");
        move |source| MarkError::Db { context, source }
    };

    let columns: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &name],
        )
        .await
        .map_err(db("reading the columns"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if columns.is_empty() {
        return Err(MarkError::TableNotFound {
            table: table.clone(),
            schema,
        });
    }

    let keys: Vec<String> = client
        .query(
            "SELECT k.column_name::text FROM information_schema.table_constraints c \
             JOIN information_schema.key_column_usage k \
               ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name \
              AND k.table_schema = c.table_schema AND k.table_name = c.table_name \
             WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = $1 AND c.table_name = $2 \
             ORDER BY k.ordinal_position",
            &[&schema, &name],
        )
        .await
        .map_err(db("reading the primary key"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if keys.is_empty() {
        return Err(MarkError::NoPrimaryKey {
            table: table.clone(),
        });
    }

    let type_of = |what: &'static str, column: &str| {
        columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| MarkError::ColumnNotFound {
                table: table.clone(),
                column: column.to_owned(),
                what,
            })
    };
    let archived_type = type_of("archived_column", &cfg.archived_column)?;
    if archived_type != "boolean" {
        return Err(MarkError::Config(format!(
            "table {table}: archived_column {:?} is {archived_type}, expected boolean",
            cfg.archived_column
        )));
    }
    type_of("cutoff.column", cutoff.column())?;

    // Let the server parse the cutoff now, so that a typo fails before the
    // first batch (and in the dry run) with a message naming the setting.
    let (check, what) = match cutoff {
        Cutoff::OlderThan { .. } => ("SELECT $1::text::interval IS NOT NULL", "cutoff.older_than"),
        Cutoff::Before { .. } => ("SELECT $1::text::timestamptz IS NOT NULL", "cutoff.before"),
    };
    let value = cutoff.value().to_owned();
    if let Err(e) = client.query_one(check, &[&value]).await {
        if e.as_db_error().is_some() {
            return Err(MarkError::Config(format!(
                "table {table}: {what} = {value:?} is not understood by the server: {}",
                e.as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default()
            )));
        }
        return Err(MarkError::Db {
            context: format!("checking {what}"),
            source: e,
        });
    }

    Ok(TableSql {
        schema,
        table: name,
        keys,
        archived: cfg.archived_column.clone(),
        cutoff_column: cutoff.column().to_owned(),
        cutoff_is_interval: matches!(cutoff, Cutoff::OlderThan { .. }),
        predicate: cfg.predicate.clone(),
        // Set once the holds table is known to exist.
        holds: false,
    })
}
