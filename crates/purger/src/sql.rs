//! The purger's SQL, generated once per table. Pure text: no I/O.
//!
//! Every statement takes the batch as a few `text[]` parameters (one per
//! primary-key column, then the archived versions), so a batch of any size
//! is one statement with a fixed parameter count and a plan the server can
//! cache. Each key value is cast from its text to the column's own type
//! without its modifier (the name `format_type(oid, -1)` returned: `bpchar`
//! for `char(3)`, `numeric` for `numeric(12,2)`), so the cast never cuts or
//! rounds the archived text and comparisons use the primary-key index.
//!
//! Two DELETE shapes, both with the version guard and `AND archived`:
//! - paired ([`PurgeSql::delete`]): keys and versions zipped by `unnest`
//!   and joined to the table, so every key is compared with its own
//!   archived version;
//! - uniform ([`PurgeSql::delete_uniform`]): for a batch whose targets all
//!   have the same archived version (rows the marker's one UPDATE
//!   transaction marked share one `xmin`, one MVCC timestamp), that single
//!   version is a scalar parameter and, for a one-column key, the keys are
//!   an `= ANY(array)` index condition: the same guard, row for row, as the
//!   paired form, and the plan of a plain `DELETE … WHERE pk IN (…)`.

use cdc_common::db::Dialect;
use cdc_common::ident::quote_ident;

/// One primary-key column: its name and its SQL type (as
/// `format_type(oid, -1)` prints it: no modifier, so a cast to it never
/// changes the value; names quoted and qualified where needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    /// Column name, unquoted.
    pub name: String,
    /// Type name, ready for SQL (`integer`, `text`, `"My Type"`, `public.t`).
    pub sql_type: String,
}

/// The generated statements for one table.
#[derive(Debug, Clone)]
pub struct PurgeSql {
    /// The guarded `DELETE` (its row count is the rows deleted). Parameters:
    /// `$1..$k` key columns (`text[]`), `$k+1` versions (`text[]`).
    pub delete: String,
    /// The guarded `DELETE` for a batch whose targets all have one archived
    /// version. Parameters: `$1..$k` key columns (`text[]`), `$k+1` the
    /// version (`text`).
    pub delete_uniform: String,
    /// For each key given: is the row present, is it marked, does its
    /// current version equal the archived one. Same parameters as `delete`.
    /// Used to classify the rows a DELETE did not remove, and by the dry run.
    pub probe: String,
    /// Number of key columns (the version parameter is `$keys+1`).
    pub keys: usize,
}

/// The expression comparing the row's current version with the archived
/// one (`d.v`, text). CockroachDB: the MVCC timestamp of the row's latest
/// write, a DECIMAL whose text is exactly the changefeed's HLC text
/// `wall.logical`. PostgreSQL: the inserting transaction id of the tuple.
pub fn version_guard(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Cockroach => "t.crdb_internal_mvcc_timestamp = d.v::DECIMAL",
        Dialect::Postgres => "t.xmin = d.v::xid",
    }
}

/// [`version_guard`] against one version for the whole batch, parameter
/// `$n` (text).
pub fn uniform_version_guard(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Cockroach => format!("t.crdb_internal_mvcc_timestamp = ${n}::text::DECIMAL"),
        Dialect::Postgres => format!("t.xmin = ${n}::text::xid"),
    }
}

impl PurgeSql {
    /// Builds the statements for `table` (already quoted, e.g.
    /// `"public"."payments"`), its primary key and its archived column.
    pub fn new(
        dialect: Dialect,
        table_quoted: &str,
        keys: &[KeyColumn],
        archived_column: &str,
    ) -> Self {
        let k = keys.len();
        let params: Vec<String> = (1..=k + 1).map(|i| format!("${i}::text[]")).collect();
        let names: Vec<String> = (0..k).map(|i| format!("k{i}")).collect();
        // `unnest(a, b, …)` in FROM zips the arrays (PostgreSQL and CockroachDB).
        let batch = format!(
            "unnest({}) AS d({}, v)",
            params.join(", "),
            names.join(", ")
        );
        let join: Vec<String> = keys
            .iter()
            .zip(&names)
            .map(|(c, n)| format!("t.{} = d.{n}::{}", quote_ident(&c.name), c.sql_type))
            .collect();
        let join = join.join(" AND ");
        let key_out: Vec<String> = names.iter().map(|n| format!("d.{n}")).collect();
        let key_out = key_out.join(", ");
        let guard = version_guard(dialect);
        let archived = format!("t.{}", quote_ident(archived_column));
        let delete = format!(
            "DELETE FROM {table_quoted} AS t USING {batch} WHERE {join} AND {guard} AND {archived}"
        );
        // The uniform shape: the version is `$k+1`, a scalar.
        let one = uniform_version_guard(dialect, k + 1);
        let delete_uniform = match keys {
            // `= ANY(array)`: an index condition, like `pk IN (…)`. Not for
            // a key that is itself an array (an array of arrays is not an
            // array of its values).
            [c] if !c.sql_type.ends_with(']') => format!(
                "DELETE FROM {table_quoted} AS t WHERE t.{} = ANY($1::text[]::{}[]) AND {one} AND {archived}",
                quote_ident(&c.name),
                c.sql_type
            ),
            _ => {
                let key_params: Vec<String> = (1..=k).map(|i| format!("${i}::text[]")).collect();
                format!(
                    "DELETE FROM {table_quoted} AS t USING unnest({}) AS d({}) WHERE {join} AND {one} AND {archived}",
                    key_params.join(", "),
                    names.join(", ")
                )
            }
        };
        // A primary-key column is never NULL, so a NULL first key column in
        // the outer join means "no such row".
        let present = format!("t.{} IS NOT NULL", quote_ident(&keys[0].name));
        let probe = format!(
            "SELECT {key_out}, {present} AS present, COALESCE({archived}, false) AS marked, \
             COALESCE({guard}, false) AS same_version \
             FROM {batch} LEFT JOIN {table_quoted} AS t ON {join}"
        );
        Self {
            delete,
            delete_uniform,
            probe,
            keys: k,
        }
    }
}

/// The baseline the benchmark compares with: a plain `DELETE … WHERE pk IN
/// (…)` with no version guard, no archived check and nothing returned.
pub fn baseline_delete(table_quoted: &str, key: &KeyColumn, rows: usize) -> String {
    let list: Vec<String> = (1..=rows)
        .map(|i| format!("${i}::text::{}", key.sql_type))
        .collect();
    format!(
        "DELETE FROM {table_quoted} WHERE {} IN ({})",
        quote_ident(&key.name),
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<KeyColumn> {
        vec![
            KeyColumn {
                name: "region".into(),
                sql_type: "text".into(),
            },
            KeyColumn {
                name: "id".into(),
                sql_type: "bigint".into(),
            },
        ]
    }

    #[test]
    fn cockroach_delete_guards_the_mvcc_timestamp_and_the_mark() {
        let sql = PurgeSql::new(
            Dialect::Cockroach,
            "\"public\".\"payments\"",
            &keys(),
            "archived",
        );
        assert_eq!(
            sql.delete,
            "DELETE FROM \"public\".\"payments\" AS t USING unnest($1::text[], $2::text[], $3::text[]) AS d(k0, k1, v) \
             WHERE t.\"region\" = d.k0::text AND t.\"id\" = d.k1::bigint \
             AND t.crdb_internal_mvcc_timestamp = d.v::DECIMAL AND t.\"archived\""
        );
        assert_eq!(sql.keys, 2);
        assert_eq!(
            sql.delete_uniform,
            "DELETE FROM \"public\".\"payments\" AS t USING unnest($1::text[], $2::text[]) AS d(k0, k1) \
             WHERE t.\"region\" = d.k0::text AND t.\"id\" = d.k1::bigint \
             AND t.crdb_internal_mvcc_timestamp = $3::text::DECIMAL AND t.\"archived\""
        );
        assert!(sql.probe.contains(
            "COALESCE(t.crdb_internal_mvcc_timestamp = d.v::DECIMAL, false) AS same_version"
        ));
        assert!(sql
            .probe
            .contains("LEFT JOIN \"public\".\"payments\" AS t ON t.\"region\" = d.k0::text"));
    }

    #[test]
    fn postgres_delete_guards_xmin() {
        let one = [KeyColumn {
            name: "id".into(),
            sql_type: "integer".into(),
        }];
        let sql = PurgeSql::new(Dialect::Postgres, "\"t\"", &one, "is \"old\"");
        assert_eq!(
            sql.delete,
            "DELETE FROM \"t\" AS t USING unnest($1::text[], $2::text[]) AS d(k0, v) \
             WHERE t.\"id\" = d.k0::integer AND t.xmin = d.v::xid AND t.\"is \"\"old\"\"\""
        );
        assert_eq!(
            sql.delete_uniform,
            "DELETE FROM \"t\" AS t WHERE t.\"id\" = ANY($1::text[]::integer[]) \
             AND t.xmin = $2::text::xid AND t.\"is \"\"old\"\"\""
        );
        let arr = [KeyColumn {
            name: "tags".into(),
            sql_type: "integer[]".into(),
        }];
        let sql = PurgeSql::new(Dialect::Postgres, "\"t\"", &arr, "archived");
        assert!(
            sql.delete_uniform
                .contains("USING unnest($1::text[]) AS d(k0)")
                && sql.delete_uniform.contains("t.xmin = $2::text::xid"),
            "{}",
            sql.delete_uniform
        );
    }

    #[test]
    fn hostile_column_names_stay_quoted() {
        let k = [KeyColumn {
            name: "id\"; DROP TABLE x; --".into(),
            sql_type: "\"My Type\"".into(),
        }];
        let sql = PurgeSql::new(Dialect::Cockroach, "\"t\"", &k, "archived");
        assert!(
            sql.delete
                .contains("t.\"id\"\"; DROP TABLE x; --\" = d.k0::\"My Type\""),
            "{}",
            sql.delete
        );
    }

    #[test]
    fn baseline_is_a_plain_in_list() {
        let k = KeyColumn {
            name: "id".into(),
            sql_type: "bigint".into(),
        };
        assert_eq!(
            baseline_delete("\"t\"", &k, 3),
            "DELETE FROM \"t\" WHERE \"id\" IN ($1::text::bigint, $2::text::bigint, $3::text::bigint)"
        );
    }
}
