//! The purger's SQL, generated once per table. Pure text: no I/O.
//!
//! Every statement takes the batch as a few `text[]` parameters, so a batch
//! of any size is one statement with a fixed parameter count and a plan the
//! server can cache. Each key value is cast from its text to the column's
//! own type without its modifier (the name `format_type(oid, -1)` returned:
//! `bpchar` for `char(3)`, `numeric` for `numeric(12,2)`), so the cast
//! never cuts or rounds the archived text and comparisons use the
//! primary-key index.
//!
//! The guard, row by row, always with `AND archived`:
//! - **CockroachDB** (a version guard): the row's MVCC timestamp equals the
//!   archived event's. A CockroachDB changefeed emits one event per row per
//!   transaction (its final state), so the version names that state.
//! - **PostgreSQL** (a content guard): every column of the current row
//!   prints exactly as the archived row's value printed when the changefeed
//!   read it: `format('%s', col)` (the type's output function, under the
//!   same pinned session settings) equals the archived value's output text
//!   ([`cdc_changefeed::pgvalue::output_text`]), NULL only for NULL. wal2json
//!   sends every change of a transaction, and `xmin` is the same for all of
//!   them (or a subtransaction's), so a version guard could delete a row
//!   whose archived copy is an intermediate state of its transaction (one
//!   that reached another partition, a key re-spelled to an equal value);
//!   equal content means the archive holds exactly what the row is now,
//!   whatever wrote it (a savepoint, `pg_repack`, a transaction whose events
//!   were split over checkpoints or partitions).
//!
//! Two DELETE shapes on CockroachDB: paired ([`PurgeSql::delete`]: keys and
//! versions zipped by `unnest` and joined to the table) and uniform
//! ([`PurgeSql::delete_uniform`], for a batch whose targets share one
//! version: rows the marker's one UPDATE marked share one MVCC timestamp;
//! that version is a scalar parameter and, for a one-column key, the keys
//! an `= ANY(array)` index condition). PostgreSQL has the paired shape only
//! (every row carries its own content).

use cdc_common::db::Dialect;
use cdc_common::ident::quote_ident;

use crate::catalog::ReferencingKey;

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

/// A column the PostgreSQL content guard compares: its name and type oid
/// (the oid the changefeed saw, `atttypid`: a domain's own oid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentColumn {
    /// Column name, unquoted.
    pub name: String,
    /// `pg_attribute.atttypid`.
    pub typeoid: u32,
}

/// The generated statements for one table.
#[derive(Debug, Clone)]
pub struct PurgeSql {
    /// The guarded `DELETE` (its row count is the rows deleted). Parameters:
    /// `$1..$k` key columns (`text[]`), then on CockroachDB the versions
    /// (`text[]`), on PostgreSQL one `text[]` per content column.
    pub delete: String,
    /// CockroachDB: the guarded `DELETE` for a batch whose targets all have
    /// one archived version. Parameters: `$1..$k` key columns (`text[]`),
    /// `$k+1` the version (`text`). `None` on PostgreSQL.
    pub delete_uniform: Option<String>,
    /// For each key given: is the row present, is it marked, does it pass
    /// the guard (`same_version`), does a child row reference it
    /// (`referenced`). Same parameters as `delete`. Used to classify the
    /// rows a DELETE did not remove, and by the dry run.
    pub probe: String,
    /// Number of key columns.
    pub keys: usize,
}

/// The PostgreSQL content guard for `columns` (`d.c0`, `d.c1`, … the
/// archived output texts): each column prints as archived, NULL only where
/// the archive has NULL. `json` keeps its input text, which the changefeed
/// trimmed of surrounding white space: it is compared trimmed.
pub fn content_guard(columns: &[ContentColumn]) -> String {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let col = format!("t.{}", quote_ident(&c.name));
            let text = if c.typeoid == cdc_changefeed::pgvalue::oid::JSON {
                format!("btrim(format('%s', {col}), E' \\t\\n\\r')")
            } else {
                format!("format('%s', {col})")
            };
            // `num_nulls`: whether the value itself is NULL (`IS NULL` is
            // also true for a composite whose every field is NULL).
            format!("(CASE WHEN num_nulls({col}) = 1 THEN d.c{i} IS NULL ELSE {text} IS NOT DISTINCT FROM d.c{i} END)")
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The stored columns' signature: `<length>:<name>:<type oid>` per column,
/// in column order, comma-separated. The DELETE compares it with the
/// catalog's at statement time ([`column_set_check`]), so a column added,
/// dropped or retyped while a purge runs (ALTER TABLE waits for the
/// statement) makes its rows fail the guard instead of being compared
/// without that column.
pub fn signature(columns: &[ContentColumn]) -> String {
    columns
        .iter()
        .map(|c| format!("{}:{}:{}", c.name.chars().count(), c.name, c.typeoid))
        .collect::<Vec<_>>()
        .join(",")
}

/// The catalog's [`signature`] of the table named by parameter `$table`
/// (its quoted name, as text) equals parameter `$sig`: an InitPlan,
/// evaluated once per statement.
pub fn column_set_check(table: usize, sig: usize) -> String {
    format!(
        "(SELECT string_agg(length(a.attname)::text || ':' || a.attname || ':' || a.atttypid::text, ',' \
         ORDER BY a.attnum) FROM pg_catalog.pg_attribute a WHERE a.attrelid = ${table}::text::regclass \
         AND a.attnum > 0 AND NOT a.attisdropped AND COALESCE(to_jsonb(a) ->> 'attgenerated', '') = '') \
         = ${sig}::text"
    )
}

impl PurgeSql {
    /// Builds the statements for `table` (already quoted, e.g.
    /// `"public"."payments"`), its primary key, its archived column and, on
    /// PostgreSQL, the columns the content guard compares (every stored
    /// column of the table; ignored on CockroachDB), and the foreign keys
    /// whose child rows make a delete fail (`NO ACTION`, `RESTRICT`): a row
    /// they still reference is not deleted (the rest of the batch is), and
    /// the probe says so.
    pub fn new(
        dialect: Dialect,
        table_quoted: &str,
        keys: &[KeyColumn],
        archived_column: &str,
        content: &[ContentColumn],
        blocking: &[ReferencingKey],
        holds: Option<&str>,
    ) -> Self {
        let k = keys.len();
        let names: Vec<String> = (0..k).map(|i| format!("k{i}")).collect();
        // The batch's own columns after the keys: the versions, or one per
        // content column.
        let extra: Vec<String> = match dialect {
            Dialect::Cockroach => vec!["v".to_owned()],
            Dialect::Postgres => (0..content.len()).map(|i| format!("c{i}")).collect(),
        };
        let params: Vec<String> = (1..=k + extra.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let columns: Vec<&str> = names.iter().chain(&extra).map(String::as_str).collect();
        // `unnest(a, b, …)` in FROM zips the arrays (PostgreSQL and CockroachDB).
        let batch = format!("unnest({}) AS d({})", params.join(", "), columns.join(", "));
        let join: Vec<String> = keys
            .iter()
            .zip(&names)
            .map(|(c, n)| format!("t.{} = d.{n}::{}", quote_ident(&c.name), c.sql_type))
            .collect();
        let join = join.join(" AND ");
        let key_out: Vec<String> = names.iter().map(|n| format!("d.{n}")).collect();
        let key_out = key_out.join(", ");
        let guard = match dialect {
            Dialect::Cockroach => "t.crdb_internal_mvcc_timestamp = d.v::DECIMAL".to_owned(),
            // After the arrays: the table's name and its column signature.
            Dialect::Postgres => {
                let next = k + extra.len() + 1;
                format!(
                    "{} AND {}",
                    content_guard(content),
                    column_set_check(next, next + 1)
                )
            }
        };
        // A held row is never deleted (see `cdc_common::holds`).
        let key_names: Vec<String> = keys.iter().map(|c| c.name.clone()).collect();
        let held = holds.map(|h| {
            let key = cdc_common::holds::key_expr_of("t", &key_names);
            (
                cdc_common::holds::held_in(h, &key),
                cdc_common::holds::not_held_in(h, &key),
            )
        });
        let referenced = blocking
            .iter()
            .map(ReferencingKey::exists)
            .collect::<Vec<_>>()
            .join(" OR ");
        // Also in the uniform shape: `archived` then carries the clauses.
        let mut archived = format!("t.{}", quote_ident(archived_column));
        if !referenced.is_empty() {
            archived.push_str(&format!(" AND NOT ({referenced})"));
        }
        if let Some((_, not_held)) = &held {
            archived.push_str(&format!(" AND {not_held}"));
        }
        let held = held.map_or_else(
            || "false".to_owned(),
            |(h, _)| format!("COALESCE({h}, false)"),
        );
        let referenced = if referenced.is_empty() {
            "false".to_owned()
        } else {
            format!("COALESCE({referenced}, false)")
        };
        let marked = format!("t.{}", quote_ident(archived_column));
        let delete = format!(
            "DELETE FROM {table_quoted} AS t USING {batch} WHERE {join} AND {guard} AND {archived}"
        );
        let delete_uniform = (dialect == Dialect::Cockroach).then(|| {
            let one = format!("t.crdb_internal_mvcc_timestamp = ${}::text::DECIMAL", k + 1);
            match keys {
                // `= ANY(array)`: an index condition, like `pk IN (…)`. Not
                // for a key that is itself an array (an array of arrays is
                // not an array of its values).
                [c] if !c.sql_type.ends_with(']') => format!(
                    "DELETE FROM {table_quoted} AS t WHERE t.{} = ANY($1::text[]::{}[]) AND {one} AND {archived}",
                    quote_ident(&c.name),
                    c.sql_type
                ),
                _ => {
                    let key_params: Vec<String> =
                        (1..=k).map(|i| format!("${i}::text[]")).collect();
                    format!(
                        "DELETE FROM {table_quoted} AS t USING unnest({}) AS d({}) WHERE {join} AND {one} AND {archived}",
                        key_params.join(", "),
                        names.join(", ")
                    )
                }
            }
        });
        // A primary-key column is never NULL, so a NULL first key column in
        // the outer join means "no such row".
        let present = format!("t.{} IS NOT NULL", quote_ident(&keys[0].name));
        let probe = format!(
            "SELECT {key_out}, {present} AS present, COALESCE({marked}, false) AS marked, \
             COALESCE({guard}, false) AS same_version, ({present} AND {referenced}) AS referenced, \
             ({present} AND {held}) AS held \
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
            &[],
            &[],
            None,
        );
        assert_eq!(
            sql.delete,
            "DELETE FROM \"public\".\"payments\" AS t USING unnest($1::text[], $2::text[], $3::text[]) AS d(k0, k1, v) \
             WHERE t.\"region\" = d.k0::text AND t.\"id\" = d.k1::bigint \
             AND t.crdb_internal_mvcc_timestamp = d.v::DECIMAL AND t.\"archived\""
        );
        assert_eq!(sql.keys, 2);
        assert_eq!(
            sql.delete_uniform.as_deref(),
            Some("DELETE FROM \"public\".\"payments\" AS t USING unnest($1::text[], $2::text[]) AS d(k0, k1) \
             WHERE t.\"region\" = d.k0::text AND t.\"id\" = d.k1::bigint \
             AND t.crdb_internal_mvcc_timestamp = $3::text::DECIMAL AND t.\"archived\"")
        );
        assert!(sql.probe.contains(
            "COALESCE(t.crdb_internal_mvcc_timestamp = d.v::DECIMAL, false) AS same_version"
        ));
        assert!(sql
            .probe
            .contains("LEFT JOIN \"public\".\"payments\" AS t ON t.\"region\" = d.k0::text"));
    }

    #[test]
    fn postgres_delete_guards_every_columns_printed_text() {
        let one = [KeyColumn {
            name: "id".into(),
            sql_type: "numeric".into(),
        }];
        let content = [
            ContentColumn {
                name: "id".into(),
                typeoid: 1700,
            },
            ContentColumn {
                name: "doc".into(),
                typeoid: 114,
            },
        ];
        let sql = PurgeSql::new(
            Dialect::Postgres,
            "\"t\"",
            &one,
            "is \"old\"",
            &content,
            &[],
            None,
        );
        assert_eq!(
            sql.delete,
            format!("DELETE FROM \"t\" AS t USING unnest($1::text[], $2::text[], $3::text[]) AS d(k0, c0, c1) \
             WHERE t.\"id\" = d.k0::numeric \
             AND (CASE WHEN num_nulls(t.\"id\") = 1 THEN d.c0 IS NULL ELSE format('%s', t.\"id\") IS NOT DISTINCT FROM d.c0 END) \
             AND (CASE WHEN num_nulls(t.\"doc\") = 1 THEN d.c1 IS NULL \
             ELSE btrim(format('%s', t.\"doc\"), E' \\t\\n\\r') IS NOT DISTINCT FROM d.c1 END) \
             AND {} AND t.\"is \"\"old\"\"\"",
            column_set_check(4, 5))
        );
        assert_eq!(signature(&content), "2:id:1700,3:doc:114");
        let held = PurgeSql::new(
            Dialect::Postgres,
            "\"t\"",
            &one,
            "archived",
            &content,
            &[],
            Some("\"cdc_archiver\".\"holds:public.t\""),
        );
        assert!(held.delete.ends_with(
            "AND t.\"archived\" AND (NOT EXISTS (SELECT 1 FROM \"cdc_archiver\".\"holds:public.t\") \
             OR NOT EXISTS (SELECT 1 FROM \"cdc_archiver\".\"holds:public.t\" AS cdc_hold \
             WHERE cdc_hold.hold_key = jsonb_build_array(t.\"id\")::text))"
        ), "{}", held.delete);
        assert!(held.probe.contains(") AS held"));
        assert_eq!(
            sql.delete_uniform, None,
            "no version to share on PostgreSQL"
        );
        assert!(sql
            .probe
            .contains("LEFT JOIN \"t\" AS t ON t.\"id\" = d.k0::numeric"));
        assert!(sql
            .probe
            .contains("COALESCE((CASE WHEN num_nulls(t.\"id\") = 1"));
    }

    #[test]
    fn rows_a_child_still_references_are_kept_and_probed() {
        let one = [KeyColumn {
            name: "id".into(),
            sql_type: "bigint".into(),
        }];
        let fk = ReferencingKey {
            constraint: "fk".into(),
            child_schema: "public".into(),
            child_table: "line".into(),
            columns: vec!["order_id".into(), "region".into()],
            parent_columns: vec!["id".into(), "region".into()],
            on_delete: "no action".into(),
            indexed: true,
        };
        let sql = PurgeSql::new(
            Dialect::Cockroach,
            "\"t\"",
            &one,
            "archived",
            &[],
            &[fk],
            None,
        );
        let exists =
            "EXISTS (SELECT 1 FROM \"public\".\"line\" AS c WHERE c.\"order_id\" = t.\"id\" \
                      AND c.\"region\" = t.\"region\")";
        assert!(
            sql.delete
                .ends_with(&format!("AND t.\"archived\" AND NOT ({exists})")),
            "{}",
            sql.delete
        );
        assert!(sql
            .delete_uniform
            .unwrap()
            .ends_with(&format!("AND NOT ({exists})")));
        assert!(
            sql.probe.contains(&format!(
                "(t.\"id\" IS NOT NULL AND COALESCE({exists}, false)) AS referenced"
            )),
            "{}",
            sql.probe
        );
        let plain = PurgeSql::new(
            Dialect::Cockroach,
            "\"t\"",
            &one,
            "archived",
            &[],
            &[],
            None,
        );
        assert!(plain
            .probe
            .contains("(t.\"id\" IS NOT NULL AND false) AS referenced"));
    }

    #[test]
    fn hostile_column_names_stay_quoted() {
        let k = [KeyColumn {
            name: "id\"; DROP TABLE x; --".into(),
            sql_type: "\"My Type\"".into(),
        }];
        let sql = PurgeSql::new(Dialect::Cockroach, "\"t\"", &k, "archived", &[], &[], None);
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
