//! What the purger learns from the catalog before deleting anything: the
//! table's schema (every statement names the table schema-qualified, never
//! through `search_path`), the primary-key columns (in key order, with their
//! types) that the archived `_key` JSON arrays map to, and the foreign keys
//! that would make deletes slow (no usable index on the referencing columns:
//! every delete scans the child table), fail (`ON DELETE RESTRICT` /
//! `NO ACTION` with child rows) or reach rows that were never archived
//! (`ON DELETE CASCADE` / `SET NULL` / `SET DEFAULT`).
//! Queries `pg_catalog`, which PostgreSQL and CockroachDB both serve; names
//! are bound as parameters.

use cdc_common::db::Dialect;
use cdc_common::ident::{quote_ident, TableName};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::db;
use crate::sql::{ContentColumn, KeyColumn};
use crate::PurgeError;

/// The table as the purger needs it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The schema the catalog found the table in: the configured one, or
    /// `public` for an unqualified name (never resolved via `search_path`).
    pub schema: String,
    /// The table's own name.
    pub name: String,
    /// Primary-key columns in key order.
    pub keys: Vec<KeyColumn>,
    /// PostgreSQL: every stored column (not dropped, not generated), in
    /// column order: what the content guard compares. Empty on CockroachDB.
    pub columns: Vec<ContentColumn>,
}

impl TableInfo {
    /// `"schema"."table"`: the name every purger statement uses, so the
    /// table deleted from is the one the catalog checks looked at, whatever
    /// the session's `search_path`.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

/// `"schema"."table"`, both parts quoted.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// Type OIDs (PostgreSQL's, which CockroachDB reports too) of the types
/// whose text form does not reliably cast back to the same stored value.
/// The archive holds each primary-key value as text (the changefeed's JSON),
/// and the DELETE casts that text back to the column's type: a key type
/// whose text depends on the writer's settings, or loses bits, could make
/// the DELETE miss the row (harmless but the row is never purged) or, worse,
/// compare equal to a different row.
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const MONEY: u32 = 790;
const INTERVAL: u32 = 1186;

const BIT: u32 = 1560;
const BIT_ARRAY: u32 = 1561;
const BPCHAR_ARRAY: u32 = 1014;

/// Why a primary-key column's type (by OID) cannot be named on CockroachDB
/// without changing the archived value, if it cannot. CockroachDB's
/// `format_type(oid, -1)` names `bit(n)` plain `bit` and arrays by their
/// element's bare name (`character[]`), which its parser reads as `BIT(1)`
/// and `CHAR(1)[]`: a cast to them would cut the archived text. PostgreSQL
/// names them `"bit"` and `bpchar[]` (no length), which read exactly.
pub fn cockroach_lossy_key_type(oid: u32) -> Option<&'static str> {
    match oid {
        BIT | BIT_ARRAY | BPCHAR_ARRAY => Some(
            "CockroachDB names this type without its length (`bit`, `character[]`), and that name \
             reads back as BIT(1) / CHAR(1)[]: casting the archived key text to it would cut the \
             value, so the DELETE could match another row",
        ),
        _ => None,
    }
}

/// Why a primary-key column's type (by OID) is refused, if it is.
pub fn unreliable_key_type(oid: u32) -> Option<&'static str> {
    match oid {
        FLOAT4 | FLOAT8 => Some(
            "floating-point values are archived as decimal text; whether that text casts back to the \
             identical binary value depends on how the writer formatted it (extra_float_digits, the \
             changefeed's JSON encoder), and NaN / -0 / 0 compare specially",
        ),
        MONEY => Some(
            "money's text form depends on the writing server's lc_monetary (currency symbol, \
             separators, decimals), so the archived text may not cast back, or cast to another amount",
        ),
        INTERVAL => Some(
            "interval's text form depends on the writer's IntervalStyle, and the sql_standard style \
             reads back as a different interval under another style",
        ),
        _ => None,
    }
}

/// Resolves `table`: it must exist (in its schema, `public` when the name
/// is unqualified), have a primary key whose column types round-trip
/// through text, and a boolean `archived_column`.
pub async fn resolve(
    client: &Client,
    dialect: Dialect,
    table: &TableName,
    archived_column: &str,
) -> Result<TableInfo, PurgeError> {
    let schema = table.schema_or_public().to_owned();
    let t = qualified_display(&schema, &table.name);
    let oid: i64 = match client
        .query_opt(
            "SELECT c.oid::INT8 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table.name],
        )
        .await
        .map_err(db("looking up the table"))?
    {
        Some(r) => r.get(0),
        None => return Err(PurgeError::TableNotFound { table: t }),
    };

    // On PostgreSQL straight from pg_index (the primary key's columns in
    // key order), which is fast on any catalog; information_schema's views
    // (portable, CockroachDB's key order) take milliseconds on a busy
    // catalog. pg_attribute and pg_type (of the table found above, by OID)
    // give the type either way.
    //
    // Only the index's key columns: `indkey` also lists the INCLUDE
    // columns of `PRIMARY KEY (…) INCLUDE (…)` after them, which are not
    // part of the key (and not in the changefeed's key arrays);
    // `indnkeyatts` counts the key columns.
    //
    // The type is named without its modifier, `format_type(oid, -1)`, and
    // the archived text is cast to that: the cast must never change the
    // value. With the column's modifier (`format_type(oid, atttypmod)`) a
    // cast would truncate or round text that does not fit (`::character(3)`,
    // `::character varying(3)` and `::bit(3)` cut silently, `::numeric(5,2)`
    // and `::timestamp(0)` round), and `format_type(oid, NULL)` is worse:
    // it names bpchar `character`, which the parser reads as `character(1)`
    // (and bit as `bit`, i.e. `bit(1)`), so `'abc'::character` is `'a'`.
    // Without a modifier the text is read exactly (`bpchar`, `"bit"`,
    // `character varying`, `numeric`, `timestamp without time zone`, and
    // `bpchar[]` for arrays), and the comparison with the column is the
    // type's own equality (for bpchar: trailing blanks insignificant).
    let rows = match dialect {
        Dialect::Postgres => client.query(
            "SELECT a.attname::text, format_type(a.atttypid, -1)::text, a.atttypid::INT8, \
                    ty.typbasetype::INT8, ty.typelem::INT8 \
             FROM pg_catalog.pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
             WHERE i.indrelid = $1::INT8::oid AND i.indisprimary AND k.ord <= i.indnkeyatts \
             ORDER BY k.ord",
            &[&oid],
        ).await,
        Dialect::Cockroach => client.query(
            "SELECT k.column_name::text, format_type(a.atttypid, -1)::text, a.atttypid::INT8, \
                    ty.typbasetype::INT8, ty.typelem::INT8 \
             FROM information_schema.table_constraints c \
             JOIN information_schema.key_column_usage k \
               ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name \
              AND k.table_schema = c.table_schema AND k.table_name = c.table_name \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = $3::INT8::oid AND a.attname::text = k.column_name::text \
             JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
             WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = $1 AND c.table_name = $2 \
             ORDER BY k.ordinal_position",
            &[&schema, &table.name, &oid],
        ).await,
    }
    .map_err(db("reading the primary key"))?;
    let mut keys = Vec::with_capacity(rows.len());
    for r in &rows {
        let column: String = r.get(0);
        let sql_type: String = r.get(1);
        // The type itself, the base type of a domain, the element of an array.
        let cockroach = |oid: u32| match dialect {
            Dialect::Cockroach => cockroach_lossy_key_type(oid),
            Dialect::Postgres => None,
        };
        for oid in [r.get::<_, i64>(2), r.get(3), r.get(4)] {
            let oid = u32::try_from(oid).ok();
            if let Some(reason) = oid.and_then(|o| unreliable_key_type(o).or_else(|| cockroach(o)))
            {
                return Err(PurgeError::UnsupportedKeyType {
                    table: t,
                    column,
                    sql_type,
                    reason: reason.to_owned(),
                });
            }
        }
        keys.push(KeyColumn {
            name: column,
            sql_type,
        });
    }
    if keys.is_empty() {
        return Err(PurgeError::NoPrimaryKey { table: t });
    }

    let archived_type: Option<String> = match dialect {
        Dialect::Postgres => {
            client
                .query_opt(
                    "SELECT format_type(atttypid, NULL)::text FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1::INT8::oid AND attname = $2 AND attnum > 0 AND NOT attisdropped",
                    &[&oid, &archived_column],
                )
                .await
        }
        Dialect::Cockroach => {
            client
                .query_opt(
                    "SELECT data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 AND column_name = $3",
                    &[&schema, &table.name, &archived_column],
                )
                .await
        }
    }
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
    // Generated columns derive from the others (and logical decoding
    // leaves them out); `attgenerated` exists from PostgreSQL 12, read
    // through to_jsonb so older servers answer too.
    let columns = match dialect {
        Dialect::Cockroach => Vec::new(),
        Dialect::Postgres => client
            .query(
                "SELECT a.attname::text, a.atttypid::INT8 FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = $1::INT8::oid AND a.attnum > 0 AND NOT a.attisdropped \
                   AND COALESCE(to_jsonb(a) ->> 'attgenerated', '') = '' \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(db("reading the table's columns"))?
            .iter()
            .map(|r| ContentColumn {
                name: r.get(0),
                typeoid: u32::try_from(r.get::<_, i64>(1)).unwrap_or_default(),
            })
            .collect(),
    };
    Ok(TableInfo {
        schema,
        name: table.name.clone(),
        keys,
        columns,
    })
}

/// `schema.table` for messages.
fn qualified_display(schema: &str, table: &str) -> String {
    TableName {
        schema: Some(schema.to_owned()),
        name: table.to_owned(),
    }
    .to_string()
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
    /// The purged table's columns they reference, in the same order.
    pub parent_columns: Vec<String>,
    /// `ON DELETE` action: `no action`, `restrict`, `cascade`, `set null`, `set default`.
    pub on_delete: String,
    /// Whether a usable index on the child (valid, not partial) starts
    /// with exactly these columns.
    pub indexed: bool,
}

impl ReferencingKey {
    /// `EXISTS (…)`: a row of the child table references the purged
    /// table's row `t`. A child row with a NULL in any referencing column
    /// references nothing (`MATCH SIMPLE`); `=` never matches NULL.
    pub fn exists(&self) -> String {
        let on: Vec<String> = self
            .columns
            .iter()
            .zip(&self.parent_columns)
            .map(|(c, p)| format!("c.{} = t.{}", quote_ident(c), quote_ident(p)))
            .collect();
        format!(
            "EXISTS (SELECT 1 FROM {}.{} AS c WHERE {})",
            quote_ident(&self.child_schema),
            quote_ident(&self.child_table),
            on.join(" AND ")
        )
    }

    /// The statement that gives the child an index for this foreign key.
    /// On PostgreSQL `CREATE INDEX CONCURRENTLY` (builds without blocking
    /// writes to the child; it cannot run inside a transaction block, and a
    /// failed build leaves an invalid index to drop and retry); CockroachDB
    /// builds every index online.
    pub fn create_index(&self, dialect: Dialect) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let verb = match dialect {
            Dialect::Postgres => "CREATE INDEX CONCURRENTLY",
            Dialect::Cockroach => "CREATE INDEX",
        };
        format!(
            "{verb} ON {}.{} ({});",
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

    /// Whether a delete of a referenced parent row deletes or changes child
    /// rows (`ON DELETE CASCADE` / `SET NULL` / `SET DEFAULT`): rows the
    /// archive never proved archived.
    pub fn cascades(&self) -> bool {
        matches!(
            self.on_delete.as_str(),
            "cascade" | "set null" | "set default"
        )
    }

    /// One line for messages: `constraint c on public.child (parent_id) ON DELETE CASCADE`.
    pub fn describe(&self) -> String {
        format!(
            "constraint {} on {}.{} ({}) ON DELETE {}",
            quote_ident(&self.constraint),
            self.child_schema,
            self.child_table,
            self.columns.join(", "),
            self.on_delete.to_uppercase()
        )
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

    /// Foreign keys whose `ON DELETE` action deletes or changes child rows.
    pub fn cascading(&self) -> impl Iterator<Item = &ReferencingKey> {
        self.referencing.iter().filter(|r| r.cascades())
    }
}

/// Finds the foreign keys that reference `table` (in its schema, `public`
/// when unqualified) and whether each has a usable index on the child whose
/// leading columns are the referencing columns (in any order: any such
/// index serves the child-side lookup). Invalid indexes (a failed
/// `CREATE INDEX CONCURRENTLY`), partial indexes and expression columns do
/// not count.
pub async fn preflight(client: &Client, table: &TableName) -> Result<Preflight, PurgeError> {
    let schema = table.schema_or_public().to_owned();
    let rows = client
        .query(
            "SELECT con.conname::text, cn.nspname::text, cc.relname::text, con.conrelid::INT8, \
                    con.conkey::INT2[], con.confdeltype::text, con.confrelid::INT8, con.confkey::INT2[] \
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
        let parent_oid: i64 = r.get(6);
        let confkey: Vec<i16> = r.get(7);
        let columns_of = |oid: i64| async move {
            client
                .query(
                    "SELECT attnum::INT2, attname::text FROM pg_catalog.pg_attribute \
                     WHERE attrelid = $1::INT8::oid AND attnum > 0",
                    &[&oid],
                )
                .await
                .map_err(db("reading the columns of a foreign key"))
        };
        let (attrs, parent_attrs) = (columns_of(child_oid).await?, columns_of(parent_oid).await?);
        let name_in = |attrs: &[tokio_postgres::Row], n: i16| {
            attrs
                .iter()
                .find(|a| a.get::<_, i16>(0) == n)
                .map(|a| a.get::<_, String>(1))
                .unwrap_or_else(|| n.to_string())
        };
        let name_of = |n: i16| name_in(&attrs, n);
        // int2vector prints as space-separated numbers on both servers.
        // Only indexes a lookup can use for every child row: valid (not a
        // failed or in-progress concurrent build) and not partial. Only
        // their key columns (the first `indnkeyatts`): INCLUDE (STORING)
        // columns follow them in `indkey` but are not searchable.
        let indexes: Vec<Vec<i16>> = client
            .query(
                "SELECT indkey::text, indnkeyatts::INT8 FROM pg_catalog.pg_index \
                 WHERE indrelid = $1::INT8::oid AND indisvalid AND indpred IS NULL",
                &[&child_oid],
            )
            .await
            .map_err(db("reading the referencing table's indexes"))?
            .iter()
            .map(|row| {
                let key_columns = usize::try_from(row.get::<_, i64>(1)).unwrap_or(0);
                row.get::<_, String>(0)
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .take(key_columns)
                    .collect()
            })
            .collect();
        referencing.push(ReferencingKey {
            constraint: r.get(0),
            child_schema: r.get(1),
            child_table: r.get(2),
            columns: conkey.iter().map(|&n| name_of(n)).collect(),
            parent_columns: confkey.iter().map(|&n| name_in(&parent_attrs, n)).collect(),
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
/// columns (as a set). An expression column (attribute number 0) never
/// matches a column.
fn has_leading_index(indexes: &[Vec<i16>], fk: &[i16]) -> bool {
    indexes.iter().any(|ix| {
        ix.len() >= fk.len() && {
            let mut lead = ix[..fk.len()].to_vec();
            let mut want = fk.to_vec();
            lead.sort_unstable();
            want.sort_unstable();
            !lead.contains(&0) && lead == want
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
            parent_columns: vec!["id".into()],
            on_delete: "no action".into(),
            indexed: false,
        };
        assert_eq!(
            r.create_index(Dialect::Postgres),
            "CREATE INDEX CONCURRENTLY ON \"public\".\"child\" (\"parent_id\");"
        );
        assert_eq!(
            r.create_index(Dialect::Cockroach),
            "CREATE INDEX ON \"public\".\"child\" (\"parent_id\");"
        );
        assert!(r.blocks_deletes());
        assert!(!r.cascades());
        let r = ReferencingKey {
            child_table: "Odd\"Child".into(),
            columns: vec!["a".into(), "b c".into()],
            ..r
        };
        assert_eq!(
            r.create_index(Dialect::Cockroach),
            "CREATE INDEX ON \"public\".\"Odd\"\"Child\" (\"a\", \"b c\");"
        );
        for (action, cascades) in [
            ("cascade", true),
            ("set null", true),
            ("set default", true),
            ("restrict", false),
            ("no action", false),
        ] {
            let r = ReferencingKey {
                on_delete: action.into(),
                ..r.clone()
            };
            assert_eq!(r.cascades(), cascades, "{action}");
            assert_eq!(r.blocks_deletes(), !cascades, "{action}");
        }
    }

    #[test]
    fn unreliable_key_types_are_named() {
        for oid in [FLOAT4, FLOAT8, MONEY, INTERVAL] {
            assert!(unreliable_key_type(oid).is_some(), "{oid}");
        }
        // int8, numeric, text, timestamptz, uuid, date, bpchar, bit: fine.
        for oid in [20, 1700, 25, 1184, 2950, 1082, 1042, BIT] {
            assert!(unreliable_key_type(oid).is_none(), "{oid}");
        }
        // On CockroachDB bit(n) and arrays of char(n) / bit(n) cannot be
        // named without a length that cuts them; bpchar itself can.
        for oid in [BIT, BIT_ARRAY, BPCHAR_ARRAY] {
            assert!(cockroach_lossy_key_type(oid).is_some(), "{oid}");
        }
        for oid in [1042, 1043, 1700, 25, 20] {
            assert!(cockroach_lossy_key_type(oid).is_none(), "{oid}");
        }
    }

    #[test]
    fn qualified_names_are_quoted() {
        assert_eq!(qualified("public", "t"), "\"public\".\"t\"");
        assert_eq!(qualified("my\"s", "a.b"), "\"my\"\"s\".\"a.b\"");
    }

    #[test]
    fn leading_columns_in_any_order_count() {
        assert!(has_leading_index(&[vec![3, 2, 5]], &[2, 3]));
        assert!(!has_leading_index(&[vec![1, 2, 3]], &[2, 3]));
        assert!(!has_leading_index(&[vec![2]], &[2, 3]));
        assert!(!has_leading_index(&[], &[2]));
        // Expression columns (0) never stand in for a column.
        assert!(!has_leading_index(&[vec![0, 2]], &[2, 3]));
        assert!(!has_leading_index(&[vec![0]], &[2]));
        assert!(has_leading_index(&[vec![2, 0]], &[2]));
    }
}
