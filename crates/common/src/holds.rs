//! Holds: rows that must stay in their table, whatever the cutoff says.
//!
//! A row is held when someone needs it in the table: `restore` put it back,
//! or an application set its `archived` flag back to false after it was
//! archived (a legal hold; the purger records the hold when it finds such a
//! row). The marker never marks a held row, so no later run archives and
//! deletes it again, until `cdc-archiver holds release` lets it go.
//!
//! Holds live in the database, next to the rows they protect, in one table
//! per archived table: `cdc_archiver."holds:<schema>.<table>"`, keyed by
//! the row's primary key as `jsonb_build_array(<key columns>)::text`,
//! always computed by the database from the row's own values (so the text
//! is the same whoever writes or reads it, under the pinned session
//! settings). One table per archived table keeps every statement free of
//! literal values: the marker's condition is a plain `NOT EXISTS` against
//! a quoted identifier.
//!
//! Guarantee: [`not_held`] is part of every condition the marker writes
//! under, so a row with a hold is never marked (and so never archived
//! again, never deleted).

use tokio_postgres::Client;

use crate::db::DbError;
use crate::ident::quote_ident;

/// The schema holding every holds table.
pub const SCHEMA: &str = "cdc_archiver";

/// Prefix of a holds table's name.
const PREFIX: &str = "holds:";

/// The holds table's own name for `schema.table` (unquoted): PostgreSQL
/// cuts identifiers at 63 bytes, so a longer one is shortened on a
/// character boundary and suffixed with a hash of the full name.
pub fn table_name(schema: &str, table: &str) -> String {
    let full = format!("{PREFIX}{schema}.{table}");
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a, 64 bits: stable across versions and platforms.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut cut = 63 - 17;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &full[..cut])
}

/// `"cdc_archiver"."holds:<schema>.<table>"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!(
        "{}.{}",
        quote_ident(SCHEMA),
        quote_ident(&table_name(schema, table))
    )
}

/// The key text of a row of `schema.table` (whose key columns are `keys`),
/// referring to its columns through the table's qualified name (so that no
/// column of the holds table can capture them).
pub fn key_expr(schema: &str, table: &str, keys: &[String]) -> String {
    let t = format!("{}.{}", quote_ident(schema), quote_ident(table));
    key_expr_of(&t, keys)
}

/// As [`key_expr`], with the columns referred to through `alias`.
pub fn key_expr_of(alias: &str, keys: &[String]) -> String {
    let cols: Vec<String> = keys
        .iter()
        .map(|k| format!("{alias}.{}", quote_ident(k)))
        .collect();
    format!("jsonb_build_array({})::text", cols.join(", "))
}

/// The row of `schema.table` has no hold (see [`not_held_in`]).
pub fn not_held(schema: &str, table: &str, keys: &[String]) -> String {
    not_held_in(&qualified(schema, table), &key_expr(schema, table, keys))
}

/// `EXISTS (…)`: a row whose key text is `key` has a hold in the holds
/// table `holds` (qualified).
pub fn held_in(holds: &str, key: &str) -> String {
    format!("EXISTS (SELECT 1 FROM {holds} AS cdc_hold WHERE cdc_hold.hold_key = {key})")
}

/// A row whose key text is `key` has no hold in the holds table `holds`:
/// `(NOT EXISTS (SELECT 1 FROM holds) OR NOT EXISTS (… hold_key = key))`.
/// The first test is an InitPlan, evaluated once per statement with the
/// statement's snapshot (the one the per-row test reads too), so with no
/// hold at all no row builds its key text: the same answer, and most
/// tables hold nothing.
pub fn not_held_in(holds: &str, key: &str) -> String {
    format!(
        "(NOT EXISTS (SELECT 1 FROM {holds}) OR NOT {})",
        held_in(holds, key)
    )
}

/// The statements that create the holds table of `schema.table`.
pub fn ddl(schema: &str, table: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; \
         CREATE TABLE IF NOT EXISTS {t} (hold_key text PRIMARY KEY, hold_reason text NOT NULL, \
         held_at timestamptz NOT NULL DEFAULT now(), held_by text NOT NULL DEFAULT current_user)",
        s = quote_ident(SCHEMA),
        t = qualified(schema, table)
    )
}

/// Whether the holds table of `schema.table` exists.
pub async fn exists(client: &Client, schema: &str, table: &str) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2",
            &[&SCHEMA, &table_name(schema, table)],
        )
        .await?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Creates the holds table of `schema.table` if it does not exist. A role
/// that may not create it gets an error naming the statements to run once.
pub async fn ensure(client: &Client, schema: &str, table: &str) -> Result<(), HoldsError> {
    if exists(client, schema, table).await? {
        return Ok(());
    }
    let ddl = ddl(schema, table);
    match client.batch_execute(&ddl).await {
        Ok(()) => Ok(()),
        // Another session created it first.
        Err(e)
            if e.code()
                .is_some_and(|c| c.code() == "23505" || c.code() == "42P07") =>
        {
            Ok(())
        }
        Err(source) => Err(HoldsError::Create { ddl, source }),
    }
}

/// Makes the holds table of `schema.table` ready for a stage that checks
/// holds: `Ok(true)` when it exists (or, with `create`, was created) and
/// this role may read it; `Ok(false)` when it does not exist and cannot be
/// created here, so no row of the table is held (the stage goes on; a
/// warning names the statements that create it); an error when it exists
/// but this role may not read it (holds would be ignored: refused, with
/// the GRANT that fixes it).
pub async fn prepare(
    client: &Client,
    schema: &str,
    table: &str,
    create: bool,
) -> Result<bool, HoldsError> {
    if !exists(client, schema, table).await? {
        if !create {
            return Ok(false);
        }
        if let Err(e) = ensure(client, schema, table).await {
            tracing::warn!(error = %e,
                "no holds table, and this role cannot create it: no row of the table is held; \
                 create it once to use holds (restore, `cdc-archiver holds`, legal holds)");
            return Ok(false);
        }
    }
    let q = qualified(schema, table);
    let readable: bool = client
        .query_one(
            "SELECT has_schema_privilege($1, 'USAGE') AND has_table_privilege($2, 'SELECT')",
            &[&SCHEMA, &q],
        )
        .await
        .map_err(DbError::from)?
        .get(0);
    if readable {
        Ok(true)
    } else {
        Err(HoldsError::Unreadable {
            grant: format!(
                "GRANT USAGE ON SCHEMA {} TO <role>; GRANT SELECT, INSERT ON {q} TO <role>;",
                quote_ident(SCHEMA)
            ),
        })
    }
}

/// Holds of `schema.table`: `(key, reason, held at, held by)`, oldest first.
pub async fn list(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String, String, String)>, DbError> {
    let sql = format!(
        "SELECT hold_key, hold_reason, held_at::text, held_by FROM {} ORDER BY held_at, hold_key",
        qualified(schema, table)
    );
    Ok(client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// The primary key of `schema.table`: each column with its declared type
/// (`format_type` with its modifier: a value cast to it is the value as the
/// table stores it), in key order. Both dialects.
pub async fn primary_key(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String)>, DbError> {
    let rows = client
        .query(
            "SELECT k.column_name::text, format_type(a.atttypid, a.atttypmod)::text \
             FROM information_schema.table_constraints c \
             JOIN information_schema.key_column_usage k \
               ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name \
              AND k.table_schema = c.table_schema AND k.table_name = c.table_name \
             JOIN pg_catalog.pg_namespace n ON n.nspname = c.table_schema \
             JOIN pg_catalog.pg_class r ON r.relnamespace = n.oid AND r.relname = c.table_name \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attname = k.column_name \
             WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = $1 AND c.table_name = $2 \
             ORDER BY k.ordinal_position",
            &[&schema, &table],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The key text of the primary-key values `values` (the text of each,
/// cast by the server to its column's declared type): `$1..$n`.
pub fn key_of_values(key: &[(String, String)]) -> String {
    let vals: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::text::{ty}", i + 1))
        .collect();
    format!("jsonb_build_array({})::text", vals.join(", "))
}

/// Every holds table in the database: `(schema, table)` of the archived
/// table it belongs to, as its name records it (a shortened name is
/// returned as it is).
pub async fn tables(client: &Client) -> Result<Vec<String>, DbError> {
    Ok(client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name LIKE 'holds:%' ORDER BY table_name",
            &[&SCHEMA],
        )
        .await?
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            name.strip_prefix(PREFIX).unwrap_or(&name).to_owned()
        })
        .collect())
}

/// Errors of the holds table.
#[derive(Debug, thiserror::Error)]
pub enum HoldsError {
    /// The table could not be created (privileges).
    #[error(
        "cannot create the holds table ({source}); run once as a role that may: {ddl} \
         (cdc-archiver keeps legal holds and restored rows there)"
    )]
    Create {
        /// The statements to run.
        ddl: String,
        /// Why it failed.
        source: tokio_postgres::Error,
    },
    /// The table exists but this role may not read it.
    #[error("this role may not read the holds table, so it would ignore holds; run: {grant}")]
    Unreadable {
        /// The statements that fix it.
        grant: String,
    },
    /// Any other database error.
    #[error(transparent)]
    Db(#[from] DbError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_bounded() {
        assert_eq!(
            qualified("public", "payments"),
            "\"cdc_archiver\".\"holds:public.payments\""
        );
        let long = "t".repeat(80);
        let a = table_name("public", &long);
        assert!(a.len() <= 63, "{a}");
        assert_ne!(a, table_name("public", &format!("{long}x")));
        assert_eq!(a, table_name("public", &long), "stable");
        assert!(table_name("s", &"é".repeat(40)).len() <= 63);
        assert_eq!(
            not_held("public", "my \"t\"", &["id".into(), "region".into()]),
            "(NOT EXISTS (SELECT 1 FROM \"cdc_archiver\".\"holds:public.my \"\"t\"\"\") \
             OR NOT EXISTS (SELECT 1 FROM \"cdc_archiver\".\"holds:public.my \"\"t\"\"\" AS cdc_hold \
             WHERE cdc_hold.hold_key = jsonb_build_array(\"public\".\"my \"\"t\"\"\".\"id\", \
             \"public\".\"my \"\"t\"\"\".\"region\")::text))"
        );
    }
}
