//! `restore`: put archived rows back into a table.
//!
//! - **Latest version only.** Of the rows handed in, redelivered copies of
//!   one version are dropped and only the latest archived version of each
//!   key is written (the same choice `retrieve` makes without
//!   `--all-versions`), so restoring the output of an `--all-versions`
//!   look-up never puts an old version back. The summary counts what was
//!   left out.
//! - **Idempotent.** Rows are inserted with `ON CONFLICT DO NOTHING`, so a
//!   restore interrupted half-way can simply be run again, and a row that
//!   is still (or again) in the table is left exactly as it is.
//! - **Column sets.** Rows are grouped by the set of columns they were
//!   archived with (a table whose schema changed while it was archived has
//!   several), and each group is inserted with its own columns: a column
//!   that a row does not have takes the target table's `DEFAULT` (NULL
//!   when it has none), exactly as if the row had been inserted with the
//!   schema it was archived under. Every archived column must exist in the
//!   target, checked for every group before anything is written.
//! - **Values are never changed to fit.** Archived text is cast to each
//!   column's type *without* its modifier (`format_type(oid, -1)`:
//!   `bpchar`, `"bit"`, `numeric`, `character varying`, `timestamp
//!   without time zone`), never with it: the explicit cast
//!   `::varchar(3)`, `::char(3)` or `::bit(3)` cuts a longer value, and
//!   `::numeric(5,2)` or `::timestamp(0)` rounds one. The INSERT's own
//!   assignment to the column then refuses a string too long for it, but
//!   still rounds a number or a time to the column's scale or precision,
//!   so before anything is written every value of a column with a
//!   modifier (numeric, timestamp, timestamptz, time, timetz, interval,
//!   varchar, char, bit, varbit, arrays of them, and domains over them) is
//!   checked: it must be equal, by the type's own `=`, as the type with and
//!   without the modifier. A value that does not fit (a restore into a
//!   narrowed column) is an error naming the column and the row's key,
//!   never a changed value; `char(n)`'s trailing blanks do not count, as
//!   everywhere in SQL. PostgreSQL only: CockroachDB's `format_type` names
//!   some types wrongly without their modifier (`bit(n)` as `bit`, i.e.
//!   `bit(1)`), so there the column's declared type is cast to, unchecked.
//! - **A transaction per batch, retried.** Each batch is one
//!   `INSERT … SELECT FROM unnest(…)` statement, i.e. one transaction;
//!   SQLSTATE 40001 and other transient failures (see
//!   [`cdc_common::retry`]) are retried with jittered backoff, and with
//!   [`restore_url`] a dropped connection is re-opened. A batch whose
//!   commit succeeded but whose answer was lost is harmless to repeat: its
//!   rows then count as already present.
//!
//! By default the archived flag of a restored row is set to `false`: a
//! restored row is wanted in the database, and leaving it marked would let
//! the next scheduled run archive and purge it again.

use std::collections::HashMap;

use cdc_changefeed::Value;
use cdc_common::db::{DbError, Dialect};
use cdc_common::ident::{quote_ident, TableName};
use cdc_common::retry::{RetryConfig, Retryable};
use serde::Serialize;
use tokio_postgres::Client;

use crate::query::{dedupe, latest_per_key, sort_by_key_and_version};
use crate::Found;

mod fit;
mod session;

use fit::{find_misfit, ColumnType, FitCheck};
use session::{with_retry, Session};

/// The `application_name` of restore sessions opened by [`restore_url`].
const APPLICATION_NAME: &str = "cdc-archiver-restore";

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

/// A row restore did not write, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NotRestored {
    /// The row's key, as archived.
    pub key: String,
    /// Why: a row with this primary key is in the table, or another unique
    /// constraint of the table holds a conflicting row.
    pub reason: String,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Rows handed to restore.
    pub rows: u64,
    /// Of those, redelivered copies of a version also handed in (not written).
    pub duplicates_dropped: u64,
    /// Of those, versions older than another version of the same key that
    /// was handed in (not written: only the latest version is restored).
    pub older_versions_skipped: u64,
    /// Rows inserted.
    pub inserted: u64,
    /// Rows not written because the table already holds a conflicting row
    /// (same primary key, or another unique constraint), left untouched.
    pub already_present: u64,
    /// Each of those, with its key and the reason.
    pub not_restored: Vec<NotRestored>,
    /// Holds recorded for the restored rows (with the archived flag reset):
    /// no later run marks them again (`cdc-archiver holds`).
    pub held: u64,
    /// Distinct column sets among the restored rows (one INSERT shape each).
    pub column_sets: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Attempts retried (40001, timeouts, dropped connections).
    pub retries: u64,
}

/// Errors of a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target table does not exist.
    #[error("restore target table {0} does not exist")]
    NoTable(String),
    /// The target table has no primary key.
    #[error("restore target table {0} has no primary key: restore needs one to know which rows it wrote")]
    NoPrimaryKey(String),
    /// The holds table could not be made ready.
    #[error("{0}")]
    Holds(String),
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
    /// An archived value would be changed to fit its target column (cut
    /// to its length, rounded to its scale or precision): nothing was
    /// written.
    #[error(
        "archived value of column {column:?} (key {key}) does not fit restore target {table}'s {sql_type}: \
         the column would round or cut it. Nothing was written; restore into a column that holds it"
    )]
    DoesNotFit {
        /// Target table.
        table: String,
        /// The column.
        column: String,
        /// Its type, with its modifier.
        sql_type: String,
        /// The row's key (the archive's JSON array).
        key: String,
    },
    /// The database could not be reached.
    #[error(transparent)]
    Connect(#[from] DbError),
}

impl Retryable for RestoreError {
    fn is_retryable(&self) -> bool {
        match self {
            RestoreError::Db { source, .. } => source.is_retryable(),
            RestoreError::Connect(e) => e.is_retryable(),
            RestoreError::NoTable(_)
            | RestoreError::NoPrimaryKey(_)
            | RestoreError::Holds(_)
            | RestoreError::MissingColumn { .. }
            | RestoreError::DoesNotFit { .. } => false,
        }
    }
}

/// PostgreSQL: target columns with the type archived text is cast to (the
/// column's type without its modifier), the column's own type (with it),
/// and, for a column whose modifier can change a value (see the module
/// docs), the type to compare with: the base type without modifier,
/// through any domains (a domain's modifier is on the domain, not on the
/// column). Arrays of domains are not looked through.
const COLUMNS_SQL: &str = "WITH RECURSIVE walk(attnum, typ, mod, depth) AS ( \
       SELECT a.attnum, a.atttypid, a.atttypmod, 0 FROM pg_catalog.pg_attribute a \
        WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
     UNION ALL \
       SELECT w.attnum, t.typbasetype, CASE WHEN w.mod = -1 THEN t.typtypmod ELSE w.mod END, w.depth + 1 \
         FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.typ WHERE t.typtype = 'd' \
   ), base AS ( \
       SELECT DISTINCT ON (attnum) attnum, typ, mod FROM walk ORDER BY attnum, depth DESC \
   ) \
   SELECT a.attname::text, format_type(a.atttypid, -1), format_type(a.atttypid, a.atttypmod), \
          CASE WHEN b.mod <> -1 AND (CASE WHEN bt.typelem <> 0 AND bt.typlen = -1 THEN bt.typelem ELSE bt.oid END) \
                    = ANY ('{1700,1114,1184,1083,1266,1186,1043,1042,1560,1562}'::oid[]) \
               THEN format_type(b.typ, -1) END \
     FROM pg_catalog.pg_attribute a \
     JOIN base b ON b.attnum = a.attnum \
     JOIN pg_catalog.pg_type bt ON bt.oid = b.typ \
    WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
    ORDER BY a.attnum";

/// CockroachDB: target columns and their declared types (see the module
/// docs: its names of types without modifier are not all safe to cast to).
const COLUMNS_SQL_COCKROACH: &str =
    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
     format_type(a.atttypid, a.atttypmod), NULL::text \
     FROM pg_catalog.pg_attribute a \
     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

/// The target's primary-key columns, in key order (both dialects).
const PRIMARY_KEY_SQL: &str = "SELECT k.column_name::text \
     FROM information_schema.table_constraints c \
     JOIN information_schema.key_column_usage k \
       ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name \
      AND k.table_schema = c.table_schema AND k.table_name = c.table_name \
     WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = $1 AND c.table_name = $2 \
     ORDER BY k.ordinal_position";

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
/// Rows that conflict with a row already in the table are left out
/// (`ON CONFLICT DO NOTHING`); the statement returns each of them, by its
/// position in the batch, with whether a row with its primary key was
/// there (else another unique constraint conflicted). With `holds`, every
/// row written gets a hold in the same transaction.
fn insert_sql(
    table: &TableName,
    columns: &[(String, String)],
    key: &[(usize, String)],
    holds: Option<&str>,
) -> String {
    let t = table.quoted();
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
    // The key as the table holds it: cast with its declared type (values
    // were checked to fit it exactly), so `char(n)` is padded as stored.
    let batch_key: Vec<String> = key
        .iter()
        .map(|(i, declared)| format!("u.c{i}::{declared}"))
        .collect();
    let row_key: Vec<String> = key.iter().map(|(i, _)| names[*i].clone()).collect();
    let present: Vec<String> = key
        .iter()
        .map(|(i, declared)| format!("t.{} = u.c{i}::{declared}", names[*i]))
        .collect();
    let hold = holds.map_or_else(String::new, |h| {
        format!(
            ", cdc_hold AS (INSERT INTO {h} (hold_key, hold_reason) \
             SELECT k, 'restored from the archive' FROM cdc_ins ON CONFLICT (hold_key) DO NOTHING)"
        )
    });
    format!(
        "WITH u AS (SELECT * FROM unnest({arrays}) WITH ORDINALITY AS u({aliases}, n)), \
         cdc_ins AS (INSERT INTO {t} ({names}) SELECT {casts} FROM u ON CONFLICT DO NOTHING \
         RETURNING jsonb_build_array({row_key})::text AS k){hold} \
         SELECT u.n, EXISTS (SELECT 1 FROM {t} AS t WHERE {present}) AS same_key FROM u \
         WHERE jsonb_build_array({batch_key})::text NOT IN (SELECT k FROM cdc_ins) ORDER BY u.n",
        arrays = arrays.join(", "),
        aliases = aliases.join(", "),
        names = names.join(", "),
        casts = casts.join(", "),
        row_key = row_key.join(", "),
        present = present.join(" AND "),
        batch_key = batch_key.join(", "),
    )
}

/// Writes `rows` into `opts.table` on the caller's session, a transaction
/// per batch; transient failures are retried with the default
/// [`RetryConfig`], but a dropped connection ends the restore (the client
/// cannot be re-opened here: use [`restore_url`] for that). Safe to run
/// again after any failure.
pub async fn restore(
    client: &mut Client,
    rows: &[Found],
    opts: &RestoreOptions,
) -> Result<RestoreSummary, RestoreError> {
    let mut session = Session::Borrowed(&*client);
    restore_on(&mut session, rows, opts, &RetryConfig::default()).await
}

/// [`restore`] on sessions of its own to `url`, re-opened when the
/// connection drops, retrying with `retry`.
pub async fn restore_url(
    url: &str,
    rows: &[Found],
    opts: &RestoreOptions,
    retry: &RetryConfig,
) -> Result<RestoreSummary, RestoreError> {
    let mut session = Session::Owned { url, client: None };
    restore_on(&mut session, rows, opts, retry).await
}

/// Rows of one column set, and the INSERT that writes them.
struct Group<'r> {
    columns: Vec<(String, String)>,
    rows: Vec<&'r Found>,
}

async fn restore_on(
    session: &mut Session<'_>,
    rows: &[Found],
    opts: &RestoreOptions,
    retry: &RetryConfig,
) -> Result<RestoreSummary, RestoreError> {
    let mut summary = RestoreSummary {
        rows: rows.len() as u64,
        ..Default::default()
    };
    if rows.is_empty() {
        return Ok(summary);
    }
    let table = opts.table.to_string();
    let db = |source| RestoreError::Db {
        table: table.clone(),
        source,
    };

    let (versions, duplicates) = dedupe(rows.iter().cloned());
    let (mut latest, older) = latest_per_key(versions);
    sort_by_key_and_version(&mut latest);
    summary.duplicates_dropped = duplicates as u64;
    summary.older_versions_skipped = older as u64;

    let quoted = opts.table.quoted();
    let catalog = with_retry(
        session,
        retry,
        &mut summary.retries,
        "reading the target's columns",
        |c| {
            let (quoted, table) = (&quoted, &table);
            async move {
                let sql = match cdc_common::db::detect_dialect(&c).await? {
                    Dialect::Postgres => COLUMNS_SQL,
                    Dialect::Cockroach => COLUMNS_SQL_COCKROACH,
                };
                c.query(sql, &[quoted]).await.map_err(|e| {
                    match e
                        .as_db_error()
                        .map(|d| d.code().code().to_owned())
                        .as_deref()
                    {
                        Some("42P01") => RestoreError::NoTable(table.clone()),
                        _ => db(e),
                    }
                })
            }
        },
    )
    .await?;
    let types: HashMap<String, ColumnType> = catalog
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                ColumnType {
                    cast: r.get(1),
                    declared: r.get(2),
                    check: r.get(3),
                },
            )
        })
        .collect();
    if types.is_empty() {
        return Err(RestoreError::NoTable(table.clone()));
    }

    // One group per column set, in the order the sets first appear; every
    // archived column must exist in the target before anything is written.
    let reset_flag = !opts.keep_archived_flag && types.contains_key(&opts.archived_column);
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut group_of: HashMap<Vec<&str>, usize> = HashMap::new();
    for f in &latest {
        let names: Vec<&str> = f.row.columns.iter().map(|(n, _)| n.as_str()).collect();
        let next = groups.len();
        let g = *group_of.entry(names.clone()).or_insert(next);
        if g == next {
            let mut columns = Vec::with_capacity(names.len() + 1);
            for name in &names {
                let ty = types
                    .get(*name)
                    .ok_or_else(|| RestoreError::MissingColumn {
                        table: table.clone(),
                        column: (*name).to_owned(),
                    })?;
                columns.push(((*name).to_owned(), ty.cast.clone()));
            }
            if reset_flag && !names.contains(&opts.archived_column.as_str()) {
                columns.push((
                    opts.archived_column.clone(),
                    types[&opts.archived_column].cast.clone(),
                ));
            }
            groups.push(Group {
                columns,
                rows: Vec::new(),
            });
        }
        groups[g].rows.push(f);
    }
    summary.column_sets = groups.len() as u64;

    // Every value must fit its column as it is, checked for every batch
    // before anything is written.
    for group in &groups {
        let checked: Vec<(usize, &ColumnType)> = group
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, (name, _))| Some((i, &types[name])).filter(|(_, t)| t.check.is_some()))
            .collect();
        if checked.is_empty() {
            continue;
        }
        let sqls = FitCheck::new(&checked);
        let checked_columns: Vec<(String, String)> = checked
            .iter()
            .map(|(i, _)| group.columns[*i].clone())
            .collect();
        for chunk in group.rows.chunks(opts.batch_size.max(1)) {
            let arrays = column_arrays(&checked_columns, chunk, opts, reset_flag);
            if let Some((row, column)) =
                find_misfit(session, retry, &mut summary.retries, &table, &sqls, &arrays).await?
            {
                let (index, ty) = checked[column];
                return Err(RestoreError::DoesNotFit {
                    table: table.clone(),
                    column: group.columns[index].0.clone(),
                    sql_type: ty.declared.clone(),
                    key: chunk
                        .get(row)
                        .map_or_else(String::new, |f| f.row.meta.key_json.clone()),
                });
            }
        }
    }

    // The target's primary key, to say which rows were not written; and,
    // for rows restored un-marked, its holds table.
    let schema = opts.table.schema_or_public().to_owned();
    let name = opts.table.name.clone();
    let primary_key: Vec<String> = with_retry(
        session,
        retry,
        &mut summary.retries,
        "reading the target's primary key",
        |c| {
            let (schema, name) = (&schema, &name);
            async move {
                let rows = c
                    .query(PRIMARY_KEY_SQL, &[schema, name])
                    .await
                    .map_err(db)?;
                if reset_flag {
                    cdc_common::holds::ensure(&c, schema, name)
                        .await
                        .map_err(|e| RestoreError::Holds(e.to_string()))?;
                }
                Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
            }
        },
    )
    .await?;
    if primary_key.is_empty() {
        return Err(RestoreError::NoPrimaryKey(table.clone()));
    }
    let holds = reset_flag.then(|| cdc_common::holds::qualified(&schema, &name));
    for group in &groups {
        let key: Vec<(usize, String)> = primary_key
            .iter()
            .map(|k| {
                let i = group.columns.iter().position(|(n, _)| n == k);
                i.map(|i| (i, types[k].declared.clone())).ok_or_else(|| {
                    RestoreError::MissingColumn {
                        table: table.clone(),
                        column: k.clone(),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        let sql = insert_sql(&opts.table, &group.columns, &key, holds.as_deref());
        for chunk in group.rows.chunks(opts.batch_size.max(1)) {
            let arrays = column_arrays(&group.columns, chunk, opts, reset_flag);
            let left_out = with_retry(
                session,
                retry,
                &mut summary.retries,
                "inserting a batch",
                |c| {
                    let (sql, arrays) = (&sql, &arrays);
                    async move { c.query(sql.as_str(), &params(arrays)).await.map_err(db) }
                },
            )
            .await?;
            for r in &left_out {
                let n = usize::try_from(r.get::<_, i64>(0)).unwrap_or(0);
                let same_key: bool = r.get(1);
                summary.not_restored.push(NotRestored {
                    key: chunk
                        .get(n.saturating_sub(1))
                        .map_or_else(String::new, |f| f.row.meta.key_json.clone()),
                    reason: if same_key {
                        "a row with this primary key is already in the table".into()
                    } else {
                        "a row already in the table conflicts with it on another unique constraint"
                            .into()
                    },
                });
            }
            let inserted = (chunk.len() - left_out.len()) as u64;
            summary.inserted += inserted;
            if reset_flag {
                summary.held += inserted;
            }
            summary.already_present += left_out.len() as u64;
            summary.batches += 1;
        }
    }
    Ok(summary)
}

/// The text arrays of a batch as statement parameters `$1`, `$2`, ….
fn params(arrays: &[Vec<Option<String>>]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    arrays
        .iter()
        .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// One text array per column for a batch of rows of one column set.
fn column_arrays(
    columns: &[(String, String)],
    chunk: &[&Found],
    opts: &RestoreOptions,
    reset_flag: bool,
) -> Vec<Vec<Option<String>>> {
    let mut arrays: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(chunk.len()); columns.len()];
    for f in chunk {
        for (i, (name, _)) in columns.iter().enumerate() {
            let text = if reset_flag && *name == opts.archived_column {
                Some("false".to_owned())
            } else {
                f.row
                    .columns
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, v)| value_text(v))
            };
            arrays[i].push(text);
        }
    }
    arrays
}

#[cfg(test)]
mod tests {
    use super::fit::fit_check_sql;
    use super::*;

    #[test]
    fn the_fit_check_compares_each_value_with_and_without_the_modifier() {
        let n = ColumnType {
            cast: "numeric".into(),
            declared: "numeric(5,2)".into(),
            check: Some("numeric".into()),
        };
        let d = ColumnType {
            cast: "\"public\".\"amount\"".into(),
            declared: "\"public\".\"amount\"".into(),
            check: Some("numeric".into()),
        };
        assert_eq!(
            fit_check_sql(&[(0, &n), (3, &d)]),
            "SELECT u.i, ARRAY[(u.c0::numeric IS DISTINCT FROM u.c0::numeric::numeric(5,2)), \
             (u.c1::numeric IS DISTINCT FROM u.c1::numeric::\"public\".\"amount\")] \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(c0, c1, i) \
             WHERE (u.c0::numeric IS DISTINCT FROM u.c0::numeric::numeric(5,2)) OR \
             (u.c1::numeric IS DISTINCT FROM u.c1::numeric::\"public\".\"amount\") LIMIT 1"
        );
    }

    #[test]
    fn insert_quotes_identifiers_and_binds_values() {
        let t = TableName::parse("public.Odd \"Table\"").unwrap();
        let sql = insert_sql(
            &t,
            &[
                ("id".into(), "uuid".into()),
                ("a\"b".into(), "numeric".into()),
            ],
            &[(0, "uuid".into())],
            Some("\"cdc_archiver\".\"holds:public.Odd \"\"Table\"\"\""),
        );
        assert_eq!(
            sql,
            "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(c0, c1, n)), \
             cdc_ins AS (INSERT INTO \"public\".\"Odd \"\"Table\"\"\" (\"id\", \"a\"\"b\") \
             SELECT u.c0::uuid, u.c1::numeric FROM u ON CONFLICT DO NOTHING \
             RETURNING jsonb_build_array(\"id\")::text AS k), \
             cdc_hold AS (INSERT INTO \"cdc_archiver\".\"holds:public.Odd \"\"Table\"\"\" (hold_key, hold_reason) \
             SELECT k, 'restored from the archive' FROM cdc_ins ON CONFLICT (hold_key) DO NOTHING) \
             SELECT u.n, EXISTS (SELECT 1 FROM \"public\".\"Odd \"\"Table\"\"\" AS t WHERE t.\"id\" = u.c0::uuid) AS same_key \
             FROM u WHERE jsonb_build_array(u.c0::uuid)::text NOT IN (SELECT k FROM cdc_ins) ORDER BY u.n"
        );
    }
}
