//! What the changefeed must know about each table before it starts: the
//! primary key in key order (wal2json lists key columns in table order,
//! CockroachDB keys are in key order), the replica identity, which decides
//! whether `before` can be sent and whether unchanged TOASTed values can be
//! filled in, and the table's columns, so that a change that lacks one is
//! recognised (and not trusted by the purger).

use tokio_postgres::Client;

use crate::config::TableConfig;
use crate::error::ChangefeedError;

/// A configured table, checked against the catalog.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The table's OID (the catalog is re-read by OID while running).
    pub oid: u32,
    /// Schema as stored in the catalog (what wal2json reports).
    pub schema: String,
    /// Table name as stored in the catalog.
    pub name: String,
    /// Primary-key column names in key order.
    pub primary_key: Vec<String>,
    /// `REPLICA IDENTITY FULL`: updates and deletes carry the whole old row.
    pub full_identity: bool,
    /// Every user column (not dropped), in column order: a row version
    /// whose new row lacks one of them is incomplete.
    pub columns: Vec<String>,
    /// The columns PostgreSQL may store out of line (`attlen = -1` and
    /// storage EXTENDED or EXTERNAL): wal2json leaves them out of an
    /// update that did not change them.
    pub toastable: Vec<String>,
}

impl TableInfo {
    /// `"schema"."name"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            cdc_common::ident::quote_ident(&self.schema),
            cdc_common::ident::quote_ident(&self.name)
        )
    }
}

/// The table and its primary-key columns in key order: only the index's
/// key columns (the first `indnkeyatts` of `indkey`; the INCLUDE columns of
/// `PRIMARY KEY (…) INCLUDE (…)` follow them but are not part of the key).
const TABLE_SQL: &str = "\
SELECT c.oid, c.relkind::text, c.relreplident::text,
       ARRAY(SELECT a.attname::text
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary AND k.ord <= i.indnkeyatts
              ORDER BY k.ord)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

/// Replica identity and columns of tables given by OID (also used while
/// running, to notice `ALTER TABLE`s).
const COLUMNS_SQL: &str = "\
SELECT c.oid, c.relreplident::text,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum),
       ARRAY(SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attlen = -1 AND a.attstorage IN ('x', 'e')
              ORDER BY a.attnum)
  FROM pg_class c
 WHERE c.oid = ANY($1::oid[])";

/// The leaf partitions of a partitioned table, at any depth.
const LEAVES_SQL: &str = "\
WITH RECURSIVE tree(oid) AS (
    SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::oid
    UNION ALL
    SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid)
SELECT n.nspname::text, c.relname::text
  FROM tree t JOIN pg_class c ON c.oid = t.oid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind <> 'p'
 ORDER BY 1, 2";

const BOOL_COLUMN_SQL: &str = "\
SELECT a.atttypid = 'bool'::regtype
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped";

/// Replica identity and columns of one table, as [`columns`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// `REPLICA IDENTITY FULL`.
    pub full_identity: bool,
    /// The identity letter (`d`, `f`, `n`, `i`).
    pub identity: String,
    /// Every user column, in column order.
    pub columns: Vec<String>,
    /// The columns that may be stored out of line.
    pub toastable: Vec<String>,
}

/// Reads replica identity and columns of the tables `oids` (tables that no
/// longer exist are absent from the answer).
pub async fn columns(
    client: &Client,
    oids: &[u32],
) -> Result<Vec<(u32, Columns)>, ChangefeedError> {
    let rows = client.query(COLUMNS_SQL, &[&oids]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let identity: String = r.get(1);
            (
                r.get(0),
                Columns {
                    full_identity: identity == "f",
                    identity,
                    columns: r.get(2),
                    toastable: r.get(3),
                },
            )
        })
        .collect())
}

/// Why a table without `REPLICA IDENTITY FULL` that has out-of-line
/// columns cannot be fed, and the fix.
pub fn toast_refusal(quoted_table: &str, toastable: &[String]) -> String {
    let cols = toastable
        .iter()
        .map(|c| cdc_common::ident::quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "has column(s) {cols} that PostgreSQL may store out of line (TOAST), and replica identity \
         DEFAULT: an UPDATE that does not change such a value (the marker's `UPDATE ... SET archived \
         = true` does exactly that) reaches the changefeed without it, so the archived row would \
         lack that column and the purger would delete a row whose archived copy is incomplete. \
         Fix: ALTER TABLE {quoted_table} REPLICA IDENTITY FULL (the old row is then logged whole \
         and fills in unchanged values; `before` is sent too)"
    )
}

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
    let oid: u32 = row.get(0);
    let relkind: String = row.get(1);
    let primary_key: Vec<String> = row.get(3);
    let quoted = format!(
        "{}.{}",
        cdc_common::ident::quote_ident(&schema),
        cdc_common::ident::quote_ident(&name)
    );
    if relkind == "p" {
        let leaves: Vec<String> = client
            .query(LEAVES_SQL, &[&oid])
            .await?
            .iter()
            .map(|r| {
                format!(
                    "{}.{}",
                    cdc_common::ident::quote_ident(r.get(0)),
                    cdc_common::ident::quote_ident(r.get(1))
                )
            })
            .collect();
        return Err(refuse(if leaves.is_empty() {
            "is a partitioned table without partitions: wal2json reports changes under the leaf \
             partitions' names, so configure the leaf partitions once they exist"
                .to_owned()
        } else {
            format!(
                "is a partitioned table: wal2json reports its changes under the leaf partitions' \
                 names, so nothing would be sent for {quoted}. Configure the leaf partitions \
                 instead, each with `topic = {:?}` to keep one topic: {} (and add new partitions \
                 to the configuration when they are created)",
                table.topic(),
                leaves.join(", ")
            )
        }));
    }
    if primary_key.is_empty() {
        return Err(refuse(
            "has no primary key: a changefeed key is the primary key, so a table without one cannot be fed \
             (add a PRIMARY KEY)"
                .into(),
        ));
    }
    let (_, cols) = columns(client, &[oid])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| refuse("vanished while it was being inspected".into()))?;
    match cols.identity.as_str() {
        "d" | "f" => {}
        other => {
            return Err(refuse(format!(
                "replica identity {:?} does not log the primary key of updated and deleted rows: \
                 ALTER TABLE {quoted} REPLICA IDENTITY FULL (or DEFAULT if it has no column \
                 stored out of line)",
                if other == "n" {
                    "NOTHING"
                } else {
                    "USING INDEX"
                }
            )))
        }
    }
    if !cols.full_identity && !cols.toastable.is_empty() {
        return Err(refuse(toast_refusal(&quoted, &cols.toastable)));
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
        oid,
        schema,
        name,
        primary_key,
        full_identity: cols.full_identity,
        columns: cols.columns,
        toastable: cols.toastable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toast_refusal_names_columns_and_fix() {
        let m = toast_refusal(r#""public"."Big T""#, &["doc".into(), "my \"note\"".into()]);
        assert!(m.contains(r#""doc", "my ""note""""#), "{m}");
        assert!(
            m.contains(r#"ALTER TABLE "public"."Big T" REPLICA IDENTITY FULL"#),
            "{m}"
        );
        assert!(m.contains("incomplete"), "{m}");
    }
}
