//! What the purger learns from the catalog before deleting anything: the
//! primary-key columns (in key order, with their types) that the archived
//! `_key` JSON arrays map to, and the foreign keys that would make deletes
//! slow (no index on the referencing columns: every delete scans the child
//! table) or fail (`ON DELETE RESTRICT` / `NO ACTION` with child rows).
//! Queries `pg_catalog`, which PostgreSQL and CockroachDB both serve; names
//! are bound as parameters.

use cdc_common::ident::{quote_ident, TableName};
use serde::Serialize;
use tokio_postgres::Client;

use crate::sql::KeyColumn;
use crate::PurgeError;

/// The table as the purger needs it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Primary-key columns in key order.
    pub keys: Vec<KeyColumn>,
}

fn db(context: &str) -> impl FnOnce(tokio_postgres::Error) -> PurgeError {
    let context = context.to_owned();
    move |source| PurgeError::Db { context, source }
}

/// Resolves `table`: it must exist, have a primary key and a boolean
/// `archived_column`.
pub async fn resolve(
    client: &Client,
    table: &TableName,
    archived_column: &str,
) -> Result<TableInfo, PurgeError> {
    let schema = table.schema_or_public().to_owned();
    let t = table.to_string();
    let exists = client
        .query_opt(
            "SELECT c.oid::INT8 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table.name],
        )
        .await
        .map_err(db("looking up the table"))?;
    if exists.is_none() {
        return Err(PurgeError::TableNotFound { table: t });
    }

    // information_schema gives the key order portably; pg_attribute the type.
    let keys: Vec<KeyColumn> = client
        .query(
            "SELECT k.column_name::text, \
                    (SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a \
                      JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                      WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = k.column_name::text)::text \
             FROM information_schema.table_constraints c \
             JOIN information_schema.key_column_usage k \
               ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name \
              AND k.table_schema = c.table_schema AND k.table_name = c.table_name \
             WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = $1 AND c.table_name = $2 \
             ORDER BY k.ordinal_position",
            &[&schema, &table.name],
        )
        .await
        .map_err(db("reading the primary key"))?
        .iter()
        .map(|r| KeyColumn { name: r.get(0), sql_type: r.get(1) })
        .collect();
    if keys.is_empty() {
        return Err(PurgeError::NoPrimaryKey { table: t });
    }

    let archived_type: Option<String> = client
        .query_opt(
            "SELECT data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 AND column_name = $3",
            &[&schema, &table.name, &archived_column],
        )
        .await
        .map_err(db("reading the archived column"))?
        .map(|r| r.get(0));
    match archived_type.as_deref() {
        Some("boolean") => {}
        Some(other) => {
            return Err(PurgeError::Config(format!(
                "table {t}: archived_column {archived_column:?} is {other}, expected boolean"
            )))
        }
        None => {
            return Err(PurgeError::Config(format!(
                "table {t} has no column {archived_column:?} (archived_column)"
            )))
        }
    }
    Ok(TableInfo { keys })
}

/// A foreign key that references the purged table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReferencingKey {
    /// Constraint name.
    pub constraint: String,
    /// Child table schema.
    pub child_schema: String,
    /// Child table name.
    pub child_table: String,
    /// Referencing columns, in constraint order.
    pub columns: Vec<String>,
    /// `ON DELETE` action: `no action`, `restrict`, `cascade`, `set null`, `set default`.
    pub on_delete: String,
    /// Whether an index on the child starts with exactly these columns.
    pub indexed: bool,
}

impl ReferencingKey {
    /// The statement that gives the child an index for this foreign key.
    pub fn create_index(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        format!(
            "CREATE INDEX ON {}.{} ({});",
            quote_ident(&self.child_schema),
            quote_ident(&self.child_table),
            cols.join(", ")
        )
    }

    /// Whether a delete of a referenced parent row fails (instead of
    /// cascading or nulling) while child rows exist.
    pub fn blocks_deletes(&self) -> bool {
        matches!(self.on_delete.as_str(), "no action" | "restrict")
    }
}

/// The pre-flight findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Preflight {
    /// Every foreign key referencing the table.
    pub referencing: Vec<ReferencingKey>,
}

impl Preflight {
    /// Foreign keys without an index on their columns.
    pub fn unindexed(&self) -> impl Iterator<Item = &ReferencingKey> {
        self.referencing.iter().filter(|r| !r.indexed)
    }

    /// Foreign keys whose child rows make a delete fail.
    pub fn blocking(&self) -> impl Iterator<Item = &ReferencingKey> {
        self.referencing.iter().filter(|r| r.blocks_deletes())
    }
}

/// Finds the foreign keys that reference `table` and whether each has an
/// index on the child whose leading columns are the referencing columns
/// (in any order: any such index serves the child-side lookup).
pub async fn preflight(client: &Client, table: &TableName) -> Result<Preflight, PurgeError> {
    let schema = table.schema_or_public().to_owned();
    let rows = client
        .query(
            "SELECT con.conname::text, cn.nspname::text, cc.relname::text, con.conrelid::INT8, \
                    con.conkey::INT2[], con.confdeltype::text \
             FROM pg_catalog.pg_constraint con \
             JOIN pg_catalog.pg_class pc ON pc.oid = con.confrelid \
             JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace \
             JOIN pg_catalog.pg_class cc ON cc.oid = con.conrelid \
             JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace \
             WHERE con.contype = 'f' AND pn.nspname = $1 AND pc.relname = $2 \
             ORDER BY cn.nspname, cc.relname, con.conname",
            &[&schema, &table.name],
        )
        .await
        .map_err(db("reading foreign keys that reference the table"))?;
    let mut referencing = Vec::with_capacity(rows.len());
    for r in rows {
        let child_oid: i64 = r.get(3);
        let conkey: Vec<i16> = r.get(4);
        let deltype: String = r.get(5);
        let attrs = client
            .query(
                "SELECT attnum::INT2, attname::text FROM pg_catalog.pg_attribute \
                 WHERE attrelid = $1::INT8::oid AND attnum > 0",
                &[&child_oid],
            )
            .await
            .map_err(db("reading the referencing table's columns"))?;
        let name_of = |n: i16| {
            attrs
                .iter()
                .find(|a| a.get::<_, i16>(0) == n)
                .map(|a| a.get::<_, String>(1))
                .unwrap_or_else(|| n.to_string())
        };
        // int2vector prints as space-separated numbers on both servers.
        let indexes: Vec<Vec<i16>> = client
            .query(
                "SELECT indkey::text FROM pg_catalog.pg_index WHERE indrelid = $1::INT8::oid",
                &[&child_oid],
            )
            .await
            .map_err(db("reading the referencing table's indexes"))?
            .iter()
            .map(|row| {
                row.get::<_, String>(0)
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .collect();
        referencing.push(ReferencingKey {
            constraint: r.get(0),
            child_schema: r.get(1),
            child_table: r.get(2),
            columns: conkey.iter().map(|&n| name_of(n)).collect(),
            on_delete: on_delete_action(&deltype).to_owned(),
            indexed: has_leading_index(&indexes, &conkey),
        });
    }
    Ok(Preflight { referencing })
}

fn on_delete_action(code: &str) -> &'static str {
    match code {
        "r" => "restrict",
        "c" => "cascade",
        "n" => "set null",
        "d" => "set default",
        _ => "no action",
    }
}

/// Whether some index's first `fk.len()` columns are exactly the FK's
/// columns (as a set).
fn has_leading_index(indexes: &[Vec<i16>], fk: &[i16]) -> bool {
    indexes.iter().any(|ix| {
        ix.len() >= fk.len() && {
            let mut lead = ix[..fk.len()].to_vec();
            let mut want = fk.to_vec();
            lead.sort_unstable();
            want.sort_unstable();
            lead == want
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_index_quotes_everything() {
        let r = ReferencingKey {
            constraint: "c".into(),
            child_schema: "public".into(),
            child_table: "child".into(),
            columns: vec!["parent_id".into()],
            on_delete: "no action".into(),
            indexed: false,
        };
        assert_eq!(
            r.create_index(),
            "CREATE INDEX ON \"public\".\"child\" (\"parent_id\");"
        );
        assert!(r.blocks_deletes());
        let r = ReferencingKey {
            child_table: "Odd\"Child".into(),
            columns: vec!["a".into(), "b c".into()],
            ..r
        };
        assert_eq!(
            r.create_index(),
            "CREATE INDEX ON \"public\".\"Odd\"\"Child\" (\"a\", \"b c\");"
        );
    }

    #[test]
    fn leading_columns_in_any_order_count() {
        assert!(has_leading_index(&[vec![3, 2, 5]], &[2, 3]));
        assert!(!has_leading_index(&[vec![1, 2, 3]], &[2, 3]));
        assert!(!has_leading_index(&[vec![2]], &[2, 3]));
        assert!(!has_leading_index(&[], &[2]));
    }
}
