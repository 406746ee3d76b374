//! What the changefeed must know about each table before it starts: the
//! primary key in key order (wal2json lists key columns in table order,
//! CockroachDB keys are in key order) and the replica identity, which
//! decides whether `before` can be sent.

use tokio_postgres::Client;

use crate::config::TableConfig;
use crate::error::ChangefeedError;

/// A configured table, checked against the catalog.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Schema as stored in the catalog (what wal2json reports).
    pub schema: String,
    /// Table name as stored in the catalog.
    pub name: String,
    /// Primary-key column names in key order.
    pub primary_key: Vec<String>,
    /// `REPLICA IDENTITY FULL`: updates and deletes carry the whole old row.
    pub full_identity: bool,
}

const TABLE_SQL: &str = "\
SELECT c.relreplident::text,
       ARRAY(SELECT a.attname::text
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary
              ORDER BY k.ord)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

const BOOL_COLUMN_SQL: &str = "\
SELECT a.atttypid = 'bool'::regtype
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped";

/// Looks `table` up and refuses what cannot be fed correctly.
pub async fn inspect(client: &Client, table: &TableConfig) -> Result<TableInfo, ChangefeedError> {
    let schema = table.name.schema_or_public().to_owned();
    let name = table.name.name.clone();
    let refuse = |reason: String| ChangefeedError::Table {
        table: table.name.to_string(),
        reason,
    };
    let row = client
        .query_opt(TABLE_SQL, &[&schema, &name])
        .await?
        .ok_or_else(|| refuse(format!("no such table {schema}.{name} in this database")))?;
    let identity: String = row.get(0);
    let primary_key: Vec<String> = row.get(1);
    if primary_key.is_empty() {
        return Err(refuse(
            "has no primary key: a changefeed key is the primary key, so a table without one cannot be fed \
             (add a PRIMARY KEY)"
                .into(),
        ));
    }
    match identity.as_str() {
        "d" | "f" => {}
        other => {
            return Err(refuse(format!(
                "replica identity {:?} does not log the primary key of updated and deleted rows: \
                 ALTER TABLE ... REPLICA IDENTITY DEFAULT (or FULL to also send `before`)",
                if other == "n" {
                    "NOTHING"
                } else {
                    "USING INDEX"
                }
            )))
        }
    }
    if let Some(col) = &table.filter_column {
        let is_bool: Option<bool> = client
            .query_opt(BOOL_COLUMN_SQL, &[&schema, &name, col])
            .await?
            .map(|r| r.get(0));
        match is_bool {
            Some(true) => {}
            Some(false) => return Err(refuse(format!("filter_column {col:?} is not boolean"))),
            None => return Err(refuse(format!("filter_column {col:?} does not exist"))),
        }
    }
    Ok(TableInfo {
        schema,
        name,
        primary_key,
        full_identity: identity == "f",
    })
}
