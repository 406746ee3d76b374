//! The fit check of `restore`: before anything is written, every value of
//! a column whose type has a modifier (numeric, timestamp, varchar, char,
//! bit, … and arrays and domains of them) must be equal, by the type's own
//! `=`, as the type with and without the modifier, so a restore never cuts
//! or rounds a value to fit a narrowed column. A value that does not fit is
//! found (one query per checked column) and named with its column and the
//! row's key.

use cdc_common::retry::RetryConfig;

use super::session::{with_retry, Session};
use super::{params, RestoreError};
/// A target column's types, from the catalog.
#[derive(Debug, Clone)]
pub(super) struct ColumnType {
    /// What archived text is cast to.
    pub(super) cast: String,
    /// The column's type, with its modifier.
    pub(super) declared: String,
    /// The unconstrained type the value must equal itself in, when the
    /// modifier could change it.
    pub(super) check: Option<String>,
}

/// The query that finds the first row of a batch whose value of one of
/// `checked` (indices into the batch's text arrays, with their types)
/// would change in its column: one text array per checked column, the
/// row's ordinal and which columns changed.
pub(super) fn fit_check_sql(checked: &[(usize, &ColumnType)]) -> String {
    let arrays: Vec<String> = (1..=checked.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let aliases: Vec<String> = (0..checked.len()).map(|i| format!("c{i}")).collect();
    let changed: Vec<String> = checked
        .iter()
        .enumerate()
        .map(|(i, (_, t))| {
            // Through the unconstrained type, so that the modifier is
            // applied as a cast applies it (cut, round), not as input
            // (`'1011'::bit(3)` is an error, `'1011'::"bit"::bit(3)` cuts).
            let check = t.check.as_deref().unwrap_or(&t.cast);
            format!(
                "(u.c{i}::{check} IS DISTINCT FROM u.c{i}::{check}::{})",
                t.declared
            )
        })
        .collect();
    format!(
        "SELECT u.i, ARRAY[{list}] FROM unnest({arrays}) WITH ORDINALITY AS u({aliases}, i) \
         WHERE {any} LIMIT 1",
        list = changed.join(", "),
        arrays = arrays.join(", "),
        aliases = aliases.join(", "),
        any = changed.join(" OR ")
    )
}

/// The fit-check queries of one column set: all checked columns at once,
/// and each alone (to find the value that made the first one fail).
pub(super) struct FitCheck {
    pub(super) all: String,
    pub(super) each: Vec<String>,
}

impl FitCheck {
    pub(super) fn new(checked: &[(usize, &ColumnType)]) -> Self {
        FitCheck {
            all: fit_check_sql(checked),
            each: (0..checked.len())
                .map(|i| fit_check_sql(&checked[i..=i]))
                .collect(),
        }
    }
}

/// Runs one fit-check query: the first misfit's (row index, index of the
/// checked column).
pub(super) async fn run_fit_check<'a>(
    session: &mut Session<'a>,
    retry: &RetryConfig,
    retries: &mut u64,
    table: &str,
    sql: &str,
    arrays: &[Vec<Option<String>>],
) -> Result<Option<(usize, usize)>, RestoreError> {
    let row = with_retry(
        session,
        retry,
        retries,
        "checking that the values fit",
        |c| async move {
            c.query_opt(sql, &params(arrays))
                .await
                .map_err(|source| RestoreError::Db {
                    table: table.to_owned(),
                    source,
                })
        },
    )
    .await?;
    Ok(row.map(|row| {
        let ordinal: i64 = row.get(0);
        let changed: Vec<bool> = row.get(1);
        (
            usize::try_from(ordinal - 1).unwrap_or(0),
            changed.iter().position(|c| *c).unwrap_or(0),
        )
    }))
}

/// The first value of `arrays` (one per checked column) that its column
/// would change, as (row index, index of the checked column). A value the
/// modifier cannot hold at all does not differ but fails the cast
/// (`-999.999` rounds to `-1000.00`, too wide for `numeric(5,2)`: SQLSTATE
/// class 22, data exception), failing the whole query; then each value is
/// checked alone to name it. Only a misfit takes that slow path.
pub(super) async fn find_misfit<'a>(
    session: &mut Session<'a>,
    retry: &RetryConfig,
    retries: &mut u64,
    table: &str,
    sqls: &FitCheck,
    arrays: &[Vec<Option<String>>],
) -> Result<Option<(usize, usize)>, RestoreError> {
    let failure = match run_fit_check(session, retry, retries, table, &sqls.all, arrays).await {
        Err(e) if is_data_exception(&e) => e,
        other => return other,
    };
    let rows = arrays.first().map_or(0, Vec::len);
    for row in 0..rows {
        for (column, (sql, values)) in sqls.each.iter().zip(arrays).enumerate() {
            let Some(value) = values.get(row) else {
                continue;
            };
            let one = [vec![value.clone()]];
            match run_fit_check(session, retry, retries, table, sql, &one).await {
                Ok(Some(_)) => return Ok(Some((row, column))),
                Ok(None) => {}
                Err(e) if is_data_exception(&e) => return Ok(Some((row, column))),
                Err(e) => return Err(e),
            }
        }
    }
    // No single value fails alone: the original error says what did.
    Err(failure)
}

/// SQLSTATE class 22: the value cannot be represented in the type.
pub(super) fn is_data_exception(e: &RestoreError) -> bool {
    matches!(e, RestoreError::Db { source, .. }
        if source.as_db_error().is_some_and(|d| d.code().code().starts_with("22")))
}
